"""Built-in part-labelled shapes: the procedural generator of :mod:`pcattn.data.builtin`, with
every point labelled by the part it was sampled from (no download needed).

Eight categories, twenty part labels (global ids, numbered category by category as ShapeNetPart's):

==========  ======================================
category    parts
==========  ======================================
airplane    fuselage, wings, tail, engines
bookshelf   frame, shelves
bottle      body, neck
chair       seat, back, legs
cup         body, handle
lamp        base, stem, shade
stool       seat, legs
table       top, legs
==========  ======================================

Shapes are built from the same primitive surfaces (boxes, frusta, tori), sampled area-weighted
with exact normals, centred in the unit sphere, scaled by a random factor in ``[0.75, 1]``, turned
about the up axis (y) and jittered. Every shape draws from its own ``numpy`` generator seeded by
``(seed, split, category, index)``: the train and test splits are disjoint and deterministic.
The dataset is generated in memory (1 to 2 seconds for the default size, both splits).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .builtin import UP, Part, _u, box, frustum, torus

__all__ = ["BuiltinParts", "PART_CATEGORIES", "CATEGORY_PARTS", "PART_NAMES", "generate_part_shape"]

LabelledParts = List[Tuple[str, List[Part]]]  # (part name, its primitive surfaces)


def _airplane(rng) -> LabelledParts:
    length, radius = _u(rng, 1.6, 2.0), _u(rng, 0.09, 0.13)
    span, chord = _u(rng, 1.3, 1.8), _u(rng, 0.25, 0.4)
    nose = np.array([1.0, 0.0, 0.0])
    wing_x = _u(rng, -0.1, 0.1)
    fuselage = frustum([-length / 2, 0, 0], nose, radius, radius, length * 0.85, top=False)
    fuselage += frustum([length * 0.35, 0, 0], nose, radius, 0.0, length * 0.15, bottom=False)
    tail = box([-length / 2 + 0.1, radius + 0.12, 0], [0.2, 0.25, 0.03])
    tail += box([-length / 2 + 0.1, 0, 0], [0.15, 0.02, span * 0.35])
    engine_radius = _u(rng, 0.05, 0.07)
    engines = []
    for side in (-1.0, 1.0):
        engines += frustum([wing_x - 0.15, -engine_radius - 0.02, side * span * 0.25], nose,
                           engine_radius, engine_radius, 0.3)
    return [("fuselage", fuselage), ("wings", box([wing_x, 0, 0], [chord, 0.03, span])),
            ("tail", tail), ("engines", engines)]


def _bookshelf(rng) -> LabelledParts:
    width, height, depth = _u(rng, 0.8, 1.1), _u(rng, 1.2, 1.7), _u(rng, 0.3, 0.4)
    frame = box([0, height / 2, -depth / 2], [width, height, 0.02])
    for side in (-1.0, 1.0):
        frame += box([side * width / 2, height / 2, 0], [0.04, height, depth])
    shelves = []
    for level in np.linspace(0.02, height - 0.02, int(rng.integers(3, 6))):
        shelves += box([0, level, 0], [width, 0.04, depth])
    return [("frame", frame), ("shelves", shelves)]


def _bottle(rng) -> LabelledParts:
    radius, height = _u(rng, 0.25, 0.35), _u(rng, 0.8, 1.1)
    neck_radius, shoulder = radius * _u(rng, 0.3, 0.4), _u(rng, 0.15, 0.25)
    body = frustum([0, 0, 0], UP, radius, radius, height, top=False)
    body += frustum([0, height, 0], UP, radius, neck_radius, shoulder, bottom=False, top=False)
    neck = frustum([0, height + shoulder, 0], UP, neck_radius, neck_radius, _u(rng, 0.25, 0.4), bottom=False)
    return [("body", body), ("neck", neck)]


def _legs(corners: Sequence[Tuple[float, float]], height: float, radius: float) -> List[Part]:
    """Vertical cylinders from the floor to ``height`` at the ``(x, z)`` corners."""
    surfaces: List[Part] = []
    for x, z in corners:
        surfaces += frustum([x, 0, z], UP, radius, radius, height, bottom=False, top=False)
    return surfaces


def _chair(rng) -> LabelledParts:
    seat, height, leg = _u(rng, 0.45, 0.6), _u(rng, 0.45, 0.55), _u(rng, 0.03, 0.045)
    back = _u(rng, 0.45, 0.65)
    inset = seat / 2 - leg
    corners = [(sx * inset, sz * inset) for sx in (-1, 1) for sz in (-1, 1)]
    return [("seat", box([0, height, 0], [seat, 0.05, seat])),
            ("back", box([0, height + back / 2, -seat / 2], [seat, back, 0.05])),
            ("legs", _legs(corners, height - 0.025, leg))]


def _cup(rng) -> LabelledParts:
    radius, height, flare = _u(rng, 0.3, 0.4), _u(rng, 0.7, 0.95), _u(rng, 1.0, 1.2)
    wall = radius * (1 + flare) / 2
    handle = torus([wall, height / 2, 0], [0, 0, 1], height * _u(rng, 0.32, 0.4), _u(rng, 0.07, 0.09),
                   start=-math.pi / 2 - 0.15, stop=math.pi / 2 + 0.15, phase_axis=[1, 0, 0])
    return [("body", frustum([0, 0, 0], UP, radius, radius * flare, height, top=False)), ("handle", handle)]


def _lamp(rng) -> LabelledParts:
    base, stem, shade = _u(rng, 0.25, 0.35), _u(rng, 0.8, 1.2), _u(rng, 0.3, 0.45)
    shade_bottom = 0.05 + stem - shade * 0.6
    return [("base", frustum([0, 0, 0], UP, base, base, 0.05)),
            ("stem", frustum([0, 0.05, 0], UP, 0.025, 0.025, stem, bottom=False, top=False)),
            ("shade", frustum([0, shade_bottom, 0], UP, _u(rng, 0.3, 0.4), _u(rng, 0.12, 0.2), shade,
                              bottom=False, top=False))]


def _stool(rng) -> LabelledParts:
    radius, height, leg = _u(rng, 0.25, 0.35), _u(rng, 0.6, 0.8), _u(rng, 0.025, 0.035)
    angles = np.arange(3) * 2 * math.pi / 3 + rng.uniform(0, 2 * math.pi)
    corners = [(0.8 * radius * math.cos(a), 0.8 * radius * math.sin(a)) for a in angles]
    return [("seat", frustum([0, height, 0], UP, radius, radius, 0.06)), ("legs", _legs(corners, height, leg))]


def _table(rng) -> LabelledParts:
    height, leg, half = _u(rng, 0.6, 0.8), _u(rng, 0.045, 0.065), _u(rng, 0.5, 0.65)
    count = int(rng.integers(3, 5))
    if rng.random() < 0.5:
        top, spread = frustum([0, height, 0], UP, half, half, 0.05), 0.75 * half
    else:
        top, spread = box([0, height + 0.025, 0], [2 * half, 0.05, 2 * half]), 0.85 * half
    angles = math.pi / 4 + np.arange(count) * 2 * math.pi / count
    corners = [(spread * math.cos(a), spread * math.sin(a)) for a in angles]
    return [("top", top), ("legs", _legs(corners, height, leg))]


_BUILDERS: Dict[str, Callable[[np.random.Generator], LabelledParts]] = {
    "airplane": _airplane, "bookshelf": _bookshelf, "bottle": _bottle, "chair": _chair,
    "cup": _cup, "lamp": _lamp, "stool": _stool, "table": _table,
}
PART_CATEGORIES: Dict[str, Tuple[str, ...]] = {
    "airplane": ("fuselage", "wings", "tail", "engines"), "bookshelf": ("frame", "shelves"),
    "bottle": ("body", "neck"), "chair": ("seat", "back", "legs"), "cup": ("body", "handle"),
    "lamp": ("base", "stem", "shade"), "stool": ("seat", "legs"), "table": ("top", "legs"),
}
CATEGORIES: Tuple[str, ...] = tuple(PART_CATEGORIES)
#: global part names (``"chair/legs"``), indexed by global part id
PART_NAMES: Tuple[str, ...] = tuple(f"{c}/{p}" for c in CATEGORIES for p in PART_CATEGORIES[c])
#: for each category id, its global part ids (what :class:`~pcattn.engine.metrics.PartSegmentationMetrics` takes)
CATEGORY_PARTS: Tuple[Tuple[int, ...], ...] = tuple(
    tuple(PART_NAMES.index(f"{c}/{p}") for p in PART_CATEGORIES[c]) for c in CATEGORIES)


def generate_part_shape(category: str, rng: np.random.Generator, num_points: int = 2048, noise: float = 0.01,
                        scale: Tuple[float, float] = (0.75, 1.0)) -> Tuple[np.ndarray, np.ndarray]:
    """One random shape of ``category`` with its part labels.

    Returns:
        float32 ``(num_points, 6)`` (``x, y, z, nx, ny, nz``, y up) and int64 ``(num_points,)``
        global part ids, in a random order (the first ``n`` points are a uniform subset).
    """
    if category not in _BUILDERS:
        raise ValueError(f"unknown part category {category!r}; expected one of {CATEGORIES}")
    labelled = _BUILDERS[category](rng)
    names = [name for name, _ in labelled]
    if names != list(PART_CATEGORIES[category]):  # the builders and the table must agree
        raise AssertionError(f"{category}: builder parts {names} != {PART_CATEGORIES[category]}")
    first = PART_NAMES.index(f"{category}/{names[0]}")
    surfaces = [(first + slot, area, sampler) for slot, (_, parts) in enumerate(labelled) for area, sampler in parts]
    areas = np.array([area for _, area, _ in surfaces])
    counts = rng.multinomial(num_points, areas / areas.sum())
    pieces = [(sampler(rng, int(n)), label) for (label, _, sampler), n in zip(surfaces, counts) if n > 0]
    points = np.concatenate([np.concatenate(cloud, axis=1) for cloud, _ in pieces])
    labels = np.concatenate([np.full(len(cloud[0]), label, dtype=np.int64) for cloud, label in pieces])
    order = rng.permutation(num_points)
    points, labels = points[order], labels[order]
    xyz = points[:, :3] - points[:, :3].mean(axis=0)
    xyz *= rng.uniform(*scale) / np.linalg.norm(xyz, axis=1).max()
    turn = rng.uniform(0, 2 * math.pi)
    about_up = np.array([[math.cos(turn), 0.0, math.sin(turn)], [0.0, 1.0, 0.0],
                         [-math.sin(turn), 0.0, math.cos(turn)]])
    jitter = np.clip(rng.normal(0.0, noise, xyz.shape), -3 * noise, 3 * noise)
    cloud = np.concatenate([xyz @ about_up.T + jitter, points[:, 3:] @ about_up.T], axis=1)
    return cloud.astype(np.float32), labels


class BuiltinParts(Dataset):
    """The built-in part-segmentation dataset: 8 categories, 20 part labels, generated in memory.

    Args:
        split: ``"train"`` or ``"test"`` (disjoint, deterministic by ``seed``).
        num_points: points per sample ``P`` (the first ``P`` of each shuffled shape; ``<= points_per_shape``).
        use_normals: also return ``normals (P, 3)``.
        transform: callable on the sample dict.
        seed, train_per_category, test_per_category, points_per_shape, noise: generation settings.
        categories: a subset of :data:`PART_CATEGORIES` (the ids and part ids stay global).

    Samples: ``pos (P, 3)`` float32, ``category ()`` int64, ``seg (P,)`` int64 global part ids,
    ``normals (P, 3)`` with ``use_normals``. Attributes: ``categories``, ``part_names``,
    ``category_parts`` (global part ids of each category id), ``num_parts``, ``up_axis`` (1: y up).
    """

    up_axis = 1
    categories = CATEGORIES
    part_names = PART_NAMES
    category_parts = CATEGORY_PARTS
    num_parts = len(PART_NAMES)

    def __init__(self, split: str = "train", num_points: int = 1024, use_normals: bool = False,
                 transform: Optional[Callable[[Dict[str, Tensor]], Dict[str, Tensor]]] = None, seed: int = 0,
                 train_per_category: int = 64, test_per_category: int = 16, points_per_shape: int = 2048,
                 noise: float = 0.01, categories: Optional[Sequence[str]] = None):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if not 0 < num_points <= points_per_shape:
            raise ValueError(f"num_points must be in [1, points_per_shape={points_per_shape}], got {num_points}")
        unknown = sorted(set(categories or ()) - set(CATEGORIES))
        if unknown:
            raise ValueError(f"unknown part categories {unknown}; expected some of {CATEGORIES}")
        self.split, self.num_points, self.use_normals, self.transform = split, num_points, use_normals, transform
        split_index = 0 if split == "train" else 1
        count = train_per_category if split == "train" else test_per_category
        clouds, labels, shape_categories = [], [], []
        for category_id, name in enumerate(CATEGORIES):
            if categories is not None and name not in categories:
                continue
            for index in range(count):
                rng = np.random.default_rng([seed, split_index, category_id, index])
                cloud, seg = generate_part_shape(name, rng, points_per_shape, noise)
                clouds.append(cloud[:num_points])
                labels.append(seg[:num_points])
                shape_categories.append(category_id)
        self.points = np.stack(clouds) if clouds else np.zeros((0, num_points, 6), np.float32)
        self.seg = np.stack(labels) if labels else np.zeros((0, num_points), np.int64)
        self.shape_categories = np.asarray(shape_categories, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.shape_categories)

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        return part_sample(self, index)


def part_sample(dataset, index: int) -> Dict[str, Tensor]:
    """The sample dict of a part-segmentation dataset holding ``points (S, P, 3 or 6)`` (or a list of
    ``(P_i, 3 or 6)``), ``seg (S, P)`` (or a list of ``(P_i,)``), ``shape_categories (S,)``,
    ``use_normals`` and ``transform``."""
    points = dataset.points[index]
    sample = {
        "pos": torch.from_numpy(points[:, :3].copy()),
        "category": torch.tensor(int(dataset.shape_categories[index])),
        "seg": torch.from_numpy(dataset.seg[index].copy()),
    }
    if dataset.use_normals:
        sample["normals"] = torch.from_numpy(points[:, 3:6].copy())
    return dataset.transform(sample) if dataset.transform is not None else sample
