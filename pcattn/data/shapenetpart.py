"""ShapeNetPart (Yi et al. 2016) in the three layouts people have, read into one sample format.

* ``"normal"``: PointNet++'s ``shapenetcore_partanno_segmentation_benchmark_v0_normal``: one
  ``<synset>/<id>.txt`` per shape, lines ``x y z nx ny nz label`` (global part id 0-49, written as
  a float), ``synsetoffset2category.txt``, ``train_test_split/shuffled_{train,val,test}_file_list.json``
  (entries ``shape_data/<synset>/<id>``).
* ``"v0"``: the original release ``shapenetcore_partanno_segmentation_benchmark_v0``:
  ``<synset>/points/<id>.pts`` (``x y z``) and ``<synset>/points_label/<id>.seg`` (per-category part
  ids from 1), mapped to global ids by PointNet's ``shapenet_part_overallid_to_catid_partid.json``
  (the standard table below when no file is given), and the same split lists.
* ``"hdf5"``: PointNet's ``shapenet_part_seg_hdf5_data``: ``ply_data_*.h5`` holding ``data (S, 2048, 3)``,
  ``label (S, 1)`` (category) and ``pid (S, 2048)`` (global part id), listed in
  ``{train,val,test}_hdf5_file_list.txt``.

Samples (all formats): ``pos (P, 3)`` float32, ``category ()`` int64 (index into
:data:`SHAPENET_CATEGORIES`), ``seg (P,)`` int64 global part ids, ``normals (P, 3)`` with
``use_normals`` (``"normal"`` format only).

Finding the files: :func:`locate_shapenetpart` looks for a layout under its usual folder name
(:data:`SHAPENET_FOLDERS`) in the data directory, extracts ``<folder>.zip`` placed there, or
downloads the archive (:data:`SHAPENET_URLS`); :func:`guess_shapenetpart_format` tells the layout
of one folder. See ``datasets/README.md``.
"""
from __future__ import annotations

import json
import re
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from ..optional import require
from .base import resample_rows
from .builtin import default_data_dir
from .modelnet import _safe_extract
from .parts import part_sample

__all__ = ["ShapeNetPart", "SHAPENET_CATEGORIES", "SHAPENET_SYNSETS", "SHAPENET_CATEGORY_PARTS", "SHAPENET_PART_NAMES",
           "FORMATS", "read_synset_file", "read_shape_list", "read_part_id_map", "read_normal_shape", "read_v0_shape",
           "read_hdf5_parts", "SHAPENET_FOLDERS", "SHAPENET_URLS", "SHAPENET_ARCHIVE_TOPS",
           "guess_shapenetpart_format", "locate_shapenetpart"]

FORMATS = ("normal", "v0", "hdf5")
#: the 16 categories in PointNet's order (category id = index), their synsets and part counts
SHAPENET_CATEGORIES: Tuple[str, ...] = (
    "Airplane", "Bag", "Cap", "Car", "Chair", "Earphone", "Guitar", "Knife",
    "Lamp", "Laptop", "Motorbike", "Mug", "Pistol", "Rocket", "Skateboard", "Table")
SHAPENET_SYNSETS: Tuple[str, ...] = (
    "02691156", "02773838", "02954340", "02958343", "03001627", "03261776", "03467517", "03624134",
    "03636649", "03642806", "03790512", "03797390", "03948459", "04099429", "04225987", "04379243")
_PART_COUNTS = (4, 2, 2, 4, 4, 3, 3, 2, 4, 2, 6, 2, 3, 3, 3, 3)
#: for each category id, its global part ids (Airplane 0-3, ..., Table 47-49)
SHAPENET_CATEGORY_PARTS: Tuple[Tuple[int, ...], ...] = tuple(
    tuple(range(sum(_PART_COUNTS[:c]), sum(_PART_COUNTS[:c + 1]))) for c in range(len(_PART_COUNTS)))
NUM_PARTS = sum(_PART_COUNTS)
#: global part names, indexed by global part id: ``"<Category>/<part id within the category, from 1>"`` (the
#: numbering of the v0 release's ``.seg`` files; the releases name no parts)
SHAPENET_PART_NAMES: Tuple[str, ...] = tuple(
    f"{name}/{local}" for name, count in zip(SHAPENET_CATEGORIES, _PART_COUNTS) for local in range(1, count + 1))
_SPLIT_LISTS = {"normal": "train_test_split/shuffled_{}_file_list.json", "v0": "train_test_split/shuffled_{}_file_list.json",
                "hdf5": "{}_hdf5_file_list.txt"}

#: each layout's usual folder name (the name of its archive without ``.zip``), looked for under the data directory
SHAPENET_FOLDERS: Dict[str, str] = {
    "normal": "shapenetcore_partanno_segmentation_benchmark_v0_normal",
    "v0": "shapenetcore_partanno_segmentation_benchmark_v0",
    "hdf5": "shapenet_part_seg_hdf5_data",
}
#: where each archive was published: the Stanford ShapeNet server (PointNet++ and
#: ``torch_geometric.datasets.ShapeNet`` for ``"normal"``, the part annotation page for ``"v0"``,
#: PointNet's ``part_seg/download_data.sh`` for ``"hdf5"``). The server is often offline: see
#: ``datasets/README.md`` for mirrors.
SHAPENET_URLS: Dict[str, str] = {
    "normal": "https://shapenet.cs.stanford.edu/media/shapenetcore_partanno_segmentation_benchmark_v0_normal.zip",
    "v0": "https://shapenet.cs.stanford.edu/ericyi/shapenetcore_partanno_segmentation_benchmark_v0.zip",
    "hdf5": "https://shapenet.cs.stanford.edu/media/shapenet_part_seg_hdf5_data.zip",
}
#: the top folder inside each archive (PointNet's HDF5 zip holds ``hdf5_data/``; a repacked copy
#: may use the usual folder name), also accepted as folder names when looking for the files
SHAPENET_ARCHIVE_TOPS: Dict[str, Tuple[str, ...]] = {
    "normal": (SHAPENET_FOLDERS["normal"],),
    "v0": (SHAPENET_FOLDERS["v0"],),
    "hdf5": ("hdf5_data", SHAPENET_FOLDERS["hdf5"]),
}
_LOCATE_ORDER = ("normal", "hdf5", "v0")
_SYNSET_NAME = re.compile(r"\d{8}")


def read_synset_file(path) -> Dict[str, str]:
    """``synsetoffset2category.txt``: lines ``<Name> <synset>`` -> ``{synset: name}``."""
    path = Path(path)
    mapping = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            raise ValueError(f"{path}, line {number}: expected '<category> <synset>', got {line!r}")
        mapping[fields[1]] = fields[0]
    return mapping


def read_shape_list(path) -> List[Tuple[str, str]]:
    """A ``shuffled_*_file_list.json``: entries ``shape_data/<synset>/<id>`` -> ``[(synset, id)]``
    (a repeated entry is kept once, with a warning)."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of 'shape_data/<synset>/<id>' entries")
    shapes: List[Tuple[str, str]] = []
    for position, entry in enumerate(entries):
        parts = entry.split("/") if isinstance(entry, str) else []
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError(f"{path}, entry {position}: expected 'shape_data/<synset>/<id>', got {entry!r}")
        shape = (parts[1], parts[2])
        if shape in shapes:
            warnings.warn(f"{path}, entry {position}: {entry} is listed more than once; read once")
            continue
        shapes.append(shape)
    return shapes


def read_part_id_map(path) -> Dict[Tuple[str, int], int]:
    """PointNet's ``shapenet_part_overallid_to_catid_partid.json`` (a list whose entry ``g`` is
    ``[synset, per-category part id]``) -> ``{(synset, part id): global id g}``."""
    path = Path(path)
    entries = json.loads(path.read_text())
    mapping = {}
    for global_id, entry in enumerate(entries):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], int)):
            raise ValueError(f"{path}, entry {global_id}: expected [synset, part id], got {entry!r}")
        mapping[(str(entry[0]), entry[1])] = global_id
    return mapping


def _standard_part_id_map() -> Dict[Tuple[str, int], int]:
    return {(synset, local + 1): parts[local]
            for synset, parts in zip(SHAPENET_SYNSETS, SHAPENET_CATEGORY_PARTS) for local in range(len(parts))}


def _whole_labels(path: Path, values: np.ndarray, allowed: Sequence[int], what: str) -> np.ndarray:
    """Labels as int64, or a ValueError naming the file and the first bad line."""
    labels = np.rint(values).astype(np.int64)
    bad = np.flatnonzero((np.abs(values - labels) > 1e-6) | ~np.isin(labels, allowed))
    if bad.size:
        raise ValueError(f"{path}, line {bad[0] + 1}: {what} {values[bad[0]]:g} is not one of {list(allowed)}")
    return labels


def _read_table(path: Path, columns: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as error:
        raise ValueError(f"{path}: not a table of numbers ({error})") from None
    if table.shape[0] == 0 or table.shape[1] != columns:
        raise ValueError(f"{path}: expected lines of {columns} numbers, got a table of shape {table.shape}")
    if not np.isfinite(table).all():
        raise ValueError(f"{path}, line {int(np.flatnonzero(~np.isfinite(table).all(1))[0]) + 1}: NaN or infinite value")
    return table


def read_normal_shape(path, synset: str) -> Tuple[np.ndarray, np.ndarray]:
    """One ``"normal"``-format ``.txt``: returns ``(n, 6)`` float32 ``xyz + normals`` and ``(n,)`` global
    part ids (checked to belong to ``synset``'s category)."""
    path = Path(path)
    table = _read_table(path, 7)
    parts = SHAPENET_CATEGORY_PARTS[SHAPENET_SYNSETS.index(synset)]
    return table[:, :6].astype(np.float32), _whole_labels(path, table[:, 6], parts, "part label")


def read_v0_shape(pts_path, seg_path, synset: str,
                  part_map: Optional[Dict[Tuple[str, int], int]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """One ``"v0"`` shape: ``.pts`` positions and ``.seg`` per-category ids mapped to global ids.
    Returns ``(n, 3)`` float32 and ``(n,)`` int64."""
    pts_path, seg_path = Path(pts_path), Path(seg_path)
    part_map = part_map if part_map is not None else _standard_part_id_map()
    pos = _read_table(pts_path, 3)
    local_ids = sorted(local for (owner, local) in part_map if owner == synset)
    local = _whole_labels(seg_path, _read_table(seg_path, 1)[:, 0], local_ids, f"part id of {synset}")
    if local.shape[0] != pos.shape[0]:
        raise ValueError(f"{seg_path}: {local.shape[0]} labels for the {pos.shape[0]} points of {pts_path}")
    lookup = np.zeros(max(local_ids) + 1, dtype=np.int64)
    lookup[local_ids] = [part_map[(synset, i)] for i in local_ids]
    return pos.astype(np.float32), lookup[local]


def read_hdf5_parts(path) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One PointNet ``ply_data_*.h5``: ``data (S, P, 3)`` float32, ``label (S,)`` and ``pid (S, P)`` int64."""
    h5py = require("h5py", "io", "reading ShapeNetPart's HDF5 files")

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with h5py.File(path, "r") as handle:
        missing = [key for key in ("data", "label", "pid") if key not in handle]
        if missing:
            raise ValueError(f"{path}: missing dataset(s) {missing}; expected data (S, P, 3), label (S, 1), pid (S, P)")
        data, label, pid = (np.asarray(handle[key][()]) for key in ("data", "label", "pid"))
    if data.ndim != 3 or data.shape[2] != 3:
        raise ValueError(f"{path}: data must be (S, P, 3), got {data.shape}")
    if label.reshape(-1).shape[0] != data.shape[0] or pid.shape != data.shape[:2]:
        raise ValueError(f"{path}: label {label.shape} and pid {pid.shape} do not match data {data.shape}")
    category = _whole_labels(path, label.reshape(-1).astype(np.float64), range(len(SHAPENET_CATEGORIES)), "category")
    parts = _whole_labels(path, pid.reshape(-1).astype(np.float64), range(NUM_PARTS), "part id").reshape(pid.shape)
    for row in range(data.shape[0]):
        outside = ~np.isin(parts[row], SHAPENET_CATEGORY_PARTS[category[row]])
        if outside.any():
            raise ValueError(f"{path}: shape {row} ({SHAPENET_CATEGORIES[category[row]]}) has part id "
                             f"{int(parts[row][outside][0])} of another category")
    return data.astype(np.float32), category, parts


class ShapeNetPart(Dataset):
    """ShapeNetPart part segmentation from any of :data:`FORMATS` (see the module docstring).

    Args:
        root: the dataset folder (the one holding the synset folders, or the ``.h5`` files and lists).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"trainval"``.
        format: ``"normal"``, ``"v0"`` or ``"hdf5"``.
        num_points: points per sample ``P`` (shapes with fewer points repeat random points); ``None``
            keeps every point of each shape (samples of different sizes ``P_i``: evaluate one shape per
            batch, or draw a fixed number per epoch with a ``RandomSubsample`` transform, as training
            does).
        sampling: ``"first"``, ``"random"`` or ``"fps"`` (see :func:`~pcattn.data.base.resample_rows`);
            fixed per shape by ``seed``.
        use_normals: also return ``normals (P, 3)`` (``"normal"`` format only).
        missing: ``"error"`` (default): a listed shape whose file is absent raises
            ``FileNotFoundError`` naming the file; ``"skip"``: it is left out with a warning.
        part_map: ``"v0"`` only: path of ``shapenet_part_overallid_to_catid_partid.json``
            (default: the standard table, the same as that file).
        transform: callable on the sample dict.
    """

    up_axis = 1  # ShapeNet models stand upright along y
    categories = SHAPENET_CATEGORIES
    category_parts = SHAPENET_CATEGORY_PARTS
    part_names = SHAPENET_PART_NAMES
    num_parts = NUM_PARTS

    def __init__(self, root, split: str = "train", format: str = "normal", num_points: Optional[int] = 2048,
                 sampling: str = "first", use_normals: bool = False, missing: str = "error", part_map=None,
                 transform: Optional[Callable[[Dict[str, Tensor]], Dict[str, Tensor]]] = None, seed: int = 0):
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        if split not in ("train", "val", "test", "trainval"):
            raise ValueError(f"split must be 'train', 'val', 'test' or 'trainval', got {split!r}")
        if missing not in ("error", "skip"):
            raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
        if use_normals and format != "normal":
            raise ValueError(f"use_normals needs the 'normal' format; {format!r} files hold no normals")
        self.root, self.split, self.format = Path(root).expanduser(), split, format
        self.num_points, self.use_normals, self.transform, self.missing = num_points, use_normals, transform, missing
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: ShapeNetPart folder not found")
        self._part_map = read_part_id_map(part_map) if part_map is not None else None
        clouds, labels, categories, self.names = [], [], [], []
        for cloud, seg, category, name in self._read_shapes():
            if num_points is None:
                clouds.append(np.ascontiguousarray(cloud, dtype=np.float32))
                labels.append(seg.astype(np.int64))
            else:
                rows = resample_rows(np.concatenate([cloud, seg[:, None].astype(np.float32)], axis=1), num_points,
                                     sampling, np.random.default_rng([seed, len(self.names)]))
                clouds.append(rows[:, :-1])
                labels.append(np.rint(rows[:, -1]).astype(np.int64))
            categories.append(category)
            self.names.append(name)
        if not clouds:
            raise ValueError(f"{self.root}: no {split} shapes were read")
        if len({len(cloud) for cloud in clouds}) == 1:
            self.points, self.seg = np.stack(clouds), np.stack(labels)  # (S, P, C), (S, P)
        else:  # every point of shapes of different sizes: lists of (P_i, C) and (P_i,)
            self.points, self.seg = clouds, labels
        self.shape_categories = np.asarray(categories, dtype=np.int64)
        self._warn_if_trained_on()

    def _warn_if_trained_on(self) -> None:
        """Warn when shapes of this test split are also in the training lists (train and val): a test
        mIoU measured on them is measured on shapes the model trained on."""
        if self.split != "test" or self.format == "hdf5":  # (the HDF5 lists name files, not shapes)
            return
        with warnings.catch_warnings():  # the training lists' own duplicates are reported when they are read
            warnings.simplefilter("ignore")
            trained = {f"{synset}/{shape_id}" for split in ("train", "val")
                       for path in [self.root / _SPLIT_LISTS[self.format].format(split)] if path.is_file()
                       for synset, shape_id in read_shape_list(path)}
        shared = [name for name in self.names if name in trained]
        if shared:
            warnings.warn(f"{self.root}: {len(shared)} of the {len(self.names)} test shapes are also in the train/val "
                          f"split lists (e.g. {shared[0]}): their test scores are measured on shapes trained on; "
                          f"remove them from one of the lists for a held-out score")

    def _split_files(self) -> List[Path]:
        splits = ("train", "val") if self.split == "trainval" else (self.split,)
        files = [self.root / _SPLIT_LISTS[self.format].format(s) for s in splits]
        for path in files:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: split list not found (format {self.format!r})")
        return files

    def _read_shapes(self):
        if self.format == "hdf5":
            yield from self._read_hdf5()
            return
        shapes: Dict[Tuple[str, str], Path] = {}  # each listed shape (once) -> the list naming it first
        for list_file in self._split_files():
            for shape in read_shape_list(list_file):
                shapes.setdefault(shape, list_file)
        for (synset, shape_id), list_file in shapes.items():
            if synset not in SHAPENET_SYNSETS:
                raise ValueError(f"{list_file}: unknown synset {synset!r} (shape {shape_id})")
            if self.format == "normal":
                files = [self.root / synset / f"{shape_id}.txt"]
            else:
                files = [self.root / synset / "points" / f"{shape_id}.pts",
                         self.root / synset / "points_label" / f"{shape_id}.seg"]
            absent = [path for path in files if not path.is_file()]
            if absent:
                message = f"{absent[0]}: listed in the {self.split} split but not found"
                if self.missing == "error":
                    raise FileNotFoundError(message + " (pass missing='skip', or --skip-missing to pcattn train, "
                                            "to leave such shapes out)")
                warnings.warn(message + "; skipped")
                continue
            if self.format == "normal":
                cloud, seg = read_normal_shape(files[0], synset)
                cloud = cloud if self.use_normals else cloud[:, :3]
            else:
                cloud, seg = read_v0_shape(files[0], files[1], synset, self._part_map)
            yield cloud, seg, SHAPENET_SYNSETS.index(synset), f"{synset}/{shape_id}"

    def _read_hdf5(self):
        for list_file in self._split_files():
            for number, line in enumerate(list_file.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                path = self.root / Path(line.strip()).name  # the lists name files relative to PointNet's repo
                if not path.is_file():
                    message = f"{list_file}, line {number}: {path} not found"
                    if self.missing == "error":
                        raise FileNotFoundError(message)
                    warnings.warn(message + "; skipped")
                    continue
                data, category, pid = read_hdf5_parts(path)
                for row in range(data.shape[0]):
                    yield data[row], pid[row], int(category[row]), f"{path.name}/{row}"

    def __len__(self) -> int:
        return len(self.shape_categories)

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        return part_sample(self, index)


# ---------------------------------------------------------------------------------------------
# Finding, extracting and downloading the files
# ---------------------------------------------------------------------------------------------

def guess_shapenetpart_format(root) -> Optional[str]:
    """The ShapeNetPart layout of the files directly in ``root``, else ``None``.

    ``"normal"``: synset folders (8-digit names) holding ``*.txt`` files; ``"v0"``: synset folders
    holding ``points/*.pts``; ``"hdf5"``: ``ply_data_*.h5`` files. Only names are looked at (no file
    is read), and only as far as the first match.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        return None
    synsets = [child for child in root.iterdir() if _SYNSET_NAME.fullmatch(child.name) and child.is_dir()]
    if any(next(folder.glob("*.txt"), None) is not None for folder in synsets):
        return "normal"
    if any(next((folder / "points").glob("*.pts"), None) is not None for folder in synsets):
        return "v0"
    if next(root.glob("ply_data_*.h5"), None) is not None:
        return "hdf5"
    return None


def _mismatch(folder: Path, found: str, format: str) -> ValueError:
    return ValueError(f"{folder}: holds ShapeNetPart files of format {found!r}, but format {format!r} was requested "
                      f"(pass format={found!r} / --format {found}, or point to the {format!r} files)")


def _extract_archive(archive: Path, format: str) -> Path:
    """Extract ``archive`` (of ``format``) next to itself; returns the folder under its usual name."""
    folder = archive.parent / SHAPENET_FOLDERS[format]
    try:
        with zipfile.ZipFile(archive) as handle:
            names = handle.namelist()
    except zipfile.BadZipFile as error:
        raise ValueError(f"{archive}: not a readable zip ({error}); a cut download? delete it and fetch it "
                         f"again") from None
    top = next((t for t in SHAPENET_ARCHIVE_TOPS[format] if any(n.startswith(f"{t}/") for n in names)), None)
    if top is None:
        tops = sorted({n.split("/", 1)[0] for n in names if "__MACOSX" not in n})
        raise ValueError(f"{archive}: expected a top folder {' or '.join(SHAPENET_ARCHIVE_TOPS[format])}/ inside the "
                         f"zip, found {tops[:5]}")
    for path in dict.fromkeys((archive.parent / top, folder)):
        if path.exists() and (not path.is_dir() or next(path.iterdir(), None) is not None):
            raise FileExistsError(f"{path}: exists but holds no ShapeNetPart {format!r} files, so {archive.name} "
                                  f"cannot be extracted there; move it away (a cut extraction?) and run again")
    _safe_extract(archive, archive.parent, top)
    if top != folder.name:
        (archive.parent / top).rename(folder)
    found = guess_shapenetpart_format(folder)
    if found != format:
        if found is None:
            raise ValueError(f"{archive}: extracted to {folder}, but it holds no ShapeNetPart {format!r} files")
        raise _mismatch(folder, found, format)
    return folder


def _download_archive(base: Path, format: str) -> Path:
    from torch_geometric.data import download_url

    base.mkdir(parents=True, exist_ok=True)
    url = SHAPENET_URLS[format]
    partial = base / f"{SHAPENET_FOLDERS[format]}.zip"
    try:
        archive = Path(download_url(url, str(base)))
    except OSError as error:  # urllib's URLError, SSL and socket errors are all OSErrors
        partial.unlink(missing_ok=True)  # a cut download would read as a damaged zip next time
        raise OSError(f"downloading {url} failed ({error}); the Stanford server is often offline: get "
                      f"{SHAPENET_FOLDERS[format]}.zip from a mirror and put it in {base} "
                      f"(see datasets/README.md)") from error
    return _extract_archive(archive, format)


def locate_shapenetpart(root=None, format: Optional[str] = None, download: bool = False) -> Tuple[str, Path]:
    """Find ShapeNetPart's files; returns ``(format, folder)`` for ``ShapeNetPart(folder, format=format)``.

    Looks, in this order, at: ``root`` itself; ``root/<folder>`` for each layout's usual name
    (:data:`SHAPENET_FOLDERS`, plus ``hdf5_data`` for PointNet's HDF5 archive), for ``format`` or, when
    it is ``None``, for ``"normal"``, ``"hdf5"`` and ``"v0"`` in that order; ``root/<folder>.zip``,
    extracted into ``root`` (skipping ``__MACOSX``); else, with ``download=True``, downloads the
    archive of ``format`` (``"normal"`` when ``None``) from :data:`SHAPENET_URLS` into ``root`` and
    extracts it.

    Args:
        root: a ShapeNetPart folder or the folder holding it; ``None``: :func:`~pcattn.data.default_data_dir`.
        format: ``"normal"``, ``"v0"``, ``"hdf5"`` or ``None`` (whichever is found, guessed from the files).
        download: fetch the archive when nothing is found locally.

    Raises:
        ValueError: ``format`` is given but the files found are of another layout (names both).
        FileNotFoundError: nothing found (names what was looked for) and ``download`` is off.
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS} or None, got {format!r}")
    base = Path(root).expanduser() if root is not None else default_data_dir()
    wanted = (format,) if format is not None else _LOCATE_ORDER
    found = guess_shapenetpart_format(base)
    if found is not None:
        if format is not None and found != format:
            raise _mismatch(base, found, format)
        return found, base
    folders = [(f, base / name) for f in wanted
               for name in dict.fromkeys((SHAPENET_FOLDERS[f],) + SHAPENET_ARCHIVE_TOPS[f])]
    for f, folder in folders:
        found = guess_shapenetpart_format(folder)
        if found is None:
            continue
        if format is not None and found != format:
            raise _mismatch(folder, found, format)
        return found, folder
    for f in wanted:
        archive = base / f"{SHAPENET_FOLDERS[f]}.zip"
        if archive.is_file():
            return f, _extract_archive(archive, f)
    if download:
        return (format or "normal"), _download_archive(base, format or "normal")
    others = [f"{name} ({f!r})" for f in FORMATS if f not in wanted
              for name in (SHAPENET_FOLDERS[f],) if guess_shapenetpart_format(base / name) is not None]
    raise FileNotFoundError(
        f"{base}: no ShapeNetPart {format + ' ' if format else ''}files found (looked for synset folders or "
        f"ply_data_*.h5 in it, the folders {', '.join(folder.name + '/' for _, folder in folders)} and the archives "
        f"{', '.join(SHAPENET_FOLDERS[f] + '.zip' for f in wanted)})"
        + (f"; found other layouts: {', '.join(others)}" if others else "")
        + f". Pass download=True (--download on the command line) to fetch {SHAPENET_URLS[format or 'normal']}, or see "
          f"datasets/README.md for the layouts, mirrors and where to put them"
    )
