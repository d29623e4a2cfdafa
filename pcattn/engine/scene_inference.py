"""Labelling every point of a whole room, and the evaluation of scene segmenters on whole test rooms.

:func:`segment_room` is the one way a trained scene segmenter labels a room (evaluation, ``pcattn eval``,
prediction and export all call it): the room is split into grid fragments
(:func:`~pcattn.data.grid.scene_test_fragments`: each holds one point per voxel, together they hold every
point, each centred in float64 before it becomes float32), the fragments go through the model in flat
batches of at most ``batch_points`` points, and every point's softmax probabilities are summed over the
fragments that hold it (and over the ``votes`` augmented copies: turned about the vertical axis z,
mirrored in x and y). The scores' arg-max is the label.

:func:`evaluate_scenes` scores whole test rooms with :class:`~pcattn.engine.scene_metrics.SceneSegmentationMetrics`
(mIoU, mAcc, OA over every labelled point of the split): under ``torchrun`` each rank segments its share
of the rooms and the intersection, union and target counts are summed over the ranks, so the result is
the one-process result exactly.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..data.grid import scene_model_inputs, scene_test_fragments, voxel_groups
from ..data.scenes import IGNORE_INDEX
from .device import autocast, resolve_precision
from .distributed import ShardedBatches, sum_over_ranks
from .scene_metrics import SceneSegmentationMetrics

__all__ = ["segment_room", "evaluate_scenes", "vote_copy", "is_scene_segmenter"]

Sample = Dict[str, Tensor]


def is_scene_segmenter(model: nn.Module) -> bool:
    """A segmenter without an object-category input: it labels scenes (a part segmenter takes categories)."""
    from ..models import PointTransformerSegmenter

    return isinstance(model, PointTransformerSegmenter) and model.num_categories is None


def vote_copy(fragment: Sample, generator: torch.Generator) -> Sample:
    """A centred fragment turned about z by a random angle and mirrored in x and in y with probability 1/2
    each (normals follow; labels and ``index`` unchanged): one test-time vote's copy."""
    angle = float(torch.rand(1, generator=generator, dtype=torch.float64)) * 2 * math.pi
    flips = torch.rand(2, generator=generator) < 0.5
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    for axis in range(2):
        if bool(flips[axis]):
            rotation[axis] = -rotation[axis]
    out = dict(fragment)
    for key in ("pos", "normals"):
        if key in fragment:
            values = fragment[key]
            out[key] = (values.to(torch.float64) @ rotation.T).to(values.dtype)
    return out


@torch.no_grad()
def segment_room(model: nn.Module, sample: Sample, voxel_size: float = 0.04, votes: int = 1, *,
                 max_fragments: Optional[int] = None, batch_points: int = 200_000,
                 device: Union[str, torch.device, None] = None, precision: str = "32",
                 generator: Optional[torch.Generator] = None, progress: bool = False) -> Tensor:
    """Class scores for every point of a whole room.

    Args:
        model: a scene segmenter called ``model(x, pos, batch)`` (flat input, ``model.in_channels`` 3, 6 or
            9: see :func:`~pcattn.data.grid.scene_model_inputs`); put in eval mode here and restored after.
        sample: the room in the room format as tensors (``pos`` float64 ``(N, 3)``, any distance from the
            origin; ``color`` float32 ``(N, 3)``; ``normals`` when the model takes them; ``seg`` not needed).
        voxel_size: the grid of the fragments, in metres: the model's training voxel size.
        votes: passes over the room; pass 1 sees the fragments as they are, the others turned about z and
            mirrored (:func:`vote_copy`, drawn from ``generator``); the scores are summed.
        max_fragments: at most this many fragments per vote (``None``, the default: all of them, the scene
            papers' protocol, whose cost is the fullest voxel's point count times the voxels). With a cap, a point
            in no kept fragment takes the scores of its voxel's first point (in fragment 0 of every vote): every
            point is still labelled, at a fraction of the cost (a quick evaluation during training).
        batch_points: at most this many points per forward pass (fragments are never split: a fragment
            larger than this goes alone).
        device: where the model runs (default: its parameters' device).
        precision: ``"32"``, ``"bf16"`` or ``"fp16"`` (autocast of the forward passes).
        generator: the votes' random stream (default ``torch.Generator().manual_seed(0)``).
        progress: a progress bar of the points through the model (a room of 10^6 points takes minutes on a CPU).

    Returns:
        float32 ``(N, C)`` on the CPU: per point, its softmax probabilities summed over every fragment that
        holds it and every vote (each point is in at least one fragment per vote), in the room's row order;
        ``scores.argmax(1)`` are the labels.

    Raises:
        ValueError: ``votes``, ``max_fragments`` or ``batch_points`` below 1, a bad ``voxel_size``, a room without
            the inputs the model takes (colours, normals).
    """
    if not isinstance(votes, int) or votes < 1:
        raise ValueError(f"votes must be an integer >= 1, got {votes!r}")
    if max_fragments is not None and (isinstance(max_fragments, bool) or not isinstance(max_fragments, int)
                                      or max_fragments < 1):
        raise ValueError(f"max_fragments must be None (all) or an integer >= 1, got {max_fragments!r}")
    if not isinstance(batch_points, int) or batch_points < 1:
        raise ValueError(f"batch_points must be an integer >= 1, got {batch_points!r}")
    if "pos" not in sample or sample["pos"].ndim != 2 or sample["pos"].shape[1] != 3:
        raise ValueError(f"sample must hold pos (N, 3), got {tuple(sample['pos'].shape) if 'pos' in sample else None}")
    device = torch.device(device) if device is not None else _model_device(model)
    precision = resolve_precision(precision, device)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    in_channels = int(getattr(model, "in_channels", 6))
    room = {key: value for key, value in sample.items() if key in ("pos", "color", "normals")}
    fragments = scene_test_fragments(room, voxel_size)
    capped = max_fragments is not None and len(fragments) > max_fragments
    if capped:
        fragments = fragments[:max_fragments]
    scores: Optional[Tensor] = None
    was_training = model.training
    model.eval()
    from tqdm.auto import tqdm

    bar = tqdm(total=votes * sum(fragment["pos"].shape[0] for fragment in fragments), desc="segmenting",
               unit="point", unit_scale=True, leave=False, disable=not progress)
    try:
        for vote in range(votes):
            copies = fragments if vote == 0 else [vote_copy(fragment, generator) for fragment in fragments]
            for group in _groups(copies, batch_points):
                logits = _forward(model, group, in_channels, device, precision)
                bar.update(sum(fragment["pos"].shape[0] for fragment in group))
                probabilities = logits.float().softmax(-1).cpu()
                if scores is None:
                    scores = torch.zeros(sample["pos"].shape[0], probabilities.shape[1])
                scores.index_add_(0, torch.cat([fragment["index"] for fragment in group]), probabilities)
    finally:
        bar.close()
        model.train(was_training)
    if capped:  # the points of no kept fragment: their voxel's first point's scores (fragment 0 holds it)
        order, starts, counts = voxel_groups(room["pos"], voxel_size)
        first_of_voxel = torch.empty_like(order)
        first_of_voxel[order] = torch.repeat_interleave(order[starts], counts)
        missed = scores.sum(1) == 0
        scores[missed] = scores[first_of_voxel[missed]]
    return scores


def _groups(fragments: Sequence[Sample], batch_points: int) -> Iterable[List[Sample]]:
    """Consecutive fragments, at most ``batch_points`` points a group (a larger fragment alone)."""
    group: List[Sample] = []
    size = 0
    for fragment in fragments:
        count = fragment["pos"].shape[0]
        if group and size + count > batch_points:
            yield group
            group, size = [], 0
        group.append(fragment)
        size += count
    if group:
        yield group


def _forward(model: nn.Module, group: List[Sample], in_channels: int, device: torch.device, precision: str) -> Tensor:
    """The model's logits ``(N, C)`` on a group of fragments, flat (one cloud id per fragment)."""
    from ..data.grid import collate_scenes

    batch = collate_scenes([{key: fragment[key] for key in ("pos", "color", "normals") if key in fragment}
                            for fragment in group])
    x, pos, clouds = (tensor.to(device) for tensor in scene_model_inputs(batch, in_channels))
    with autocast(device, precision):
        return model(x, pos, clouds)


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def evaluate_scenes(model: nn.Module, loader, device: Union[str, torch.device, None] = None,
                    voxel_size: float = 0.04, votes: int = 1, classes: Optional[Sequence[str]] = None, seed: int = 0,
                    max_fragments: Optional[int] = None,
                    progress: bool = False, precision: str = "32", batch_points: int = 200_000,
                    ignore_index: int = IGNORE_INDEX, **unused: Any) -> Dict[str, Any]:
    """Scene-segmentation metrics of ``model`` on every labelled point of whole rooms.

    Args:
        loader: the test rooms: a :class:`~pcattn.data.scenes.SceneDataset` (one room per item), or a
            DataLoader over one that yields lists of rooms (:func:`~pcattn.data.grid.collate_rooms`); with a
            :class:`~pcattn.engine.distributed.ShardedBatches` batch sampler it holds this rank's share and
            the counts are summed over the ranks (call it on every rank).
        voxel_size, votes, max_fragments, precision, batch_points: as in :func:`segment_room`; the votes of room ``i`` are
            drawn from a generator seeded with ``(seed, i)``, so they do not depend on the sharding.
        classes: the class names (default: the dataset's).
        **unused: the options of the other tasks' evaluations (``up_axis``, ``label_smoothing``) are accepted
            and have no effect here.

    Returns:
        :meth:`SceneSegmentationMetrics.compute`'s ``{"miou", "macc", "oa", "iou", "acc", "intersection",
        "union", "target", "points"}`` plus ``"confusion"`` (labelled points, rows = true class), ``"loss"`` (the mean over labelled points of ``-log`` of the
        point's mean probability of its true class), ``"classes"``, ``"votes"``, ``"voxel_size"`` and
        ``"samples"`` (rooms).
    """
    from tqdm.auto import tqdm

    dataset = getattr(loader, "dataset", loader)
    classes = list(classes) if classes is not None else list(dataset.classes)
    metrics = SceneSegmentationMetrics(len(classes), classes, ignore_index)
    device = torch.device(device) if device is not None else _model_device(model)
    sharded = isinstance(getattr(loader, "batch_sampler", None), ShardedBatches)
    if hasattr(loader, "batch_sampler"):
        numbers = [index for batch in loader.batch_sampler for index in batch]
        rooms = (room for batch in loader for room in (batch if isinstance(batch, list) else [batch]))
    else:
        numbers = list(range(len(loader)))
        rooms = (loader[index] for index in numbers)
    loss_sum, rooms_done = 0.0, 0
    confusion = torch.zeros(len(classes) * len(classes), dtype=torch.float64)
    for number, room in tqdm(zip(numbers, rooms), total=len(numbers), desc="evaluating rooms", leave=False,
                             disable=not progress, unit="room"):
        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(number))
        scores = segment_room(model, room, voxel_size, votes, max_fragments=max_fragments, batch_points=batch_points,
                              device=device,
                              precision=precision, generator=generator)
        target = room["seg"].long()
        metrics.update(scores.argmax(1), target)  # checks the labels' range too
        labelled = target != ignore_index
        predicted = scores.argmax(1)
        confusion += torch.bincount(target[labelled] * len(classes) + predicted[labelled],
                                    minlength=len(classes) ** 2).double()
        mean_probability = scores[labelled] / scores[labelled].sum(1, keepdim=True)
        loss_sum += float(-mean_probability.gather(1, target[labelled, None]).clamp_min(1e-12).log().sum())
        rooms_done += 1
    totals = torch.tensor([loss_sum, rooms_done], dtype=torch.float64)
    if sharded:
        metrics.load_state(sum_over_ranks(metrics.state(), device).cpu())
        totals = sum_over_ranks(totals, device).cpu()
        confusion = sum_over_ranks(confusion, device).cpu()
    if int(totals[1]) == 0:
        raise ValueError("evaluate_scenes: the loader yielded no rooms")
    result = metrics.compute()
    result.update(loss=float(totals[0]) / max(result["points"], 1), classes=classes, votes=votes,
                  confusion=confusion.round().long().view(len(classes), len(classes)).tolist(),
                  voxel_size=float(voxel_size), max_fragments=max_fragments, samples=int(totals[1]))
    return result
