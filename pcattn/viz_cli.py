"""``pcattn visualize``: arguments and printing around :mod:`pcattn.viz` (no logic of its own).

    pcattn visualize --checkpoint runs/builtin-vector/best.pt --dataset builtin --split test --index 7 \\
        --query 100 --mode query --views 3 --out attention.png --ply attention.ply
    pcattn visualize --checkpoint a.pt --compare b.pt --input chair.ply --layer 0 2 --out compare.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

__all__ = ["add_arguments", "run", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``visualize`` options to ``parser``."""
    parser.add_argument("--checkpoint", required=True, metavar="PT", help="trained classifier (best.pt / last.pt)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", metavar="FILE", help="a point cloud: .ply .pcd .xyz .txt .npy or .off (mesh)")
    source.add_argument("--dataset", metavar="NAME", help="take a sample of a dataset: builtin, modelnet10, modelnet40")
    parser.add_argument("--index", type=int, default=0, help="sample index in --dataset (default 0)")
    parser.add_argument("--split", default="test", choices=("train", "test"), help="dataset split (default test)")
    parser.add_argument("--data-root", default=None, help="dataset folder (default: the checkpoint's, else the usual)")
    parser.add_argument("--format", default=None, help="dataset format (default: the checkpoint's, else guessed)")
    parser.add_argument("--layer", nargs="+", default=None, metavar="L",
                        help="attention layer(s) by index (0 = first, -1 = last) or module name; "
                             "several give one row each (default: the first attention layer)")
    parser.add_argument("--query", type=int, default=0, help="query point index in the input cloud (default 0)")
    parser.add_argument("--mode", choices=("query", "received"), default="query",
                        help="query: weights the query gives its neighbours; received: total weight each point "
                             "receives (default query)")
    parser.add_argument("--reduce", default="mean", help="over groups/heads: mean (default), max, or an index")
    parser.add_argument("--out", default="attention.png", help="picture to write (PNG; default attention.png)")
    parser.add_argument("--ply", default=None, metavar="PLY", help="also write the coloured cloud as .ply")
    parser.add_argument("--compare", default=None, metavar="PT",
                        help="a second checkpoint (e.g. scalar vs vector) shown below the first")
    parser.add_argument("--views", type=int, default=3, help="fixed camera views side by side (default 3)")
    parser.add_argument("--view", nargs=2, type=float, action="append", metavar=("AZIMUTH", "ELEVATION"),
                        help="a chosen camera in degrees (repeatable; replaces --views)")
    parser.add_argument("--size", type=int, default=420, help="pixels per view (square, default 420)")
    parser.add_argument("--renderer", choices=("auto", "open3d", "matplotlib"), default="auto",
                        help="open3d (headless), matplotlib (fallback), auto (open3d, else matplotlib; default)")
    parser.add_argument("--up-axis", default=None, choices=("x", "y", "z", "0", "1", "2"),
                        help="up axis of the clouds (default: the checkpoint's training data, else y)")
    parser.add_argument("--num-points", type=int, default=None,
                        help="points to sample from --input (default: as in training)")
    parser.add_argument("--sampling", choices=("fps", "random"), default="fps",
                        help="how --input files larger than --num-points are subsampled (default fps)")
    parser.add_argument("--title", default=None, help="picture title (default: input and prediction)")
    parser.add_argument("--show", action="store_true", help="also open an interactive Open3D window (needs a display)")
    return parser


def _axis(value, default: int = 1) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, str):
        value = value.strip().lower()
        if value in ("x", "y", "z"):
            return "xyz".index(value)
    return int(value)


def _short(path) -> str:
    """``run/best.pt`` rather than a long absolute path, for captions."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _prediction(probabilities, classes) -> str:
    p, c = probabilities.max(0)
    name = classes[int(c)] if classes and int(c) < len(classes) else str(int(c))
    return f"{name} (p = {float(p):.3f})"


def run(args: argparse.Namespace) -> int:
    """Run ``pcattn visualize``; returns the exit code (2 with a message on bad input)."""
    import torch

    from . import viz
    from .engine import load_model

    try:
        model, classes, checkpoint = load_model(args.checkpoint)
        models, model_classes = [(_short(args.checkpoint), model)], [classes]
        if args.compare:
            other, other_classes, _ = load_model(args.compare)
            if other.in_channels != model.in_channels:
                raise ValueError(f"{args.compare} takes {other.in_channels} input channels but {args.checkpoint} "
                                 f"takes {model.in_channels}: they cannot see the same input")
            models.append((_short(args.compare), other))
            model_classes.append(other_classes)
        train = checkpoint.get("train_config") or {}
        use_normals = model.in_channels == 6
        num_points = args.num_points or train.get("num_points") or 1024

        if args.input:
            pos, x = viz.load_cloud(args.input, num_points, use_normals, args.sampling)
            source, truth = Path(args.input).name, None
            up_axis = _axis(args.up_axis, _axis(train.get("up_axis"), 1))
        else:
            from .data import build_dataset, test_transforms

            same = args.dataset == train.get("dataset")
            dataset = build_dataset(args.dataset, format=args.format or (train.get("format") if same else None),
                                    root=args.data_root or (train.get("data_root") if same else None),
                                    split=args.split, num_points=num_points, use_normals=use_normals,
                                    transform=test_transforms())
            if not 0 <= args.index < len(dataset):
                raise ValueError(f"--index {args.index} out of range: the {args.dataset} {args.split} split has "
                                 f"{len(dataset)} samples (0..{len(dataset) - 1})")
            sample = dataset[args.index]
            pos = sample["pos"]
            x = torch.cat([pos, sample["normals"]], -1) if use_normals else None
            source = f"{args.dataset} {args.split} #{args.index}"
            truth = dataset.classes[int(sample["label"])]
            # the axis the run trained with (it may have been set by hand), else the dataset's own
            trained_axis = train.get("up_axis") if same else None
            up_axis = _axis(args.up_axis, _axis(trained_axis, _axis(getattr(dataset, "up_axis", None), 1)))

        if args.mode == "query" and not 0 <= args.query < pos.shape[0]:
            raise ValueError(f"--query {args.query} out of range: the cloud has {pos.shape[0]} points "
                             f"(0..{pos.shape[0] - 1})")
        views = [tuple(v) for v in args.view] if args.view else args.views
        layers = args.layer or [None]
        # Probabilities first (cheap), so the title can say what the model predicts.
        with torch.no_grad():
            predictions = [_prediction(torch.softmax(m(None if x is None else x[None], pos[None])[0], -1), names)
                           for (_, m), names in zip(models, model_classes)]
        title = args.title
        if title is None:
            title = f"{source}" + (f" (true: {truth})" if truth else "") + " - predicted: " + \
                    " | ".join(predictions)
        picture = viz.attention_picture(models, pos, x, layers=layers, mode=args.mode, query=args.query,
                                        reduce=args.reduce, views=views, size=(args.size, args.size),
                                        up_axis=up_axis, backend=args.renderer, title=title, path=args.out)
    except (FileNotFoundError, ValueError, viz.RenderingUnavailable) as error:
        print(f"pcattn visualize: error: {error}", file=sys.stderr)
        return 2

    for (name, _), prediction in zip(models, predictions):
        print(f"{name}: predicted {prediction}" + (f", true class {truth}" if truth else ""))
    first = picture.rows[0]
    print(f"input: {source}, {pos.shape[0]} points; layers: "
          + ", ".join(sorted({f"{row.layer.index} '{row.layer.name}'" for row in picture.rows})))
    if args.mode == "query" and any(row.values.query_point != args.query for row in picture.rows):
        print(f"note: in deeper layers the query is the kept point nearest to point {args.query}")
    height, width = picture.image.shape[:2]
    print(f"wrote {args.out} ({len(picture.rows)} row(s) x {len(viz.view_angles(views))} view(s), "
          f"{width}x{height} px)")
    if args.ply:
        try:
            viz.write_ply(args.ply, pos, first.colors)
        except (ValueError, OSError) as error:
            print(f"pcattn visualize: error: {error}", file=sys.stderr)
            return 2
        print(f"wrote {args.ply} (coloured cloud of the first row: {first.name}, layer {first.layer.index})")
    if args.show:
        try:
            viz.show_interactive(pos, first.colors, first.values.query_point, first.values.neighborhood, title)
        except RuntimeError as error:
            print(f"pcattn visualize: --show: {error}", file=sys.stderr)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Stand-alone entry point (``pcattn.cli`` normally calls :func:`add_arguments`/:func:`run`)."""
    parser = add_arguments(argparse.ArgumentParser(prog="pcattn visualize",
                                                   description="Render attention weights of a trained classifier."))
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
