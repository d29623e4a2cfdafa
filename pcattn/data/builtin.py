"""The built-in dataset: procedurally generated 3D shapes, no download needed.

Twelve classes of simple objects, each a union of primitive surfaces (boxes, cylinders,
frusta, cones, tori) sampled area-weighted with exact normals. Two pairs differ only in a small
local part, so a model must look at local structure, not only the overall silhouette:

* ``cup`` vs ``cup_handle`` (the handle is ~15% of the surface);
* ``table_3legs`` vs ``table_4legs`` (same random round or square top, same leg style).

Every shape gets random part proportions, a random rotation about the up axis (y, matching the
PointNet++ files and :class:`~pcattn.data.transforms.RandomRotateUp`'s default), a random overall
scale in ``[0.75, 1]`` after centring in the unit sphere, and Gaussian position noise. Generation is
deterministic by ``seed``: every shape draws from its own ``numpy`` generator seeded by
``(seed, split, class, index)``.

The dataset is written once, in the PointNet++ ``modelnet40_normal_resampled`` layout with the
prefix ``builtin`` (``builtin_shape_names.txt``, ``builtin_train.txt``, ``builtin_test.txt``,
``<class>/<class>_0001.txt`` with ``x,y,z,nx,ny,nz`` lines), and read back through
:class:`~pcattn.data.modelnet.ModelNetNormalResampled`, the same code as real data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from torch import Tensor

from .modelnet import ModelNetNormalResampled

__all__ = ["BuiltinShapes", "BUILTIN_CLASSES", "generate_builtin_shapes", "default_data_dir", "generate_shape"]

GENERATOR_VERSION = 3
PREFIX = "builtin"
INFO_FILE = "builtin_info.json"

Cloud = Tuple[np.ndarray, np.ndarray]  # positions (n, 3), normals (n, 3)
Part = Tuple[float, Callable[[np.random.Generator, int], Cloud]]  # (surface area, sampler)


def default_data_dir() -> Path:
    """Where datasets live by default: ``$PCATTN_DATA``, else ``<repo>/datasets`` for a source
    checkout (found relative to this package), else ``~/.cache/pcattn/datasets``."""
    if os.environ.get("PCATTN_DATA"):
        return Path(os.environ["PCATTN_DATA"]).expanduser()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "pcattn").is_dir():
        return repo / "datasets"
    return Path.home() / ".cache" / "pcattn" / "datasets"


# ---------------------------------------------------------------------------------------------
# Primitive surfaces (y is up). Each returns [(area, sampler)], sampler(rng, n) -> (pos, normals).
# ---------------------------------------------------------------------------------------------

def _orthonormal(axis: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    w = np.asarray(axis, dtype=np.float64)
    w = w / np.linalg.norm(w)
    helper = np.array([1.0, 0.0, 0.0]) if abs(w[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    u = np.cross(w, helper)
    u /= np.linalg.norm(u)
    return u, np.cross(w, u), w


def box(center, size) -> List[Part]:
    """Surface of an axis-aligned box: ``center (3,)``, full ``size (3,)``."""
    center, size = np.asarray(center, float), np.asarray(size, float)
    parts = []
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        area = size[others[0]] * size[others[1]]
        for sign in (-1.0, 1.0):
            def sampler(rng, n, axis=axis, others=others, sign=sign):
                pos = np.empty((n, 3))
                pos[:, axis] = center[axis] + sign * size[axis] / 2
                for o in others:
                    pos[:, o] = center[o] + (rng.random(n) - 0.5) * size[o]
                normals = np.zeros((n, 3))
                normals[:, axis] = sign
                return pos, normals
            parts.append((area, sampler))
    return parts


def frustum(base, axis, radius_bottom, radius_top, height, bottom=True, top=True) -> List[Part]:
    """Truncated cone (cylinder when the radii match, cone when ``radius_top == 0``) from ``base``
    along unit ``axis``; ``bottom``/``top`` add the flat end discs."""
    base = np.asarray(base, float)
    u, v, w = _orthonormal(axis)
    r0, r1, h = float(radius_bottom), float(radius_top), float(height)
    slant = math.hypot(r1 - r0, h)
    parts: List[Part] = []

    def side(rng, n):
        # area density grows linearly with the radius: invert the CDF of r(t) along the height
        q = rng.random(n)
        if abs(r1 - r0) < 1e-9:
            t = q
        else:
            t = (np.sqrt(r0 ** 2 + q * (r1 ** 2 - r0 ** 2)) - r0) / (r1 - r0)
        angle = rng.random(n) * 2 * math.pi
        radial = np.cos(angle)[:, None] * u + np.sin(angle)[:, None] * v
        radius = r0 + (r1 - r0) * t
        pos = base + radius[:, None] * radial + (t * h)[:, None] * w
        normal = h * radial + (r0 - r1) * w
        return pos, normal / np.linalg.norm(normal, axis=1, keepdims=True)

    parts.append((math.pi * (r0 + r1) * slant, side))
    for enabled, radius, offset, sign in ((bottom, r0, 0.0, -1.0), (top, r1, h, 1.0)):
        if enabled and radius > 0:
            def disc(rng, n, radius=radius, offset=offset, sign=sign):
                rho = radius * np.sqrt(rng.random(n))
                angle = rng.random(n) * 2 * math.pi
                pos = base + offset * w + (rho * np.cos(angle))[:, None] * u + (rho * np.sin(angle))[:, None] * v
                return pos, np.tile(sign * w, (n, 1))
            parts.append((math.pi * radius ** 2, disc))
    return parts


def torus(center, axis, major, minor, start=0.0, stop=2 * math.pi, phase_axis=None) -> List[Part]:
    """Torus (or an arc of it, angles ``[start, stop]`` measured from ``phase_axis``) around ``axis``."""
    center = np.asarray(center, float)
    u, v, w = _orthonormal(axis)
    if phase_axis is not None:
        u = np.asarray(phase_axis, float) - np.dot(phase_axis, w) * w
        u /= np.linalg.norm(u)
        v = np.cross(w, u)

    def sampler(rng, n):
        theta = start + (stop - start) * rng.random(n)
        # density of the tube angle phi is proportional to (major + minor cos phi): rejection sample
        phi = np.empty(0)
        while phi.size < n:
            candidate = rng.random(2 * n + 8) * 2 * math.pi
            keep = rng.random(candidate.size) * (major + minor) < major + minor * np.cos(candidate)
            phi = np.concatenate([phi, candidate[keep]])
        phi = phi[:n]
        ring = np.cos(theta)[:, None] * u + np.sin(theta)[:, None] * v
        normal = np.cos(phi)[:, None] * ring + np.sin(phi)[:, None] * w
        return center + major * ring + minor * normal, normal

    return [((stop - start) * major * 2 * math.pi * minor, sampler)]


def _sample_parts(parts: List[Part], num_points: int, rng: np.random.Generator) -> Cloud:
    areas = np.array([area for area, _ in parts], dtype=np.float64)
    counts = rng.multinomial(num_points, areas / areas.sum())
    clouds = [sampler(rng, int(count)) for (_, sampler), count in zip(parts, counts) if count > 0]
    pos = np.concatenate([c[0] for c in clouds])
    normals = np.concatenate([c[1] for c in clouds])
    order = rng.permutation(num_points)  # shuffled, so the first N points are a uniform subset
    return pos[order], normals[order]


# ---------------------------------------------------------------------------------------------
# The classes. Each builder takes a generator and returns parts, standing on y = 0.
# ---------------------------------------------------------------------------------------------

UP = np.array([0.0, 1.0, 0.0])


def _u(rng, low, high) -> float:
    return float(rng.uniform(low, high))


def _airplane(rng):
    length, radius = _u(rng, 1.6, 2.0), _u(rng, 0.09, 0.13)
    span, chord = _u(rng, 1.3, 1.8), _u(rng, 0.25, 0.4)
    x_axis = np.array([1.0, 0.0, 0.0])
    parts = frustum([-length / 2, 0, 0], x_axis, radius, radius, length * 0.85, bottom=True, top=False)
    parts += frustum([length * 0.35, 0, 0], x_axis, radius, 0.0, length * 0.15, bottom=False)
    parts += box([_u(rng, -0.1, 0.1), 0, 0], [chord, 0.03, span])
    parts += box([-length / 2 + 0.1, radius + 0.12, 0], [0.2, 0.25, 0.03])
    parts += box([-length / 2 + 0.1, 0, 0], [0.15, 0.02, span * 0.35])
    return parts


def _bookshelf(rng):
    width, height, depth = _u(rng, 0.8, 1.1), _u(rng, 1.2, 1.7), _u(rng, 0.3, 0.4)
    t = 0.04
    parts = box([-width / 2, height / 2, 0], [t, height, depth]) + box([width / 2, height / 2, 0], [t, height, depth])
    parts += box([0, height / 2, -depth / 2], [width, height, t / 2])
    shelves = int(rng.integers(3, 6))
    for level in np.linspace(t / 2, height - t / 2, shelves):
        parts += box([0, level, 0], [width, t, depth])
    return parts


def _bottle(rng):
    radius, body = _u(rng, 0.25, 0.35), _u(rng, 0.8, 1.1)
    neck_radius, neck = radius * _u(rng, 0.3, 0.4), _u(rng, 0.25, 0.4)
    shoulder = _u(rng, 0.15, 0.25)
    parts = frustum([0, 0, 0], UP, radius, radius, body, bottom=True, top=False)
    parts += frustum([0, body, 0], UP, radius, neck_radius, shoulder, bottom=False, top=False)
    parts += frustum([0, body + shoulder, 0], UP, neck_radius, neck_radius, neck, bottom=False, top=True)
    return parts


def _chair(rng, back=True):
    seat, height, leg = _u(rng, 0.45, 0.6), _u(rng, 0.45, 0.55), _u(rng, 0.03, 0.045)
    parts = box([0, height, 0], [seat, 0.05, seat])
    for sx in (-1, 1):
        for sz in (-1, 1):
            parts += box([sx * (seat / 2 - leg), height / 2, sz * (seat / 2 - leg)], [2 * leg, height, 2 * leg])
    if back:
        back_height = _u(rng, 0.45, 0.65)
        parts += box([0, height + back_height / 2, -seat / 2], [seat, back_height, 0.05])
    return parts


def _cone(rng):
    return frustum([0, 0, 0], UP, _u(rng, 0.35, 0.5), 0.0, _u(rng, 0.8, 1.2), bottom=True)


def _cup(rng, handle=False):
    radius, height = _u(rng, 0.3, 0.4), _u(rng, 0.7, 0.95)
    flare = _u(rng, 1.0, 1.2)
    parts = frustum([0, 0, 0], UP, radius, radius * flare, height, bottom=True, top=False)
    if handle:
        major = height * _u(rng, 0.32, 0.4)
        side = radius * (1 + flare) / 2
        # a C-shaped arc of a torus in the x-y plane, its ends touching the cup wall
        parts += torus([side, height / 2, 0], [0, 0, 1], major, _u(rng, 0.07, 0.09),
                       start=-math.pi / 2 - 0.15, stop=math.pi / 2 + 0.15, phase_axis=[1, 0, 0])
    return parts


def _lamp(rng):
    base_radius, pole_height = _u(rng, 0.25, 0.35), _u(rng, 0.8, 1.2)
    shade_height = _u(rng, 0.3, 0.45)
    parts = frustum([0, 0, 0], UP, base_radius, base_radius, 0.05)
    parts += frustum([0, 0.05, 0], UP, 0.025, 0.025, pole_height, bottom=False, top=False)
    parts += frustum([0, 0.05 + pole_height - shade_height * 0.6, 0], UP, _u(rng, 0.3, 0.4), _u(rng, 0.12, 0.2),
                     shade_height, bottom=False, top=False)
    return parts


def _stool(rng):
    radius, height, leg = _u(rng, 0.25, 0.35), _u(rng, 0.6, 0.8), _u(rng, 0.025, 0.035)
    parts = frustum([0, height, 0], UP, radius, radius, 0.06)
    for angle in np.arange(3) * 2 * math.pi / 3:
        x, z = 0.8 * radius * math.cos(angle), 0.8 * radius * math.sin(angle)
        parts += frustum([x, 0, z], UP, leg, leg, height, bottom=False, top=False)
    return parts


def _table(rng, legs):
    height, leg = _u(rng, 0.6, 0.8), _u(rng, 0.045, 0.065)
    half = _u(rng, 0.5, 0.65)
    round_top = rng.random() < 0.5
    if round_top:
        parts = frustum([0, height, 0], UP, half, half, 0.05)
    else:
        parts = box([0, height + 0.025, 0], [2 * half, 0.05, 2 * half])
    spread = half * (0.75 if round_top else 0.85) * (math.sqrt(2) if not round_top and legs == 4 else 1.0)
    phase = math.pi / 4 if legs == 4 else rng.uniform(0, 2 * math.pi)
    for angle in phase + np.arange(legs) * 2 * math.pi / legs:
        x, z = spread * math.cos(angle), spread * math.sin(angle)
        parts += frustum([x, 0, z], UP, leg, leg, height, bottom=False, top=False)
    return parts


def _torus(rng):
    major = _u(rng, 0.5, 0.7)
    minor = major * _u(rng, 0.2, 0.35)
    axis = UP if rng.random() < 0.5 else np.array([1.0, 0.0, 0.0])
    return torus([0, major + minor, 0], axis, major, minor)


_BUILDERS: Dict[str, Callable[[np.random.Generator], List[Part]]] = {
    "airplane": _airplane,
    "bookshelf": _bookshelf,
    "bottle": _bottle,
    "chair": _chair,
    "cone": _cone,
    "cup": lambda rng: _cup(rng, handle=False),
    "cup_handle": lambda rng: _cup(rng, handle=True),
    "lamp": _lamp,
    "stool": _stool,
    "table_3legs": lambda rng: _table(rng, 3),
    "table_4legs": lambda rng: _table(rng, 4),
    "torus": _torus,
}
BUILTIN_CLASSES: Tuple[str, ...] = tuple(sorted(_BUILDERS))


def generate_shape(category: str, rng: np.random.Generator, num_points: int = 2048,
                   noise: float = 0.01, scale: Tuple[float, float] = (0.75, 1.0)) -> np.ndarray:
    """One random shape of ``category``.

    Samples ``num_points`` points on its surface (area-weighted), centres it in the unit sphere,
    applies a random scale in ``scale``, a random rotation about the up axis (y) and Gaussian
    noise of std ``noise`` (clipped at ``3 * noise``) on the positions.

    Returns:
        float32 ``(num_points, 6)``: ``x, y, z, nx, ny, nz``.
    """
    if category not in _BUILDERS:
        raise ValueError(f"unknown builtin class {category!r}; expected one of {BUILTIN_CLASSES}")
    pos, normals = _sample_parts(_BUILDERS[category](rng), num_points, rng)
    pos = pos - pos.mean(axis=0)
    pos = pos / np.linalg.norm(pos, axis=1).max() * rng.uniform(*scale)
    angle = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # about y, as RandomRotateUp(axis=1)
    pos, normals = pos @ rotation.T, normals @ rotation.T
    pos = pos + np.clip(rng.normal(0.0, noise, pos.shape), -3 * noise, 3 * noise)
    return np.concatenate([pos, normals], axis=1).astype(np.float32)


def _format_cloud(cloud: np.ndarray) -> str:
    row = ",".join(["%.6f"] * cloud.shape[1]) + "\n"
    return (row * cloud.shape[0]) % tuple(cloud.ravel().tolist())


def generate_builtin_shapes(root, seed: int = 0, train_per_class: int = 64, test_per_class: int = 20,
                            points_per_shape: int = 2048, noise: float = 0.01) -> Dict:
    """Write the built-in dataset to ``root`` (created; must not exist yet or be empty).

    Writes the whole tree in a temporary sibling folder and renames it into place, so readers
    never see a half-written dataset and two processes generating at once cannot mix files.

    Returns:
        The info dict stored in ``root/builtin_info.json`` (sizes, seed, classes, seconds taken).
    """
    root = Path(root).expanduser()
    root.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.tmp-"))
    try:
        lists = {"train": [], "test": []}
        for label, category in enumerate(BUILTIN_CLASSES):
            (staging / category).mkdir()
            number = 0
            for split_index, (split, count) in enumerate((("train", train_per_class), ("test", test_per_class))):
                for index in range(count):
                    number += 1
                    rng = np.random.default_rng([seed, split_index, label, index])
                    cloud = generate_shape(category, rng, points_per_shape, noise)
                    name = f"{category}_{number:04d}"
                    (staging / category / f"{name}.txt").write_text(_format_cloud(cloud))
                    lists[split].append(name)
        (staging / f"{PREFIX}_shape_names.txt").write_text("\n".join(BUILTIN_CLASSES) + "\n")
        for split, names in lists.items():
            (staging / f"{PREFIX}_{split}.txt").write_text("\n".join(names) + "\n")
        info = _info(seed, train_per_class, test_per_class, points_per_shape, noise)
        info["generation_seconds"] = round(time.perf_counter() - start, 2)
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if root.exists() and not any(root.iterdir()):
            root.rmdir()
        try:
            staging.rename(root)
        except OSError:
            if not (root / INFO_FILE).is_file():  # not a concurrent generator winning the race
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info


def _info(seed, train_per_class, test_per_class, points_per_shape, noise) -> Dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "train_per_class": int(train_per_class),
        "test_per_class": int(test_per_class),
        "points_per_shape": int(points_per_shape),
        "noise": float(noise),
        "classes": list(BUILTIN_CLASSES),
        "layout": "modelnet40_normal_resampled (prefix 'builtin')",
        "up_axis": "y",
    }


@contextlib.contextmanager
def _generation_lock(root: Path):
    """An exclusive OS lock (``fcntl.flock``) on ``.<root name>.lock`` beside ``root``; none where
    ``fcntl`` does not exist (the generation itself stays atomic: staged, then renamed)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


_GENERATION_KEYS = ("generator_version", "seed", "train_per_class", "test_per_class", "points_per_shape", "noise",
                    "classes")


class BuiltinShapes(ModelNetNormalResampled):
    """The built-in procedural shapes dataset (12 classes, no download).

    Generated on first use into ``root`` (default ``<repo>/datasets/builtin_shapes``; a non-default
    generation setting gets its own folder ``builtin_shapes-<hash>``), then read by
    :class:`ModelNetNormalResampled` with ``prefix="builtin"``. Default size: 64 train and 20 test
    shapes per class (768 / 240), 2048 points with normals each, generated in a few seconds.

    Args:
        root: dataset folder (``None`` = default, regenerated automatically when the generator
            changes). If a given folder holds a dataset generated with other settings, a
            ``ValueError`` says so (pass ``regenerate=True`` to overwrite it).
        split: ``"train"`` or ``"test"``.
        num_points: points per sample ``P`` (<= ``points_per_shape``).
        use_normals: also return ``normals (P, 3)``.
        transform: callable on the sample dict.
        seed, train_per_class, test_per_class, points_per_shape, noise: generation settings.
        regenerate: delete and regenerate ``root`` if its settings differ.
        **kwargs: passed to :class:`ModelNetNormalResampled` (``sampling``, ``cache_dir``, ...).

    Samples: ``pos (P, 3)`` float32, ``label ()`` int64, ``normals (P, 3)`` when ``use_normals``;
    y-up (``up_axis = 1``).
    """

    def __init__(self, root=None, split: str = "train", num_points: int = 1024, use_normals: bool = False,
                 transform: Optional[Callable[[Dict[str, Tensor]], Dict[str, Tensor]]] = None, seed: int = 0,
                 train_per_class: int = 64, test_per_class: int = 20, points_per_shape: int = 2048,
                 noise: float = 0.01, regenerate: bool = False, **kwargs):
        settings = _info(seed, train_per_class, test_per_class, points_per_shape, noise)
        if root is None:
            regenerate = True  # the default folder is ours: refresh it when the generator changes
            root = default_data_dir() / "builtin_shapes"
            if settings != _info(0, 64, 20, 2048, 0.01):
                digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
                root = root.with_name(f"builtin_shapes-{digest}")
        root = Path(root).expanduser()
        if num_points > points_per_shape:
            raise ValueError(f"num_points={num_points} exceeds points_per_shape={points_per_shape}")
        self.info = self._ensure(root, settings, regenerate)
        super().__init__(root, split, num_points, use_normals, transform, prefix=PREFIX, **kwargs)

    @staticmethod
    def _ensure(root: Path, settings: Dict, regenerate: bool) -> Dict:
        # One process at a time checks, deletes or generates the folder (the ranks of a torchrun job,
        # two runs started together): the others wait, then find it ready.
        with _generation_lock(root):
            return BuiltinShapes._ensure_locked(root, settings, regenerate)

    @staticmethod
    def _ensure_locked(root: Path, settings: Dict, regenerate: bool) -> Dict:
        info_path = root / INFO_FILE
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            if all(info.get(key) == settings[key] for key in _GENERATION_KEYS):
                return info
            if not regenerate:
                raise ValueError(
                    f"{info_path}: this folder holds builtin shapes generated with other settings "
                    f"({ {k: info.get(k) for k in _GENERATION_KEYS if info.get(k) != settings[k]} }); "
                    f"pass regenerate=True or another root"
                )
            shutil.rmtree(root)
        elif root.exists() and any(root.iterdir()):
            raise ValueError(f"{root}: folder exists, is not empty and holds no {INFO_FILE}; refusing to write there")
        return generate_builtin_shapes(root, settings["seed"], settings["train_per_class"],
                                       settings["test_per_class"], settings["points_per_shape"], settings["noise"])
