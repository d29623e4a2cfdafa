"""S3DIS (Stanford Large-Scale 3D Indoor Spaces, Armeni et al. 2016) in the three layouts people have.

* ``"raw"``: the release, ``Stanford3dDataset_v1.2_Aligned_Version/`` (or ``Stanford3dDataset_v1.2/``)
  ``Area_N/<room>/Annotations/<class>_<k>.txt``, one point per line ``x y z r g b`` (metres, 0-255);
  the class is the file name before its first ``_`` (``stairs`` counts as clutter). Converted once, room
  by room, into the ``"folders"`` layout in a cache (progress bar), then read from there.
* ``"npy"``: one ``Area_N_<room>.npy`` of ``(N, 7)`` ``x y z r g b label`` per room (the official Point
  Transformer code's ``trainval_fullarea/``).
* ``"folders"``: Pointcept's preprocessed layout, ``Area_N/<room>/coord.npy``, ``color.npy``,
  ``segment.npy`` (and ``normal.npy`` when present).

Every layout gives the room format of :mod:`pcattn.data.scenes` with the 13 classes of
:data:`S3DIS_CLASSES` (label = index). Split by area: ``split="test"`` is the rooms of ``test_area``
(5 by default, the usual protocol), ``"train"`` those of the other areas.

Damaged lines of the release: users report a stray control character in two files, a NUL between two
numbers of ``Area_5/hallway_6/Annotations/ceiling_1.txt`` line 180389 (the line reads as 5 values in the
aligned version) and a ``\\x10`` inside ``103.0\\x100000`` in ``Area_5/office_19/Annotations/ceiling_1.txt``
line 323474. The common preprocessing scripts fix these by hand; :func:`read_annotation_file` repairs a
line whose only fault is such a character (taken as a separator when that gives 6 numbers, else deleted
from the number), with a warning naming file, line and both texts. Any other bad line (a wrong count of
numbers, text that is not a number), or any repair when ``repair=False``, is a ``ValueError`` naming the
file and the line.

S3DIS is not downloadable by a script: Stanford hands it out after a form (see ``datasets/README.md``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .base import default_cache_dir, visible_dirs
from .builtin import default_data_dir
from .io import _require_file
from .scenes import SceneDataset, check_room, read_room_folder

__all__ = ["S3DIS", "S3DIS_CLASSES", "S3DIS_ALIASES", "S3DIS_LAYOUTS", "S3DIS_RAW_FOLDERS", "S3DIS_FORM_URL",
           "read_annotation_file", "read_raw_room", "guess_s3dis_layout", "list_s3dis_rooms", "convert_raw_room"]

#: the 13 classes in the standard order (label = index)
S3DIS_CLASSES: Tuple[str, ...] = ("ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair",
                                  "sofa", "bookcase", "board", "clutter")
#: annotation file classes that are not among the 13: the usual preprocessing counts them as another
S3DIS_ALIASES: Dict[str, str] = {"stairs": "clutter"}
S3DIS_LAYOUTS = ("raw", "npy", "folders")
#: the raw release's top folders (the aligned version first: the one the usual protocol uses)
S3DIS_RAW_FOLDERS = ("Stanford3dDataset_v1.2_Aligned_Version", "Stanford3dDataset_v1.2")
#: where Stanford hands the data out (a form to fill in; no direct link)
S3DIS_FORM_URL = "http://buildingparser.stanford.edu/dataset.html"
#: folder names a preprocessed copy is often found under
_PREPROCESSED_FOLDERS = ("trainval_fullarea", "s3dis", "S3DIS")
_AREA = re.compile(r"^Area_(\d+)$")
_AREA_FILE = re.compile(r"^Area_(\d+)_(.+)\.npy$")
#: bumped when the cache's content changes
_CACHE_VERSION = 1
# bytes a line of numbers may hold; anything else (a NUL, \x10, a non-ASCII byte) is damage
_NUMBER_BYTES = b"0123456789.-+eE \t\r\n"
# the damage the release is known for: a control character or a non-ASCII byte (read as latin-1)
_STRAY = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\xff]")


# ---------------------------------------------------------------------------------------------
# The raw release
# ---------------------------------------------------------------------------------------------

def _parse_line(fields: List[str]) -> Optional[List[float]]:
    if len(fields) != 6:
        return None
    try:
        return [float(value) for value in fields]
    except ValueError:
        return None


def read_annotation_file(path, repair: bool = True) -> np.ndarray:
    """One annotation file of the raw release: lines ``x y z r g b``.

    Args:
        path: ``.../Annotations/<class>_<k>.txt``.
        repair: repair a line whose only fault is a stray control or non-ASCII character (see the module
            docstring), with a warning; ``False`` makes it an error like any other damage.

    Returns:
        float64 ``(N, 6)``.

    Raises:
        ValueError: an empty file, or a damaged line, naming the file and the line (1-based).
    """
    path = Path(path)
    _require_file(path)
    data = path.read_bytes()
    text = data.decode("latin-1")  # one character per byte, so a damaged byte stays visible in messages
    try:  # fast path: only number characters, and 6 numbers a line
        if data.translate(None, _NUMBER_BYTES):
            raise ValueError("damaged bytes")
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        widths = np.fromiter((len(line.split()) for line in lines), dtype=np.int64, count=len(lines))
        if (widths != 6).any():
            raise ValueError("wrong count")
        table = np.array(text.split(), dtype=np.float64).reshape(-1, 6)
    except ValueError:
        table = _read_damaged(path, text, repair)
    if not len(table):
        raise ValueError(f"{path}: empty annotation file (no points)")
    bad = ~np.isfinite(table).all(axis=1)
    if bad.any():
        raise ValueError(f"{path}, line {int(np.flatnonzero(bad)[0]) + 1}: a value that is not finite")
    return table


def _read_damaged(path: Path, text: str, repair: bool) -> np.ndarray:
    """The slow path of :func:`read_annotation_file`: line by line, naming (or repairing) each fault."""
    lines = [line.rstrip("\r") for line in text.split("\n")]  # not splitlines(): it also splits at \x1c-\x1e, \x85
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for number, line in enumerate(lines, 1):
        if not _STRAY.search(line):
            values = _parse_line(line.split())
            if values is None:
                count = len(line.split())
                what = f"expected 6 values (x y z r g b), got {count}" if count != 6 else "a value that is not a number"
                raise ValueError(f"{path}, line {number}: {what}: {line.strip()[:80]!r}")
            rows.append(values)
            continue
        # A stray character: a separator when that gives 6 numbers (hallway_6), else a slip inside a number.
        for replacement in (" ", ""):
            repaired = _STRAY.sub(replacement, line).strip()
            values = _parse_line(repaired.split())
            if values is not None:
                break
        if values is None:
            raise ValueError(f"{path}, line {number}: damaged line {line.strip()[:80]!r} (a stray control or "
                             f"non-ASCII character, and no repair gives 6 numbers)")
        if not repair:
            raise ValueError(f"{path}, line {number}: damaged line {line.strip()[:80]!r} (a stray control or "
                             f"non-ASCII character); repair=True reads it as {repaired!r}")
        warnings.warn(f"{path}, line {number}: repaired damaged line {line.strip()!r} -> {repaired!r} (a stray "
                      f"control character, as the usual S3DIS preprocessing fixes it by hand)")
        rows.append(values)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 6)


def _annotation_class(path: Path) -> str:
    name = path.stem.split("_")[0]
    name = S3DIS_ALIASES.get(name, name)
    if name not in S3DIS_CLASSES:
        raise ValueError(f"{path}: unknown class {path.stem.split('_')[0]!r} in the file name; expected one of "
                         f"{', '.join(S3DIS_CLASSES + tuple(S3DIS_ALIASES))}")
    return name


def _annotation_files(room_dir: Path) -> List[Path]:
    folder = Path(room_dir) / "Annotations"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no Annotations folder in the room")
    files = sorted(path for path in folder.iterdir() if path.suffix == ".txt" and not path.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"{folder}: no annotation files (<class>_<k>.txt)")
    return files


def read_raw_room(room_dir, repair: bool = True) -> Dict[str, np.ndarray]:
    """One room of the raw release: every ``Annotations/<class>_<k>.txt`` of ``room_dir``, its points
    labelled by the class in the file name, concatenated in file-name order.

    Returns:
        The room format (:mod:`pcattn.data.scenes`): ``pos`` float64, ``color`` float32 in ``[0, 1]``,
        ``seg`` int64 in ``[0, 13)``.
    """
    tables, labels = [], []
    for path in _annotation_files(Path(room_dir)):
        label = S3DIS_CLASSES.index(_annotation_class(path))
        table = read_annotation_file(path, repair)
        tables.append(table)
        labels.append(np.full(len(table), label, dtype=np.int64))
    table = np.concatenate(tables)
    return check_room(room_dir, table[:, :3], np.concatenate(labels), table[:, 3:6], None, len(S3DIS_CLASSES))


def _fingerprint(room_dir: Path, repair: bool) -> str:
    entries = [[path.name, path.stat().st_size, path.stat().st_mtime_ns] for path in _annotation_files(room_dir)]
    payload = {"version": _CACHE_VERSION, "repair": repair, "files": entries}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def convert_raw_room(room_dir, out_dir, repair: bool = True) -> Path:
    """Write one raw room into the ``"folders"`` layout: ``out_dir/coord.npy`` (float32: the release's
    3-decimal metres within 100 m are exact to 1e-5 m), ``color.npy`` (uint8 0-255), ``segment.npy``
    (int16), and ``source.json`` (a fingerprint of the annotation files: names, sizes, times). Written into
    a temporary folder and renamed, so an interrupted conversion leaves no half room.

    Returns:
        ``out_dir``.
    """
    room_dir, out_dir = Path(room_dir), Path(out_dir)
    room = read_raw_room(room_dir, repair)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        np.save(temporary / "coord.npy", room["pos"].astype(np.float32))
        np.save(temporary / "color.npy", np.rint(room["color"] * 255).astype(np.uint8))
        np.save(temporary / "segment.npy", room["seg"].astype(np.int16))
        (temporary / "source.json").write_text(json.dumps({"fingerprint": _fingerprint(room_dir, repair),
                                                           "room": str(room_dir)}))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(temporary, out_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return out_dir


def _cache_is_current(room_dir: Path, out_dir: Path, repair: bool) -> bool:
    try:
        stored = json.loads((out_dir / "source.json").read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return stored == _fingerprint(room_dir, repair) and all((out_dir / f"{name}.npy").exists()
                                                            for name in ("coord", "color", "segment"))


# ---------------------------------------------------------------------------------------------
# Finding the rooms
# ---------------------------------------------------------------------------------------------

def _area_dirs(folder: Path) -> List[Tuple[int, Path]]:
    if not folder.is_dir():
        return []
    return [(int(_AREA.match(path.name).group(1)), path) for path in visible_dirs(folder) if _AREA.match(path.name)]


def _detect(folder: Path) -> Optional[str]:
    for _, area in _area_dirs(folder):
        for room in visible_dirs(area):
            if (room / "Annotations").is_dir():
                return "raw"
            if (room / "coord.npy").exists():
                return "folders"
    if folder.is_dir() and any(_AREA_FILE.match(path.name) for path in folder.iterdir()):
        return "npy"
    return None


def guess_s3dis_layout(root) -> Tuple[str, Path]:
    """Tell the layout of the files under ``root``: the folder itself, or a folder inside it under one of
    the usual names (:data:`S3DIS_RAW_FOLDERS`, ``trainval_fullarea``, ``s3dis``).

    Returns:
        ``(layout, folder)``: one of :data:`S3DIS_LAYOUTS` and the folder holding ``Area_N`` (or the
        ``Area_N_<room>.npy`` files).

    Raises:
        FileNotFoundError: nothing recognisable, with where to get the data.
    """
    root = Path(root).expanduser()
    for folder in [root] + [root / name for name in S3DIS_RAW_FOLDERS + _PREPROCESSED_FOLDERS]:
        layout = _detect(folder)
        if layout is not None:
            return layout, folder
    raise FileNotFoundError(
        f"{root}: no S3DIS files found: expected Area_N/<room>/Annotations/*.txt (the raw release, e.g. in "
        f"{S3DIS_RAW_FOLDERS[0]}/), Area_N_<room>.npy files, or Area_N/<room>/coord.npy folders. S3DIS cannot "
        f"be downloaded by a script: request it at {S3DIS_FORM_URL} (a form), unzip it there and pass its "
        f"folder; see datasets/README.md")


def list_s3dis_rooms(folder, layout: str) -> List[Tuple[int, str, Path]]:
    """The rooms of a layout's folder: ``[(area, room name, path)]`` in area then name order (``path`` is
    the room's folder, or its ``.npy`` file)."""
    folder = Path(folder)
    rooms = []
    if layout == "npy":
        for path in sorted(folder.iterdir()):
            match = _AREA_FILE.match(path.name)
            if match:
                rooms.append((int(match.group(1)), match.group(2), path))
    elif layout in ("raw", "folders"):
        marker = "Annotations" if layout == "raw" else "coord.npy"
        for area, area_dir in _area_dirs(folder):
            rooms.extend((area, room.name, room) for room in visible_dirs(area_dir) if (room / marker).exists())
    else:
        raise ValueError(f"layout must be one of {S3DIS_LAYOUTS}, got {layout!r}")
    return sorted(rooms, key=lambda entry: (entry[0], entry[1]))


def _read_npy_room(path: Path) -> Dict[str, np.ndarray]:
    try:
        table = np.load(path, allow_pickle=False)
    except Exception as error:
        raise ValueError(f"{path}: not a readable .npy array ({error})") from None
    if table.ndim != 2 or table.shape[1] != 7:
        raise ValueError(f"{path}: expected an (N, 7) array of x y z r g b label, got {tuple(table.shape)}")
    return check_room(path, table[:, :3], table[:, 6], table[:, 3:6], None, len(S3DIS_CLASSES))


class S3DIS(SceneDataset):
    """S3DIS rooms of one split, in any of the three layouts (module docstring).

    Args:
        root: the folder holding the data (a layout's folder, or the folder holding it under its usual
            name); ``None`` looks in :func:`~pcattn.data.builtin.default_data_dir`.
        split: ``"train"`` (the areas other than ``test_area``), ``"test"`` (``test_area``) or ``"all"``.
        test_area: the held-out area, 1-6 (5: the usual protocol).
        layout: ``"raw"``, ``"npy"`` or ``"folders"``; ``None`` guesses it (:func:`guess_s3dis_layout`).
            One that disagrees with the files is an error naming both.
        cache_dir: where the raw layout's rooms are converted to (default
            ``<raw folder>/.pcattn_cache/s3dis_rooms``, or ``~/.cache/pcattn/...`` when that is read-only).
        repair: repair the release's known damaged lines with a warning (else they are errors).
        progress: show the conversion's progress bar (default: when a terminal is attached).
        transform: callable on the sample dict.

    Samples: the room format of :mod:`pcattn.data.scenes`; ``dataset.room_names`` are ``Area_N/<room>``.
    """

    def __init__(self, root=None, split: str = "train", test_area: int = 5, layout: Optional[str] = None,
                 cache_dir=None, repair: bool = True, progress: Optional[bool] = None,
                 transform: Optional[Callable] = None):
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        if not isinstance(test_area, int) or not 1 <= test_area <= 6:
            raise ValueError(f"test_area must be one of the areas 1-6, got {test_area!r}")
        if layout is not None and layout not in S3DIS_LAYOUTS:
            raise ValueError(f"layout must be one of {S3DIS_LAYOUTS} or None, got {layout!r}")
        found, folder = guess_s3dis_layout(default_data_dir() if root is None else root)
        if layout is not None and layout != found:
            raise ValueError(f"{folder}: layout={layout!r} was asked for, but the files there are the {found!r} "
                             f"layout")
        self.root, self.layout, self.split, self.test_area = folder, found, split, test_area
        rooms = [(area, name, path) for area, name, path in list_s3dis_rooms(folder, found)
                 if split == "all" or (area == test_area) == (split == "test")]
        if not rooms:
            areas = sorted({area for area, _, _ in list_s3dis_rooms(folder, found)})
            raise FileNotFoundError(f"{folder}: no rooms in the {split} split with test_area={test_area} (the "
                                    f"files hold areas {areas})")
        names = [f"Area_{area}/{name}" for area, name, _ in rooms]
        if found == "raw":
            self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(folder) / "s3dis_rooms"
            paths = self._convert(rooms, names, repair, progress)
        else:
            self.cache_dir = None
            paths = [path for _, _, path in rooms]
        classes = len(S3DIS_CLASSES)

        def reader(index: int) -> Dict[str, np.ndarray]:
            if found == "npy":
                return _read_npy_room(paths[index])
            return read_room_folder(paths[index], "segment", classes)

        super().__init__(S3DIS_CLASSES, names, reader, transform)

    def _convert(self, rooms, names, repair: bool, progress: Optional[bool]) -> List[Path]:
        """Convert the raw rooms that have no current cache (progress bar), return the cached folders."""
        from tqdm.auto import tqdm

        targets = [self.cache_dir / name for name in names]
        stale = [(room_dir, target) for (_, _, room_dir), target in zip(rooms, targets)
                 if not _cache_is_current(room_dir, target, repair)]
        for room_dir, target in tqdm(stale, desc="converting S3DIS rooms", unit="room",
                                     disable=(None if progress is None else not progress) if stale else True):
            convert_raw_room(room_dir, target, repair)
        return targets
