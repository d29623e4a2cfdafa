"""Transforms on a sample dict ``{"pos": (P, 3), "label": (), ["normals": (P, 3)]}``, or of part
segmentation ``{"pos": (P, 3), "category": (), "seg": (P,), ["normals": (P, 3)]}``: the per-point
entries (:data:`POINT_KEYS`) follow the points wherever a transform picks, drops or repeats them.

Every transform is a callable ``dict -> dict`` that returns a new dict and never writes into
its input tensors (datasets hand out views of their in-memory cache).

Randomness: each random transform takes an optional ``generator`` (:class:`torch.Generator`).
With ``generator=None`` (the default) it draws from torch's global RNG, which
:class:`torch.utils.data.DataLoader` seeds differently in every worker from the main process's
seed: so ``torch.manual_seed(s)`` makes a run reproducible, and workers still get distinct
streams. If you give transforms their own generators and use workers, pass
:func:`seed_worker` as ``worker_init_fn`` so each worker re-seeds its copies.

Up axis: every dataset in :mod:`pcattn.data` says which axis points up in ``dataset.up_axis``
(the PointNet++ files and the built-in shapes are y-up, ``1``; Princeton OFF meshes are z-up, ``2``).
:class:`RandomRotateUp` defaults to ``axis=1``; pass ``up_axis=dataset.up_axis`` to
:func:`train_transforms`.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

Sample = Dict[str, Tensor]

__all__ = [
    "Compose",
    "NormalizeUnitSphere",
    "RandomSubsample",
    "RandomScale",
    "RandomShift",
    "RandomJitter",
    "RandomRotateUp",
    "RandomPointDropout",
    "POINT_KEYS",
    "train_transforms",
    "test_transforms",
    "seed_worker",
]

_AXES = {"x": 0, "y": 1, "z": 2}
#: the per-point entries of a sample: subsampling and point dropout take the same rows of each
POINT_KEYS = ("pos", "normals", "seg")


def _axis_index(axis: Union[int, str]) -> int:
    index = _AXES.get(axis, axis) if isinstance(axis, str) else axis
    if index not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1, 2 or 'x', 'y', 'z', got {axis!r}")
    return int(index)


def _rand(shape, generator: Optional[torch.Generator]) -> Tensor:
    return torch.rand(shape, generator=generator)


class Compose:
    """Apply transforms in order: ``Compose([a, b])(s) == b(a(s))``."""

    def __init__(self, transforms: Iterable[Callable[[Sample], Sample]]):
        self.transforms: List[Callable[[Sample], Sample]] = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for transform in self.transforms:
            sample = transform(sample)
        return sample

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class NormalizeUnitSphere:
    """Centre the cloud on its centroid and scale it so the farthest point has radius 1.

    ``pos' = (pos - mean(pos)) / max_i ||pos_i - mean(pos)||``. Normals are unchanged
    (uniform scaling and translation do not change directions).

    This is where the data pipeline centres clouds (training and evaluation transforms; the cached
    folders and :func:`~pcattn.data.cloud.prepare_cloud` do the same). The layers see positions only
    through ``p_i - p_j``, but a model called with ``x=None`` takes the positions as its features.
    """

    def __call__(self, sample: Sample) -> Sample:
        pos = sample["pos"]
        centred = pos - pos.mean(dim=0, keepdim=True)
        radius = centred.norm(dim=1).max().clamp_min(1e-12)
        return {**sample, "pos": centred / radius}

    def __repr__(self) -> str:
        return "NormalizeUnitSphere()"


class RandomSubsample:
    """Pick ``num_points`` points at random (without replacement when the cloud has enough).

    ``pos (N, 3) -> (num_points, 3)``, same rows taken from ``normals``, the part labels ``seg`` and
    any other per-point tensor listed in ``keys``. A cloud with fewer points is padded by drawing
    extra points with replacement, so every output has exactly ``num_points`` rows.
    """

    def __init__(self, num_points: int, keys: Sequence[str] = POINT_KEYS,
                 generator: Optional[torch.Generator] = None):
        if num_points <= 0:
            raise ValueError(f"num_points must be positive, got {num_points}")
        self.num_points = int(num_points)
        self.keys = tuple(keys)
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        count = sample["pos"].shape[0]
        if count >= self.num_points:
            index = torch.randperm(count, generator=self.generator)[: self.num_points]
        else:
            extra = torch.randint(count, (self.num_points - count,), generator=self.generator)
            index = torch.cat([torch.randperm(count, generator=self.generator), extra])
        out = dict(sample)
        for key in self.keys:
            if key in sample:
                out[key] = sample[key][index]
        return out

    def __repr__(self) -> str:
        return f"RandomSubsample(num_points={self.num_points})"


class RandomScale:
    """Scale positions by a random factor in ``[low, high]``: per axis when ``anisotropic``.

    ``pos' = pos * s`` with ``s (3,)``; normals follow the inverse-transpose rule
    ``n' = normalize(n / s)`` so they stay perpendicular to the scaled surface.
    """

    def __init__(self, low: float = 0.8, high: float = 1.25, anisotropic: bool = True,
                 generator: Optional[torch.Generator] = None):
        if not 0 < low <= high:
            raise ValueError(f"need 0 < low <= high, got low={low}, high={high}")
        self.low, self.high, self.anisotropic = float(low), float(high), bool(anisotropic)
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        draws = _rand(3 if self.anisotropic else 1, self.generator)
        scale = (self.low + (self.high - self.low) * draws).expand(3).to(sample["pos"].dtype)
        out = {**sample, "pos": sample["pos"] * scale}
        if "normals" in sample:
            normals = sample["normals"] / scale
            out["normals"] = normals / normals.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return out

    def __repr__(self) -> str:
        return f"RandomScale(low={self.low}, high={self.high}, anisotropic={self.anisotropic})"


class RandomShift:
    """Translate the whole cloud by a random vector, uniform in ``[-shift, shift]^3``."""

    def __init__(self, shift: float = 0.1, generator: Optional[torch.Generator] = None):
        self.shift = float(shift)
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        offset = (2 * _rand(3, self.generator) - 1) * self.shift
        return {**sample, "pos": sample["pos"] + offset.to(sample["pos"].dtype)}

    def __repr__(self) -> str:
        return f"RandomShift(shift={self.shift})"


class RandomJitter:
    """Add per-point Gaussian noise ``clip(sigma * N(0, 1), -clip, clip)`` to positions."""

    def __init__(self, sigma: float = 0.01, clip: float = 0.05, generator: Optional[torch.Generator] = None):
        if sigma < 0 or clip < 0:
            raise ValueError(f"sigma and clip must be >= 0, got sigma={sigma}, clip={clip}")
        self.sigma, self.clip = float(sigma), float(clip)
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        pos = sample["pos"]
        noise = torch.randn(pos.shape, generator=self.generator, dtype=pos.dtype) * self.sigma
        return {**sample, "pos": pos + noise.clamp(-self.clip, self.clip)}

    def __repr__(self) -> str:
        return f"RandomJitter(sigma={self.sigma}, clip={self.clip})"


def rotation_about_axis(angle: float, axis: int) -> Tensor:
    """Right-handed rotation matrix ``(3, 3)`` by ``angle`` radians about coordinate ``axis``."""
    c, s = math.cos(angle), math.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]  # the plane rotated, in right-handed order
    matrix = torch.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


class RandomRotateUp:
    """Rotate the cloud (and its normals) by a random angle about the up axis.

    ``pos' = pos R^T`` with ``R`` a rotation by ``theta ~ U[-max_angle, max_angle]`` about
    ``axis`` (``1``/``"y"`` by default; use the dataset's ``up_axis``). The up coordinate and
    every point's norm are unchanged.
    """

    def __init__(self, axis: Union[int, str] = 1, max_angle: float = math.pi,
                 generator: Optional[torch.Generator] = None):
        self.axis = _axis_index(axis)
        self.max_angle = float(max_angle)
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        angle = float((2 * _rand(1, self.generator) - 1) * self.max_angle)
        rotation = rotation_about_axis(angle, self.axis).to(sample["pos"].dtype)
        out = {**sample, "pos": sample["pos"] @ rotation.T}
        if "normals" in sample:
            out["normals"] = sample["normals"] @ rotation.T
        return out

    def __repr__(self) -> str:
        return f"RandomRotateUp(axis={'xyz'[self.axis]!r}, max_angle={self.max_angle:.4g})"


class RandomPointDropout:
    """PointNet++ point dropout that keeps ``P`` fixed.

    Draws a ratio ``r ~ U[0, max_ratio]`` and replaces each point with probability ``r``
    by a copy of the first point (positions, normals and part label), so batches keep their shape.
    """

    def __init__(self, max_ratio: float = 0.875, generator: Optional[torch.Generator] = None):
        if not 0 <= max_ratio < 1:
            raise ValueError(f"max_ratio must be in [0, 1), got {max_ratio}")
        self.max_ratio = float(max_ratio)
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        pos = sample["pos"]
        ratio = float(_rand(1, self.generator)) * self.max_ratio
        dropped = _rand(pos.shape[0], self.generator) < ratio
        dropped[0] = False
        out = dict(sample)
        for key in POINT_KEYS:
            if key in sample:
                values = sample[key]
                mask = dropped.view(-1, *([1] * (values.ndim - 1)))
                out[key] = torch.where(mask, values[:1].expand_as(values), values)
        return out

    def __repr__(self) -> str:
        return f"RandomPointDropout(max_ratio={self.max_ratio})"


def train_transforms(
    up_axis: Union[int, str] = 1,
    rotate: bool = True,
    scale: Tuple[float, float] = (0.8, 1.25),
    shift: float = 0.1,
    jitter: float = 0.01,
    jitter_clip: float = 0.05,
    dropout: float = 0.5,
    normalize: bool = True,
    num_points: Optional[int] = None,
) -> Compose:
    """Default training augmentation: a random subset of ``num_points`` points (when given; a new
    subset every epoch), normalise, point dropout, anisotropic scale, rotation about the up axis,
    shift, jitter (each switched off by a zero/False/None argument). Part labels follow their points.

    Shapes: ``pos (P, 3)`` stays ``(P, 3)``, or becomes ``(num_points, 3)``.
    """
    transforms: List[Callable[[Sample], Sample]] = []
    if num_points is not None:
        transforms.append(RandomSubsample(num_points))
    if normalize:
        transforms.append(NormalizeUnitSphere())
    if dropout > 0:
        transforms.append(RandomPointDropout(dropout))
    if scale is not None and tuple(scale) != (1.0, 1.0):
        transforms.append(RandomScale(scale[0], scale[1], anisotropic=True))
    if rotate:
        transforms.append(RandomRotateUp(up_axis))
    if shift > 0:
        transforms.append(RandomShift(shift))
    if jitter > 0:
        transforms.append(RandomJitter(jitter, jitter_clip))
    return Compose(transforms)


def test_transforms(normalize: bool = True) -> Compose:
    """Default evaluation transform: only :class:`NormalizeUnitSphere` (deterministic)."""
    return Compose([NormalizeUnitSphere()] if normalize else [])


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for :class:`~torch.utils.data.DataLoader`.

    Seeds Python's and NumPy's RNGs from the worker's torch seed (distinct per worker and
    reproducible from the main process's ``torch.manual_seed``), and re-seeds any
    ``generator`` held by the dataset's transforms so workers do not share one stream.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    transforms = transform.transforms if isinstance(transform, Compose) else [transform]
    for offset, item in enumerate(transforms):
        generator = getattr(item, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(seed + offset)
