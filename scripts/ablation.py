#!/usr/bin/env python
"""Train attention variants on the same data and print one table: ``pcattn ablate`` (see ``--help``)."""
import sys

from pcattn.cli import main

if __name__ == "__main__":
    sys.exit(main(["ablate", *sys.argv[1:]]))
