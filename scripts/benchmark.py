"""Benchmark pcattn against PyG, a dense reference, lucidrains' layer and brute force (see pcattn/bench/harness.py)."""
import sys

from pcattn.bench import main

if __name__ == "__main__":
    sys.exit(main())
