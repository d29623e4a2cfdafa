"""Semantic-segmentation metrics of whole scenes, as the scene papers compute them.

Over the whole split (every point of every room, not per room or per batch), for each class ``c``:

* ``intersection[c] = |pred = c and true = c|``
* ``union[c]        = |pred = c or true = c|``
* ``target[c]       = |true = c|``

Points whose true label is the ignore label (``-1`` by default, ScanNet's unlabelled points) are left
out of all three. Then

* ``IoU[c] = intersection[c] / union[c]``, **mIoU** the mean of ``IoU`` over the classes;
* ``Acc[c] = intersection[c] / target[c]``, **mAcc** the mean of ``Acc`` over the classes;
* **OA** (``allAcc``) ``= sum(intersection) / sum(target)``: the fraction of labelled points right.

This is the Point Transformer / Pointcept evaluation (``intersectionAndUnion`` summed over the split).
One difference, only visible on a split that lacks a class: those codes average over every class and
so count a class absent from both prediction and truth as IoU 0; here such a class (``union = 0``) is
left out of mIoU, and a class absent from the truth (``target = 0``) is left out of mAcc. On a full
benchmark split every class is present and the two agree. A class that is predicted but absent from
the truth has IoU 0 and does count.

The state is three integer vectors of sums, so the metrics of several processes (or of several
fragments of one room) merge exactly by adding them: :meth:`SceneSegmentationMetrics.state` gives one
float64 tensor to all-reduce, :meth:`SceneSegmentationMetrics.load_state` takes the sum.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..data.scenes import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "intersection_union_target", "SceneSegmentationMetrics"]

def _numpy(values) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def intersection_union_target(pred, target, num_classes: int, ignore_index: int = IGNORE_INDEX):
    """Per-class counts of one set of points.

    Args:
        pred: ``(N,)`` predicted labels in ``[0, num_classes)``.
        target: ``(N,)`` true labels in ``[0, num_classes)`` or ``ignore_index``.
        num_classes: ``C``.
        ignore_index: true label of points left out.

    Returns:
        int64 ``intersection (C,)``, ``union (C,)``, ``target (C,)``.

    Raises:
        ValueError: different lengths, or a label outside ``[0, C)`` (other than ``ignore_index`` in
            ``target``), naming the first one found.
    """
    pred = _numpy(pred).reshape(-1).astype(np.int64, copy=False)
    target = _numpy(target).reshape(-1).astype(np.int64, copy=False)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same number of points, got {pred.size} and {target.size}")
    labelled = target != ignore_index
    pred, target = pred[labelled], target[labelled]
    for name, labels in (("pred", pred), ("target", target)):
        outside = (labels < 0) | (labels >= num_classes)
        if outside.any():
            raise ValueError(f"{name} holds label {int(labels[outside][0])}, outside [0, {num_classes})"
                             + (f" (ignore_index is {ignore_index})" if name == "target" else ""))
    intersection = np.bincount(pred[pred == target], minlength=num_classes)
    predicted = np.bincount(pred, minlength=num_classes)
    true = np.bincount(target, minlength=num_classes)
    return intersection, predicted + true - intersection, true


class SceneSegmentationMetrics:
    """Accumulates the intersection, union and target counts of a split; reports mIoU, mAcc, OA and the
    per-class IoU (see the module docstring for the formulas).

    Args:
        num_classes: ``C``.
        class_names: optional ``C`` names for the per-class tables of :meth:`compute`.
        ignore_index: true label never scored (default ``-1``).

    ``update(output, target)``: ``output`` is ``(N,)`` predicted labels or ``(N, C)`` logits (arg-max
    taken), ``target`` ``(N,)``; any leading batch dimensions are flattened.
    """

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None,
                 ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
        self.ignore_index = int(ignore_index)
        self.reset()

    def reset(self) -> None:
        self.intersection = np.zeros(self.num_classes, dtype=np.int64)
        self.union = np.zeros(self.num_classes, dtype=np.int64)
        self.target = np.zeros(self.num_classes, dtype=np.int64)

    def update(self, output, target) -> None:
        output = _numpy(output.float() if isinstance(output, Tensor) and output.is_floating_point() else output)
        target = _numpy(target)
        if output.ndim == target.ndim + 1:  # logits: the class axis is last
            if output.shape[-1] != self.num_classes:
                raise ValueError(f"output holds {output.shape[-1]} class scores, expected {self.num_classes}")
            output = output.argmax(axis=-1)
        intersection, union, true = intersection_union_target(output, target, self.num_classes, self.ignore_index)
        self.intersection += intersection
        self.union += union
        self.target += true

    def state(self) -> Tensor:
        """The sums as one float64 tensor ``(3 C,)`` (exact for counts below 2**53): all-reduce (sum) it,
        then :meth:`load_state`."""
        return torch.from_numpy(np.concatenate([self.intersection, self.union, self.target]).astype(np.float64))

    def load_state(self, state) -> None:
        """Replace the sums by ``state`` (what :meth:`state` returns, e.g. summed over processes)."""
        values = _numpy(state).astype(np.float64).reshape(-1)
        if values.shape != (3 * self.num_classes,):
            raise ValueError(f"a metrics state of shape {values.shape} does not fit {self.num_classes} classes "
                             f"(expected ({3 * self.num_classes},))")
        counts = np.rint(values).astype(np.int64).reshape(3, self.num_classes)
        self.intersection, self.union, self.target = (row.copy() for row in counts)

    @property
    def points(self) -> int:
        """Labelled points scored so far."""
        return int(self.target.sum())

    def compute(self) -> Dict[str, object]:
        """``{"miou", "macc", "oa", "iou": {name: IoU or None}, "acc": {name: Acc or None},
        "intersection", "union", "target" (lists), "points"}``: fractions in ``[0, 1]``; a class with
        ``union = 0`` has IoU ``None`` and is left out of mIoU, one with ``target = 0`` has Acc ``None``
        and is left out of mAcc."""
        if not self.points:
            raise ValueError("no labelled points were added: call update() first")
        present = self.union > 0
        labelled = self.target > 0
        iou = np.divide(self.intersection, self.union, out=np.zeros(self.num_classes), where=present)
        acc = np.divide(self.intersection, self.target, out=np.zeros(self.num_classes), where=labelled)
        return {
            "miou": float(iou[present].mean()),
            "macc": float(acc[labelled].mean()),
            "oa": float(self.intersection.sum() / self.target.sum()),
            "iou": {name: float(iou[c]) if present[c] else None for c, name in enumerate(self.class_names)},
            "acc": {name: float(acc[c]) if labelled[c] else None for c, name in enumerate(self.class_names)},
            "intersection": self.intersection.tolist(),
            "union": self.union.tolist(),
            "target": self.target.tolist(),
            "points": self.points,
        }
