"""What differs between the tasks a run trains: classification of whole clouds, part segmentation and
semantic segmentation of scenes.

The training loop (:mod:`~pcattn.engine.loop`) is the same for all; a :class:`Task` supplies the
pieces that differ:

* model: a :class:`~pcattn.models.PointTransformerClassifier`, or a
  :class:`~pcattn.models.PointTransformerSegmenter` that also takes the object category (one-hot
  into its head);
* labels (:class:`Labels`, saved in checkpoints): the class names, or the part names with the
  categories and each category's parts;
* target and loss: ``label (B,)`` and cross-entropy per cloud, or ``seg (B, P)`` and cross-entropy
  per point; the training accuracy counts clouds, or points;
* evaluation: :func:`~pcattn.engine.evaluate_classification` (OA, mAcc), or :func:`~pcattn.engine.evaluate_parts`
  (point accuracy, instance and class mIoU);
* the score that picks ``best.pt``: ``test_oa``, or ``test_instance_miou``.

Scenes (:class:`SemanticSegmentationTask`): a segmenter without categories taking centred xyz + rgb
(+ normals), flat batches of crops (``model(x, pos, batch)``), cross-entropy per point with the ignore
label ``-1`` left out, whole test rooms labelled point by point
(:func:`~pcattn.engine.scene_inference.evaluate_scenes`), ``best.pt`` by ``test_miou``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.grid import scene_model_inputs
from ..data.scenes import IGNORE_INDEX
from ..models import PointTransformerSegmenter, create_model
from .config import class_loss_weights  # noqa: F401  (re-exported: its home before crop_centres used it)
from .evaluation import evaluate_classification, evaluate_parts
from .loaders import batch_inputs
from .scene_inference import evaluate_scenes, is_scene_segmenter

__all__ = ["Labels", "Task", "ClassificationTask", "PartSegmentationTask", "SemanticSegmentationTask", "get_task",
           "class_loss_weights", "task_of_model", "describe_labels"]


@dataclass
class Labels:
    """What a model predicts, saved in its checkpoints.

    Attributes:
        classes: class names (index = label), or for part segmentation the global part names.
        categories: part segmentation: the object categories (index = category id).
        category_parts: part segmentation: the global part ids of each category.
    """

    classes: List[str]
    categories: Optional[List[str]] = None
    category_parts: Optional[List[List[int]]] = field(default=None)

    @classmethod
    def of_dataset(cls, dataset) -> "Labels":
        if hasattr(dataset, "category_parts"):
            return cls(list(dataset.part_names), list(dataset.categories),
                       [list(parts) for parts in dataset.category_parts])
        return cls(list(dataset.classes))

    @classmethod
    def of_checkpoint(cls, checkpoint: Dict[str, Any]) -> "Labels":
        parts = checkpoint.get("category_parts")
        return cls(list(checkpoint["classes"]), checkpoint.get("categories"),
                   None if parts is None else [list(p) for p in parts])

    def entries(self) -> Dict[str, Any]:
        """The checkpoint entries: ``classes`` and, for part segmentation, the categories and their parts."""
        entries: Dict[str, Any] = {"classes": list(self.classes)}
        if self.category_parts is not None:
            entries.update(categories=list(self.categories), category_parts=[list(p) for p in self.category_parts])
        return entries

    def differences(self, other: "Labels") -> Optional[str]:
        """``None`` when ``other`` labels the same things, else what differs."""
        for name in ("classes", "categories", "category_parts"):
            if getattr(self, name) != getattr(other, name):
                return f"{name} {getattr(self, name)} vs {getattr(other, name)}"
        return None


class Task:
    """The pieces of a training run that depend on the task (see the module docstring)."""

    name = ""
    score = ""        # the metrics row's key that chooses best.pt (higher is better)
    score_name = ""   # how log lines call it

    def in_channels(self, use_normals: bool) -> int:
        """The model's input channels: xyz (3), with normals 6."""
        return 6 if use_normals else 3

    def samples(self, batch: Dict[str, Tensor], target: Tensor) -> int:
        """How many samples (clouds, crops) ``batch`` holds: the loop's samples/s and loss weights."""
        return int(target.shape[0])

    def evaluation_options(self, config) -> Dict[str, Any]:
        """Options of :meth:`evaluate` taken from the run's config (none for the object tasks)."""
        return {}

    def checkpoint_entries(self, labels: Labels) -> Dict[str, Any]:
        """What a checkpoint records of the task: its name and the labels' entries."""
        return {"task": self.name, **labels.entries()}

    def build_model(self, model_name: str, labels: Labels, in_channels: int, **options: Any) -> nn.Module:
        raise NotImplementedError

    def inputs(self, batch: Dict[str, Tensor], device: torch.device, use_normals: bool
               ) -> Tuple[Tuple[Any, ...], Dict[str, Any], Tensor]:
        """``(args, kwargs, target)``: the model is called ``model(*args, **kwargs)``."""
        raise NotImplementedError

    def loss(self, logits: Tensor, target: Tensor, label_smoothing: float,
             class_weight: Optional[Tensor] = None) -> Tensor:
        """The training loss; ``class_weight (C,)``: the cross-entropy's weight of each class (scenes only)."""
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                               label_smoothing=label_smoothing)

    @staticmethod
    def hits(logits: Tensor, target: Tensor) -> Tuple[int, int]:
        """``(right, counted)``: arg-max predictions equal to the target (clouds or points)."""
        return int((logits.argmax(-1) == target).sum()), target.numel()

    def evaluate(self, model: nn.Module, loader, device: torch.device, labels: Labels,
                 **options: Any) -> Dict[str, Any]:
        raise NotImplementedError

    def epoch_row(self, result: Dict[str, Any]) -> Dict[str, Any]:
        """The test entries of an epoch's ``metrics.jsonl`` row, from :meth:`evaluate`'s result."""
        raise NotImplementedError

    def describe(self, row: Dict[str, Any]) -> str:
        """The test part of an epoch's log line."""
        raise NotImplementedError

    def summary(self, result: Dict[str, Any]) -> str:
        """One line on an evaluation (``pcattn train``'s last line)."""
        raise NotImplementedError


class ClassificationTask(Task):
    name, score, score_name = "classification", "test_oa", "test OA"

    def build_model(self, model_name, labels, in_channels, **options):
        return create_model(model_name, num_classes=len(labels.classes), in_channels=in_channels, **options)

    def inputs(self, batch, device, use_normals):
        pos, x = batch_inputs(batch, device, use_normals)
        return (x, pos), {}, batch["label"].to(device, non_blocking=True)

    def evaluate(self, model, loader, device, labels, **options):
        return evaluate_classification(model, loader, device, classes=labels.classes, **options)

    def epoch_row(self, result):
        return {"test_loss": result["loss"], "test_oa": result["oa"], "test_macc": result["macc"]}

    def describe(self, row):
        return f"test OA {row['test_oa']:.4f}  mAcc {row['test_macc']:.4f}"

    def summary(self, result):
        return f"OA {result['oa']:.4f}, mAcc {result['macc']:.4f}"


class PartSegmentationTask(Task):
    name, score, score_name = "partseg", "test_instance_miou", "test instance mIoU"

    def build_model(self, model_name, labels, in_channels, **options):
        return create_model(model_name, num_classes=len(labels.classes), in_channels=in_channels,
                            num_categories=len(labels.categories), **options)

    def inputs(self, batch, device, use_normals):
        pos, x = batch_inputs(batch, device, use_normals)
        category = batch["category"].to(device, non_blocking=True)
        return (x, pos), {"category": category}, batch["seg"].to(device, non_blocking=True)

    def evaluate(self, model, loader, device, labels, **options):
        return evaluate_parts(model, loader, device, category_parts=labels.category_parts,
                              categories=labels.categories, part_names=labels.classes, **options)

    def epoch_row(self, result):
        return {"test_loss": result["loss"], "test_acc": result["accuracy"],
                "test_instance_miou": result["instance_miou"], "test_class_miou": result["class_miou"]}

    def describe(self, row):
        return (f"test instance mIoU {row['test_instance_miou']:.4f}  class mIoU {row['test_class_miou']:.4f}  "
                f"acc {row['test_acc']:.4f}")

    def summary(self, result):
        return (f"instance mIoU {result['instance_miou']:.4f}, class mIoU {result['class_miou']:.4f}, "
                f"point accuracy {result['accuracy']:.4f}")


class SemanticSegmentationTask(Task):
    """Scenes: one class per point of whole rooms (see the module docstring)."""

    name, score, score_name = "semseg", "test_miou", "test mIoU"

    def in_channels(self, use_normals):
        return 9 if use_normals else 6  # centred xyz + rgb (+ normals): scene_model_inputs

    def build_model(self, model_name, labels, in_channels, **options):
        model = create_model(model_name, num_classes=len(labels.classes), in_channels=in_channels, **options)
        if not isinstance(model, PointTransformerSegmenter):
            raise ValueError(f"model {model_name!r} is a classifier; scene segmentation needs a segmenter "
                             f"(pt-scene-tiny-vector, pt-scene-vector, ...)")
        return model

    def inputs(self, batch, device, use_normals):
        x, pos, clouds = scene_model_inputs(batch, self.in_channels(use_normals))
        moved = tuple(tensor.to(device, non_blocking=True) for tensor in (x, pos, clouds))
        return moved, {}, batch["seg"].to(device, non_blocking=True)

    def samples(self, batch, target):
        return int(batch["batch"][-1]) + 1  # crops, not points

    def loss(self, logits, target, label_smoothing, class_weight=None):
        if not bool((target != IGNORE_INDEX).any()):  # a batch of unlabelled points: no signal, not NaN
            return logits.float().sum() * 0.0
        return F.cross_entropy(logits.float(), target, weight=class_weight, ignore_index=IGNORE_INDEX,
                               label_smoothing=label_smoothing)

    @staticmethod
    def hits(logits, target):
        labelled = target != IGNORE_INDEX
        return int(((logits.argmax(-1) == target) & labelled).sum()), int(labelled.sum())

    def evaluation_options(self, config):
        return {"voxel_size": config.voxel_size, "max_fragments": config.eval_fragments}

    def checkpoint_entries(self, labels):
        # a segmenter's checkpoint holds the categories' entries: a scene segmenter has none
        return {"task": self.name, **labels.entries(), "categories": None, "category_parts": None}

    def evaluate(self, model, loader, device, labels, **options):
        return evaluate_scenes(model, loader, device, classes=labels.classes, **options)

    def epoch_row(self, result):
        return {"test_loss": result["loss"], "test_miou": result["miou"], "test_macc": result["macc"],
                "test_oa": result["oa"]}

    def describe(self, row):
        return f"test mIoU {row['test_miou']:.4f}  mAcc {row['test_macc']:.4f}  OA {row['test_oa']:.4f}"

    def summary(self, result):
        return f"mIoU {result['miou']:.4f}, mAcc {result['macc']:.4f}, OA {result['oa']:.4f}"


_TASKS = {task.name: task for task in (ClassificationTask(), PartSegmentationTask(), SemanticSegmentationTask())}


def get_task(name: str) -> Task:
    """The :class:`Task` of a :class:`~pcattn.engine.TrainConfig` ``task`` name."""
    if name not in _TASKS:
        raise ValueError(f"task must be one of {tuple(_TASKS)}, got {name!r}")
    return _TASKS[name]


def task_of_model(model: nn.Module, checkpoint: Optional[Dict[str, Any]] = None) -> Task:
    """The task a model was built for: the one its ``checkpoint`` records when it records one; else a
    segmenter without categories segments scenes, one with categories parts, anything else classifies."""
    recorded = (checkpoint or {}).get("task")
    if recorded in _TASKS:
        return _TASKS[recorded]
    if is_scene_segmenter(model):
        return _TASKS["semseg"]
    return _TASKS["partseg" if isinstance(model, PointTransformerSegmenter) else "classification"]


def describe_labels(labels: Labels) -> str:
    """``"10 classes"`` or ``"8 categories, 20 parts"``, for log lines."""
    if labels.categories is None:
        return f"{len(labels.classes)} classes"
    return f"{len(labels.categories)} categories, {len(labels.classes)} parts"

