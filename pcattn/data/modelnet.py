"""ModelNet10/40 in its three common distributions.

* :class:`ModelNetOFF`: the Princeton OFF meshes (``ModelNet10.zip`` / ``ModelNet40.zip``).
* :class:`ModelNetNormalResampled`: PointNet++'s ``modelnet40_normal_resampled`` text files
  (and its 10-class lists).
* :class:`ModelNetHDF5`: PointNet's ``modelnet40_ply_hdf5_2048`` HDF5 files.

All return the same sample dict as every :mod:`pcattn.data` dataset
(``pos (P, 3)``, ``label ()``, optional ``normals (P, 3)``); see ``datasets/README.md`` for the
layouts and where to download them.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
from torch import Tensor

from ..optional import require
from .base import (Item, PointCloudDataset, normalize_unit_sphere, resample_rows, scan_class_folders,
                   visible_dirs)
from .io import check_extent, read_off, read_text_points, sample_mesh_surface

__all__ = ["ModelNetOFF", "ModelNetNormalResampled", "ModelNetHDF5", "read_split_list"]

Transform = Optional[Callable[[Dict[str, Tensor]], Dict[str, Tensor]]]


def read_split_list(path: Path) -> List[str]:
    """Read a list file (one name per line, blank lines ignored) -> list of names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with open(path, "r", encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


# ---------------------------------------------------------------------------------------------
# PointNet++ modelnet40_normal_resampled
# ---------------------------------------------------------------------------------------------

class ModelNetNormalResampled(PointCloudDataset):
    """PointNet++ ``modelnet40_normal_resampled`` layout (also its 10-class lists).

    Layout under ``root``::

        modelnet40_shape_names.txt       class names, one per line (index = label)
        modelnet40_train.txt             shape ids of the split, e.g. ``night_stand_0001``
        modelnet40_test.txt
        <class>/<class>_0001.txt         10,000 lines ``x,y,z,nx,ny,nz``

    With ``num_classes=10`` the ``modelnet10_*`` lists of the same folder are used. Other prefixes
    (``<prefix>_shape_names.txt``, ``<prefix>_train.txt``, ...) work with ``prefix=``; the
    built-in dataset uses ``prefix="builtin"``.

    Args:
        root: the folder above.
        split: ``"train"`` or ``"test"``.
        num_points: points per sample ``P``.
        use_normals: also return ``normals (P, 3)``.
        transform: callable on the sample dict.
        num_classes: 40 or 10 (which list files to use); ``None`` picks 40 when present.
        prefix: list-file prefix; overrides ``num_classes``.
        sampling: ``"first"`` (first ``P`` lines, PointNet++ default), ``"fps"`` or ``"random"``.
        cache_points: points kept per shape in the cache (``>= num_points``; default ``num_points``).
        cache, cache_dir: see :mod:`pcattn.data.base`.

    Samples: ``pos (P, 3)`` float32, ``label ()`` int64, ``normals (P, 3)`` when ``use_normals``.
    The clouds are y-up (``up_axis = 1``) and already inside the unit sphere.
    """

    tag = "normal_resampled"
    up_axis = 1

    def __init__(self, root, split: str = "train", num_points: int = 1024, use_normals: bool = False,
                 transform: Transform = None, num_classes: Optional[int] = None, prefix: Optional[str] = None,
                 sampling: str = "first", cache_points: Optional[int] = None, cache: bool = True,
                 cache_dir=None, progress: Optional[bool] = None):
        super().__init__(root, split, num_points, use_normals, transform, cache_points, sampling, cache,
                         cache_dir, progress)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: dataset folder not found")
        self.prefix = prefix or self._guess_prefix(num_classes)
        self.tag = f"normal_resampled_{self.prefix}"
        self.shape_names_file = self.root / f"{self.prefix}_shape_names.txt"
        self.split_file = self.root / f"{self.prefix}_{split}.txt"
        self.classes = read_split_list(self.shape_names_file)
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"{self.shape_names_file}: duplicate class names")
        self._build()

    def _guess_prefix(self, num_classes: Optional[int]) -> str:
        if num_classes is not None:
            if num_classes not in (10, 40):
                raise ValueError(f"num_classes must be 10 or 40 (or give prefix=), got {num_classes}")
            return f"modelnet{num_classes}"
        for prefix in ("modelnet40", "modelnet10"):
            if (self.root / f"{prefix}_shape_names.txt").is_file():
                return prefix
        found = sorted(self.root.glob("*_shape_names.txt"))
        if len(found) == 1:
            return found[0].name[: -len("_shape_names.txt")]
        raise FileNotFoundError(
            f"{self.root}: expected modelnet40_shape_names.txt (or modelnet10_/<prefix>_shape_names.txt); "
            f"found {[p.name for p in found]}"
        )

    def _options(self) -> Dict:
        return {**super()._options(), "prefix": self.prefix}

    def _fingerprint_files(self, items):
        return [self.shape_names_file, self.split_file] + [item.path for item in items]

    def _list_items(self) -> List[Item]:
        index = {name: label for label, name in enumerate(self.classes)}
        if not self.split_file.is_file():
            raise FileNotFoundError(f"{self.split_file}: split list not found")
        items = []
        with open(self.split_file, "r", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                name = line.strip()
                if not name:
                    continue
                category = name.rsplit("_", 1)[0]
                if category not in index:
                    raise ValueError(
                        f"{self.split_file}, line {number}: shape {name!r} has class {category!r}, "
                        f"which is not in {self.shape_names_file.name}"
                    )
                path = self.root / category / f"{name}.txt"
                if not path.is_file():
                    raise FileNotFoundError(
                        f"{path}: file not found (named on line {number} of {self.split_file})")
                items.append(Item(path, index[category], name))
        if not items:
            raise ValueError(f"{self.split_file}: split list is empty")
        return items

    def _load_item(self, item: Item, index: int) -> np.ndarray:
        return read_text_points(item.path, columns=6)


# ---------------------------------------------------------------------------------------------
# PointNet modelnet40_ply_hdf5_2048
# ---------------------------------------------------------------------------------------------

def _h5_sort_key(path: Path):
    number = re.findall(r"\d+", path.stem)
    return (int(number[-1]) if number else -1, path.name)


def _batched_fps(clouds: np.ndarray, count: int, chunk: int = 256) -> np.ndarray:
    """Farthest point sampling of equally sized clouds ``(S, N, C) -> (S, count, C)``.

    Same rule as :func:`pcattn.geometry.farthest_point_sampling` (start at each cloud's first
    point), vectorised over a chunk of clouds in NumPy: much faster than one call per cloud.
    """
    out = []
    for start in range(0, len(clouds), chunk):
        block = clouds[start:start + chunk]
        xyz = block[:, :, :3].astype(np.float32)
        rows = np.arange(len(block))
        chosen = np.zeros((len(block), count), dtype=np.int64)
        distance = np.full(xyz.shape[:2], np.inf, dtype=np.float32)
        for step in range(1, count):
            delta = xyz - xyz[rows, chosen[:, step - 1]][:, None, :]
            np.minimum(distance, np.einsum("snc,snc->sn", delta, delta), out=distance)
            chosen[:, step] = np.argmax(distance, axis=1)
        out.append(np.take_along_axis(block, chosen[:, :, None], axis=1))
    return np.concatenate(out)


def _h5_numbers(handle, name: str, path: Path) -> np.ndarray:
    """The HDF5 dataset ``name`` as a float32 (``label``: as stored) array, with named errors for a
    group in its place, or values that are not real numbers."""
    h5py = require("h5py", "io", "reading HDF5 files")

    node = handle[name]
    if not isinstance(node, h5py.Dataset):
        raise ValueError(f"{path}: {name!r} is an HDF5 {type(node).__name__.lower()}, expected a dataset of numbers")
    values = node[()]
    if not isinstance(values, np.ndarray) or values.dtype.kind not in "fiu":
        kind = values.dtype if isinstance(values, np.ndarray) else type(values).__name__
        raise ValueError(f"{path}: dataset {name!r} holds {kind} values, expected real numbers")
    if name == "label":
        return values
    with np.errstate(over="ignore"):
        converted = values.astype(np.float32)
    if np.isfinite(values).all() and not np.isfinite(converted).all():
        raise ValueError(f"{path}: dataset {name!r} holds values beyond float32's range")
    return converted


def _h5_labels(label: np.ndarray, path: Path) -> np.ndarray:
    """Integer labels; float labels are accepted only when they are whole numbers (1.0, not 1.7)."""
    if label.dtype.kind == "f":
        fractional = np.flatnonzero(~np.isfinite(label) | (label != np.round(label)))
        if fractional.size:
            row = int(fractional[0])
            raise ValueError(f"{path}: label {float(label[row])} of shape {row} is not a whole number (class labels are "
                             f"integers)")
    return label.astype(np.int64)


class ModelNetHDF5(PointCloudDataset):
    """PointNet's ``modelnet40_ply_hdf5_2048`` HDF5 files, read with h5py.

    Layout under ``root``::

        shape_names.txt              40 class names (index = label)
        ply_data_train0.h5 ... 4     datasets ``data`` (S, 2048, 3) float32, ``label`` (S, 1) uint8,
        ply_data_test0.h5, 1         optional ``normal`` (S, 2048, 3), ``faceId`` (ignored)

    The files are already binary, so they are read straight into memory; only farthest point
    subsampling (``sampling="fps"``) is cached (see :mod:`pcattn.data.base`).

    Args:
        root, split, num_points, use_normals, transform: as for every dataset.
        sampling: ``"first"`` (default), ``"fps"`` or ``"random"`` to bring 2048 points to ``P``.
        cache, cache_dir: where the FPS result is cached.

    Samples: ``pos (P, 3)``, ``label ()``, ``normals (P, 3)`` when ``use_normals`` (needs a
    ``normal`` dataset in the files). y-up (``up_axis = 1``), unit sphere.
    """

    tag = "hdf5"
    up_axis = 1

    def __init__(self, root, split: str = "train", num_points: int = 1024, use_normals: bool = False,
                 transform: Transform = None, sampling: str = "first", cache: bool = True, cache_dir=None,
                 progress: Optional[bool] = None):
        super().__init__(root, split, num_points, use_normals, transform, None, sampling, cache, cache_dir,
                         progress)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: dataset folder not found")
        names_file = self.root / "shape_names.txt"
        self.classes = read_split_list(names_file)
        self.files = sorted(self.root.glob(f"ply_data_{split}*.h5"), key=_h5_sort_key)
        if not self.files:
            raise FileNotFoundError(f"{self.root}: no ply_data_{split}*.h5 files")
        self._read_files()

    def _read_files(self) -> None:
        h5py = require("h5py", "io", "reading ModelNet's HDF5 files")

        clouds, labels, names = [], [], []
        for path in self.files:
            try:
                with h5py.File(path, "r") as handle:
                    if "data" not in handle or "label" not in handle:
                        raise ValueError(f"{path}: missing dataset 'data' or 'label' (found {sorted(handle.keys())})")
                    data = _h5_numbers(handle, "data", path)
                    label = _h5_labels(_h5_numbers(handle, "label", path).reshape(-1), path)
                    normal = _h5_numbers(handle, "normal", path) if "normal" in handle else None
            except (OSError, RuntimeError, KeyError) as error:  # h5py: damaged metadata, links, a cut file
                raise ValueError(f"{path}: not a readable HDF5 file ({error})") from None
            if data.ndim != 3 or data.shape[2] != 3 or data.shape[1] == 0:
                raise ValueError(f"{path}: dataset 'data' must be (S, N, 3) with N > 0, got {data.shape}")
            if label.shape[0] != data.shape[0]:
                raise ValueError(f"{path}: 'label' has {label.shape[0]} entries but 'data' has {data.shape[0]} shapes")
            if normal is not None and normal.shape != data.shape:
                raise ValueError(f"{path}: 'normal' shape {normal.shape} differs from 'data' shape {data.shape}")
            bad = (label < 0) | (label >= len(self.classes))
            if bad.any():
                raise ValueError(f"{path}: label {label[bad][0]} of shape {int(np.flatnonzero(bad)[0])} is out of "
                                 f"range for {len(self.classes)} classes in shape_names.txt")
            finite = np.isfinite(data).all(axis=(1, 2))
            if not finite.all():
                raise ValueError(f"{path}: non-finite coordinates in shape {int(np.flatnonzero(~finite)[0])}")
            for shape in range(len(data)):
                check_extent(f"{path}, shape {shape}", data[shape])
            cloud = data if normal is None else np.concatenate([data, normal], axis=2)
            clouds.append(cloud)
            labels.append(label)
            names.extend(f"{path.stem}_{i}" for i in range(len(label)))
        width = min(c.shape[2] for c in clouds)
        stacked = np.concatenate([c[:, :, :width] for c in clouds], axis=0)
        if self.sampling == "fps" and stacked.shape[1] > self.num_points:
            stacked = self._cached_fps(stacked)
        elif self.sampling != "first" or stacked.shape[1] < self.num_points:
            stacked = np.stack([self._fit(cloud, i) for i, cloud in enumerate(stacked)])
        self.points = np.ascontiguousarray(stacked)
        self.labels = np.concatenate(labels)
        self.names = names
        self.has_normals = width >= 6
        if self.use_normals and not self.has_normals:
            raise ValueError(f"{self.root}: use_normals=True but the {self.split} files have no 'normal' dataset")

    def _cached_fps(self, clouds: np.ndarray) -> np.ndarray:
        """FPS of every shape (slow: ~50 ms each), cached like the text formats' parsing."""
        items = [Item(path, 0, path.name) for path in self.files]
        fingerprint = self._fingerprint(items) if self.cache_enabled else ""
        sampled = self._read_cache(fingerprint) if self.cache_enabled else None
        if sampled is None or sampled.shape[0] != clouds.shape[0]:
            sampled = _batched_fps(clouds, self.num_points)
            if self.cache_enabled:
                self._write_cache(fingerprint, sampled)
        return sampled


# ---------------------------------------------------------------------------------------------
# Princeton OFF meshes
# ---------------------------------------------------------------------------------------------

def _looks_like_class_root(folder: Path) -> bool:
    """True when ``folder`` holds ``<class>/{train,test}/*.off``."""
    if not folder.is_dir():
        return False
    for child in visible_dirs(folder):
        if (child / "train").is_dir() or (child / "test").is_dir():
            return True
    return False


def _safe_extract(archive: Path, destination: Path, top: str) -> None:
    """Extract the ``top/`` folder of a zip (skipping ``__MACOSX``) into ``destination``."""
    with zipfile.ZipFile(archive) as handle:
        members = [m for m in handle.namelist() if m.startswith(f"{top}/") and "__MACOSX" not in m]
        if not members:
            raise ValueError(f"{archive}: no '{top}/' folder inside the zip")
        target = destination.resolve()
        staging = destination / f".{top}.extracting"
        if staging.exists():
            shutil.rmtree(staging)
        for member in members:
            if not (staging / member).resolve().is_relative_to(staging.resolve()):
                raise ValueError(f"{archive}: unsafe path {member!r} in the zip")
        handle.extractall(staging, members)
        (staging / top).rename(target / top)
        shutil.rmtree(staging)


class ModelNetOFF(PointCloudDataset):
    """ModelNet10/40 Princeton OFF meshes, sampled to point clouds.

    Finds the meshes, in this order, as ``<class>/{train,test}/<class>_0001.off`` under:
    ``root`` itself; ``root/ModelNet10`` (or ``ModelNet40``); ``root/raw`` (the folder
    :class:`torch_geometric.datasets.ModelNet` leaves behind); else extracts
    ``root/ModelNet10.zip`` (``ModelNet40.zip``) into ``root``; else, with ``download=True``,
    downloads the zip from the Princeton URL that ``torch_geometric.datasets.ModelNet`` uses.

    Each mesh is read by :func:`pcattn.data.io.read_off` (both header forms, incl. the archive's
    ``OFF490 518 0`` quirk), ``cache_points`` points are drawn on its surface (area-weighted, with face
    normals, seeded by the shape's index so the cache is reproducible), and the cloud is moved to the
    unit sphere (centroid at 0, max radius 1). Class names: the sorted class folders.

    Args:
        root: see above.
        split: ``"train"`` or ``"test"``.
        num_points: points per sample ``P``.
        use_normals: also return ``normals (P, 3)`` (the sampled faces' normals).
        transform: callable on the sample dict.
        name: ``"10"`` or ``"40"``; ``None`` guesses from what is on disk.
        download: allow downloading when nothing is found locally.
        cache_points, cache, cache_dir: see :mod:`pcattn.data.base`.

    Samples: ``pos (P, 3)``, ``label ()``, optional ``normals (P, 3)``. z-up (``up_axis = 2``).
    """

    up_axis = 2

    def __init__(self, root, split: str = "train", num_points: int = 1024, use_normals: bool = False,
                 transform: Transform = None, name: Optional[str] = None, download: bool = False,
                 cache_points: Optional[int] = None, cache: bool = True, cache_dir=None,
                 progress: Optional[bool] = None):
        super().__init__(root, split, num_points, use_normals, transform, cache_points, "random", cache,
                         cache_dir, progress)
        if name is not None and str(name) not in ("10", "40"):
            raise ValueError(f"name must be '10' or '40', got {name!r}")
        self.name = None if name is None else str(name)
        self.mesh_root = self._locate(download)
        self.tag = f"off_{self.mesh_root.name}"
        self.classes = [d.name for d in visible_dirs(self.mesh_root)]
        self._build()

    def _locate(self, download: bool) -> Path:
        names = [self.name] if self.name else ["40", "10"]
        if _looks_like_class_root(self.root):
            return self.root
        for candidate in [self.root / f"ModelNet{n}" for n in names] + [self.root / "raw"]:
            if _looks_like_class_root(candidate):
                return candidate
        for n in names:
            archive = self.root / f"ModelNet{n}.zip"
            if archive.is_file():
                _safe_extract(archive, self.root, f"ModelNet{n}")
                return self.root / f"ModelNet{n}"
        if download:
            return self._download(self.name or "40")
        raise FileNotFoundError(
            f"{self.root}: no ModelNet{self.name or ''} OFF meshes found (looked for <class>/{{train,test}}/*.off, "
            f"{' or '.join(f'ModelNet{n}/' for n in names)} folders, raw/, and "
            f"{' / '.join(f'ModelNet{n}.zip' for n in names)}). "
            f"Put the zip there or pass download=True; see datasets/README.md"
        )

    def _download(self, name: str) -> Path:
        from torch_geometric.data import download_url
        from torch_geometric.datasets import ModelNet

        self.root.mkdir(parents=True, exist_ok=True)
        archive = Path(download_url(ModelNet.urls[name], str(self.root)))
        _safe_extract(archive, self.root, f"ModelNet{name}")
        return self.root / f"ModelNet{name}"

    def _list_items(self) -> List[Item]:
        return scan_class_folders(self.mesh_root, self.classes, self.split, (".off",), files_name=".off files",
                                  unknown="unexpected file in an OFF dataset, extension")

    def _load_item(self, item: Item, index: int) -> np.ndarray:
        vertices, faces = read_off(item.path)
        try:
            pos, normals = sample_mesh_surface(vertices, faces, self.cache_points, np.random.default_rng(index))
        except ValueError as error:
            raise ValueError(f"{item.path}: {error}") from None
        return normalize_unit_sphere(np.concatenate([pos, normals], axis=1))
