"""Measured answers to design questions: train variants of the attention on the same data, one table.

    pcattn ablate                                  # every variant below, 15 epochs each, built-in data
    pcattn ablate --variants vector vector-no-pe --epochs 5 --seeds 0 1

Each variant is an ordinary training run (:func:`pcattn.engine.train`) in ``<out>/<variant>-seed<s>``,
so a killed ablation continues where it stopped when started again (finished runs are read back,
not retrained). The table reports, per variant, the test OA of the best and of the last epoch
(mean and spread over seeds), the training time and the throughput.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["VARIANTS", "run_ablation", "markdown", "add_arguments", "run", "main"]

# name -> (attention type, attention options): each answers one question about the design space.
VARIANTS: Dict[str, Dict[str, Any]] = {
    "vector": dict(attention="vector", options={}),
    "vector-no-pe": dict(attention="vector", options={"positional_encoding": "none"}),
    "vector-addition": dict(attention="vector", options={"relation": "addition"}),
    "vector-sigmoid": dict(attention="vector", options={"normalization": "sigmoid"}),
    "scalar": dict(attention="scalar", options={}),
    "scalar-no-pe": dict(attention="scalar", options={"positional_encoding": "none"}),
}


def run_ablation(variants: Sequence[str], out, epochs: int = 15, seeds: Sequence[int] = (0,),
                 dataset: str = "builtin", data_root: Optional[str] = None, num_points: Optional[int] = None,
                 device: str = "auto", progress: bool = True, **train_options: Any) -> List[Dict[str, Any]]:
    """Train every ``variant`` with every seed (on ``pt-tiny-*`` models for the built-in data,
    ``pt-*`` for ModelNet); returns one row per variant with the runs' figures."""
    from ..engine import TrainConfig, train

    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; available: {', '.join(VARIANTS)}")
    if not seeds:
        raise ValueError("give at least one seed")
    rows = []
    for name in variants:
        spec = VARIANTS[name]
        runs = []
        for seed in seeds:
            config = TrainConfig(dataset=dataset, data_root=data_root, num_points=num_points,
                                 attention=spec["attention"], attention_options=dict(spec["options"]) or None,
                                 epochs=epochs, seed=seed, device=device, out=str(Path(out) / f"{name}-seed{seed}"),
                                 resume=True, progress=progress, plots=False, **train_options)
            summary = train(config)
            metrics = [json.loads(line) for line in (Path(config.out) / "metrics.jsonl").read_text().splitlines()]
            runs.append({"seed": seed, "best_oa": summary["best_oa"], "last_oa": metrics[-1]["test_oa"],
                         "train_seconds": sum(m["epoch_time"] for m in metrics),
                         "samples_per_s": statistics.median(m["samples_per_s"] for m in metrics),
                         "run_dir": config.out})
        rows.append({"variant": name, "attention": spec["attention"], "options": spec["options"], "runs": runs})
    return rows


def _spread(values: List[float]) -> str:
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{100 * mean:.1f}%"
    return f"{100 * mean:.1f}% (±{100 * statistics.stdev(values):.1f})"


def markdown(rows: List[Dict[str, Any]], epochs: int) -> str:
    """The ablation table (OA as mean ± standard deviation over seeds)."""
    seeds = len(rows[0]["runs"]) if rows else 0
    lines = [f"| variant | attention | options | test OA, best epoch | test OA, last epoch | training s | samples/s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        runs = row["runs"]
        options = ", ".join(f"{k}={v}" for k, v in row["options"].items()) or "defaults"
        lines.append(f"| {row['variant']} | {row['attention']} | {options} | {_spread([r['best_oa'] for r in runs])} | "
                     f"{_spread([r['last_oa'] for r in runs])} | "
                     f"{statistics.mean(r['train_seconds'] for r in runs):.0f} | "
                     f"{statistics.mean(r['samples_per_s'] for r in runs):.0f} |")
    lines.append("")
    lines.append(f"{epochs} epochs per run, {seeds} seed(s) per variant"
                 + ("; ± is the standard deviation over seeds." if seeds > 1 else
                    "; one seed: differences of a few points are within seed-to-seed noise."))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="which variants to train (default: all)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per run (default 15)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds per variant (default 0)")
    parser.add_argument("--dataset", default="builtin", choices=("builtin", "modelnet10", "modelnet40"))
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--num-points", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/ablation", help="folder of the runs and the table")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=True)
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        rows = run_ablation(args.variants, args.out, epochs=args.epochs, seeds=args.seeds, dataset=args.dataset,
                            data_root=args.data_root, num_points=args.num_points, device=args.device,
                            progress=args.progress)
    except (OSError, ValueError) as error:
        print(f"pcattn ablate: error: {error}", file=sys.stderr)
        return 2
    table = markdown(rows, args.epochs)
    out = Path(args.out)
    (out / "ablation.md").write_text(table + "\n")
    (out / "ablation.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table)
    print(f"wrote {out / 'ablation.md'} and {out / 'ablation.json'}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="pcattn ablate", description=__doc__.split("\n")[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
