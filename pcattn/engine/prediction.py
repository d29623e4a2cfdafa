"""Labelling your own clouds with a trained model: ``pcattn predict`` and :func:`pcattn.predict`.

Every task, on clouds of any size, every point of the input labelled in the input's order:

* a **classifier** sees the cloud as evaluation does: ``num_points`` points (the run's; farthest point
  sampling, after a random pre-selection on clouds larger than :data:`FPS_POOL` times that), centred and
  scaled to the unit sphere, optionally with test-time votes (rotations about the up axis and scales,
  probabilities averaged); it gives the class and every class's probability;
* a **part segmenter** (given the object category when it takes one) sees at most ``num_points`` points of
  the cloud, chosen and normalised the same way; every point takes the part of its nearest seen point;
* a **scene segmenter** labels the whole room through :func:`~pcattn.engine.scene_inference.segment_room`
  (grid fragments that together hold every point, in metres, each centred in float64).

Positions are centred in float64 before anything becomes float32, so a scan 5 x 10^5 m from the origin gets
the labels it gets at the origin. :class:`Predictor` holds a loaded model and its settings and labels one
cloud (:meth:`Predictor.predict`); :func:`predict_files` labels a file or a folder, writes each result
(:func:`~pcattn.data.pointfile.write_labelled`, or JSON for a classifier) and returns the rows of the
summary table; :func:`predict` is the one-call Python form.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..data.base import farthest_point_indices
from ..data.pointfile import (LABEL_EXTENSIONS, POINT_FILE_EXTENSIONS, PointFile, point_colors, point_features,
                              points_from_array, read_points, write_labelled)
from ..models import PointTransformerSegmenter
from ..models.checkpoint import load_model
from ..nn.geometry import knn
from .evaluation import vote_augment
from .metrics import restrict_to_parts
from .tasks import task_of_model

__all__ = ["TASK_NAMES", "FPS_POOL", "TILE_POINTS", "TILE_MARGIN", "Prediction", "Predictor", "FileResult",
           "UnreadableFile", "predict", "predict_files", "model_features", "label_palette", "scene_palette",
           "scene_tiles", "format_summary"]

#: what :attr:`Prediction.task` says, by the task's name in :mod:`pcattn.engine.tasks`
TASK_NAMES = {"classification": "classifier", "partseg": "part segmenter", "semseg": "scene segmenter"}
#: farthest point sampling of ``m`` points runs on at most ``FPS_POOL * m`` points (a random pre-selection of
#: a larger cloud): its cost is ``m`` passes over its input, seconds instead of minutes on 10^7 points
FPS_POOL = 64
#: a scene segmenter labels a scan of more points tile by tile (:func:`scene_tiles`): its memory is that of a
#: room of this many points (about 1.5 GB for pt-scene-tiny-vector, measured: README)
TILE_POINTS = 1_000_000
#: metres of context around each tile (the tiny scene networks see about a metre around a point)
TILE_MARGIN = 2.0
#: points whose nearest seen point is searched at once (part segmenters): bounded memory on 10^7 points
NEAREST_CHUNK = 1 << 18

# Matplotlib's qualitative tab10 and tab20 (the part pictures' colours), as bytes: no matplotlib needed.
_TAB10 = ("1f77b4", "ff7f0e", "2ca02c", "d62728", "9467bd", "8c564b", "e377c2", "7f7f7f", "bcbd22", "17becf")
_TAB20 = ("1f77b4", "aec7e8", "ff7f0e", "ffbb78", "2ca02c", "98df8a", "d62728", "ff9896", "9467bd", "c5b0d5",
          "8c564b", "c49c94", "e377c2", "f7b6d2", "7f7f7f", "c7c7c7", "bcbd22", "dbdb8d", "17becf", "9edae5")


# Matplotlib's tab20b and tab20c: the scene palette's classes 20-59.
_TAB20B_C = ("393b79", "5254a3", "6b6ecf", "9c9ede", "637939", "8ca252", "b5cf6b", "cedb9c", "8c6d31", "bd9e39",
             "e7ba52", "e7cb94", "843c39", "ad494a", "d6616b", "e7969c", "7b4173", "a55194", "ce6dbd", "de9ed6",
             "3182bd", "6baed6", "9ecae1", "c6dbef", "e6550d", "fd8d3c", "fdae6b", "fdd0a2", "31a354", "74c476",
             "a1d99b", "c7e9c0", "756bb1", "9e9ac8", "bcbddc", "dadaeb", "636363", "969696", "bdbdbd", "d9d9d9")


def _rgb(codes: Sequence[str], count: int) -> np.ndarray:
    """``(count, 3)`` float64 RGB in ``[0, 1]`` of the hex ``codes``, repeating after ``len(codes)``."""
    rows = [codes[i % len(codes)] for i in range(count)]
    rgb = np.array([[int(code[i:i + 2], 16) for i in (0, 2, 4)] for code in rows], dtype=np.float64)
    return rgb.reshape(-1, 3) / 255.0


def scene_palette(count: int) -> np.ndarray:
    """``(count, 3)`` float64 RGB in ``[0, 1]``, one colour per scene class (label = row): ``tab10`` for the
    first ten classes, the light shades of ``tab20`` for classes 10-19, then ``tab20b`` and ``tab20c``
    (repeating beyond 60), so S3DIS's 13 and ScanNet's 20 classes each get their own colour. The room
    pictures (:func:`pcattn.viz.class_palette`) and ``pcattn predict``'s labelled scene files both use it.

    Raises:
        ValueError: ``count`` below 1.
    """
    if count < 1:
        raise ValueError(f"a scene has at least one class, got count={count}")
    return _rgb(_TAB10 + _TAB20[1::2] + _TAB20B_C, count)


def label_palette(count: int) -> np.ndarray:
    """``(count, 3)`` float64 RGB in ``[0, 1]``: matplotlib's ``tab10`` for up to ten labels (the part
    pictures' colours), ``tab20`` beyond (repeating after twenty)."""
    return _rgb(_TAB10 if count <= 10 else _TAB20, count)


class UnreadableFile(ValueError):
    """A file that cannot be labelled: unreadable, empty, or without the colours or normals the model takes.
    The message names the file."""


@dataclass
class Prediction:
    """What a model says about one cloud (:func:`predict`).

    Attributes:
        task: ``"classification"``, ``"partseg"`` or ``"semseg"``.
        classes: the model's class names (a part segmenter's global part names), index = label.
        points: the number of input points.
        label: a classifier's class id; probabilities: its ``(C,)`` probabilities (mean over the votes).
        labels: a segmenter's ``(N,)`` int64 label of every input point, in the input's order (part
            segmenters: global part ids, each one of the category's parts).
        colors: ``(N, 3)`` float64 in ``[0, 1]``: each label's palette colour (:func:`label_palette`; parts by
            their index within the category, as the part pictures).
        category: the object category a part segmenter was given.
        pos: the input's positions as given (float64 or float32), for writing the labelled cloud.
        seconds: the time the prediction took.
    """

    task: str
    classes: List[str]
    points: int
    label: Optional[int] = None
    probabilities: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    colors: Optional[np.ndarray] = None
    category: Optional[str] = None
    pos: Optional[np.ndarray] = field(default=None, repr=False)
    seconds: float = 0.0

    @property
    def class_name(self) -> Optional[str]:
        """A classifier's predicted class name."""
        return None if self.label is None else self.classes[self.label]

    def label_counts(self) -> Dict[str, int]:
        """A segmenter's points per predicted label name, most frequent first."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        order = np.argsort(-counts, kind="stable")
        return {self.classes[i]: int(counts[i]) for i in order if counts[i] > 0}

    def describe(self) -> str:
        """One line: ``"chair (p = 0.912)"`` or ``"1,000,000 points: wall 41.2%, floor 20.3%, ..."``."""
        if self.task == "classification":
            return f"{self.class_name} (p = {float(self.probabilities[self.label]):.3f})"
        shares = [f"{name} {100 * count / self.points:.1f}%" for name, count in list(self.label_counts().items())[:4]]
        more = len(self.label_counts()) - len(shares)
        category = f"{self.category}: " if self.category else ""
        return f"{category}{self.points:,} points: {', '.join(shares)}" + (f" (+{more} more)" if more > 0 else "")

    def to_json(self) -> Dict[str, Any]:
        """The prediction as plain values (a segmenter's per-point labels left out: they are in the file)."""
        entry: Dict[str, Any] = {"task": self.task, "points": self.points}
        if self.task == "classification":
            entry.update(label=self.label, **{"class": self.class_name},
                         probabilities={name: float(p) for name, p in zip(self.classes, self.probabilities)})
        else:
            entry.update(category=self.category, label_counts=self.label_counts())
        entry["seconds"] = round(self.seconds, 3)
        return entry


def model_features(cloud: PointFile, needs: Sequence[str], source: str) -> Dict[str, np.ndarray]:
    """:func:`~pcattn.data.pointfile.point_features` of ``cloud``, a missing one an :class:`UnreadableFile`
    naming the file and ``source`` (the model)."""
    try:
        return point_features(cloud, needs, f"{source} was trained with")
    except ValueError as error:
        raise UnreadableFile(str(error)) from None


def _task_name(model: nn.Module, checkpoint: Dict[str, Any]) -> str:
    """``"classification"``, ``"partseg"`` or ``"semseg"``: the task the checkpoint records, else the model's
    (:func:`task_of_model`; a segmenter without categories that pools by grid is a scene segmenter)."""
    recorded = checkpoint.get("task")
    if recorded in TASK_NAMES:
        return recorded
    name = task_of_model(model).name
    if name == "partseg" and isinstance(model, PointTransformerSegmenter) and model.num_categories is None \
            and model.encoder.grid_sizes is not None:
        return "semseg"
    return name


def _sample_rows(count: int, wanted: int, pos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows of a cloud of ``count`` points to show the model: all when ``count <= wanted``, else ``wanted``
    by farthest point sampling (on a random pre-selection of ``FPS_POOL * wanted`` rows of a larger cloud),
    in increasing row order."""
    if count <= wanted:
        return np.arange(count)
    pool = np.sort(rng.choice(count, FPS_POOL * wanted, replace=False)) if count > FPS_POOL * wanted \
        else np.arange(count)
    centred = pos[pool] - pos[pool].mean(axis=0)  # float64: fps compares float32 distances
    return np.sort(pool[farthest_point_indices(centred.astype(np.float32), wanted)])


def _unit_sphere(pos: np.ndarray, rows: np.ndarray) -> Tuple[np.ndarray, float]:
    """The centroid (float64) and radius of ``pos[rows]``: evaluation's unit-sphere normalisation."""
    seen = pos[rows].astype(np.float64)
    centre = seen.mean(axis=0)
    radius = float(np.linalg.norm(seen - centre, axis=1).max())
    return centre, max(radius, 1e-12)


class Predictor:
    """A trained model ready to label clouds (:meth:`predict`), with the settings of its training run.

    Args:
        model: a :class:`~pcattn.models.PointTransformerClassifier` or
            :class:`~pcattn.models.PointTransformerSegmenter` (put in eval mode).
        classes: its class names (default: ``"0"``, ``"1"``, ...).
        checkpoint: the checkpoint dictionary it came from: categories, parts and the training settings
            (``num_points``, ``up_axis``, ``voxel_size``).
        category: a part segmenter's object category (a name of its ``categories``, any case; or an id).
        num_points: points a classifier or part segmenter sees (default: the run's, else 1024 / 2048).
        votes: test-time votes (classifier and scene segmenter): the first pass as it is, the others turned
            about the up axis (and scaled, or mirrored for scenes); probabilities averaged.
        device: where the model runs (``"auto"``: CUDA when available).
        progress: progress bars on large clouds.
        name: how messages name the model (default: the checkpoint's file, else its class).
        seed: seeds the random choices (pre-selection, votes): the same input gives the same labels.
        tile_points, tile_margin: a scene segmenter labels a scan of more points tile by tile, each with that
            many metres of context around it (:func:`scene_tiles`): memory stays that of a ``tile_points`` room.
        max_fragments: a scene segmenter sees at most this many grid fragments of each tile, the other points
            taking their voxel's scores (default ``None``: every fragment;
            :func:`~pcattn.engine.scene_inference.segment_room`): faster on dense scans.
    """

    def __init__(self, model: nn.Module, classes: Optional[Sequence[str]] = None,
                 checkpoint: Optional[Dict[str, Any]] = None, category: Union[str, int, None] = None,
                 num_points: Optional[int] = None, votes: int = 1, device: Union[str, torch.device] = "cpu",
                 progress: bool = False, name: Optional[str] = None, seed: int = 0,
                 tile_points: int = TILE_POINTS, tile_margin: float = TILE_MARGIN,
                 max_fragments: Optional[int] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a pcattn classifier or segmenter (torch.nn.Module), got "
                            f"{type(model).__name__}")
        if isinstance(votes, bool) or not isinstance(votes, int) or votes < 1:
            raise ValueError(f"votes must be an integer >= 1, got {votes!r}")
        if num_points is not None and (isinstance(num_points, bool) or not isinstance(num_points, int)
                                       or num_points < 1):
            raise ValueError(f"num_points must be a positive integer, got {num_points!r}")
        checkpoint = checkpoint or {}
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   "cpu" if device == "auto" else device)
        self.model = model.to(self.device).eval()
        self.task = _task_name(model, checkpoint)
        count = int(getattr(model, "num_classes", 0))
        self.classes = list(classes) if classes is not None else \
            list(checkpoint.get("classes") or [str(i) for i in range(count)])
        self.name = name or type(model).__name__
        self.train_config = dict(checkpoint.get("train_config") or {})
        self.votes, self.progress, self.seed = votes, progress, seed
        if isinstance(tile_points, bool) or not isinstance(tile_points, int) or tile_points < 1:
            raise ValueError(f"tile_points must be a positive integer, got {tile_points!r}")
        if not (isinstance(tile_margin, (int, float)) and 0 <= tile_margin < float("inf")):
            raise ValueError(f"tile_margin must be a finite number of metres >= 0, got {tile_margin!r}")
        self.tile_points, self.tile_margin = tile_points, float(tile_margin)
        if max_fragments is not None and (isinstance(max_fragments, bool) or not isinstance(max_fragments, int)
                                          or max_fragments < 1):
            raise ValueError(f"max_fragments must be None (every fragment) or an integer >= 1, got {max_fragments!r}")
        if max_fragments is not None and self.task != "semseg":
            raise ValueError("max_fragments caps the grid fragments of a scene segmenter; this model is a "
                             f"{self.task} model")
        self.max_fragments = max_fragments
        if votes > 1 and self.task == "partseg":
            raise ValueError("votes are for classifiers and scene segmenters; a part segmenter labels each point "
                             "once (leave votes at 1)")
        default_points = 2048 if self.task == "partseg" else 1024
        self.num_points = num_points or int(self.train_config.get("num_points") or default_points)
        if self.task == "semseg" and num_points is not None:
            raise ValueError("num_points is for classifiers and part segmenters: a scene segmenter sees every "
                             "point, in grid fragments")
        self.up_axis = int(self.train_config.get("up_axis") if self.train_config.get("up_axis") is not None else 1)
        self.voxel_size = float(self.train_config.get("voxel_size") or 0.04)
        self.categories = list(checkpoint.get("categories") or [])
        self.category_parts = [list(map(int, parts)) for parts in checkpoint.get("category_parts") or []]
        self.category = self._category_id(category)
        self.needs = self._needs()

    @classmethod
    def from_checkpoint(cls, path, **options: Any) -> "Predictor":
        """Load the checkpoint at ``path`` (:func:`~pcattn.models.checkpoint.load_model`) with ``options`` as in
        the constructor."""
        device = options.pop("device", "cpu")
        model, classes, checkpoint = load_model(path, device=device)
        path = Path(path)
        name = options.pop("name", None) or (f"{path.parent.name}/{path.name}" if path.parent.name else path.name)
        return cls(model, classes, checkpoint, device=device, name=name, **options)

    # --------------------------------------------------------------------- settings
    def _category_id(self, category: Union[str, int, None]) -> Optional[int]:
        takes = getattr(self.model, "num_categories", None)
        if self.task != "partseg" or not takes:
            if category is not None:
                raise ValueError(f"a category ({category!r}) was given, but {self.name} is a "
                                 f"{TASK_NAMES[self.task]} without a category input: leave it out")
            return None
        names = self.categories or [str(i) for i in range(takes)]
        if category is None:
            raise ValueError(f"{self.name} is a part segmenter: it needs the object category of the cloud; give "
                             f"category (CLI --category), one of: {', '.join(names)}")
        if isinstance(category, (int, np.integer)) and not isinstance(category, bool):
            if not 0 <= int(category) < takes:
                raise ValueError(f"category id {category} is out of range: {self.name} has {takes} categories "
                                 f"({', '.join(names)})")
            return int(category)
        matches = [i for i, name in enumerate(names) if name.lower() == str(category).strip().lower()]
        if not matches:
            raise ValueError(f"unknown category {category!r}: {self.name} segments the categories {', '.join(names)}")
        return matches[0]

    def _needs(self) -> Tuple[str, ...]:
        """The per-point features the model takes besides positions, in its order."""
        channels = int(getattr(self.model, "in_channels", 3))
        if self.task == "semseg":
            return ("color", "normals")[:max(0, channels // 3 - 1)]
        return ("normals",) if channels == 6 else ()

    @property
    def parts(self) -> Optional[List[int]]:
        """The global part ids of a part segmenter's category (``None``: every label)."""
        if self.category is None or not self.category_parts:
            return None
        return self.category_parts[self.category]

    # --------------------------------------------------------------------- labelling
    def predict(self, cloud: PointFile) -> Prediction:
        """Label ``cloud`` (every point, in its order; see the module docstring).

        Raises:
            UnreadableFile: the cloud lacks the colours or normals the model takes.
        """
        start = time.perf_counter()
        features = model_features(cloud, self.needs, self.name)
        with torch.no_grad():
            if self.task == "classification":
                prediction = self._classify(cloud, features)
            elif self.task == "partseg":
                prediction = self._segment_parts(cloud, features)
            else:
                prediction = self._segment_scene(cloud, features)
        prediction.pos = cloud.pos
        prediction.seconds = time.perf_counter() - start
        return prediction

    def _seen_points(self, cloud: PointFile, features: Dict[str, np.ndarray]
                     ) -> Tuple[np.ndarray, Tensor, Optional[Tensor], np.ndarray, float]:
        """The rows a classifier or part segmenter sees, their positions in the unit sphere (centred in
        float64, then float32) ``(P, 3)``, the model's input ``x`` (``None`` or with normals) and the
        normalisation (centre, radius)."""
        rng = np.random.default_rng(self.seed)
        rows = _sample_rows(len(cloud), self.num_points, cloud.pos, rng)
        centre, radius = _unit_sphere(cloud.pos, rows)
        pos = torch.from_numpy(((cloud.pos[rows] - centre) / radius).astype(np.float32))
        x = None
        if "normals" in features:
            x = torch.cat([pos, torch.from_numpy(features["normals"][rows])], dim=1)
        return rows, pos, x, centre, radius

    def _classify(self, cloud: PointFile, features: Dict[str, np.ndarray]) -> Prediction:
        _, pos, x, _, _ = self._seen_points(cloud, features)
        pos, x = pos[None].to(self.device), None if x is None else x[None].to(self.device)
        generator = torch.Generator().manual_seed(self.seed)
        probabilities = torch.zeros(len(self.classes), dtype=torch.float64)
        for vote in range(self.votes):
            seen_pos, seen_x = (pos, x) if vote == 0 else vote_augment(pos, x, self.up_axis, generator)
            logits = self.model(seen_x, seen_pos)[0]
            probabilities += torch.softmax(logits.double(), dim=-1).cpu()
        probabilities = (probabilities / self.votes).numpy()
        return Prediction("classification", self.classes, len(cloud), label=int(probabilities.argmax()),
                          probabilities=probabilities)

    def _segment_parts(self, cloud: PointFile, features: Dict[str, np.ndarray]) -> Prediction:
        rows, pos, x, centre, radius = self._seen_points(cloud, features)
        category = None if self.category is None else torch.tensor([self.category], device=self.device)
        logits = self.model(None if x is None else x[None].to(self.device), pos[None].to(self.device),
                            category=category)[0]
        parts = self.parts if self.parts is not None else list(range(logits.shape[-1]))
        seen_labels = restrict_to_parts(logits.cpu(), parts)
        labels = seen_labels if len(rows) == len(cloud) else \
            seen_labels[self._nearest_seen(cloud.pos, rows, centre, radius)]
        slots = {part: slot for slot, part in enumerate(parts)}
        colors = label_palette(len(parts))[np.vectorize(slots.get, otypes=[np.int64])(labels)] if len(labels) \
            else np.zeros((0, 3))
        category = self.categories[self.category] if self.category is not None and self.categories else None
        return Prediction("partseg", self.classes, len(cloud), labels=labels.astype(np.int64), colors=colors,
                          category=category)

    def _nearest_seen(self, pos: np.ndarray, rows: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
        """For every point of ``pos (N, 3)``, the index into ``rows`` of its nearest seen point (float64
        distances in the normalised frame), a chunk of :data:`NEAREST_CHUNK` points at a time."""
        from tqdm.auto import tqdm

        seen = torch.from_numpy((pos[rows] - centre) / radius)
        nearest = np.empty(len(pos), dtype=np.int64)
        starts = range(0, len(pos), NEAREST_CHUNK)
        for start in tqdm(starts, desc="nearest seen point", unit="chunk", leave=False,
                          disable=not self.progress or len(starts) < 4):
            query = torch.from_numpy((pos[start:start + NEAREST_CHUNK] - centre) / radius)
            nearest[start:start + len(query)] = knn(seen, 1, query=query)[:, 0].numpy()
        return nearest

    def _segment_scene(self, cloud: PointFile, features: Dict[str, np.ndarray]) -> Prediction:
        """Every point through :func:`~pcattn.engine.scene_inference.segment_room`: the whole room at once,
        or a scan of more than ``tile_points`` points tile by tile (:func:`scene_tiles`), so memory stays that
        of a ``tile_points`` room."""
        from tqdm.auto import tqdm

        from .scene_inference import segment_room

        pos = np.ascontiguousarray(cloud.pos, dtype=np.float64)
        labels = np.full(len(pos), -1, dtype=np.int64)  # -1 left would be a point no tile labelled
        tiles = scene_tiles(pos, self.tile_points, self.tile_margin)
        for rows, core in tqdm(tiles, desc="tiles", unit="tile", leave=False, disable=not self.progress or
                               len(tiles) == 1):
            room = {"pos": torch.from_numpy(pos[rows])}
            room.update({name: torch.from_numpy(values[rows]) for name, values in features.items()})
            scores = segment_room(self.model, room, self.voxel_size, self.votes, max_fragments=self.max_fragments,
                                  device=self.device,
                                  generator=torch.Generator().manual_seed(self.seed), progress=self.progress)
            labels[rows[core]] = scores[torch.from_numpy(core)].argmax(1).numpy()
        return Prediction("semseg", self.classes, len(cloud), labels=labels,
                          colors=scene_palette(len(self.classes))[labels])


def scene_tiles(pos: np.ndarray, tile_points: int, margin: float) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Square tiles in x and y over a scan, each with ``margin`` metres of context around it.

    A scan of at most ``tile_points`` points is one tile. A larger one is cut into squares of the side that
    holds ``tile_points`` points on average (the grid starts at the scan's lowest corner, in float64, so it
    does not depend on where the scan sits); each tile holds its square's points (its core, labelled from
    this tile) and those within ``margin`` around it (context only). Every point is the core of one tile.

    Returns:
        ``[(rows, core)]``: int64 ``(M,)`` rows of ``pos`` of a tile, bool ``(M,)`` which of them are its core.
    """
    count = len(pos)
    if count <= tile_points:
        return [(np.arange(count), np.ones(count, dtype=bool))]
    low, high = pos[:, :2].min(axis=0), pos[:, :2].max(axis=0)
    extent = np.maximum(high - low, 1e-9)
    side = float(np.sqrt(extent.prod() * tile_points / count))
    side = max(side, float(extent.max()) * tile_points / count)  # a scan along a line: tiles along it
    cells = np.floor((pos[:, :2] - low) / side).astype(np.int64)
    shape = cells.max(axis=0) + 1
    tiles = []
    for ix in range(int(shape[0])):
        near_x = np.flatnonzero((cells[:, 0] == ix) | (np.abs(pos[:, 0] - (low[0] + (ix + 0.5) * side))
                                                        <= side / 2 + margin))
        for iy in range(int(shape[1])):
            near = (cells[near_x, 1] == iy) | (np.abs(pos[near_x, 1] - (low[1] + (iy + 0.5) * side))
                                                <= side / 2 + margin)
            rows = near_x[near]
            core = (cells[rows, 0] == ix) & (cells[rows, 1] == iy)
            if core.any():
                tiles.append((rows, core))
    return tiles


# ------------------------------------------------------------------------- the Python call
PointsLike = Union[str, os.PathLike, np.ndarray, Tensor, PointFile]


def _as_point_file(points: PointsLike, colors=None, normals=None) -> PointFile:
    """``points`` as a :class:`PointFile`: a file is read (:func:`~pcattn.data.pointfile.read_points`); an
    array ``(N, 3)`` or ``(N, 3 + K)`` keeps its precision (columns after ``x y z`` as in a ``.npy`` file)."""
    if isinstance(points, PointFile):
        return points
    if isinstance(points, (str, os.PathLike)):
        cloud = read_points(points)
    else:
        if isinstance(points, Tensor):
            points = points.detach().cpu().numpy()
        table = np.asarray(points)
        if table.ndim != 2 or table.shape[1] < 3 or table.dtype.kind not in "fiu":
            raise ValueError(f"points must be a file or a real array (N, 3) / (N, 3 + K), got "
                             f"{table.dtype} {tuple(table.shape)}")
        cloud = points_from_array(table)
    for name, values in (("colors", colors), ("normals", normals)):
        if values is None:
            continue
        values = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values)
        if values.shape != (len(cloud), 3):
            raise ValueError(f"{name} must be ({len(cloud)}, 3) like the points, got {tuple(values.shape)}")
        if name == "colors":
            cloud.color = point_colors("colors", values)
        else:
            cloud.normals = np.asarray(values, dtype=np.float32)
    return cloud


def predict(checkpoint_or_model: Union[str, os.PathLike, nn.Module], points: PointsLike, *,
            category: Union[str, int, None] = None, colors=None, normals=None,
            classes: Optional[Sequence[str]] = None, num_points: Optional[int] = None, votes: int = 1,
            device: Union[str, torch.device] = "cpu", progress: bool = False, seed: int = 0,
            tile_points: int = TILE_POINTS, max_fragments: Optional[int] = None) -> Prediction:
    """Label one cloud with a trained model, as ``pcattn predict`` does.

    >>> result = pcattn.predict("runs/builtin-vector/best.pt", "chair.ply")
    >>> result.class_name, result.probabilities                     # a classifier
    >>> result = pcattn.predict("runs/scene/best.pt", room_xyzrgb)   # a scene segmenter: (N, 6) array
    >>> result.labels, result.colors                                 # (N,) labels, (N, 3) palette colours

    Args:
        checkpoint_or_model: a checkpoint written by ``pcattn train`` (a path), or a model (with ``classes``
            and, for a part segmenter, ``category`` as an id).
        points: a file (any format of :func:`~pcattn.data.pointfile.read_points`), an array or tensor
            ``(N, 3)`` (float64 kept: centred in float64), or ``(N, 3 + K)`` with the features the model takes
            after ``x y z`` (``r g b``, ``nx ny nz``).
        category: a part segmenter's object category (name or id).
        colors, normals: ``(N, 3)`` features given apart from ``points`` (colours 0-255 or 0-1).
        classes: class names for a bare model.
        num_points, votes, device, progress, seed, tile_points, max_fragments: as :class:`Predictor`'s.

    Returns:
        a :class:`Prediction`: ``label``, ``class_name`` and ``probabilities`` of a classifier, ``labels (N,)``
        and ``colors (N, 3)`` of a segmenter, every input point in its order.
    """
    options = dict(category=category, num_points=num_points, votes=votes, progress=progress, seed=seed,
                   tile_points=tile_points, max_fragments=max_fragments)
    if isinstance(checkpoint_or_model, nn.Module):
        predictor = Predictor(checkpoint_or_model, classes, device=device, **options)
    elif isinstance(checkpoint_or_model, (str, os.PathLike)):
        predictor = Predictor.from_checkpoint(checkpoint_or_model, device=device, **options)
    else:
        raise TypeError(f"checkpoint_or_model must be a checkpoint path or a model, got "
                        f"{type(checkpoint_or_model).__name__}")
    return predictor.predict(_as_point_file(points, colors, normals))


# ------------------------------------------------------------------------- files and folders
@dataclass
class FileResult:
    """One row of the summary of :func:`predict_files`."""

    input: Path
    output: Optional[Path]
    prediction: Optional[Prediction] = None
    error: Optional[str] = None           # why the file was skipped

    @property
    def ok(self) -> bool:
        return self.error is None


def _input_files(source: Path) -> List[Path]:
    """The point files of a folder (name order, hidden files left out), or ``[source]`` for a file."""
    if source.is_dir():
        files = sorted(path for path in source.iterdir()
                       if not path.name.startswith(".") and path.suffix.lower() in POINT_FILE_EXTENSIONS)
        if not files:
            raise FileNotFoundError(f"{source}: no point files ({', '.join(POINT_FILE_EXTENSIONS)}) in the folder")
        return files
    if not source.exists() and not source.is_symlink():
        raise FileNotFoundError(f"{source}: no such file or folder")
    return [source]


def output_paths(predictor: Predictor, source: Path, files: Sequence[Path], out: Optional[Path],
                 suffix: Optional[str] = None) -> Union[Path, List[Path]]:
    """Where each result goes: a segmenter's labelled cloud (``suffix``, default ``.ply``, or ``out``'s) per
    file; a classifier's JSON (one file: ``out``, default ``<input>.class.json``; a folder: one JSON of every
    file, default ``<folder>-classes.json``). A folder's segmenter results go to ``out`` (a folder, default
    ``<folder>-labels``) under the input's name.

    Raises:
        ValueError: an ``out`` of the wrong kind (a labelled cloud with an extension other than
            :data:`~pcattn.data.pointfile.LABEL_EXTENSIONS`, a classifier's that is not ``.json``), or one that
            would overwrite an input.
    """
    folder = source.is_dir()
    if predictor.task == "classification":
        if suffix is not None:
            raise ValueError("--format is for segmenters' labelled clouds; a classifier writes JSON")
        target = out or (source.parent / f"{source.name}-classes.json" if folder else
                         source.with_name(f"{source.stem}.class.json"))
        if target.suffix.lower() != ".json":
            raise ValueError(f"{target}: a classifier's result is written as JSON; give --out a .json path")
        return target
    if folder:
        if out is not None and out.suffix.lower() in LABEL_EXTENSIONS + (".json",):
            raise ValueError(f"{out}: the input is a folder, so --out must be a folder (the labelled clouds keep "
                             f"their names), not a file")
        target_dir = out or source.parent / f"{source.name}-labels"
        suffix = suffix or ".ply"
        stems = [path.stem for path in files]
        targets = [target_dir / (f"{path.stem}{suffix}" if stems.count(path.stem) == 1 else f"{path.name}{suffix}")
                   for path in files]
    else:
        if out is not None and suffix is not None:
            raise ValueError("--format is for a folder of inputs; for one file, --out's extension says the format")
        target = out or source.with_name(f"{source.stem}.labels.ply")
        if target.suffix.lower() not in LABEL_EXTENSIONS:
            raise ValueError(f"{target}: labelled clouds are written as {', '.join(LABEL_EXTENSIONS)}; give --out "
                             f"one of those extensions")
        targets = [target]
    for path, target in zip(files, targets):
        if target.resolve() == path.resolve():
            raise ValueError(f"{target}: the output would overwrite the input {path}; give another --out")
    return targets


def predict_files(predictor: Predictor, source, out=None, skip_bad: bool = False, suffix: Optional[str] = None,
                  report: Optional[Callable[[FileResult], None]] = None) -> List[FileResult]:
    """Label a file or every point file of a folder, writing each result (see :func:`output_paths`).

    Args:
        source: a point file or a folder of them (``.ply .pcd .npy .txt .xyz .las .laz``).
        out: where the results go (default beside the input).
        skip_bad: a file that cannot be read (or lacks the model's colours or normals) is skipped and named
            in its row; without it, it stops the run (:class:`UnreadableFile` naming it).
        suffix: a folder's labelled clouds' format: ``".ply"`` (default), ``".npy"`` or ``".txt"``.
        report: called with each row as it is done (to print progress).

    Returns:
        one :class:`FileResult` per input file, in name order.
    """
    source = Path(source)
    files = _input_files(source)
    suffix = None if suffix is None else (suffix if suffix.startswith(".") else f".{suffix}").lower()
    if suffix is not None and suffix not in LABEL_EXTENSIONS:
        raise ValueError(f"format must be one of {', '.join(e[1:] for e in LABEL_EXTENSIONS)}, got {suffix!r}")
    targets = output_paths(predictor, source, files, None if out is None else Path(out), suffix)
    results: List[FileResult] = []
    for number, path in enumerate(files):
        target = targets if isinstance(targets, Path) else targets[number]
        try:
            try:
                cloud = read_points(path)
            except (ValueError, OSError, ImportError) as error:
                if isinstance(error, ImportError) or (isinstance(error, FileNotFoundError) and len(files) == 1):
                    raise  # a missing extra, or the one file asked for: not a bad file among others
                raise UnreadableFile(str(error) if str(path) in str(error) else f"{path}: {error}") from None
            prediction = predictor.predict(cloud)
        except UnreadableFile as error:
            if not skip_bad:
                raise
            results.append(FileResult(path, None, error=str(error)))
            if report:
                report(results[-1])
            continue
        if predictor.task != "classification":
            write_labelled(target, cloud.pos, prediction.labels, prediction.colors)
        results.append(FileResult(path, target, prediction))
        if report:
            report(results[-1])
    if predictor.task == "classification" and any(result.ok for result in results):
        _write_json(targets, source, results)
    return results


def _write_json(path: Path, source: Path, results: List[FileResult]) -> None:
    entries = [{"file": str(result.input), **result.prediction.to_json()} if result.ok else
               {"file": str(result.input), "skipped": result.error} for result in results]
    payload = entries[0] if not source.is_dir() else entries
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")


def format_summary(results: Sequence[FileResult]) -> str:
    """The summary table: one line per file (points, seconds, what was predicted or why it was skipped, where
    the result went), then the totals."""
    rows = [("file", "points", "seconds", "result", "written to")]
    for result in results:
        if result.ok:
            prediction = result.prediction
            rows.append((result.input.name, f"{prediction.points:,}", f"{prediction.seconds:.1f}",
                         prediction.describe(), str(result.output)))
        else:
            rows.append((result.input.name, "-", "-", f"skipped: {result.error}", "-"))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    done = [result for result in results if result.ok]
    points = sum(result.prediction.points for result in done)
    seconds = sum(result.prediction.seconds for result in done)
    lines.append(f"{len(done)} of {len(results)} file(s) labelled, {points:,} points in {seconds:.1f} s"
                 + (f"; {len(results) - len(done)} skipped" if len(done) < len(results) else ""))
    return "\n".join(lines)
