"""Labelled scenes (rooms) for semantic segmentation: the common room format, ScanNet v2's preprocessed
layout, your own labelled files, and the one-folder-per-room layout both share.

A **room** read from disk is a dict of NumPy arrays over its ``N`` points:

* ``pos``: float64 ``(N, 3)``, metres, as stored (far from the origin is fine: nothing here rounds to
  float32; :class:`~pcattn.data.grid.CentreCrop` centres each crop in float64 first);
* ``color``: float32 ``(N, 3)`` in ``[0, 1]`` (files with 0-255 values are divided by 255), or absent;
* ``normals``: float32 ``(N, 3)``, or absent;
* ``seg``: int64 ``(N,)`` class ids in ``[0, C)``, or :data:`IGNORE_INDEX` (``-1``) for unlabelled points.

:class:`SceneDataset` hands rooms out as the same dict of tensors (``pos`` stays float64), one room per
item, read from disk when asked for (a whole split of real rooms does not fit in memory), then passed to
``transform`` (grid sampling, crops, augmentations: :mod:`pcattn.data.grid`).

Layouts read here (see ``datasets/README.md``):

* one folder per room, Pointcept's preprocessed layout: ``<room>/coord.npy (N, 3)``, ``color.npy (N, 3)``
  (0-255), ``normal.npy (N, 3)`` (optional), ``segment.npy`` / ``segment20.npy`` ``(N,)`` or ``(N, 1)``:
  :func:`read_room_folder`;
* ScanNet v2 preprocessed: ``train|val|test/<scene>/`` in that layout, labels ``segment20.npy``
  (20 benchmark classes, ``-1`` unlabelled): :class:`ScanNet`;
* your own scenes: ``<root>/<split>/<name>.ply`` with a per-vertex label property, or ``.npy`` / ``.txt``
  with columns ``x y z label`` or ``x y z r g b label``, plus ``<root>/classes.txt``: :class:`SceneFolder`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .base import visible_dirs
from .io import _PLY_SIZES, _check_complete, _require_file, check_cloud, read_text_points

__all__ = ["IGNORE_INDEX", "SCANNET20_CLASSES", "SCENE_EXTENSIONS", "SceneDataset", "ScanNet", "SceneFolder",
           "read_room_folder", "read_ply_vertices", "read_labelled_scene", "read_class_names", "check_room",
           "room_to_sample", "RepeatedRooms"]

#: the label of points that carry no class (ScanNet's unlabelled points); never scored, never a target
IGNORE_INDEX = -1

#: ScanNet v2's 20 benchmark classes in the order of ``segment20.npy`` (NYU40 ids 1-12, 14, 16, 24, 28,
#: 33, 34, 36, 39 mapped to 0-19)
SCANNET20_CLASSES: Tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub", "otherfurniture")

#: the files :class:`SceneFolder` reads
SCENE_EXTENSIONS = (".ply", ".npy", ".txt")
#: vertex properties taken as the label of a labelled ``.ply``, in this order of preference
PLY_LABEL_NAMES = ("label", "class", "semantic", "segment", "scalar_label", "scalar_Label", "category")


# ---------------------------------------------------------------------------------------------
# The room format
# ---------------------------------------------------------------------------------------------

def _colors(path, values: np.ndarray) -> np.ndarray:
    """Colours ``(N, 3)`` as float32 in ``[0, 1]``: integer arrays and arrays with values above 1 are
    0-255 and divided by 255."""
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[1] != 3:
        raise ValueError(f"{path}: colours must be (N, 3), got {tuple(values.shape)}")
    scale = 255.0 if values.dtype.kind in "iu" or (values.size and float(values.max()) > 1.0) else 1.0
    colors = values.astype(np.float32) / np.float32(scale)
    if colors.size and (not np.isfinite(colors).all() or colors.min() < 0 or colors.max() > 1):
        raise ValueError(f"{path}: colours must lie in 0-255 (or 0-1), found values from {values.min()} to "
                         f"{values.max()}")
    return colors


def _labels(path, values: np.ndarray, num_classes: Optional[int], ignore_index: int) -> np.ndarray:
    """Labels ``(N,)`` or ``(N, 1)`` as int64; whole-number floats are accepted; every label must be in
    ``[0, num_classes)`` or ``ignore_index``."""
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise ValueError(f"{path}: labels must be (N,) or (N, 1), got {tuple(values.shape)}")
    if values.dtype.kind == "f":
        whole = np.isfinite(values) & (values == np.round(values))
        if not whole.all():
            row = int(np.flatnonzero(~whole)[0])
            raise ValueError(f"{path}: label {values[row].item()!r} of point {row} (0-based) is not a whole number")
    elif values.dtype.kind not in "iu":
        raise ValueError(f"{path}: labels of type {values.dtype}, expected integers")
    labels = values.astype(np.int64)
    if num_classes is not None:
        wrong = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
        if wrong.any():
            row = int(np.flatnonzero(wrong)[0])
            raise ValueError(f"{path}: label {labels[row]} of point {row} (0-based) is outside [0, {num_classes}) "
                             f"(and is not the ignore label {ignore_index})")
    return labels


def check_room(path, pos, seg, color=None, normals=None, num_classes: Optional[int] = None,
               ignore_index: int = IGNORE_INDEX) -> Dict[str, np.ndarray]:
    """Check the arrays of one room and bring them to the room format (module docstring).

    Args:
        path: where the room came from (only for messages).
        pos: ``(N, 3)`` real positions; seg: ``(N,)`` or ``(N, 1)`` labels; color: ``(N, 3)`` 0-255 or 0-1;
        normals: ``(N, 3)``.
        num_classes: when given, labels must be in ``[0, num_classes)`` or ``ignore_index``.

    Returns:
        ``{"pos": float64 (N, 3), "seg": int64 (N,), ["color": float32 (N, 3)], ["normals": float32 (N, 3)]}``.

    Raises:
        ValueError: naming ``path`` and what is wrong (shapes that disagree, a non-finite position, a label
            out of range, colours outside 0-255).
    """
    pos = np.asarray(pos)
    check_cloud(path, pos)  # real numbers, (N, >=3), non-empty, finite, no overflow
    if pos.shape[1] != 3:
        raise ValueError(f"{path}: positions must be (N, 3), got {tuple(pos.shape)}")
    room = {"pos": pos.astype(np.float64, copy=False),
            "seg": _labels(path, seg, num_classes, ignore_index)}
    if color is not None:
        room["color"] = _colors(path, color)
    if normals is not None:
        room["normals"] = check_cloud(path, np.asarray(normals), positions=False)
    count = len(pos)
    for key, values in room.items():
        if len(values) != count:
            raise ValueError(f"{path}: {count} positions but {len(values)} {key} values")
    return room


def room_to_sample(room: Dict[str, np.ndarray]) -> Dict[str, Tensor]:
    """The room's arrays as tensors (copies; ``pos`` stays float64)."""
    return {key: torch.from_numpy(np.array(values)) for key, values in room.items()}


class SceneDataset(Dataset):
    """Rooms, one per item, read when asked for: ``dataset[i]`` is the room format as tensors
    (``{"pos": float64 (N, 3), "seg": int64 (N,), ["color": float32 (N, 3)], ["normals": float32 (N, 3)]}``),
    passed through ``transform``.

    Args:
        classes: the class names (label = index).
        names: one name per room (``dataset.room_names``).
        reader: ``reader(i)`` returns room ``i`` in the room format (NumPy).
        transform: callable on the sample dict (grid sampling, crops, augmentations).
        ignore_index: the label of unlabelled points.
    """

    #: scenes stand with z up (the augmentations turn them about z)
    up_axis = 2

    def __init__(self, classes: Sequence[str], names: Sequence[str], reader: Callable[[int], Dict[str, np.ndarray]],
                 transform: Optional[Callable] = None, ignore_index: int = IGNORE_INDEX):
        self.classes = list(classes)
        self.room_names = list(names)
        self._reader = reader
        self.transform = transform
        self.ignore_index = ignore_index

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.room_names)

    def load_room(self, index: int) -> Dict[str, np.ndarray]:
        """Room ``index`` in the room format (NumPy, before ``transform``)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"room index {index} out of range for {len(self)} rooms")
        return self._reader(index % len(self))

    def label_counts(self, progress: bool = False) -> np.ndarray:
        """The labelled points of each class over every room: int64 ``(num_classes,)`` (unlabelled points,
        ``ignore_index``, not counted). Reads every room once (a progress bar with ``progress``), the first
        time it is asked; a copy of those counts after that."""
        from tqdm.auto import tqdm

        if getattr(self, "_label_counts", None) is not None:
            return self._label_counts.copy()
        counts = np.zeros(self.num_classes, dtype=np.int64)
        for index in tqdm(range(len(self)), desc="counting labels", unit="room", disable=not progress, leave=False):
            seg = np.asarray(self.load_room(index)["seg"])
            counts += np.bincount(seg[seg != self.ignore_index], minlength=self.num_classes)[: self.num_classes]
        self._label_counts = counts
        return counts.copy()

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        sample = room_to_sample(self.load_room(index))
        return self.transform(sample) if self.transform is not None else sample

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rooms={len(self)}, classes={self.num_classes})"


class RepeatedRooms(Dataset):
    """Each room of ``rooms`` ``repeats`` times in one epoch (item ``i`` is room ``i mod len(rooms)``, through
    its transform): a training epoch draws that many random crops of every room, as the scene networks loop
    over their few large rooms. ``classes``, ``room_names``, ``up_axis`` and ``transform`` are the rooms'."""

    def __init__(self, rooms: SceneDataset, repeats: int = 1):
        if not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
        self.rooms, self.repeats = rooms, repeats
        self.classes, self.room_names, self.up_axis = rooms.classes, rooms.room_names, rooms.up_axis

    @property
    def transform(self):
        return self.rooms.transform

    @transform.setter
    def transform(self, transform) -> None:
        self.rooms.transform = transform

    def __len__(self) -> int:
        return len(self.rooms) * self.repeats

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} crops")
        return self.rooms[index % len(self.rooms)]

    def __repr__(self) -> str:
        return f"RepeatedRooms({self.rooms!r}, repeats={self.repeats})"


# ---------------------------------------------------------------------------------------------
# One folder per room (Pointcept's preprocessed S3DIS and ScanNet)
# ---------------------------------------------------------------------------------------------

def _load_npy(path: Path) -> np.ndarray:
    _require_file(path)
    try:
        return np.load(path, allow_pickle=False)
    except Exception as error:  # numpy raises several types for a damaged file
        raise ValueError(f"{path}: not a readable .npy array ({error})") from None


def read_room_folder(folder, segment: str = "segment", num_classes: Optional[int] = None,
                     ignore_index: int = IGNORE_INDEX, labels_required: bool = True) -> Dict[str, np.ndarray]:
    """One room of the per-room folder layout: ``coord.npy (N, 3)``, ``color.npy (N, 3)`` (0-255, optional),
    ``normal.npy (N, 3)`` (optional), ``<segment>.npy`` ``(N,)`` or ``(N, 1)`` labels.

    Args:
        folder: the room's folder.
        segment: the label file's name without ``.npy`` (``"segment"``; ScanNet's 20 classes ``"segment20"``).
        num_classes, ignore_index: see :func:`check_room`.
        labels_required: without it, a room with no label file gets every point ``ignore_index`` (ScanNet's
            test scenes).

    Returns:
        The room format (module docstring).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: room folder not found")
    pos = _load_npy(folder / "coord.npy")
    label_path = folder / f"{segment}.npy"
    if label_path.exists() or labels_required:
        seg = _load_npy(label_path)
    else:
        seg = np.full(len(pos), ignore_index, dtype=np.int64)
    color = _load_npy(folder / "color.npy") if (folder / "color.npy").exists() else None
    normals = _load_npy(folder / "normal.npy") if (folder / "normal.npy").exists() else None
    return check_room(folder, pos, seg, color, normals, num_classes, ignore_index)


def _room_folders(split_dir: Path) -> List[Path]:
    """The sub-folders of ``split_dir`` holding a ``coord.npy``, in name order."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: folder not found (expected {split_dir}/<room>/coord.npy)")
    rooms = [folder for folder in visible_dirs(split_dir) if (folder / "coord.npy").exists()]
    if not rooms:
        raise FileNotFoundError(f"{split_dir}: no room folders (<room>/coord.npy) found")
    return rooms


class ScanNet(SceneDataset):
    """ScanNet v2, preprocessed per scene (Pointcept's layout)::

        <root>/train/scene0000_00/coord.npy    (N, 3) float32, metres
                                  color.npy    (N, 3) uint8 0-255
                                  normal.npy   (N, 3) float32
                                  segment20.npy (N,) int, the 20 benchmark classes, -1 unlabelled
        <root>/val/...  <root>/test/... (test scenes have no labels: every point -1)

    Args:
        root: the folder holding ``train/`` and ``val/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: callable on the sample dict.
        segment: the label file (``"segment20"``; ``"segment200"`` with ``classes`` for ScanNet200).
        classes: the class names (default :data:`SCANNET20_CLASSES`).
    """

    def __init__(self, root, split: str = "train", transform: Optional[Callable] = None,
                 segment: str = "segment20", classes: Sequence[str] = SCANNET20_CLASSES):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        self.root = Path(root).expanduser()
        self.split = split
        folders = _room_folders(self.root / split)
        classes = list(classes)

        def reader(index: int) -> Dict[str, np.ndarray]:
            return read_room_folder(folders[index], segment, len(classes), labels_required=split != "test")

        super().__init__(classes, [folder.name for folder in folders], reader, transform)


# ---------------------------------------------------------------------------------------------
# Your own labelled scenes
# ---------------------------------------------------------------------------------------------

_PLY_TYPES = {"char": "i1", "uchar": "u1", "int8": "i1", "uint8": "u1", "short": "i2", "ushort": "u2",
              "int16": "i2", "uint16": "u2", "int": "i4", "uint": "u4", "int32": "i4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def read_ply_vertices(path) -> Dict[str, np.ndarray]:
    """Every scalar vertex property of a ``.ply`` file (ASCII or binary, either byte order), by name.

    Open3D drops properties it does not know (a ``label``, ``class`` or ``scalar_label`` of type ushort,
    for instance), so labelled clouds are read here. The vertex element must come first and hold scalar
    properties only (no lists); later elements (faces) are ignored.

    Returns:
        ``{property name: (N,) array}`` in the file's types (positions stay float64 when stored so).

    Raises:
        ValueError: a header that is not PLY, a list property in the vertex element, a truncated body,
            an ASCII line with the wrong number of values (named by line).
    """
    path = Path(path)
    _require_file(path)
    _check_complete(path)  # the project's check: the header's point count against the body
    data = path.read_bytes()
    end = data.find(b"end_header")
    header = data[:end].decode("ascii", errors="replace").splitlines()
    if not header or header[0].strip() != "ply":
        raise ValueError(f"{path}: not a PLY file (the first line is not 'ply')")
    encoding = next((line.split()[1] for line in header if line.startswith("format ")), None)
    properties: List[Tuple[str, str]] = []
    count, seen_element = None, False
    for line in header:
        fields = line.split()
        if fields[:1] == ["element"]:
            if seen_element:
                break
            if len(fields) != 3 or fields[1] != "vertex" or not fields[2].isdigit():
                raise ValueError(f"{path}: the first element must be 'element vertex <count>', got {line.strip()!r}")
            count, seen_element = int(fields[2]), True
        elif fields[:1] == ["property"] and seen_element:
            if len(fields) != 3 or fields[1] not in _PLY_TYPES:
                raise ValueError(f"{path}: vertex property {line.strip()!r} is not a scalar of a PLY type "
                                 f"({', '.join(sorted(_PLY_SIZES))})")
            properties.append((fields[2], _PLY_TYPES[fields[1]]))
    if count is None or not properties:
        raise ValueError(f"{path}: no 'element vertex' with properties in the header")
    body_start = data.find(b"\n", end) + 1
    if encoding == "ascii":
        lines = data[body_start:].decode("ascii", errors="replace").splitlines()[:count]
        widths = np.fromiter((len(line.split()) for line in lines), dtype=np.int64, count=len(lines))
        wrong = np.flatnonzero(widths != len(properties))
        if wrong.size:
            number = len(header) + 1 + int(wrong[0]) + 1
            raise ValueError(f"{path}, line {number}: expected {len(properties)} vertex values, got {widths[wrong[0]]}")
        try:
            table = np.array(" ".join(lines).split(), dtype=np.float64).reshape(count, len(properties))
        except ValueError:
            raise ValueError(f"{path}: vertex values that are not numbers") from None
        return {name: table[:, column].astype(kind) for column, (name, kind) in enumerate(properties)}
    if encoding not in ("binary_little_endian", "binary_big_endian"):
        raise ValueError(f"{path}: PLY format {encoding!r} is not supported (ascii, binary_little_endian, "
                         f"binary_big_endian)")
    order = "<" if encoding == "binary_little_endian" else ">"
    dtype = np.dtype([(name, order + kind) for name, kind in properties])
    table = np.frombuffer(data, dtype=dtype, count=count, offset=body_start)
    return {name: table[name].astype(table[name].dtype.newbyteorder("="), copy=True) for name, _ in properties}


def read_labelled_scene(path, num_classes: Optional[int] = None,
                        ignore_index: int = IGNORE_INDEX) -> Dict[str, np.ndarray]:
    """One labelled scene file in the room format (module docstring).

    * ``.ply``: vertex properties ``x y z``, optional ``red green blue`` (or ``r g b``), optional
      ``nx ny nz``, and a label property named one of :data:`PLY_LABEL_NAMES` (``label``, ``class``, ...).
    * ``.npy`` / ``.txt``: columns ``x y z label`` or ``x y z r g b label`` (colours 0-255 or 0-1;
      text separated by spaces or commas).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".ply":
        vertices = read_ply_vertices(path)
        missing = [axis for axis in "xyz" if axis not in vertices]
        if missing:
            raise ValueError(f"{path}: no vertex property {', '.join(missing)} (found {', '.join(vertices)})")
        label_name = next((name for name in PLY_LABEL_NAMES if name in vertices), None)
        if label_name is None:
            raise ValueError(f"{path}: no per-vertex label property; expected one named {', '.join(PLY_LABEL_NAMES)} "
                             f"(found {', '.join(vertices)})")
        pos = np.stack([vertices[axis] for axis in "xyz"], axis=1)
        color_names = next((names for names in (("red", "green", "blue"), ("r", "g", "b"))
                            if all(name in vertices for name in names)), None)
        color = np.stack([vertices[name] for name in color_names], axis=1) if color_names else None
        normals = (np.stack([vertices[name] for name in ("nx", "ny", "nz")], axis=1)
                   if all(name in vertices for name in ("nx", "ny", "nz")) else None)
        return check_room(path, pos, vertices[label_name], color, normals, num_classes, ignore_index)
    if suffix == ".npy":
        table = _load_npy(path)
        if table.ndim != 2:
            raise ValueError(f"{path}: expected an (N, 4) or (N, 7) array (x y z [r g b] label), got "
                             f"{tuple(table.shape)}")
    elif suffix == ".txt":
        table = _read_text_table(path)
    else:
        raise ValueError(f"{path}: unknown scene file extension {suffix!r}; expected one of {SCENE_EXTENSIONS}")
    if table.shape[1] not in (4, 7):
        raise ValueError(f"{path}: {table.shape[1]} columns; expected 4 (x y z label) or 7 (x y z r g b label)")
    color = table[:, 3:6] if table.shape[1] == 7 else None
    return check_room(path, table[:, :3], table[:, -1], color, None, num_classes, ignore_index)


def _read_text_table(path: Path) -> np.ndarray:
    """A text table in float64 (the project's reader checks the lines; it returns float32, which would
    round positions far from the origin, so the numbers are parsed again in float64 once they are known
    to be good)."""
    read_text_points(path, min_columns=4)  # named errors: a line with the wrong count, text, NaN
    text = path.read_text(encoding="utf-8", errors="replace").replace(",", " ")
    lines = [line for line in text.splitlines() if line.strip()]
    return np.array(" ".join(lines).split(), dtype=np.float64).reshape(len(lines), -1)


def read_class_names(path) -> List[str]:
    """A class-names file: one name per line (line index = label; blank lines at the end ignored)."""
    path = Path(path)
    _require_file(path)
    names = path.read_text(encoding="utf-8").splitlines()
    while names and not names[-1].strip():
        names.pop()
    names = [name.strip() for name in names]
    for number, name in enumerate(names, 1):
        if not name:
            raise ValueError(f"{path}, line {number}: empty class name")
    if len(set(names)) != len(names):
        repeated = next(name for name in names if names.count(name) > 1)
        raise ValueError(f"{path}: class name {repeated!r} appears more than once")
    if not names:
        raise ValueError(f"{path}: no class names")
    return names


class SceneFolder(SceneDataset):
    """Your own labelled scenes::

        <root>/classes.txt          one class name per line (label = line index, from 0)
        <root>/train/<name>.ply     a .ply with a per-vertex label property (and colours, normals), or
        <root>/train/<name>.npy     columns x y z [r g b] label, or
        <root>/train/<name>.txt     the same as text
        <root>/test/...             (any split name: train, val, test, ...)

    Labels must be in ``[0, C)``, or ``-1`` for unlabelled points.

    Args:
        root: the folder.
        split: the sub-folder to read.
        classes: a class-names file (default ``<root>/classes.txt``) or the list of names.
        transform: callable on the sample dict.
    """

    def __init__(self, root, split: str = "train", classes=None, transform: Optional[Callable] = None):
        self.root = Path(root).expanduser()
        self.split = split
        if classes is None or isinstance(classes, (str, os.PathLike)):
            classes = read_class_names(self.root / "classes.txt" if classes is None else classes)
        classes = list(classes)
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"{split_dir}: split folder not found")
        files = sorted(path for path in split_dir.iterdir() if not path.name.startswith("."))
        for path in files:
            if path.is_dir() or path.suffix.lower() not in SCENE_EXTENSIONS:
                raise ValueError(f"{path}: not a scene file; expected {', '.join(SCENE_EXTENSIONS)} files in "
                                 f"{split_dir}")
        if not files:
            raise FileNotFoundError(f"{split_dir}: no scene files ({', '.join(SCENE_EXTENSIONS)})")

        def reader(index: int) -> Dict[str, np.ndarray]:
            return read_labelled_scene(files[index], len(classes))

        super().__init__(classes, [path.stem for path in files], reader, transform)
