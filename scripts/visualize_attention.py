#!/usr/bin/env python
"""Render a trained classifier's attention on a point cloud: ``pcattn visualize`` (see ``--help``)."""
import sys

from pcattn.cli import main

if __name__ == "__main__":
    sys.exit(main(["visualize", *sys.argv[1:]]))
