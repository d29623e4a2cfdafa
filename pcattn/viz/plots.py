"""Training plots: a run's loss/accuracy curves (``metrics.jsonl``) and confusion matrix (``eval.json``),
of classification runs (classes) and part-segmentation runs (parts, with the mIoU curves).

Owns :func:`plot_run` and the reading of ``metrics.jsonl``; matplotlib is imported lazily.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import List

import numpy as np

from ..optional import require

__all__ = ["plot_run"]


def _read_metrics(path: Path) -> List[dict]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(path.read_text().splitlines()):  # a run killed mid-write: ignore its last line
                warnings.warn(f"{path}:{number}: incomplete last line ignored")
                continue
            raise ValueError(f"{path}:{number}: not a JSON object ({error})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected one JSON object per epoch, found a {type(row).__name__}")
        rows.append(row)
    return rows


def plot_run(run_dir) -> List[Path]:
    """Draw a training run's plots into its folder.

    * ``curves.png``: train/test loss and train/test accuracy (overall and mean per class; for part
      segmentation point accuracy and instance/class mIoU) per epoch, from ``metrics.jsonl`` (one JSON
      object per epoch).
    * ``confusion.png``: the confusion matrix (row-normalised colours, counts written in the
      cells when there are few classes) from ``eval.json``, if present.

    Returns:
        The paths written.

    Raises:
        FileNotFoundError: no ``metrics.jsonl`` and no ``eval.json`` in ``run_dir``.
    """
    require("matplotlib", "viz", "drawing the training plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    metrics_path, eval_path = run_dir / "metrics.jsonl", run_dir / "eval.json"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    if not metrics_path.is_file() and not eval_path.is_file():
        raise FileNotFoundError(f"{run_dir}: neither metrics.jsonl nor eval.json found (is it a training run folder?)")
    written = []
    if metrics_path.is_file():
        rows = _read_metrics(metrics_path)
        if rows:
            figure = Figure(figsize=(11, 4.2), dpi=100)
            FigureCanvasAgg(figure)
            loss_ax, acc_ax = figure.subplots(1, 2)
            epochs = [row.get("epoch", i + 1) for i, row in enumerate(rows)]

            def series(key):
                points = [(e, row[key]) for e, row in zip(epochs, rows) if isinstance(row.get(key), (int, float))]
                return ([e for e, _ in points], [v for _, v in points]) if points else None

            for key, label, ax in (("train_loss", "train loss", loss_ax), ("test_loss", "test loss", loss_ax),
                                   ("train_acc", "train accuracy", acc_ax), ("test_oa", "test overall accuracy", acc_ax),
                                   ("test_macc", "test mean class accuracy", acc_ax),
                                   ("test_acc", "test point accuracy", acc_ax),
                                   ("test_instance_miou", "test instance mIoU", acc_ax),
                                   ("test_class_miou", "test class mIoU", acc_ax)):
                found = series(key)
                if found:
                    ax.plot(*found, marker="o" if len(found[0]) < 30 else None, markersize=3, label=label)
            from matplotlib.ticker import MaxNLocator

            loss_ax.set(title="loss", xlabel="epoch", ylabel="cross-entropy")
            segmentation = any("test_instance_miou" in row for row in rows)
            acc_ax.set(title="accuracy and mIoU" if segmentation else "accuracy", xlabel="epoch",
                       ylabel="fraction", ylim=(0, 1.02))
            for ax in (loss_ax, acc_ax):
                ax.grid(alpha=0.3)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                if ax.lines:
                    ax.legend(fontsize=8)
            best = series("test_instance_miou" if segmentation else "test_oa")
            if best:
                i = int(np.argmax(best[1]))
                acc_ax.annotate(f"best {best[1][i]:.3f} (epoch {best[0][i]})", (best[0][i], best[1][i]),
                                textcoords="offset points", xytext=(-10, -18), fontsize=8, ha="right")
            figure.suptitle(f"training curves: {run_dir.name}")
            figure.tight_layout()
            figure.savefig(run_dir / "curves.png")
            written.append(run_dir / "curves.png")
    if eval_path.is_file():
        try:
            result = json.loads(eval_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{eval_path}: not valid JSON ({error})") from None
        if "confusion" not in result:
            raise ValueError(f"{eval_path}: no 'confusion' field")
        confusion = np.asarray(result["confusion"], dtype=np.float64)
        if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
            raise ValueError(f"{eval_path}: 'confusion' must be a square matrix, got shape {confusion.shape}")
        n = confusion.shape[0]
        classes = list(result.get("classes") or [str(i) for i in range(n)])
        if len(classes) != n:
            raise ValueError(f"{eval_path}: {len(classes)} class names for a {n}x{n} confusion matrix")
        rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
        side = min(16.0, 3.0 + 0.38 * n)
        figure = Figure(figsize=(side + 1.5, side), dpi=100)
        FigureCanvasAgg(figure)
        ax = figure.subplots()
        shown = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(n), classes, rotation=90, fontsize=max(5, 9 - n // 10))
        ax.set_yticks(range(n), classes, fontsize=max(5, 9 - n // 10))
        unit = "part" if "instance_miou" in result else "class"
        ax.set(xlabel=f"predicted {unit}", ylabel=f"true {unit}")
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if confusion[i, j]:
                        ax.text(j, i, f"{int(confusion[i, j])}", ha="center", va="center", fontsize=7,
                                color="white" if rates[i, j] > 0.5 else "black")
        figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04,
                        label=f"fraction of the true {unit}" + ("'s points" if unit == "part" else ""))
        named = (("OA", "oa"), ("mAcc", "macc"), ("instance mIoU", "instance_miou"), ("class mIoU", "class_miou"))
        scores = ", ".join(f"{name} {result[key]:.3f}" for name, key in named
                           if isinstance(result.get(key), (int, float)))
        ax.set_title(f"confusion matrix: {run_dir.name}" + (f" ({scores})" if scores else ""))
        figure.tight_layout()
        figure.savefig(run_dir / "confusion.png")
        written.append(run_dir / "confusion.png")
    return written
