"""Part-segmentation metrics as PointNet++ and Point Transformer compute them.

For each shape of category ``c`` with part labels ``parts(c)`` (global ids):

* the prediction is restricted to ``parts(c)`` (the arg-max over those logits only);
* ``IoU(shape, part) = |pred = part and true = part| / |pred = part or true = part|``, and ``1`` when
  the part is absent from both prediction and truth;
* ``shape mIoU`` = the mean of the IoUs over ``parts(c)``.

**Instance mIoU** is the mean of the shape mIoUs over all shapes; **class mIoU** the mean over
categories (those with at least one shape) of each category's mean shape mIoU. **Accuracy** is the
fraction of points labelled right, over all points.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
from torch import Tensor

__all__ = ["restrict_to_parts", "shape_part_ious", "PartSegmentationMetrics"]


def _numpy(values) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def restrict_to_parts(logits, parts: Sequence[int]) -> np.ndarray:
    """Predicted labels ``(P,)``: the arg-max of ``logits (P, num_classes)`` over the columns ``parts``."""
    scores = _numpy(logits.float() if isinstance(logits, Tensor) else logits)
    parts = np.asarray(parts, dtype=np.int64)
    return parts[np.argmax(scores[:, parts], axis=1)]


def shape_part_ious(pred, target, parts: Sequence[int]) -> np.ndarray:
    """IoU of each part in ``parts`` for one shape: ``pred (P,)`` and ``target (P,)`` labels;
    a part absent from both counts as ``1``. Returns float64 ``(len(parts),)``."""
    pred, target = _numpy(pred).reshape(-1), _numpy(target).reshape(-1)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same number of points, got {pred.shape} and {target.shape}")
    ious = np.ones(len(parts), dtype=np.float64)
    for slot, part in enumerate(parts):
        in_pred, in_target = pred == part, target == part
        union = int(np.count_nonzero(in_pred | in_target))
        if union:
            ious[slot] = np.count_nonzero(in_pred & in_target) / union
    return ious


class PartSegmentationMetrics:
    """Accumulates shapes, then reports accuracy, instance mIoU, class mIoU, per-category mIoU and the
    part confusion matrix.

    Args:
        category_parts: for each category id, the global part ids of that category
            (e.g. ShapeNetPart's Airplane -> ``[0, 1, 2, 3]``).
        category_names: optional names for :meth:`compute`'s per-category table.

    ``update(output, target, category)`` takes one shape (``output (P,)`` labels or
    ``(P, num_classes)`` logits, ``target (P,)``, ``category`` an int) or a batch (``(B, P)`` /
    ``(B, P, num_classes)``, ``(B, P)``, ``(B,)``). Logits are restricted to the category's parts;
    given labels are scored as they are.

    Everything is kept as sums (per category: the shapes' mIoUs and their count; correct and total
    points; the confusion counts), so the metrics of several processes merge exactly:
    :meth:`state` gives them as one float64 tensor to all-reduce, :meth:`load_state` takes the sum.
    """

    def __init__(self, category_parts: Sequence[Sequence[int]], category_names: Optional[Sequence[str]] = None):
        self.category_parts = [list(parts) for parts in category_parts]
        if category_names is not None and len(category_names) != len(self.category_parts):
            raise ValueError(f"category_names has {len(category_names)} names for {len(self.category_parts)} "
                             f"categories")
        self.category_names = list(category_names) if category_names is not None else None
        self.num_parts = 1 + max((part for parts in self.category_parts for part in parts), default=-1)
        self.reset()

    def reset(self) -> None:
        categories = len(self.category_parts)
        self.iou_sums = np.zeros(categories, dtype=np.float64)  # sum of shape mIoUs per category
        self.shape_counts = np.zeros(categories, dtype=np.int64)
        self.correct = 0
        self.total = 0
        self.confusion = np.zeros((self.num_parts, self.num_parts), dtype=np.int64)  # rows: true part

    def update(self, output, target, category) -> None:
        output, target = _numpy(output), _numpy(target)
        categories = _numpy(category).reshape(-1)
        if target.ndim == 1:
            output, target = output[None], target[None]
        if len(categories) != target.shape[0]:
            raise ValueError(f"category must hold one id per shape ({target.shape[0]}), got {len(categories)}")
        for shape_output, shape_target, shape_category in zip(output, target, categories):
            shape_category = int(shape_category)
            if not 0 <= shape_category < len(self.category_parts):
                raise ValueError(f"category {shape_category} is not in [0, {len(self.category_parts)})")
            parts = self.category_parts[shape_category]
            pred = restrict_to_parts(shape_output, parts) if shape_output.ndim == 2 else shape_output
            pred, shape_target = np.asarray(pred, dtype=np.int64), np.asarray(shape_target, dtype=np.int64)
            self.correct += int(np.count_nonzero(pred == shape_target))
            self.total += int(shape_target.size)
            self.iou_sums[shape_category] += float(shape_part_ious(pred, shape_target, parts).mean())
            self.shape_counts[shape_category] += 1
            inside = (pred >= 0) & (pred < self.num_parts) & (shape_target >= 0) & (shape_target < self.num_parts)
            np.add.at(self.confusion, (shape_target[inside], pred[inside]), 1)

    def state(self) -> Tensor:
        """The sums as one float64 tensor (exact for counts below 2**53): all-reduce it, then :meth:`load_state`."""
        import torch

        return torch.from_numpy(np.concatenate([self.iou_sums, self.shape_counts, [self.correct, self.total],
                                                self.confusion.reshape(-1)]).astype(np.float64))

    def load_state(self, state) -> None:
        """Replace the sums by ``state`` (what :meth:`state` returns, e.g. summed over processes)."""
        values = _numpy(state).astype(np.float64)
        categories = len(self.category_parts)
        if values.shape != (2 * categories + 2 + self.num_parts ** 2,):
            raise ValueError(f"a metrics state of shape {values.shape} does not fit {categories} categories and "
                             f"{self.num_parts} parts")
        self.iou_sums = values[:categories].copy()
        self.shape_counts = np.rint(values[categories:2 * categories]).astype(np.int64)
        self.correct, self.total = (int(round(v)) for v in values[2 * categories:2 * categories + 2])
        self.confusion = np.rint(values[2 * categories + 2:]).astype(np.int64).reshape(self.num_parts, self.num_parts)

    @property
    def shapes(self) -> int:
        return int(self.shape_counts.sum())

    def compute(self) -> Dict[str, object]:
        """``{"accuracy", "instance_miou", "class_miou", "per_category": {name: mIoU},
        "category_shapes": {name: count}, "shapes", "confusion"}`` (fractions in ``[0, 1]``; categories
        without shapes are left out of the class mean and the tables; ``confusion[true][predicted]``
        counts points over the global part ids)."""
        if not self.shapes:
            raise ValueError("no shapes were added: call update() first")
        per_category, category_shapes = {}, {}
        for index in np.flatnonzero(self.shape_counts):
            name = self.category_names[index] if self.category_names else str(index)
            per_category[name] = float(self.iou_sums[index] / self.shape_counts[index])
            category_shapes[name] = int(self.shape_counts[index])
        return {
            "accuracy": self.correct / self.total,
            "instance_miou": float(self.iou_sums.sum() / self.shapes),
            "class_miou": float(np.mean(list(per_category.values()))),
            "per_category": per_category,
            "category_shapes": category_shapes,
            "shapes": self.shapes,
            "confusion": self.confusion.tolist(),
        }
