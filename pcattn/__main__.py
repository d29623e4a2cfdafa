"""``python -m pcattn``: the ``pcattn`` command."""
import sys

from .cli import main

sys.exit(main())
