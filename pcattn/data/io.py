"""Reading point clouds and meshes from disk, with errors that name the file and the line.

Every reader returns NumPy arrays (float32 positions ``(P, 3)``, optional float32 normals
``(P, 3)``) and checks what it read: a truncated file, a line with the wrong number of
values, an empty cloud or a non-finite coordinate raises :class:`ValueError` naming the
file (and the line where there is one); a missing file raises :class:`FileNotFoundError`.

Open3D is imported lazily, only for ``.ply`` and ``.pcd``.

Why our own OFF reader rather than :func:`torch_geometric.io.read_off`: PyG's parser
does handle the ``OFF490 518 0`` header quirk of the Princeton archive, but it fails with
an unrelated ``not enough values to unpack`` on a CRLF header (``OFF\\r``) and silently
accepts a truncated file (fewer vertex lines than the header promises gives a wrong,
even 1-D, ``pos``). :func:`read_off` handles both header forms, CRLF, comments and
blank lines, and checks every count.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from ..optional import require

PathLike = Union[str, os.PathLike]

POINT_EXTENSIONS = (".npy", ".txt", ".xyz", ".ply", ".pcd", ".off")

__all__ = [
    "POINT_EXTENSIONS",
    "read_off",
    "read_point_cloud",
    "read_text_points",
    "sample_mesh_surface",
    "check_cloud",
    "check_extent",
    "check_link",
]


def check_link(path: Path) -> None:
    """Raise a named error for a symbolic link that leads nowhere: ``FileNotFoundError`` for a broken
    link (naming its target), ``ValueError`` for a loop of links. Anything else passes."""
    if not path.is_symlink() or path.exists():
        return
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError(f"{path}: symbolic link loop (the links lead back to themselves); remove it") from None
    raise FileNotFoundError(f"{path}: broken symbolic link to {os.readlink(path)!r} (the target does not exist)")


def _require_file(path: Path) -> None:
    check_link(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not a file")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file")


# float32 arithmetic squares coordinates (distances, normalisation): above ~1.8e19 that overflows.
MAX_COORDINATE = 1e18
# A cloud whose median point is this much closer to the centre than its farthest point collapses to
# one point when scaled to the unit sphere (one outlier coordinate): an error, not a silent result.
DEGENERATE_RATIO = 1e-6


def check_cloud(path: PathLike, points: np.ndarray, min_columns: int = 3, positions: bool = True) -> np.ndarray:
    """Check a parsed cloud: 2-D real numbers, at least ``min_columns`` columns, non-empty, finite,
    and (``positions``) coordinates that can be normalised (:func:`check_extent`).

    Args:
        path: the file the cloud came from (only used in messages).
        points: ``(P, C)`` array.
        min_columns: smallest acceptable ``C``.
        positions: the first 3 columns are positions (``False`` for normals).

    Returns:
        ``points`` as float32 ``(P, C)``.
    """
    points = np.asarray(points)
    if points.dtype.kind not in "fiu":
        raise ValueError(f"{path}: values of type {points.dtype}, expected real numbers (float or int)")
    if points.ndim != 2 or points.shape[1] < min_columns:
        raise ValueError(f"{path}: expected an array of shape (P, >={min_columns}), got {tuple(points.shape)}")
    if points.shape[0] == 0:
        raise ValueError(f"{path}: empty point cloud (0 points)")
    finite = np.isfinite(points).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{path}: non-finite value (NaN or inf) in point {row} (0-based)")
    with np.errstate(over="ignore"):
        converted = points.astype(np.float32, copy=False)
    overflow = ~np.isfinite(converted).all(axis=1)
    if overflow.any():
        row = int(np.flatnonzero(overflow)[0])
        raise ValueError(f"{path}: value beyond float32's range (about 3.4e38) in point {row} (0-based)")
    if positions:
        check_extent(path, points)
    return converted


def check_extent(path: PathLike, points: np.ndarray, what: str = "point") -> None:
    """Refuse positions (the first 3 columns of ``points``) that cannot be normalised to the unit
    sphere: a coordinate above :data:`MAX_COORDINATE`, every point at the same place, or one point so
    far out (:data:`DEGENERATE_RATIO`) that scaling would collapse the others into one.

    Raises:
        ValueError: naming ``path`` and the point (0-based) at fault.
    """
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    magnitude = np.abs(xyz).max(axis=1)
    too_large = np.flatnonzero(magnitude > MAX_COORDINATE)
    if too_large.size:
        row = int(too_large[0])
        raise ValueError(f"{path}: coordinate {magnitude[row]:.3g} of {what} {row} (0-based) is too large (above "
                         f"{MAX_COORDINATE:.0e}, float32 arithmetic overflows); fix or remove that {what}")
    # Distances from the median point: an outlier pulls the mean towards itself, not the median.
    distance = np.linalg.norm(xyz - np.median(xyz, axis=0), axis=1)
    radius = float(distance.max())
    if radius == 0:
        raise ValueError(f"{path}: all {len(xyz)} {what}s are at the same position: the cloud has no extent to "
                         f"normalise")
    median = float(np.median(distance))
    if median < radius * DEGENERATE_RATIO:
        row = int(np.argmax(distance))
        raise ValueError(f"{path}: {what} {row} (0-based) lies {radius:.3g} from the median {what}, over "
                         f"{1 / DEGENERATE_RATIO:.0e} times farther than half of the {what}s; scaling to the unit "
                         f"sphere would collapse the rest of the cloud into one point (an outlier coordinate?)")


# ---------------------------------------------------------------------------------------------
# OFF meshes
# ---------------------------------------------------------------------------------------------

_OFF_HEADER = re.compile(r"^\s*(C?N?OFF)\s*(.*)$")


def _content_lines(path: Path):
    """Yield ``(line_number, stripped_text)`` for non-blank, non-comment lines (1-based)."""
    with open(path, "r", encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            yield number, line


def read_off(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """Read an OFF mesh (Princeton ModelNet format) and triangulate its faces.

    Both header forms of the ModelNet archive are accepted::

        OFF                  OFF490 518 0
        490 518 0            <vertices...>
        <vertices...>

    Polygons with more than three corners are fan-triangulated. Blank lines, ``#`` comments
    and CRLF line endings are ignored.

    Args:
        path: path of the ``.off`` file.

    Returns:
        ``vertices``: float32 ``(V, 3)``; ``faces``: int64 ``(F, 3)`` vertex indices
        (``F`` counts triangles after triangulation).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: bad header, truncated file, wrong number of values on a line,
            face index out of range, no vertices, or non-finite coordinates; the message
            names the file and the line.
    """
    path = Path(path)
    _require_file(path)
    lines = iter(_content_lines(path))
    try:
        number, first = next(lines)
    except StopIteration:
        raise ValueError(f"{path}: empty file, expected an OFF header") from None
    match = _OFF_HEADER.match(first)
    if match is None:
        raise ValueError(f"{path}, line {number}: expected an 'OFF' header, got {first[:40]!r}")
    rest = match.group(2).strip()
    if not rest:
        try:
            number, rest = next(lines)
        except StopIteration:
            raise ValueError(f"{path}: truncated file, missing the 'vertices faces edges' counts line") from None
    counts = rest.split()
    try:
        num_vertices, num_faces = int(counts[0]), int(counts[1])
    except (IndexError, ValueError):
        raise ValueError(
            f"{path}, line {number}: expected 'num_vertices num_faces [num_edges]', got {rest[:40]!r}"
        ) from None
    if num_vertices <= 0:
        raise ValueError(f"{path}, line {number}: mesh has no vertices (header says {num_vertices})")
    if num_faces < 0:
        raise ValueError(f"{path}, line {number}: negative face count {num_faces}")

    body = list(lines)  # remaining (line_number, text) pairs
    if len(body) < num_vertices:
        raise ValueError(
            f"{path}: truncated file, header promises {num_vertices} vertices but only {len(body)} lines follow"
        )
    vertices = _parse_vertices(path, body[:num_vertices], exact=match.group(1) == "OFF")
    face_lines = body[num_vertices:num_vertices + num_faces]
    if len(face_lines) < num_faces:
        raise ValueError(
            f"{path}: truncated file, header promises {num_faces} faces but only {len(face_lines)} were found"
        )
    faces = _parse_faces(path, face_lines, num_vertices)
    return vertices.astype(np.float32), faces


def _parse_vertices(path: Path, rows, exact: bool = True) -> np.ndarray:
    """``rows``: list of ``(line_number, text)``; returns float64 ``(V, 3)``.

    ``exact``: plain ``OFF`` vertices have exactly 3 values; ``COFF``/``NOFF`` may add colours/normals.
    """
    try:  # fast path: exactly three numbers on every line
        flat = np.array(" ".join(text for _, text in rows).split(), dtype=np.float64)
        vertices = flat.reshape(len(rows), 3) if flat.size == 3 * len(rows) else None
    except ValueError:
        vertices = None
    if vertices is None:  # slow path: find the offending line, or accept extra columns (colours)
        parsed = []
        for number, text in rows:
            values = text.split()
            if len(values) < 3 or (exact and len(values) != 3):
                raise ValueError(f"{path}, line {number}: a vertex needs 3 coordinates, got {len(values)} values")
            try:
                parsed.append([float(v) for v in values[:3]])
            except ValueError:
                raise ValueError(f"{path}, line {number}: cannot parse vertex coordinates {text[:60]!r}") from None
        vertices = np.asarray(parsed, dtype=np.float64)
    bad = ~np.isfinite(vertices).all(axis=1)
    if bad.any():
        number = rows[int(np.flatnonzero(bad)[0])][0]
        raise ValueError(f"{path}, line {number}: non-finite vertex coordinate (NaN or inf)")
    check_extent(path, vertices, what="vertex")
    return vertices


def _parse_faces(path: Path, rows, num_vertices: int) -> np.ndarray:
    """``rows``: list of ``(line_number, text)``; returns fan-triangulated int64 ``(F, 3)``."""
    if not rows:
        return np.zeros((0, 3), dtype=np.int64)
    width = len(rows[0][1].split())
    table = None
    try:  # fast path: every face has the same number of corners (ModelNet: all triangles)
        flat = np.array(" ".join(text for _, text in rows).split(), dtype=np.int64)
        if flat.size == width * len(rows):
            table = flat.reshape(len(rows), width)
            if not (table[:, 0] == width - 1).all():
                table = None
    except ValueError:
        table = None
    if table is not None:
        corners = table[:, 1:]
        if corners.shape[1] < 3:
            raise ValueError(f"{path}, line {rows[0][0]}: a face needs at least 3 corners")
        out_of_range = (corners < 0) | (corners >= num_vertices)
        if out_of_range.any():
            number = rows[int(np.flatnonzero(out_of_range.any(axis=1))[0])][0]
            raise ValueError(f"{path}, line {number}: face index out of range [0, {num_vertices})")
        fans = [corners[:, [0, j, j + 1]] for j in range(1, corners.shape[1] - 1)]
        return np.concatenate(fans, axis=0)
    triangles = []
    for number, text in rows:
        values = text.split()
        try:
            count = int(values[0])
            indices = [int(v) for v in values[1:1 + count]]
        except ValueError:
            raise ValueError(f"{path}, line {number}: cannot parse face {text[:60]!r}") from None
        if count < 3 or len(indices) != count:
            raise ValueError(
                f"{path}, line {number}: face declares {count} corners but lists {len(values) - 1} indices"
            )
        if min(indices) < 0 or max(indices) >= num_vertices:
            raise ValueError(f"{path}, line {number}: face index out of range [0, {num_vertices})")
        triangles.extend((indices[0], indices[j], indices[j + 1]) for j in range(1, count - 1))
    return np.asarray(triangles, dtype=np.int64).reshape(-1, 3)


def sample_mesh_surface(
    vertices: np.ndarray,
    faces: np.ndarray,
    num_points: int,
    rng: Optional[np.random.Generator] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Sample points uniformly on a triangle mesh surface (area-weighted).

    Each point picks a triangle with probability proportional to its area, then uniform
    barycentric coordinates inside it; its normal is the triangle's unit normal.

    Args:
        vertices: ``(V, 3)`` float.
        faces: ``(F, 3)`` int triangle indices.
        num_points: number of points ``P`` to draw.
        rng: NumPy generator (default: ``np.random.default_rng(0)``, so results are repeatable).

    Returns:
        ``pos`` float32 ``(P, 3)`` and ``normals`` float32 ``(P, 3)`` (unit length).

    Raises:
        ValueError: no faces, or all faces have zero area.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if faces.ndim != 2 or faces.shape[0] == 0:
        raise ValueError("mesh has no faces to sample from")
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    cross = np.cross(b - a, c - a)
    double_area = np.linalg.norm(cross, axis=1)
    total = double_area.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("mesh has zero surface area")
    chosen = rng.choice(len(faces), size=num_points, p=double_area / total)
    u, v = rng.random(num_points), rng.random(num_points)
    flip = u + v > 1.0  # reflect into the triangle so the barycentric sample stays uniform
    u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
    pos = a[chosen] + u[:, None] * (b - a)[chosen] + v[:, None] * (c - a)[chosen]
    normals = cross[chosen] / np.maximum(double_area[chosen, None], 1e-12)
    return pos.astype(np.float32), normals.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Text / binary point files
# ---------------------------------------------------------------------------------------------

def read_text_points(
    path: PathLike, delimiter: Optional[str] = None, min_columns: int = 3, columns: Optional[int] = None
) -> np.ndarray:
    """Read a text point file: one point per line, comma- or whitespace-separated values.

    Every line must have the same number of values (at least ``min_columns``); used for
    ``.txt``/``.xyz`` files and the PointNet++ ``x,y,z,nx,ny,nz`` lines.

    Args:
        path: the text file.
        delimiter: ``","``, ``None`` (whitespace) or ``"auto"``-like ``None`` with commas
            also accepted (commas are always treated as separators).
        min_columns: smallest number of values per line.
        columns: if given, the exact number of values every line must have.

    Returns:
        float32 ``(P, C)``.

    Raises:
        FileNotFoundError / ValueError naming the file and, for a bad line, its number.
    """
    path = Path(path)
    _require_file(path)
    with open(path, "r", encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    if delimiter not in (None, ","):
        text = text.replace(delimiter, " ")
    text = text.replace(",", " ")
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"{path}: empty point cloud (no lines)")
    counts = np.fromiter((len(line.split()) for line in lines), dtype=np.int64, count=len(lines))
    width = int(counts[0]) if columns is None else columns
    if width < min_columns:
        raise ValueError(f"{path}, line 1: expected at least {min_columns} values per line, got {width}")
    wrong = np.flatnonzero(counts != width)
    if wrong.size:
        number = int(wrong[0]) + 1
        what = "as on line 1" if columns is None else "x,y,z,nx,ny,nz layout"
        raise ValueError(f"{path}, line {number}: expected {width} values ({what}), got {int(counts[wrong[0]])}")
    try:
        flat = np.array(text.split(), dtype=np.float64)
    except ValueError:
        _raise_first_bad_line(path, lines, width, min_columns)
    points = flat.reshape(len(lines), width)
    return check_cloud(path, points, min_columns)


def _raise_first_bad_line(path: Path, lines, width: int, min_columns: int) -> None:
    if width < min_columns:
        raise ValueError(f"{path}, line 1: expected at least {min_columns} values per line, got {width}")
    for number, line in enumerate(lines, start=1):
        values = line.split()
        if len(values) != width:
            raise ValueError(
                f"{path}, line {number}: expected {width} values (as on line 1), got {len(values)}"
                + (" (blank line)" if not values else "")
            )
        try:
            [float(v) for v in values]
        except ValueError:
            raise ValueError(f"{path}, line {number}: cannot parse numbers from {line[:60]!r}") from None
    raise ValueError(f"{path}: could not parse point file")  # pragma: no cover


_PLY_SIZES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
              "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}


def _declared_size(path: Path, data: bytes) -> Optional[Tuple[str, int, int]]:
    """From a PLY or PCD header: ``(encoding, points, bytes per point)`` of its points, or ``None``
    when the header cannot tell (list properties, compressed data, an unreadable header)."""
    if path.suffix.lower() == ".ply":
        end = data.find(b"end_header")
        lines = data[:end].decode("ascii", errors="replace").splitlines() if end >= 0 else []
        fields = [line.split() for line in lines]
        encoding = next((f[1] for f in fields if f[:1] == ["format"] and len(f) > 1), None)
        elements = [f for f in fields if f[:1] in (["element"], ["property"])]
        if not elements or elements[0][:2] != ["element", "vertex"] or len(elements[0]) < 3:
            return None
        row = 0
        for field in elements[1:]:
            if field[0] == "element":
                break
            if len(field) < 3 or field[1] == "list" or field[1] not in _PLY_SIZES:
                return None
            row += _PLY_SIZES[field[1]]
        return (encoding or "?", int(elements[0][2]) if elements[0][2].isdigit() else -1, row)
    header = {}
    for line in data.decode("ascii", errors="replace").splitlines():
        parts = line.split()
        if parts and parts[0].isupper():
            header[parts[0]] = parts[1:]
        if parts[:1] == ["DATA"]:
            break
    try:
        row = sum(int(s) * int(c) for s, c in zip(header["SIZE"], header.get("COUNT", ["1"] * len(header["SIZE"]))))
        return header["DATA"][0], int(header["POINTS"][0]), row
    except (KeyError, IndexError, ValueError):
        return None


def _check_complete(path: Path) -> None:
    """Open3D fills the missing points of a truncated PLY/PCD with zeros: compare the data the header
    declares with what the file holds, and name a truncated file."""
    data = path.read_bytes()
    marker = b"end_header" if path.suffix.lower() == ".ply" else b"\nDATA"
    if marker not in data:  # a cut header: Open3D's parser may then ask for any amount of memory
        raise ValueError(f"{path}: incomplete header (no {marker.decode().strip()!r} line): a truncated file, "
                         f"or not a {path.suffix.lstrip('.').upper()} file")
    declared = _declared_size(path, data)
    if declared is None:
        return
    encoding, points, row = declared
    if path.suffix.lower() == ".ply":
        body = data[data.find(b"end_header") + len(b"end_header"):].split(b"\n", 1)[-1]
    else:
        start = data.find(b"\nDATA")
        body = data[data.find(b"\n", start + 1) + 1:] if start >= 0 else b""
    if encoding.startswith("binary") and encoding != "binary_compressed":
        have = len(body) // row if row else points
    elif encoding == "ascii":
        have = sum(1 for line in body.splitlines() if line.strip())
    else:
        return
    if have < points:
        raise ValueError(f"{path}: truncated file, the header declares {points} points but the file holds {have}")


def _read_open3d(path: Path) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    o3d = require("open3d", "io", f"reading {path.suffix} files")  # lazy: heavy, and an extra
    _check_complete(path)
    try:
        cloud = o3d.io.read_point_cloud(str(path), print_progress=False)
    except (MemoryError, RuntimeError) as error:  # a damaged header can send Open3D's parser astray
        raise ValueError(f"{path}: a file Open3D cannot parse ({type(error).__name__}: {error})") from error
    pos = np.asarray(cloud.points, dtype=np.float32)
    if pos.shape[0] == 0:
        raise ValueError(f"{path}: empty point cloud, or a file Open3D cannot parse")
    normals = np.asarray(cloud.normals, dtype=np.float32) if cloud.has_normals() else None
    return pos, normals


def read_point_cloud(
    path: PathLike,
    num_mesh_points: int = 2048,
    rng: Optional[np.random.Generator] = None,
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Read a point cloud from ``.npy``, ``.txt``, ``.xyz``, ``.ply``, ``.pcd`` or ``.off``.

    * ``.npy``: real array ``(P, 3)`` or ``(P, >=6)`` (columns 3:6 are normals); 4 or 5 columns, a
      complex or text array is an error.
    * ``.txt`` / ``.xyz``: one point per line, whitespace or comma separated, 3 or >=6 values.
    * ``.ply`` / ``.pcd``: through Open3D (imported here, lazily); normals if the file has them.
    * ``.off``: a mesh; ``num_mesh_points`` points are sampled on its surface (area-weighted)
      with the face normals.

    Args:
        path: the file.
        num_mesh_points: points to sample from an ``.off`` mesh.
        rng: generator for the mesh sampling (default: seeded, repeatable).

    Returns:
        ``pos`` float32 ``(P, 3)`` and ``normals`` float32 ``(P, 3)`` or ``None``.

    Raises:
        FileNotFoundError: missing file.
        ValueError: unknown extension, a directory, bad content, empty cloud, NaN/inf coordinates,
            coordinates that overflow or cannot be normalised (:func:`check_extent`).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in POINT_EXTENSIONS:
        raise ValueError(f"{path}: unknown point-cloud extension {suffix!r}; expected one of {POINT_EXTENSIONS}")
    _require_file(path)
    if suffix == ".off":
        vertices, faces = read_off(path)
        try:
            return sample_mesh_surface(vertices, faces, num_mesh_points, rng)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as error:  # numpy raises several types for corrupt files
            raise ValueError(f"{path}: not a readable .npy array ({error})") from None
        points = check_cloud(path, array)
    elif suffix in (".txt", ".xyz"):
        points = read_text_points(path)
    else:
        pos, normals = _read_open3d(path)
        pos = check_cloud(path, pos)
        if normals is not None:
            normals = check_cloud(path, normals, positions=False)
        return pos, normals
    if points.shape[1] in (4, 5):
        raise ValueError(f"{path}: {points.shape[1]} values per point; expected 3 (x y z) or at least 6 "
                         f"(x y z nx ny nz, further columns ignored)")
    pos = np.ascontiguousarray(points[:, :3])
    normals = np.ascontiguousarray(points[:, 3:6]) if points.shape[1] >= 6 else None
    return pos, normals
