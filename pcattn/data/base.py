"""Shared machinery of the file-backed datasets: the sample dict, subsampling and the cache.

A dataset lists its items (source file, label, name), parses each file once into a
fixed-size float32 array of ``cache_points`` points (``(M, 3)`` or ``(M, 6)`` with normals), and
keeps them all in memory as one ``(S, M, C)`` array. ``__getitem__`` only slices and copies.

Cache: the stacked arrays are saved to ``<cache_dir>/<tag>_<split>_<M>pts_<sampling>.npz``
(``cache_dir`` defaults to ``<root>/.pcattn_cache``; a read-only root falls back to
``~/.cache/pcattn/<hash of root>``). The file stores a fingerprint: the relative path, size and
mtime of every source file plus the options that shape the arrays. A cache whose fingerprint
does not match the files on disk is rebuilt; it is written to a temporary file and renamed,
so an interrupted run never leaves a half-written cache behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .io import check_link

CACHE_VERSION = 1
SAMPLING_METHODS = ("first", "fps", "random")


@dataclass
class Item:
    """One shape on disk: its file, integer label and name (e.g. ``chair_0001``)."""

    path: Path
    label: int
    name: str


def farthest_point_indices(points: np.ndarray, count: int) -> np.ndarray:
    """Farthest point sampling of one cloud, starting at its first point.

    The same rule as :func:`pcattn.geometry.farthest_point_sampling` (deterministic start at
    row 0), in NumPy so the data layer does not depend on the model code.

    Args:
        points: ``(N, >=3)`` float (only the first 3 columns are used).
        count: number of points to keep (``<= N``).

    Returns:
        int64 ``(count,)`` row indices, in the order they were chosen.
    """
    xyz = np.ascontiguousarray(points[:, :3], dtype=np.float32)
    chosen = np.zeros(count, dtype=np.int64)
    distance = np.full(xyz.shape[0], np.inf, dtype=np.float32)
    for step in range(1, count):
        delta = xyz - xyz[chosen[step - 1]]
        np.minimum(distance, np.einsum("ij,ij->i", delta, delta), out=distance)
        chosen[step] = int(np.argmax(distance))
    return chosen


def resample_rows(points: np.ndarray, count: int, method: str, rng: np.random.Generator) -> np.ndarray:
    """Bring a cloud ``(N, C)`` to exactly ``count`` rows.

    ``method``: ``"first"`` keeps the first ``count`` rows (PointNet++ default), ``"fps"`` farthest
    point sampling, ``"random"`` a random subset. A cloud with fewer rows than ``count`` keeps all
    of its rows and is padded with randomly repeated rows (the usual ModelNet practice).

    Returns:
        ``(count, C)`` float32.
    """
    total = points.shape[0]
    if total < count:
        extra = rng.integers(0, total, size=count - total)
        return np.concatenate([points, points[extra]], axis=0)
    if method == "first":
        return points[:count]
    if method == "random":
        return points[rng.choice(total, size=count, replace=False)]  # random order: any prefix is uniform too
    if method == "fps":
        return points[farthest_point_indices(points, count)]
    raise ValueError(f"sampling must be one of {SAMPLING_METHODS}, got {method!r}")


def normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centre ``points (N, C)`` (first 3 columns) on the centroid and scale to max radius 1."""
    out = points.copy()
    centred = out[:, :3] - out[:, :3].mean(axis=0, keepdims=True)
    radius = np.linalg.norm(centred, axis=1).max()
    out[:, :3] = centred / max(float(radius), 1e-12)
    return out


def visible_dirs(folder: Path) -> List[Path]:
    """The sub-folders of ``folder`` in name order, leaving out hidden ones (``.git``, ``__MACOSX``).

    Files beside them are left out too; a symbolic link that leads nowhere (broken, or a loop) is
    an error naming it, never a silently missing class."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith((".", "__")))
    for entry in entries:
        check_link(entry)
    return [p for p in entries if p.is_dir()]


def scan_class_folders(root: Path, classes: Sequence[str], split: str, extensions: Sequence[str],
                       files_name: str, unknown: str) -> List[Item]:
    """The shapes of the layout ``root/<class>/<split>/<name>.<ext>``, one :class:`Item` per file.

    The label of a file is its class's index in ``classes``; files come in name order, hidden
    files (``.name``) are skipped. A sub-folder, a broken symbolic link or a loop of links is an
    error naming it; every other file must have one of ``extensions``
    (lower-case, with the dot). Errors name the folder or file: a class without a ``split``
    folder; a file of another extension (``"<path>: <unknown> '<ext>'; expected one of ..."``);
    a split folder without files (``"<folder>: class folder has no <files_name>"``).
    """
    items = []
    for label, category in enumerate(classes):
        folder = root / category / split
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: class folder {category!r} has no '{split}' folder")
        files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        for path in files:
            check_link(path)
            if path.is_dir():
                raise ValueError(f"{path}: a folder inside {folder}; sub-folders of a split folder are not read "
                                 f"(move its files up, or remove it)")
            if not path.is_file():
                raise ValueError(f"{path}: not a regular file")
            if path.suffix.lower() not in extensions:
                raise ValueError(f"{path}: {unknown} {path.suffix!r}; expected one of {tuple(extensions)}")
        if not files:
            raise FileNotFoundError(f"{folder}: class folder has no {files_name}")
        items.extend(Item(path, label, path.stem) for path in files)
    return items


def _writable_dir(path: Path) -> bool:
    """Can we create files in ``path`` (creating it)? A folder whose permission bits say read-only
    counts as read-only even for root, who could write there anyway (shared sample data)."""
    existing = path if path.exists() else path.parent
    try:
        if not existing.stat().st_mode & 0o222:
            return False
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", delete=True)
        probe.close()
        return True
    except OSError:
        return False


CACHE_DIR_NAME = ".pcattn_cache"


def default_cache_dir(root: Path) -> Path:
    """``<root>/.pcattn_cache`` when writable, else ``~/.cache/pcattn/<name>-<hash of root>``.

    The folder is hidden so that layouts whose classes are folders never mistake it for a class.
    """
    preferred = root / CACHE_DIR_NAME
    if _writable_dir(preferred):
        return preferred
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    base = Path(os.environ.get("PCATTN_CACHE", Path.home() / ".cache" / "pcattn"))
    return base / f"{root.name}-{digest}"


def save_npz_atomic(path: Path, **arrays) -> None:
    """Write ``np.savez`` arrays to ``path`` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


class PointCloudDataset(Dataset):
    """Base class: a list of shapes held in memory as ``(S, M, 3 or 6)`` float32.

    Subclasses implement :meth:`_list_items` (the shapes of ``split``, with labels) and
    :meth:`_load_item` (parse one file into ``(N, 3)`` or ``(N, 6)`` float32, resampled to
    ``cache_points`` rows by :meth:`_fit`), and set
    ``self.classes`` before calling :meth:`_build`.

    Each sample is a dict:

    * ``pos``: float32 ``(P, 3)``, ``P = num_points``;
    * ``label``: int64 scalar ``()``;
    * ``normals``: float32 ``(P, 3)``, only when ``use_normals``.

    Attributes:
        classes: class names, index = label.
        names: per-shape names (``chair_0001``), aligned with the samples.
        labels: int64 ``(S,)`` array of labels.
        up_axis: index of the vertical axis of the stored clouds (1 = y, 2 = z).
    """

    tag = "points"
    up_axis = 1

    def __init__(
        self,
        root,
        split: str = "train",
        num_points: int = 1024,
        use_normals: bool = False,
        transform: Optional[Callable[[Dict[str, Tensor]], Dict[str, Tensor]]] = None,
        cache_points: Optional[int] = None,
        sampling: str = "first",
        cache: bool = True,
        cache_dir=None,
        progress: Optional[bool] = None,
    ):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if int(num_points) <= 0:
            raise ValueError(f"num_points must be positive, got {num_points}")
        if sampling not in SAMPLING_METHODS:
            raise ValueError(f"sampling must be one of {SAMPLING_METHODS}, got {sampling!r}")
        self.root = Path(root).expanduser()
        self.split = split
        self.num_points = int(num_points)
        self.cache_points = max(int(cache_points or num_points), self.num_points)
        self.use_normals = bool(use_normals)
        self.transform = transform
        self.sampling = sampling
        self.cache_enabled = bool(cache)
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.progress = progress
        self.classes: List[str] = []

    # -- subclass hooks -------------------------------------------------------------------
    def _list_items(self) -> List[Item]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load_item(self, item: Item, index: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _options(self) -> Dict:
        """Options that change the cached arrays (part of the cache fingerprint)."""
        return {"sampling": self.sampling, "cache_points": self.cache_points}

    def _fingerprint_files(self, items: Sequence[Item]) -> List[Path]:
        """Files whose change invalidates the cache (defaults to the items' files)."""
        return [item.path for item in items]

    # -- building ------------------------------------------------------------------------
    @property
    def cache_path(self) -> Path:
        """The ``.npz`` cache of this split and option set (see the module docstring)."""
        directory = self._cache_dir if self._cache_dir is not None else default_cache_dir(self.root)
        return directory / f"{self.tag}_{self.split}_{self.cache_points}pts_{self.sampling}.npz"

    def _fingerprint(self, items: Sequence[Item]) -> str:
        entries = []
        for path in self._fingerprint_files(items):
            try:
                stat = path.stat()
            except FileNotFoundError:
                raise FileNotFoundError(f"{path}: file not found") from None
            try:
                relative = str(path.relative_to(self.root))
            except ValueError:
                relative = str(path)
            entries.append([relative, stat.st_size, stat.st_mtime_ns])
        payload = {
            "version": CACHE_VERSION,
            "class": type(self).__name__,
            "classes": self.classes,
            "items": [[item.name, item.label] for item in items],
            "files": entries,
            "options": self._options(),
        }
        return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _build(self) -> None:
        """List the items, then load the arrays from the cache or by parsing every file."""
        items = self._list_items()
        if not items:
            raise FileNotFoundError(f"{self.root}: no {self.split} shapes found")
        fingerprint = self._fingerprint(items) if self.cache_enabled else ""
        arrays = self._read_cache(fingerprint) if self.cache_enabled else None
        if arrays is not None and arrays.shape[:2] != (len(items), self.cache_points):
            arrays = None
        if arrays is None:
            arrays = self._parse(items)
            if self.cache_enabled:
                self._write_cache(fingerprint, arrays)
        self.points = arrays
        self.labels = np.asarray([item.label for item in items], dtype=np.int64)
        self.names = [item.name for item in items]
        self.has_normals = self.points.shape[2] >= 6
        if self.use_normals and not self.has_normals:
            raise ValueError(f"{self.root}: use_normals=True but the {self.split} files have no normals")

    def _read_cache(self, fingerprint: str) -> Optional[np.ndarray]:
        path = self.cache_path
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                if str(stored["fingerprint"]) != fingerprint:
                    return None
                return stored["points"]
        except Exception as error:  # a damaged cache is rebuilt, never trusted
            warnings.warn(f"ignoring unreadable cache {path}: {error}")
            return None

    def _write_cache(self, fingerprint: str, points: np.ndarray) -> None:
        path = self.cache_path
        try:
            save_npz_atomic(path, points=points, fingerprint=np.asarray(fingerprint))
        except OSError as error:
            warnings.warn(f"could not write cache {path}: {error}")

    def _parse(self, items: Sequence[Item]) -> np.ndarray:
        from tqdm.auto import tqdm

        show = len(items) >= 100 if self.progress is None else self.progress
        rows = []
        width = None
        for index, item in enumerate(tqdm(items, desc=f"parsing {self.tag} {self.split}", disable=None if show else True,
                                          unit="file")):
            cloud = self._fit(self._load_item(item, index), index)
            if width is None:
                width = cloud.shape[1]
            elif cloud.shape[1] != width:
                # Mixed files (some with normals, some without): keep positions only.
                width = min(width, cloud.shape[1])
            rows.append(cloud)
        return np.stack([cloud[:, :width] for cloud in rows]).astype(np.float32, copy=False)

    def _fit(self, cloud: np.ndarray, index: int) -> np.ndarray:
        """Resample a parsed cloud ``(N, C)`` to ``(cache_points, C)`` (seeded per shape)."""
        rng = np.random.default_rng(index)
        return np.ascontiguousarray(resample_rows(cloud, self.cache_points, self.sampling, rng), np.float32)

    # -- access --------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.points.shape[0])

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        cloud = self.points[index, : self.num_points]
        sample = {
            "pos": torch.from_numpy(np.array(cloud[:, :3])),
            "label": torch.tensor(int(self.labels[index]), dtype=torch.long),
        }
        if self.use_normals:
            sample["normals"] = torch.from_numpy(np.array(cloud[:, 3:6]))
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(self.classes)``."""
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, shapes={len(self)}, "
                f"classes={len(self.classes)}, num_points={self.num_points}, use_normals={self.use_normals})")
