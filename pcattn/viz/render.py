"""Rendering a coloured cloud into images, one per camera view.

Owns the cameras (:func:`view_angles`), Open3D's headless ``OffscreenRenderer`` (software Vulkan
from Debian's ``mesa-vulkan-drivers``) with :func:`open3d_rendering_available`, a probe run in a
subprocess because a missing driver aborts the process, the matplotlib scatter fallback, and
:func:`render_views`, which picks a backend (:data:`BACKENDS`) and raises
:class:`RenderingUnavailable` when Open3D was asked for and cannot run. Open3D and matplotlib are
imported lazily, where they draw. Laying the images out is :mod:`pcattn.viz.figures`.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from torch import Tensor

from ..optional import require
from .values import QUERY_COLOR

__all__ = ["render_views", "view_angles", "open3d_rendering_available", "RenderingUnavailable", "BACKENDS",
           "BACKGROUND", "DEBIAN_RENDER_PACKAGES", "RENDER_HELP"]

BACKENDS = ("auto", "open3d", "matplotlib")
BACKGROUND = (1.0, 1.0, 1.0)
DEBIAN_RENDER_PACKAGES = "mesa-vulkan-drivers libegl1 libgl1"
RENDER_HELP = (f"install the system packages for headless rendering (Debian/Ubuntu: "
               f"apt-get install -y {DEBIAN_RENDER_PACKAGES}), or use the matplotlib renderer "
               f"(backend='matplotlib', CLI --renderer matplotlib)")


class RenderingUnavailable(RuntimeError):
    """Open3D cannot render off screen here (no Vulkan/EGL driver, or Open3D missing)."""


_DEFAULT_VIEWS = [(35.0, 25.0), (155.0, 25.0), (275.0, 60.0), (90.0, 0.0), (215.0, -20.0), (0.0, 89.0)]


def view_angles(views: Union[int, Sequence[Tuple[float, float]]] = 1) -> List[Tuple[float, float]]:
    """Camera directions as ``(azimuth, elevation)`` in degrees.

    An int ``n`` gives the first ``n`` of a fixed set (1 = the default three-quarter view,
    3 = three views around the shape); a list of pairs is used as given.
    """
    if isinstance(views, int) and not isinstance(views, bool):
        if not 1 <= views <= len(_DEFAULT_VIEWS):
            raise ValueError(f"views must be between 1 and {len(_DEFAULT_VIEWS)}, got {views}")
        return list(_DEFAULT_VIEWS[:views])
    angles = [(float(a), float(e)) for a, e in views]
    if not angles:
        raise ValueError("views must hold at least one (azimuth, elevation) pair")
    return angles


def _camera(pos: np.ndarray, azimuth: float, elevation: float, up_axis: int, fov: float):
    """Look-at camera on the cloud's bounding-box centre, far enough for the whole cloud to fit."""
    up = np.eye(3)[up_axis]
    # matplotlib's convention (its view_init(azim, elev, vertical_axis)): y-up: a = z, b = x; z-up: a = x, b = y
    a, b = np.eye(3)[(up_axis + 1) % 3], np.eye(3)[(up_axis + 2) % 3]
    az, el = math.radians(azimuth), math.radians(max(-89.0, min(89.0, elevation)))
    direction = math.cos(el) * (math.cos(az) * a + math.sin(az) * b) + math.sin(el) * up
    center = (pos.min(0) + pos.max(0)) / 2
    radius = max(float(np.linalg.norm(pos - center, axis=1).max()), 1e-6)
    distance = radius / math.sin(math.radians(fov) / 2) * 1.05
    # the picture's up: the up axis made orthogonal to the view (Filament turns a look-at whose up is
    # nearly the view direction, as from above, by 90 degrees)
    image_up = up - (up @ direction) * direction
    return center, center + distance * direction, image_up / np.linalg.norm(image_up)


def _draw_ring(image: np.ndarray, x: float, y: float, radius: float, color, width: float = 2.5) -> None:
    """Draw a circle outline in place (so the query is visible even behind other points)."""
    h, w = image.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    dist = np.sqrt((xx - x) ** 2 + (yy - y) ** 2)
    image[np.abs(dist - radius) <= width / 2] = (np.asarray(color) * 255).astype(np.uint8)


_PROBE = """
import numpy as np, open3d as o3d
from open3d.visualization import rendering
r = rendering.OffscreenRenderer(16, 16)
cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.zeros((1, 3))))
material = rendering.MaterialRecord(); material.shader = "defaultUnlit"
r.scene.add_geometry("p", cloud, material)
r.setup_camera(40.0, [0, 0, 0], [0, 0, 3], [0, 1, 0])
np.asarray(r.render_to_image())
print("PCATTN_RENDER_OK")
"""
_PROBE_RESULT: Optional[Tuple[bool, str]] = None


def open3d_rendering_available(refresh: bool = False, env: Optional[Dict[str, str]] = None) -> Tuple[bool, str]:
    """Can Open3D render off screen here? ``(ok, reason)``.

    Tried once per process in a subprocess: without a Vulkan/EGL driver Filament aborts the whole
    process (C++ ``terminate``) instead of raising, so it must not be tried in ours. About a second.
    ``env`` (tests) runs the probe with that environment and does not cache.
    """
    global _PROBE_RESULT
    if _PROBE_RESULT is not None and not refresh and env is None:
        return _PROBE_RESULT
    try:
        import open3d  # noqa: F401  (fast failure when it is not installed at all)
    except ImportError as error:
        result = (False, f"open3d is not installed ({error}); pip install 'pcattn[viz]'")
    else:
        try:
            done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=180,
                                  env=env)
            ok = done.returncode == 0 and "PCATTN_RENDER_OK" in done.stdout
            lines = [line for line in (done.stderr or "").strip().splitlines() if line.strip()]
            reason = "" if ok else (f"Open3D's offscreen renderer failed (exit code {done.returncode}): "
                                    + " | ".join(lines[-3:]))
            result = (ok, reason)
        except subprocess.TimeoutExpired:
            result = (False, "Open3D's offscreen renderer did not answer within 180 s")
    if env is None:
        _PROBE_RESULT = result
    return result


_RENDERER = None  # one OffscreenRenderer kept per process: creating one costs ~0.5 s


def _offscreen_renderer(width: int, height: int):
    global _RENDERER
    from open3d.visualization import rendering

    if _RENDERER is not None and _RENDERER[0] == (width, height):
        return _RENDERER[1]
    _RENDERER = None
    renderer = rendering.OffscreenRenderer(width, height)
    # No tone mapping/gamma: the picture shows exactly the colour-map colours.
    renderer.scene.view.set_post_processing(False)
    _RENDERER = ((width, height), renderer)
    return renderer


def _orthographic_frame(pos: np.ndarray, center: np.ndarray, eye: np.ndarray, up: np.ndarray, aspect: float
                        ) -> Tuple[float, float, float, float]:
    """``(half_width, half_height, near, far)`` of an orthographic camera at ``eye`` looking at ``center`` that
    shows every point of ``pos`` in an image of ``aspect`` = width / height, with a 5% margin."""
    forward = (center - eye) / np.linalg.norm(center - eye)
    right = np.cross(forward, up)
    right /= max(float(np.linalg.norm(right)), 1e-12)
    image_up = np.cross(right, forward)
    offsets = pos - center
    half_height = max(float(np.abs(offsets @ image_up).max()), float(np.abs(offsets @ right).max()) / aspect, 1e-6)
    half_height *= 1.05
    depth = (pos - eye) @ forward
    span = max(float(depth.max() - depth.min()), 1e-6)
    return half_height * aspect, half_height, max(float(depth.min()) - 0.05 * span, 1e-6), \
        float(depth.max()) + 0.05 * span


def _render_open3d(pos, colors, angles, size, sizes, highlight, neighborhood, up_axis, fov, orthographic):
    import open3d as o3d
    from open3d.visualization import rendering

    width, height = size
    renderer = _offscreen_renderer(width, height)
    scene = renderer.scene
    scene.clear_geometry()
    scene.set_background([*BACKGROUND, 1.0])

    def add(name, rows, point_size, color=None):
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pos[rows].astype(np.float64)))
        cloud.colors = o3d.utility.Vector3dVector(
            np.tile(color, (len(rows), 1)) if color is not None else colors[rows].astype(np.float64))
        material = rendering.MaterialRecord()
        material.shader = "defaultUnlit"
        material.point_size = float(point_size)
        scene.add_geometry(name, cloud, material)

    base, big, marker = sizes
    rest = np.setdiff1d(np.arange(len(pos)), neighborhood)
    if len(rest):
        add("points", rest, base)
    if len(neighborhood):
        add("neighborhood", neighborhood, big)
    if highlight is not None:
        add("query", np.array([highlight]), marker, QUERY_COLOR)
    images = []
    for azimuth, elevation in angles:
        center, eye, up = _camera(pos, azimuth, elevation, up_axis, fov)
        renderer.setup_camera(fov, center, eye, up)
        if orthographic:
            half_width, half_height, near, far = _orthographic_frame(pos, center, eye, up, width / height)
            scene.camera.set_projection(rendering.Camera.Projection.Ortho, -half_width, half_width, -half_height,
                                        half_height, near, far)
        image = np.array(renderer.render_to_image())[..., :3]
        if highlight is not None:
            camera = scene.camera
            clip = np.asarray(camera.get_projection_matrix()) @ np.asarray(camera.get_view_matrix()) \
                @ np.append(pos[highlight], 1.0)
            ndc = clip[:3] / clip[3]
            _draw_ring(image, (ndc[0] + 1) / 2 * width, (1 - ndc[1]) / 2 * height, marker * 1.1 + 4, QUERY_COLOR)
        images.append(image)
    scene.clear_geometry()
    return images


# The most ordinary points the matplotlib renderer draws per view (more cannot show at a few hundred pixels).
MATPLOTLIB_MAX_POINTS = 100_000


def _render_matplotlib(pos, colors, angles, size, sizes, highlight, neighborhood, up_axis, fov, orthographic):
    require("matplotlib", "viz", "rendering (Open3D cannot render here, and the matplotlib fallback)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d import proj3d

    width, height = size
    base, big, marker = sizes
    rest = np.setdiff1d(np.arange(len(pos)), neighborhood)
    if len(rest) > MATPLOTLIB_MAX_POINTS:
        # matplotlib draws point by point (a million take minutes per view): draw an even, fixed subset of the
        # ordinary points; the query and its neighbourhood are always drawn
        rest = np.sort(np.random.default_rng(0).choice(rest, MATPLOTLIB_MAX_POINTS, replace=False))
    center = (pos.min(0) + pos.max(0)) / 2
    radius = max(float(np.linalg.norm(pos - center, axis=1).max()), 1e-6)
    # matplotlib's marker size is an area in points^2; at dpi 100 one pixel is 0.72 pt.
    area = lambda pixels: (pixels * 0.72) ** 2  # noqa: E731
    images = []
    for azimuth, elevation in angles:
        figure = Figure(figsize=(width / 100, height / 100), dpi=100, facecolor=BACKGROUND)
        canvas = FigureCanvasAgg(figure)
        ax = figure.add_axes([0, 0, 1, 1], projection="3d", facecolor=BACKGROUND)
        ax.computed_zorder = False   # draw the collections in order: neighbourhood and query on top
        ax.view_init(elev=elevation, azim=azimuth, vertical_axis="xyz"[up_axis])   # same angles as _camera
        if orthographic:   # a box around the cloud with equal units on every axis: it fills more of the image
            ax.set_proj_type("ortho")
            low, high = pos.min(0), pos.max(0)
            extent = np.maximum(high - low, 1e-3 * radius)
            for set_limits, lo, hi in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), center - extent / 2,
                                          center + extent / 2):
                set_limits(lo, hi)
            ax.set_box_aspect(tuple(extent / extent.max()), zoom=1.0)
        else:
            ax.set_xlim(center[0] - radius, center[0] + radius)
            ax.set_ylim(center[1] - radius, center[1] + radius)
            ax.set_zlim(center[2] - radius, center[2] + radius)
            ax.set_box_aspect((1, 1, 1), zoom=1.25)
        ax.set_axis_off()
        if len(rest):
            ax.scatter(*pos[rest].T, c=colors[rest], s=area(base), depthshade=False, linewidths=0)
        if len(neighborhood):
            ax.scatter(*pos[neighborhood].T, c=colors[neighborhood], s=area(big), depthshade=False, linewidths=0)
        if highlight is not None:
            ax.scatter(*pos[highlight][:, None], c=[QUERY_COLOR], s=area(marker), depthshade=False, linewidths=0)
        canvas.draw()
        image = np.array(canvas.buffer_rgba())[..., :3]
        if highlight is not None:
            x2, y2, _ = proj3d.proj_transform(*pos[highlight], ax.get_proj())
            px, py = ax.transData.transform((x2, y2))
            _draw_ring(image, px, height - py, marker * 1.1 + 4, QUERY_COLOR)
        images.append(image)
    return images


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get("PCATTN_RENDERER", "auto")
        if backend not in BACKENDS:
            raise ValueError(f"PCATTN_RENDERER must be one of {BACKENDS}, got {backend!r}")
    if backend == "matplotlib":
        return backend
    ok, reason = open3d_rendering_available()
    if ok:
        return "open3d"
    if backend == "open3d":
        raise RenderingUnavailable(f"{reason}. Headless rendering needs a Vulkan or EGL driver: {RENDER_HELP}")
    warnings.warn(f"{reason}; drawing with the matplotlib renderer instead ({RENDER_HELP})", RuntimeWarning,
                  stacklevel=3)
    return "matplotlib"


def render_views(
    pos: Union[Tensor, np.ndarray],
    colors: np.ndarray,
    views: Union[int, Sequence[Tuple[float, float]]] = 1,
    size: Tuple[int, int] = (480, 480),
    highlight: Optional[int] = None,
    neighborhood: Optional[Sequence[int]] = None,
    up_axis: int = 1,
    backend: str = "auto",
    point_size: Optional[float] = None,
    fov: float = 40.0,
    orthographic: bool = False,
) -> List[np.ndarray]:
    """Render a coloured cloud from one or more camera directions.

    Args:
        pos: ``(P, 3)`` points.
        colors: ``(P, 3)`` RGB in [0, 1].
        views: number of fixed views or ``(azimuth, elevation)`` pairs (:func:`view_angles`);
            azimuth turns about the up axis, elevation lifts towards it.
        size: ``(width, height)`` of each image in pixels.
        highlight: input row of the query point: drawn large in :data:`QUERY_COLOR` (magenta)
            with a ring around it that stays visible when other points hide it.
        neighborhood: rows drawn as larger points (the query's neighbours).
        up_axis: 0, 1 (default, y-up as the built-in shapes and ModelNet40 resampled) or 2 (z-up).
        backend: ``"open3d"`` (headless OffscreenRenderer; raises :class:`RenderingUnavailable`
            naming the Debian packages when it cannot run), ``"matplotlib"`` (3D scatter), or
            ``"auto"`` (Open3D, else matplotlib with a warning; env ``PCATTN_RENDERER`` overrides).
            matplotlib draws at most :data:`MATPLOTLIB_MAX_POINTS` ordinary points (a fixed even subset).
        point_size: pixel size of ordinary points (default from the image size and point count).
        fov: vertical field of view in degrees (perspective cameras).
        orthographic: parallel projection instead of perspective (a floor plan from above keeps its
            walls straight and thin); Open3D frames the cloud tightly, matplotlib in its bounding cube.

    Returns:
        One ``(height, width, 3)`` uint8 image per view.
    """
    pos = np.asarray(pos.detach().cpu() if isinstance(pos, Tensor) else pos, dtype=np.float64)
    colors = np.asarray(colors, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3 or len(pos) == 0:
        raise ValueError(f"pos must be (P, 3) with P > 0, got {pos.shape}")
    if colors.shape != pos.shape:
        raise ValueError(f"colors must be (P, 3) = {pos.shape}, got {colors.shape}")
    if up_axis not in (0, 1, 2):
        raise ValueError(f"up_axis must be 0, 1 or 2, got {up_axis!r}")
    if highlight is not None and not 0 <= int(highlight) < len(pos):
        raise ValueError(f"highlight {highlight} out of range for {len(pos)} points")
    width, height = int(size[0]), int(size[1])
    if width < 16 or height < 16:
        raise ValueError(f"size must be at least 16x16 pixels, got {size}")
    neighborhood = np.unique(np.asarray([] if neighborhood is None else neighborhood, dtype=np.int64))
    if point_size is None:
        point_size = float(np.clip(min(width, height) * 0.011 * math.sqrt(1024 / len(pos)), 2.0, 9.0))
    sizes = (point_size, point_size * 2.0, point_size * 3.5)
    angles = view_angles(views)
    render = _render_open3d if _resolve_backend(backend) == "open3d" else _render_matplotlib
    return render(pos, colors, angles, (width, height), sizes,
                  None if highlight is None else int(highlight), neighborhood, up_axis, fov, bool(orthographic))
