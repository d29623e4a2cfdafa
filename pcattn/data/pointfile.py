"""Your own clouds, whole and as stored: every point of a ``.ply``, ``.pcd``, ``.npy``, ``.txt``/``.xyz`` or
LiDAR ``.las``/``.laz`` file, in the file's order, with its original coordinates (doubles stay doubles),
and the labelled cloud written back (``pcattn predict``).

:func:`read_points` returns a :class:`PointFile`: ``pos (N, 3)`` in the file's precision (float64 for
doubles, integers, text and LAS; float32 for single-precision fields), ``color (N, 3)`` float32 in
``[0, 1]`` and ``normals (N, 3)`` float32 when the file names them, and ``columns (N, K)``: the unnamed
columns after ``x y z`` of a ``.npy`` or text file (colours or normals, which only the model using them can
tell apart: :func:`pcattn.engine.prediction.model_features`).

Unlike :func:`pcattn.data.io.read_point_cloud` (which feeds classifiers: float32, through Open3D), nothing
here rounds positions: a scan stored 5 x 10^5 m from the origin keeps its millimetres. PLY files are read by
:func:`pcattn.data.scenes.read_ply_vertices` (ASCII, binary of either byte order); PCD files (``ascii``,
``binary``; ``binary_compressed`` through Open3D) and text tables are parsed here; ``.las``/``.laz`` through
``laspy`` (the ``las`` extra). :func:`write_labelled` writes positions, a label per point and colours as a
``.ply`` (binary, a ``label`` vertex property, readable by :class:`~pcattn.data.scenes.SceneFolder`), or as
``.npy``/``.txt`` columns ``x y z label``.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..optional import require
from .io import _require_file
from .scenes import _colors, read_ply_vertices

__all__ = ["POINT_FILE_EXTENSIONS", "LABEL_EXTENSIONS", "PointFile", "read_points", "read_pcd", "read_las",
           "read_text_table", "parse_text_table", "points_from_array",
           "point_colors", "point_features", "write_labelled"]

#: the files :func:`read_points` reads
POINT_FILE_EXTENSIONS = (".ply", ".pcd", ".npy", ".txt", ".xyz", ".las", ".laz")
#: the files :func:`write_labelled` writes
LABEL_EXTENSIONS = (".ply", ".npy", ".txt")


@dataclass
class PointFile:
    """One cloud as its file holds it.

    Attributes:
        path: the file.
        pos: ``(N, 3)`` positions in the file's precision (float64 or float32), in the file's order.
        color: ``(N, 3)`` float32 in ``[0, 1]``, or ``None``.
        normals: ``(N, 3)`` float32, or ``None``.
        columns: ``(N, K)`` float64: the unnamed columns after ``x y z`` of a ``.npy``/text file, or ``None``.
    """

    path: Path
    pos: np.ndarray
    color: Optional[np.ndarray] = None
    normals: Optional[np.ndarray] = None
    columns: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.pos)

    def attributes(self) -> List[str]:
        """What the file holds besides positions, for messages: ``["colours", "3 more columns"]``."""
        found = [name for name, value in (("colours", self.color), ("normals", self.normals)) if value is not None]
        if self.columns is not None:
            found.append(f"{self.columns.shape[1]} more column{'s' if self.columns.shape[1] > 1 else ''}")
        return found


def _positions(path, xyz: np.ndarray) -> np.ndarray:
    """``xyz (N, 3)`` checked (real, finite, non-empty) and kept in float32 or float64: integers become
    float64, float16 float32; a non-finite point is named."""
    xyz = np.asarray(xyz)
    if xyz.dtype.kind not in "fiu":
        raise ValueError(f"{path}: positions of type {xyz.dtype}, expected real numbers")
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"{path}: positions must be (N, 3), got {tuple(xyz.shape)}")
    if len(xyz) == 0:
        raise ValueError(f"{path}: empty point cloud (0 points)")
    dtype = np.float64 if xyz.dtype.kind in "iu" or xyz.dtype.itemsize >= 8 else np.float32
    xyz = np.ascontiguousarray(xyz, dtype=dtype)
    finite = np.isfinite(xyz).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{path}: non-finite position (NaN or inf) of point {row} (0-based); every point is "
                         f"labelled, so a point without a position cannot be (remove it)")
    return xyz


def _normals(path, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    if not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
        raise ValueError(f"{path}: non-finite normal (NaN or inf) of point {row} (0-based)")
    return values


def _stack(table: Dict[str, np.ndarray], names) -> Optional[np.ndarray]:
    return np.stack([table[name] for name in names], axis=1) if all(name in table for name in names) else None


def _from_fields(path: Path, fields: Dict[str, np.ndarray]) -> PointFile:
    """A :class:`PointFile` from named per-point fields (PLY vertex properties, PCD fields)."""
    missing = [axis for axis in "xyz" if axis not in fields]
    if missing:
        raise ValueError(f"{path}: no field {', '.join(missing)} for the positions (found {', '.join(fields)})")
    color = next((found for names in (("red", "green", "blue"), ("r", "g", "b"))
                  if (found := _stack(fields, names)) is not None), None)
    normals = next((found for names in (("nx", "ny", "nz"), ("normal_x", "normal_y", "normal_z"))
                    if (found := _stack(fields, names)) is not None), None)
    return PointFile(path, _positions(path, _stack(fields, "xyz")),
                     None if color is None else _colors(path, color),
                     None if normals is None else _normals(path, normals))


# ---------------------------------------------------------------------------------------------
# PCD
# ---------------------------------------------------------------------------------------------

_PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8",
              ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8"}


def _pcd_header(path: Path, data: bytes) -> Tuple[Dict[str, List[str]], int]:
    """The header's entries (``{"FIELDS": [...], ...}``) and where the body starts."""
    header: Dict[str, List[str]] = {}
    offset = 0
    while True:
        end = data.find(b"\n", offset)
        if end < 0:
            raise ValueError(f"{path}: incomplete PCD header (no DATA line): a truncated file, or not a PCD file")
        line = data[offset:end].decode("ascii", errors="replace").strip()
        offset = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        header[key.upper()] = values
        if key.upper() == "DATA":
            return header, offset


def _pcd_layout(path: Path, header: Dict[str, List[str]]) -> Tuple[List[str], np.dtype, int]:
    """Field names, the record's dtype (a field of COUNT > 1 is kept as one sub-array) and the points."""
    try:
        names = header["FIELDS"]
        sizes = [int(size) for size in header["SIZE"]]
        types = [kind.upper() for kind in header["TYPE"]]
        counts = [int(count) for count in header.get("COUNT", ["1"] * len(names))]
        points = int(header["POINTS"][0]) if "POINTS" in header else \
            int(header["WIDTH"][0]) * int(header.get("HEIGHT", ["1"])[0])
    except (KeyError, IndexError, ValueError):
        raise ValueError(f"{path}: a PCD header needs FIELDS, SIZE, TYPE and POINTS (or WIDTH and HEIGHT) lines "
                         f"with numbers") from None
    if not len(names) == len(sizes) == len(types) == len(counts):
        raise ValueError(f"{path}: the PCD header's FIELDS ({len(names)}), SIZE ({len(sizes)}), TYPE ({len(types)}) "
                         f"and COUNT ({len(counts)}) lines differ in length")
    formats = []
    for name, kind, size, count in zip(names, types, sizes, counts):
        if (kind, size) not in _PCD_TYPES:
            raise ValueError(f"{path}: PCD field {name!r} of TYPE {kind} SIZE {size} is not a known type")
        formats.append((name, "<" + _PCD_TYPES[kind, size], (count,)) if count > 1 else
                       (name, "<" + _PCD_TYPES[kind, size]))
    # PCL pads with fields named "_"; several of them would collide in a NumPy record
    formats = [(f"_pad{column}" if item[0] == "_" else item[0], *item[1:]) for column, item in enumerate(formats)]
    return names, np.dtype(formats), points


def _pcd_fields(path: Path, table: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-point fields of a PCD record array, with PCL's packed ``rgb``/``rgba`` unpacked into ``red green
    blue`` (0-255)."""
    fields = {name: table[name] for name in table.dtype.names if table[name].ndim == 1}
    packed = next((name for name in ("rgb", "rgba") if name in fields), None)
    if packed is not None:
        values = np.ascontiguousarray(fields.pop(packed))
        bits = values.view(np.uint32) if values.dtype.itemsize == 4 else values.astype(np.uint32)
        fields.update(red=(bits >> 16) & 255, green=(bits >> 8) & 255, blue=bits & 255)
        for name in ("red", "green", "blue"):
            fields[name] = fields[name].astype(np.uint8)
    return fields


def read_pcd(path) -> PointFile:
    """A ``.pcd`` file (PCL's format) of ``DATA ascii``, ``binary`` or ``binary_compressed`` (the last through
    Open3D): fields ``x y z``, optional ``rgb``/``rgba`` (PCL's packed colour) or ``r g b``, optional
    ``normal_x normal_y normal_z``; other fields (intensity, curvature, ...) are ignored.

    Raises:
        ValueError: a header without fields, sizes or types, a truncated body, a line with the wrong number
            of values (named), a point without a finite position.
    """
    path = Path(path)
    _require_file(path)
    data = path.read_bytes()
    header, body = _pcd_header(path, data)
    names, dtype, points = _pcd_layout(path, header)
    encoding = header["DATA"][0].lower() if header["DATA"] else ""
    if encoding == "binary":
        have = (len(data) - body) // dtype.itemsize
        if have < points:
            raise ValueError(f"{path}: truncated file, the header declares {points} points but the file holds {have}")
        table = np.frombuffer(data, dtype=dtype, count=points, offset=body)
    elif encoding == "ascii":
        width = sum(int(np.prod(dtype[name].shape or (1,))) for name in dtype.names)
        flat = parse_text_table(path, data, body, width, points, first_line=data[:body].count(b"\n") + 1)
        table = np.zeros(points, dtype=dtype)
        column = 0
        for name in dtype.names:
            count = int(np.prod(dtype[name].shape or (1,)))
            values = flat[:, column:column + count]
            if name in ("rgb", "rgba") and dtype[name].kind == "f":  # PCL's packed colour, written as a float
                values = values.astype(np.float32)
            table[name] = values.reshape(table[name].shape)
            column += count
    elif encoding == "binary_compressed":
        return _read_pcd_open3d(path)
    else:
        raise ValueError(f"{path}: PCD DATA {encoding!r} is not one of ascii, binary, binary_compressed")
    return _from_fields(path, _pcd_fields(path, table))


def _read_pcd_open3d(path: Path) -> PointFile:
    o3d = require("open3d", "io", "reading binary_compressed .pcd files")
    cloud = o3d.io.read_point_cloud(str(path), print_progress=False)
    pos = np.asarray(cloud.points)  # Open3D holds positions as float64
    if len(pos) == 0:
        raise ValueError(f"{path}: empty point cloud, or a file Open3D cannot parse")
    color = np.asarray(cloud.colors, dtype=np.float32) if cloud.has_colors() else None
    normals = np.asarray(cloud.normals, dtype=np.float32) if cloud.has_normals() else None
    return PointFile(path, _positions(path, pos), color, None if normals is None else _normals(path, normals))


# ---------------------------------------------------------------------------------------------
# Text and NumPy tables
# ---------------------------------------------------------------------------------------------

#: bytes of text parsed at a time: the per-line checks hold one block's lines in memory, not the file's
TEXT_BLOCK = 1 << 24


def _text_blocks(data: bytes, start: int):
    """``data[start:]`` in pieces of about :data:`TEXT_BLOCK` bytes, each ending at a line end."""
    while start < len(data):
        end = data.find(b"\n", min(start + TEXT_BLOCK, len(data)))
        end = len(data) if end < 0 else end + 1
        yield data[start:end]
        start = end


def _skipped(line: str) -> bool:
    """A blank line, or a comment (``#``, CloudCompare's ``//`` header)."""
    stripped = line.lstrip()
    return not stripped or stripped.startswith(("#", "//"))


def parse_text_table(path, data: bytes, start: int = 0, width: Optional[int] = None, rows: Optional[int] = None,
                     first_line: int = 1) -> np.ndarray:
    """Numbers separated by spaces, tabs or commas, one point per line, ``width`` values on every line
    (``None``: as many as on the first), from ``data[start:]``, as float64 ``(N, width)``.

    Blank lines and comments (``#``, ``//``) are skipped. The numbers are parsed in C (``np.fromstring``),
    a block of lines at a time, so a file of 10^7 lines never holds a Python object per number.

    Args:
        rows: read this many points and stop (a PCD header's ``POINTS``); fewer is a truncated file.
        first_line: the file's line number of ``data[start:]``'s first line, for messages.

    Raises:
        ValueError: naming ``path`` and the first line with another number of values, or a word.
    """
    tables: List[np.ndarray] = []
    count, line_number = 0, first_line - 1
    for block in _text_blocks(data, start):
        lines = block.decode("utf-8", errors="replace").replace(",", " ").splitlines()
        if any(_skipped(line) for line in lines):
            numbers = [number for number, line in enumerate(lines) if not _skipped(line)]
            lines = [lines[number] for number in numbers]
        else:
            numbers = range(len(lines))
        if rows is not None:
            lines, numbers = lines[:rows - count], numbers[:rows - count]
        widths = np.fromiter((len(line.split()) for line in lines), dtype=np.int64, count=len(lines))
        if width is None and len(widths):
            width = int(widths[0])
        wrong = np.flatnonzero(widths != width)
        if wrong.size:
            raise ValueError(f"{path}, line {line_number + numbers[wrong[0]] + 1}: expected {width} values"
                             f"{' (as on the first line)' if rows is None else ''}, got {widths[wrong[0]]}")
        try:
            flat = np.fromstring("\n".join(lines), dtype=np.float64, sep=" ") if lines else np.zeros(0)
        except ValueError:
            flat = None
        if flat is None or flat.size != len(lines) * width:
            for number, line in zip(numbers, lines):
                try:
                    [float(value) for value in line.split()]
                except ValueError:
                    raise ValueError(f"{path}, line {line_number + number + 1}: cannot parse numbers from "
                                     f"{line.strip()[:60]!r}") from None
            raise ValueError(f"{path}: numbers that cannot be parsed after line {line_number}")  # pragma: no cover
        tables.append(flat.reshape(len(lines), width))
        count += len(lines)
        line_number += block.count(b"\n")
        if rows is not None and count >= rows:
            break
    if rows is not None and count < rows:
        raise ValueError(f"{path}: truncated file, the header declares {rows} points but the file holds {count}")
    if count == 0:
        raise ValueError(f"{path}: empty point cloud (no lines with numbers)")
    return np.concatenate(tables) if len(tables) > 1 else tables[0]


def read_text_table(path) -> np.ndarray:
    """A text table (``.txt``, ``.xyz``): one point per line, values separated by spaces, tabs or commas, the
    same number on every line (at least 3), parsed in float64 (:func:`parse_text_table`).

    Returns:
        float64 ``(N, C)``.
    """
    path = Path(path)
    _require_file(path)
    table = parse_text_table(path, path.read_bytes())
    if table.shape[1] < 3:
        raise ValueError(f"{path}, line 1: expected at least 3 values per line (x y z), got {table.shape[1]}")
    return table


def _from_table(path: Path, table: np.ndarray) -> PointFile:
    if table.ndim != 2 or table.shape[1] < 3:
        raise ValueError(f"{path}: expected a table of shape (N, >=3) (x y z, then colours or normals), got "
                         f"{tuple(table.shape)}")
    columns = table[:, 3:].astype(np.float64) if table.shape[1] > 3 else None
    if columns is not None and not np.isfinite(columns).all():
        row = int(np.flatnonzero(~np.isfinite(columns).all(axis=1))[0])
        raise ValueError(f"{path}: non-finite value (NaN or inf) after x y z in point {row} (0-based)")
    return PointFile(path, _positions(path, table[:, :3]), columns=columns)


def points_from_array(table, name: str = "points") -> PointFile:
    """An array ``(N, 3)`` or ``(N, 3 + K)`` as a :class:`PointFile` (``name`` stands for the file in messages):
    positions keep their precision, the columns after ``x y z`` become :attr:`PointFile.columns`."""
    return _from_table(Path(name), np.asarray(table))


def _read_npy(path: Path) -> PointFile:
    try:
        table = np.load(path, allow_pickle=False, mmap_mode="r")
    except Exception as error:  # numpy raises several types for a damaged file
        raise ValueError(f"{path}: not a readable .npy array ({error})") from None
    if table.dtype.names:  # a record array: named fields, as a PLY's
        return _from_fields(path, {name: np.asarray(table[name]) for name in table.dtype.names})
    if table.dtype.kind not in "fiu":
        raise ValueError(f"{path}: values of type {table.dtype}, expected real numbers")
    return _from_table(path, np.asarray(table))


# ---------------------------------------------------------------------------------------------
# LAS / LAZ
# ---------------------------------------------------------------------------------------------

def read_las(path) -> PointFile:
    """A LiDAR ``.las`` / ``.laz`` file through ``laspy`` (``pip install 'pcattn[las]'``): positions are the
    scaled and offset coordinates in float64 (georeferenced scans keep their millimetres); colours when the
    point format has them (16-bit, or 8-bit values as some writers store them)."""
    laspy = require("laspy", "las", f"reading {path.suffix} files")
    path = Path(path)
    _require_file(path)
    try:
        las = laspy.read(str(path))
    except Exception as error:  # laspy raises its own errors for bad headers, missing LAZ backends, ...
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if path.suffix.lower() == ".laz" and "laz" in message.lower() and "backend" in message.lower():
            message += " (install one with pip install 'laspy[lazrs]')"
        raise ValueError(f"{path}: not a readable LAS/LAZ file ({message})") from None
    pos = np.stack([np.asarray(las.x, dtype=np.float64), np.asarray(las.y, dtype=np.float64),
                    np.asarray(las.z, dtype=np.float64)], axis=1)
    names = set(las.point_format.dimension_names)
    color = None
    if {"red", "green", "blue"} <= names:
        rgb = np.stack([np.asarray(las.red), np.asarray(las.green), np.asarray(las.blue)], axis=1)
        scale = 65535.0 if rgb.size and int(rgb.max()) > 255 else 255.0
        color = (rgb.astype(np.float32) / np.float32(scale)).astype(np.float32)
    return PointFile(path, _positions(path, pos), color)


# ---------------------------------------------------------------------------------------------
# Any file
# ---------------------------------------------------------------------------------------------

def read_points(path) -> PointFile:
    """Every point of ``path`` as it is stored (module docstring), by its extension.

    * ``.ply``: ASCII or binary (little or big endian); vertex properties ``x y z``, optional ``red green
      blue`` (or ``r g b``; 0-255 or 0-1), optional ``nx ny nz``;
    * ``.pcd``: ``ascii``, ``binary``, ``binary_compressed``; ``x y z``, optional ``rgb``/``rgba``, optional
      ``normal_x normal_y normal_z``;
    * ``.npy``: ``(N, 3+)`` (columns after ``x y z``: :attr:`PointFile.columns`) or a record array with
      named fields as a PLY's;
    * ``.txt`` / ``.xyz``: the same columns as text (spaces, tabs or commas);
    * ``.las`` / ``.laz``: through ``laspy`` (the ``las`` extra), float64 positions, colours if present.

    Raises:
        FileNotFoundError: a missing file. ValueError: an unknown extension or bad content, naming the file
        (and the line where there is one). :class:`~pcattn.optional.MissingExtra` (an ``ImportError``):
        ``laspy`` (``.las``/``.laz``) or Open3D (``binary_compressed`` PCD) not installed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in POINT_FILE_EXTENSIONS:
        raise ValueError(f"{path}: unknown point-cloud extension {suffix!r}; expected one of "
                         f"{', '.join(POINT_FILE_EXTENSIONS)}")
    _require_file(path)
    if suffix == ".ply":
        return _from_fields(path, read_ply_vertices(path))
    if suffix == ".pcd":
        return read_pcd(path)
    if suffix == ".npy":
        return _read_npy(path)
    if suffix in (".las", ".laz"):
        return read_las(path)
    return _from_table(path, read_text_table(path))


def point_colors(path, values: np.ndarray) -> np.ndarray:
    """Colours ``(N, 3)`` as float32 in ``[0, 1]`` (0-255 values divided by 255), checked; ``path`` names them
    in errors."""
    return _colors(path, values)


def point_features(cloud: PointFile, needs: Sequence[str], trained: str = "the model takes") -> Dict[str, np.ndarray]:
    """The per-point features ``needs`` (``"color"``, ``"normals"``, in a model's order) of ``cloud``: its named
    colours and normals, or else its unnamed columns after ``x y z`` (``.npy``/text), 3 per feature in the
    order of ``needs``: ``x y z r g b`` for colours, ``x y z nx ny nz`` for normals, ``x y z r g b nx ny nz``
    for both.

    Returns:
        ``{name: float32 (N, 3)}`` (colours in ``[0, 1]``).

    Raises:
        ValueError: a feature the file does not hold, naming the file, what it holds and ``trained`` (``"<model>
            was trained with"``).
    """
    found: Dict[str, np.ndarray] = {}
    spare = cloud.columns
    for number, name in enumerate(needs):
        named = cloud.color if name == "color" else cloud.normals
        if named is None and spare is not None and spare.shape[1] >= 3 * (number + 1):
            named = spare[:, 3 * number:3 * number + 3]
            named = _colors(cloud.path, named) if name == "color" else _normals(cloud.path, named)
        if named is None:
            what = "colours (r g b)" if name == "color" else "normals (nx ny nz)"
            holds = ", ".join(["x y z"] + cloud.attributes())
            layout = " ".join("r g b" if need == "color" else "nx ny nz" for need in needs)
            raise ValueError(f"{cloud.path}: {trained} {what} as input, but the file has none (it holds {holds}); "
                             f"give a file with them (.npy/.txt columns: x y z {layout})")
        found[name] = np.ascontiguousarray(named, dtype=np.float32)
    return found


# ---------------------------------------------------------------------------------------------
# Writing labelled clouds
# ---------------------------------------------------------------------------------------------

def _text_lines(pos: np.ndarray, labels: np.ndarray) -> str:
    """``x y z label`` lines; each coordinate in the shortest text that reads back to its exact value as a
    double (Python's ``repr``; a float32 value is exact as a double, so it reads back as itself)."""
    return "".join(f"{x!r} {y!r} {z!r} {label}\n" for (x, y, z), label in zip(pos.tolist(), labels.tolist()))


def write_labelled(path, pos: np.ndarray, labels: np.ndarray, colors: Optional[np.ndarray] = None) -> Path:
    """Write a labelled cloud, by ``path``'s extension:

    * ``.ply``: binary little endian, vertex properties ``x y z`` (``double`` for float64 positions, ``float``
      for float32), ``red green blue`` (``uchar``, from ``colors``) and ``int label``;
    * ``.npy``: ``(N, 4)`` columns ``x y z label`` in the positions' float type;
    * ``.txt``: lines ``x y z label``, coordinates written so they read back exactly (as doubles).

    The file is written beside ``path`` and renamed over it, so a failed write leaves no half file.

    Args:
        pos: ``(N, 3)`` float32 or float64, written as they are.
        labels: ``(N,)`` integers.
        colors: ``(N, 3)`` in ``[0, 1]`` (``.ply`` only; ``None``: no colour properties).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LABEL_EXTENSIONS:
        raise ValueError(f"{path}: labelled clouds are written as {', '.join(LABEL_EXTENSIONS)}; got {suffix!r}")
    pos = np.asarray(pos)
    if pos.dtype not in (np.float32, np.float64):
        pos = pos.astype(np.float64)
    labels = np.asarray(labels).astype(np.int64, copy=False).reshape(-1)
    if pos.ndim != 2 or pos.shape[1] != 3 or len(labels) != len(pos):
        raise ValueError(f"pos must be (N, 3) and labels (N,), got {tuple(pos.shape)} and {tuple(labels.shape)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            if suffix == ".ply":
                _write_ply(stream, pos, labels, colors)
            elif suffix == ".npy":
                np.save(stream, np.concatenate([pos, labels[:, None].astype(pos.dtype)], axis=1))
            else:
                stream.write(_text_lines(pos, labels).encode("ascii"))
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def _write_ply(stream, pos: np.ndarray, labels: np.ndarray, colors: Optional[np.ndarray]) -> None:
    kind = "double" if pos.dtype == np.float64 else "float"
    fields = [("x", "<" + pos.dtype.str[1:]), ("y", "<" + pos.dtype.str[1:]), ("z", "<" + pos.dtype.str[1:])]
    properties = [f"property {kind} {axis}" for axis in "xyz"]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        properties += [f"property uchar {name}" for name in ("red", "green", "blue")]
    fields.append(("label", "<i4"))
    properties.append("property int label")
    table = np.empty(len(pos), dtype=np.dtype(fields))
    for column, axis in enumerate("xyz"):
        table[axis] = pos[:, column]
    if colors is not None:
        bytes_rgb = np.clip(np.round(np.asarray(colors, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
        for column, name in enumerate(("red", "green", "blue")):
            table[name] = bytes_rgb[:, column]
    table["label"] = labels
    header = "\n".join(["ply", "format binary_little_endian 1.0", "comment written by pcattn predict",
                        f"element vertex {len(pos)}", *properties, "end_header"]) + "\n"
    stream.write(header.encode("ascii"))
    stream.write(table.tobytes())
