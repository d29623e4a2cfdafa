#!/usr/bin/env python
"""Evaluate a trained classifier checkpoint: ``pcattn eval`` (see ``--help``)."""
import sys

from pcattn.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
