#!/usr/bin/env python
"""Train a part segmenter: ``pcattn train --task partseg`` (see ``--help``).

    python scripts/train_partseg.py                                   # built-in parts, no download
    python scripts/train_partseg.py --dataset shapenetpart --data-root datasets/shapenetcore_partanno_segmentation_benchmark_v0_normal
"""
import sys

from pcattn.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "--task", "partseg", *sys.argv[1:]]))
