#!/usr/bin/env python
"""Draw a training run's curves.png and confusion.png: ``pcattn plot RUN_DIR``."""
import sys

from pcattn.cli import main

if __name__ == "__main__":
    sys.exit(main(["plot", *sys.argv[1:]]))
