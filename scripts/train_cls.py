#!/usr/bin/env python
"""Train a point-cloud classifier: ``pcattn train`` (see ``--help``)."""
import sys

from pcattn.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
