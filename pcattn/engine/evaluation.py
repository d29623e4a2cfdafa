"""Evaluation: classification metrics of a model on a loader (OA, mAcc, per-class accuracy, confusion
matrix), part-segmentation metrics (accuracy, instance and class mIoU, per category: see
:mod:`~pcattn.engine.metrics`), test-time voting over rotated and scaled copies, and the evaluation
of a checkpoint on the test split it was trained for."""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..deprecation import warn_renamed
from ..models import PointTransformerSegmenter
from .checkpoint import load_model
from .config import TrainConfig
from .device import autocast, resolve_device, resolve_precision
from .distributed import Distributed, ShardedBatches, distributed_session, sum_over_ranks
from .loaders import batch_inputs, build_loaders
from .metrics import PartSegmentationMetrics
from .scene_inference import evaluate_scenes, is_scene_segmenter

__all__ = ["vote_augment", "evaluate_classification", "evaluate_parts", "evaluate_checkpoint", "evaluate"]


def vote_augment(pos: Tensor, x: Optional[Tensor], up_axis: int, generator: torch.Generator):
    """A random rotation about the up axis and an isotropic scale in [0.9, 1.1], per cloud.

    ``pos: (B, P, 3)``, ``x: (B, P, C)`` or ``None`` (channels 3:6 are normals: rotated, not scaled);
    returns the new ``(pos, x)``.
    """
    B = pos.shape[0]
    angle = torch.rand(B, generator=generator) * 2 * math.pi
    scale = 0.9 + 0.2 * torch.rand(B, generator=generator)
    c, s = torch.cos(angle), torch.sin(angle)
    a, b = [axis for axis in range(3) if axis != up_axis]
    rotation = torch.zeros(B, 3, 3)
    rotation[:, up_axis, up_axis] = 1
    rotation[:, a, a], rotation[:, a, b], rotation[:, b, a], rotation[:, b, b] = c, -s, s, c
    rotation = rotation.to(pos.device, pos.dtype)
    new_pos = pos @ rotation.transpose(1, 2) * scale.to(pos.device, pos.dtype)[:, None, None]
    if x is None:
        return new_pos, None
    normals = x[..., 3:6] @ rotation.transpose(1, 2)
    return new_pos, torch.cat([new_pos, normals, x[..., 6:]], -1)


@torch.no_grad()
def evaluate_classification(model: nn.Module, loader, device: Union[str, torch.device, None] = None, votes: int = 1,
                            classes: Optional[Sequence[str]] = None, up_axis: int = 1, seed: int = 0,
                            label_smoothing: float = 0.0, progress: bool = False, precision: str = "32") -> Dict[str, Any]:
    """Classification metrics of ``model`` on ``loader``.

    Args:
        device: where the batches go; ``None`` takes the model's.
        votes: number of passes averaged (softmax probabilities); pass 1 sees the clouds as they
            are, further passes see them rotated about ``up_axis`` and scaled (test-time voting).
        seed: seeds the voting augmentation.
        label_smoothing: of the reported cross-entropy ``loss`` (of the first pass).
        precision: ``"32"``, ``"bf16"`` or ``"fp16"``: the forward runs under that autocast, as in training.

    A ``loader`` whose batch sampler is a :class:`~pcattn.engine.distributed.ShardedBatches` holds this
    rank's share of the test set: the counts are summed over the ranks (call it on every rank), and
    the voting augmentation skips the other ranks' batches, so the result is the one-process result.

    Returns:
        ``{"oa", "macc", "loss", "per_class": {name: acc}, "confusion": [[...]] (rows = true class),
        "classes", "votes", "samples"}``. ``macc`` averages the classes present in the data.

    Part segmenters are evaluated by :func:`evaluate_parts`; a run picks the function through its
    :class:`~pcattn.engine.tasks.Task` (``task_of_model(model).evaluate``).
    """
    if isinstance(model, PointTransformerSegmenter):
        raise TypeError("evaluate_classification got a part segmenter: use evaluate_parts (the metrics of "
                        "parts: instance and class mIoU)")
    if votes < 1:
        raise ValueError(f"votes must be >= 1, got {votes}")
    device = torch.device(device) if device is not None else _model_device(model)
    precision = resolve_precision(precision, device)
    classes = list(classes) if classes is not None else list(getattr(loader.dataset, "classes", []))
    num_classes = getattr(model, "num_classes", None) or len(classes)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    loss_sum, count = 0.0, 0
    for batch, logits, probabilities in _voted_batches(model, loader, device, precision, votes, up_axis, seed,
                                                       progress):
        labels = batch["label"].to(device)
        loss_sum += float(F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="sum"))
        predicted = probabilities.argmax(-1).cpu()
        confusion += torch.bincount(labels.cpu() * num_classes + predicted,
                                    minlength=num_classes * num_classes).view(num_classes, num_classes)
        count += labels.shape[0]
    sharded = isinstance(getattr(loader, "batch_sampler", None), ShardedBatches)
    if sharded:
        totals = sum_over_ranks(torch.tensor([loss_sum, count], dtype=torch.float64), device)
        loss_sum, count = float(totals[0]), int(totals[1])
        confusion = sum_over_ranks(confusion, device)
    if count == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    support = confusion.sum(1)
    correct = confusion.diag()
    present = support > 0
    per_class_acc = torch.where(present, correct.double() / support.clamp(min=1), torch.nan)
    names = classes if len(classes) == num_classes else [str(i) for i in range(num_classes)]
    return {
        "oa": float(correct.sum()) / count,
        "macc": float(per_class_acc[present].mean()) if bool(present.any()) else float("nan"),
        "loss": loss_sum / count,
        "per_class": {name: (None if math.isnan(a) else float(a)) for name, a in zip(names, per_class_acc.tolist())},
        "confusion": confusion.tolist(),
        "classes": names,
        "votes": votes,
        "samples": count,
    }


def evaluate(model: nn.Module, loader, *args, **kwargs) -> Dict[str, Any]:
    """Deprecated: :func:`evaluate_classification` for a classifier, :func:`evaluate_parts` for a part
    segmenter (the name said neither, and it chose by the model's type beside the tasks' own choice)."""
    if isinstance(model, PointTransformerSegmenter):
        warn_renamed("pcattn.engine.evaluate(segmenter, ...)", "pcattn.engine.evaluate_parts")
        kwargs.pop("classes", None)
        return evaluate_parts(model, loader, *args, **kwargs)
    warn_renamed("pcattn.engine.evaluate", "pcattn.engine.evaluate_classification")
    return evaluate_classification(model, loader, *args, **kwargs)


@torch.no_grad()
def evaluate_parts(model: nn.Module, loader, device: Union[str, torch.device, None] = None, votes: int = 1,
                   category_parts: Optional[Sequence[Sequence[int]]] = None,
                   categories: Optional[Sequence[str]] = None, part_names: Optional[Sequence[str]] = None,
                   up_axis: int = 1, seed: int = 0, label_smoothing: float = 0.0, progress: bool = False,
                   precision: str = "32") -> Dict[str, Any]:
    """Part-segmentation metrics of a segmenter on ``loader`` (samples ``pos (P, 3)``, ``category ()``,
    ``seg (P,)``), as PointNet++ and Point Transformer compute them (:mod:`~pcattn.engine.metrics`):
    each shape's prediction is restricted to its category's parts.

    Args:
        votes: passes averaged (per-point softmax probabilities); pass 1 sees the clouds as they are,
            further passes rotated about ``up_axis`` and scaled (test-time voting).
        category_parts, categories, part_names: the global part ids of each category, the category
            names and the part names; ``None`` takes them from ``loader.dataset``.
        device, seed, label_smoothing, progress, precision: as in :func:`evaluate`.

    Under ``torchrun`` with a :class:`~pcattn.engine.distributed.ShardedBatches` loader the sums are
    merged over the ranks (call it on every rank): the result is the one-process result.

    Returns:
        ``{"accuracy", "instance_miou", "class_miou", "per_category": {name: mIoU},
        "category_shapes": {name: count}, "confusion": [[...]] (points, rows = true part),
        "classes": part names, "loss" (per point), "votes", "samples" (shapes)}``.
    """
    if votes < 1:
        raise ValueError(f"votes must be >= 1, got {votes}")
    dataset = loader.dataset
    category_parts = category_parts if category_parts is not None else dataset.category_parts
    categories = list(categories if categories is not None else dataset.categories)
    part_names = list(part_names if part_names is not None else getattr(dataset, "part_names", []))
    device = torch.device(device) if device is not None else _model_device(model)
    precision = resolve_precision(precision, device)
    metrics = PartSegmentationMetrics(category_parts, categories)
    loss_sum, points = 0.0, 0

    def category_input(batch):
        return {"category": batch["category"].to(device)}

    for batch, logits, probabilities in _voted_batches(model, loader, device, precision, votes, up_axis, seed,
                                                       progress, category_input):
        seg = batch["seg"].to(device)
        loss_sum += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), seg.reshape(-1),
                                          label_smoothing=label_smoothing, reduction="sum"))
        points += seg.numel()
        metrics.update(probabilities.cpu(), seg.cpu(), batch["category"])
    sharded = isinstance(getattr(loader, "batch_sampler", None), ShardedBatches)
    if sharded:
        metrics.load_state(sum_over_ranks(metrics.state(), device).cpu())
        totals = sum_over_ranks(torch.tensor([loss_sum, points], dtype=torch.float64), device)
        loss_sum, points = float(totals[0]), int(totals[1])
    if points == 0:
        raise ValueError("evaluate_parts: the loader yielded no samples")
    result = metrics.compute()
    result.update(classes=part_names or [str(i) for i in range(metrics.num_parts)], loss=loss_sum / points,
                  votes=votes, samples=result.pop("shapes"))
    return result


def _voted_batches(model: nn.Module, loader, device: torch.device, precision: str, votes: int, up_axis: int,
                   seed: int, progress: bool,
                   extra_inputs: Optional[Callable[[Dict[str, Tensor]], Dict[str, Any]]] = None
                   ) -> Iterator[Tuple[Dict[str, Tensor], Tensor, Tensor]]:
    """The evaluation passes over ``loader``, shared by :func:`evaluate` and :func:`evaluate_parts`: for
    each batch ``(batch, logits of the first pass, softmax probabilities summed over the votes)`` (both
    float32; pass 1 sees the clouds as they are, the others :func:`vote_augment`'s copies), with the
    model in eval mode meanwhile. ``extra_inputs(batch)`` gives further keyword arguments of the model
    (a segmenter's ``category``). On a :class:`~pcattn.engine.distributed.ShardedBatches` loader the
    voting draws of the other ranks' batches are skipped, so every batch sees the one-process draws."""
    from tqdm.auto import tqdm

    use_normals = getattr(model, "in_channels", 3) == 6
    generator = torch.Generator().manual_seed(seed)
    sharded = isinstance(getattr(loader, "batch_sampler", None), ShardedBatches)
    was_training = model.training
    model.eval()
    try:
        for number, batch in enumerate(tqdm(loader, desc="evaluating", leave=False, disable=not progress,
                                            unit="batch")):
            for size in loader.batch_sampler.skipped[number] if sharded else ():
                _skip_votes(generator, size, votes)
            pos, x = batch_inputs(batch, device, use_normals)
            options = extra_inputs(batch) if extra_inputs is not None else {}
            first = probabilities = None
            for vote in range(votes):
                p, f = (pos, x) if vote == 0 else vote_augment(pos, x, up_axis, generator)
                with autocast(device, precision):
                    logits = model(f, p, **options)
                logits = logits.float()
                if vote == 0:
                    first, probabilities = logits, logits.softmax(-1)
                else:
                    probabilities = probabilities + logits.softmax(-1)
            yield batch, first, probabilities
    finally:
        model.train(was_training)


def _model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters are (the CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _skip_votes(generator: torch.Generator, size: int, votes: int) -> None:
    """Advance ``generator`` past the draws :func:`vote_augment` makes for a batch of ``size`` clouds."""
    for _ in range(votes - 1):
        torch.rand(size, generator=generator)
        torch.rand(size, generator=generator)


def evaluate_checkpoint(checkpoint_path, votes: int = 1, device: str = "auto", batch_size: Optional[int] = None,
                        num_workers: int = 0, seed: int = 0, data_root: Optional[str] = None,
                        progress: bool = True, precision: Optional[str] = None,
                        max_fragments: Optional[int] = None) -> Dict[str, Any]:
    """Evaluate a checkpoint on the test split of the data it was trained on (from the checkpoint
    alone; ``data_root`` overrides where the data is). The forward passes run in float32 unless
    ``precision`` (``"32"``, ``"bf16"``, ``"fp16"``) says otherwise, whatever precision the run trained
    in (an fp16 GPU run evaluated on a CPU would otherwise run slowly under CPU autocast, and give
    other numbers than the float32 a user expects). Returns :func:`evaluate`'s dictionary (a
    segmenter's: :func:`evaluate_parts`'s) plus ``"checkpoint"``, ``"epoch"`` and ``"precision"``.

    Under ``torchrun`` every process evaluates its share of the test set and every process returns
    the whole result (equal to a one-process evaluation's). ``max_fragments`` caps the grid fragments of
    each room of a scene segmenter (:func:`~pcattn.engine.scene_inference.segment_room`; default: all) and
    is refused for the other tasks."""
    with distributed_session(resolve_device(device)) as distributed:
        return _evaluate_checkpoint(checkpoint_path, distributed, votes, batch_size, num_workers, seed, data_root,
                                    progress and distributed.is_main, precision, max_fragments)


def _evaluate_checkpoint(checkpoint_path, distributed: Distributed, votes, batch_size, num_workers, seed, data_root,
                         progress, precision, max_fragments=None) -> Dict[str, Any]:
    resolved_device = distributed.device
    model, classes, checkpoint = load_model(checkpoint_path, resolved_device)
    scene = checkpoint.get("task") == "semseg" or is_scene_segmenter(model)
    if scene and batch_size is not None:
        raise ValueError("batch_size (--batch-size) has no effect on a scene segmenter: it evaluates one whole room "
                         "at a time, in grid fragments")
    if not scene and max_fragments is not None:
        raise ValueError("max_fragments (--max-fragments) caps the grid fragments of scene rooms; this checkpoint "
                         "is not a scene segmenter")
    config = TrainConfig.from_dict(checkpoint.get("train_config") or {})
    if data_root is not None:
        config.data_root = data_root
    if batch_size is not None:
        config.batch_size = batch_size
    config.precision = precision if precision is not None else "32"  # not the training run's
    config.num_workers = num_workers
    config = config.resolved()
    _, test_loader = build_loaders(config, torch.Generator(), with_train=False, distributed=distributed)
    found = list(getattr(test_loader.dataset, "classes", None) or getattr(test_loader.dataset, "part_names", []))
    if found != classes:
        where = getattr(test_loader.dataset, "root", config.dataset)
        raise ValueError(f"{checkpoint_path} was trained on the labels {classes} but the test data at {where} has "
                         f"{found}")
    precision = resolve_precision(config.precision, resolved_device)
    options = dict(votes=votes, up_axis=test_loader.dataset.up_axis, seed=seed, progress=progress,
                   precision=precision)
    if scene:  # whole test rooms, every point
        result = evaluate_scenes(model, test_loader, classes=classes, voxel_size=config.voxel_size,
                                 max_fragments=max_fragments, **options)
    elif isinstance(model, PointTransformerSegmenter):  # its categories and parts: the test set's, checked above
        result = evaluate_parts(model, test_loader, **options)
    else:
        result = evaluate_classification(model, test_loader, classes=classes, **options)
    result["precision"] = precision
    result["checkpoint"] = str(checkpoint_path)
    result["epoch"] = checkpoint.get("epoch")
    return result
