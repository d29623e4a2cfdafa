"""``python -m pcattn.bench``: the benchmark (and its per-case worker processes)."""
import sys

from .harness import main

sys.exit(main())
