"""Attention visualisation: extraction, per-point values, colours, pictures, ``.ply`` files, training plots.

The pipeline, one function per step::

    record = extract_attention(model, pos)                 # one forward pass, every attention layer recorded
    layer = select_layer(record.layers, 0)                 # by index or by module name
    values = point_values(layer, pos, mode="query", query=17)   # (P,) values on the INPUT points
    colors = values.colors()                               # (P, 3) viridis (grey outside the neighbourhood)
    images = render_views(pos, colors, views=3, highlight=values.query_point, neighborhood=values.neighborhood)
    compose_figure([FigureRow(images, "layer 0", values.vmin, values.vmax, values.label)], path="attention.png")
    write_ply("attention.ply", pos, colors)

or all of it at once with :func:`attention_picture`. Rendering uses Open3D's headless
``OffscreenRenderer`` (software Vulkan from Debian's ``mesa-vulkan-drivers``); when it is not
available a matplotlib scatter renderer draws the same picture (``backend="matplotlib"``, or
automatically with a warning for ``backend="auto"``). Open3D and matplotlib are imported lazily.

:func:`plot_run` draws a training run's loss/accuracy curves and confusion matrix.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..nn import ATTENTION_LAYERS, RecordedAttention, ScalarSelfAttention, VectorSelfAttention
from ..nn.geometry import knn

__all__ = [
    "LayerAttention",
    "AttentionExtraction",
    "PointValues",
    "FigureRow",
    "RowResult",
    "AttentionPicture",
    "RenderingUnavailable",
    "attention_layer_names",
    "extract_attention",
    "select_layer",
    "reduce_groups",
    "point_values",
    "colorize",
    "view_angles",
    "render_views",
    "compose_figure",
    "attention_picture",
    "write_ply",
    "show_interactive",
    "has_display",
    "prepare_cloud",
    "load_cloud",
    "open3d_rendering_available",
    "plot_run",
    "QUERY_COLOR",
    "MODES",
    "BACKENDS",
]

MODES = ("query", "received")
BACKENDS = ("auto", "open3d", "matplotlib")
QUERY_COLOR = (1.0, 0.0, 1.0)         # magenta: not in viridis, so the query stands out (and tests can find it)
BACKGROUND = (1.0, 1.0, 1.0)
INACTIVE_COLOR = (0.8, 0.8, 0.8)      # points outside the query's neighbourhood (no weight at all)
DEBIAN_RENDER_PACKAGES = "mesa-vulkan-drivers libegl1 libgl1"
RENDER_HELP = (f"install the system packages for headless rendering (Debian/Ubuntu: "
               f"apt-get install -y {DEBIAN_RENDER_PACKAGES}), or use the matplotlib renderer "
               f"(backend='matplotlib', CLI --renderer matplotlib)")


class RenderingUnavailable(RuntimeError):
    """Open3D cannot render off screen here (no Vulkan/EGL driver, or Open3D missing)."""


# ============================================================================ extraction
@dataclass(frozen=True)
class LayerAttention:
    """One attention layer's weights from one forward pass (flat, over the layer's own input points).

    Attributes:
        name: the module's name in ``model.named_modules()`` (``""`` when the model is the layer).
        index: position among the attention layers that ran in the pass, in ``named_modules``
            order (the index :func:`select_layer` takes).
        kind: ``"vector"`` or ``"scalar"`` (else the class name).
        (All tensors are on the CPU, whatever the model's device.)
        weights: ``(N, K, G)`` attention weights (G = groups or heads), 0 for empty slots.
        neighbors: ``(N, K)`` rows of ``pos`` (``-1`` = empty slot).
        pos: ``(N, 3)`` positions of the layer's points (a subset of the input's in deeper layers).
        batch: ``(N,)`` cloud id of each row.
    """

    name: str
    index: int
    kind: str
    weights: Tensor
    neighbors: Tensor
    pos: Tensor
    batch: Tensor

    @property
    def num_groups(self) -> int:
        return int(self.weights.shape[-1])

    @property
    def label(self) -> str:
        return f"{self.index}: {self.name or '<model>'} ({self.kind}, {self.pos.shape[0]} points)"


class AttentionExtraction(NamedTuple):
    """Output of :func:`extract_attention`: the model's output and one record per attention layer."""

    output: object
    layers: List[LayerAttention]


def _attention_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, ATTENTION_LAYERS)]


def attention_layer_names(model: nn.Module) -> List[str]:
    """Names (``named_modules``) of the model's attention layers, in order."""
    return [name for name, _ in _attention_modules(model)]


def _kind(module: nn.Module) -> str:
    if isinstance(module, VectorSelfAttention):
        return "vector"
    if isinstance(module, ScalarSelfAttention):
        return "scalar"
    return type(module).__name__


def _call_model(model: nn.Module, pos: Tensor, x: Optional[Tensor], batch: Optional[Tensor]):
    if isinstance(model, ATTENTION_LAYERS):  # a bare layer needs features: the positions stand in
        return model(pos if x is None else x, pos, batch)
    return model(x, pos, batch)


def extract_attention(
    model: nn.Module,
    pos: Tensor,
    x: Optional[Tensor] = None,
    batch: Optional[Tensor] = None,
    forward: Optional[Callable[[nn.Module], object]] = None,
) -> AttentionExtraction:
    """Run one forward pass and collect every attention layer's weights and neighbourhoods.

    Every :data:`~pcattn.attention.ATTENTION_LAYERS` module of ``model`` gets
    ``record_attention = True`` for this pass only; its previous ``record_attention`` and
    ``last_attention`` are restored afterwards (also on error). Recording only keeps a detached
    copy of the weights, so the output is the one the model gives without extraction. The pass
    runs under ``torch.no_grad()`` in the model's current mode: call ``model.eval()`` first for a
    trained classifier (otherwise BatchNorm uses batch statistics and updates its running ones).

    Args:
        model: a model containing pcattn attention layers (e.g. a
            :class:`~pcattn.models.PointTransformerClassifier`), or a single attention layer.
        pos: ``(P, 3)`` one cloud (a batch dimension is added), ``(B, P, 3)``, or flat ``(N, 3)``
            with ``batch``.
        x: input features matching ``pos`` (``None``: the model uses ``pos``).
        batch: ``(N,)`` sorted cloud ids for flat input.
        forward: custom call for other model signatures: ``forward(model) -> output``
            (``pos``, ``x`` and ``batch`` are then ignored).

    Returns:
        :class:`AttentionExtraction` ``(output, layers)``; ``layers[i]`` is a
        :class:`LayerAttention` in ``named_modules`` order.

    Raises:
        ValueError: the model has no attention layer.
    """
    modules = _attention_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no attention layers (none of "
                         f"{', '.join(c.__name__ for c in ATTENTION_LAYERS)}): nothing to visualise")
    if forward is None:
        if not isinstance(pos, Tensor):
            raise TypeError(f"pos must be a torch.Tensor, got {type(pos).__name__}")
        if pos.dim() == 2 and batch is None:  # one cloud: the models expect (B, P, 3)
            pos = pos[None]
            x = None if x is None else x[None]
    if model.training and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        warnings.warn(f"{type(model).__name__} is in training mode: BatchNorm uses this batch's statistics "
                      f"(and updates its running ones); call model.eval() to see the trained model's attention",
                      RuntimeWarning, stacklevel=2)
    saved = [(module.record_attention, module.last_attention) for _, module in modules]
    try:
        for _, module in modules:
            module.record_attention = True
            module.last_attention = None
        with torch.no_grad():
            output = forward(model) if forward is not None else _call_model(model, pos, x, batch)
        layers = []
        for name, module in modules:
            recorded: Optional[RecordedAttention] = module.last_attention
            if recorded is None:  # the layer exists but the forward pass did not use it
                continue
            # indices count the layers that ran (as select_layer does); values are computed on the CPU
            layers.append(LayerAttention(name, len(layers), _kind(module), recorded.weights.float().cpu(),
                                         recorded.neighbors.cpu(), recorded.pos.float().cpu(), recorded.batch.cpu()))
    finally:
        for (_, module), (record, last) in zip(modules, saved):
            module.record_attention = record
            module.last_attention = last
    if not layers:
        raise ValueError(f"none of the attention layers of {type(model).__name__} ran in the forward pass")
    return AttentionExtraction(output, layers)


def select_layer(layers: Sequence[LayerAttention], which: Union[int, str, None] = None) -> LayerAttention:
    """Pick a layer by position (``0`` = first, ``-1`` = last; also ``"2"``) or by module name.

    ``None`` picks the first. A name that matches no layer exactly may be a unique suffix
    (``"0.0.attention"``). Raises ``ValueError`` listing the available layers.
    """
    if not layers:
        raise ValueError("no attention layers to choose from")
    if which is None:
        return layers[0]
    available = "; ".join(layer.label for layer in layers)
    if isinstance(which, str) and which.strip().lstrip("-").isdigit():
        which = int(which)
    if isinstance(which, int) and not isinstance(which, bool):
        if not -len(layers) <= which < len(layers):
            raise ValueError(f"layer {which} out of range: the model has {len(layers)} attention layers "
                             f"(0..{len(layers) - 1}): {available}")
        return layers[which]
    if isinstance(which, str):
        exact = [layer for layer in layers if layer.name == which]
        if exact:
            return exact[0]
        suffix = [layer for layer in layers if layer.name.endswith("." + which)]
        if len(suffix) == 1:
            return suffix[0]
        raise ValueError(f"no attention layer named {which!r}; available: {available}")
    raise TypeError(f"layer must be an int index or a module name, got {type(which).__name__}")


# ============================================================================ per-point values
def reduce_groups(weights: Tensor, reduce: Union[str, int] = "mean") -> Tensor:
    """``(N, K, G)`` weights -> ``(N, K)``: ``"mean"`` or ``"max"`` over the groups/heads, or group ``g`` (int).

    The mean of softmax weights still sums to 1 over each neighbourhood; the max does not.
    """
    if isinstance(reduce, str) and reduce.strip().lstrip("-").isdigit():
        reduce = int(reduce)
    groups = weights.shape[-1]
    if isinstance(reduce, int) and not isinstance(reduce, bool):
        if not -groups <= reduce < groups:
            raise ValueError(f"reduce={reduce}: this layer has {groups} groups/heads (0..{groups - 1})")
        return weights[..., reduce]
    if reduce == "mean":
        return weights.mean(dim=-1)
    if reduce == "max":
        return weights.amax(dim=-1)
    raise ValueError(f"reduce must be 'mean', 'max' or a group/head index, got {reduce!r}")


@dataclass
class PointValues:
    """Per-point attention values on the input cloud (output of :func:`point_values`).

    Attributes:
        values: ``(P,)`` float64 value of every input point.
        mode: ``"query"`` or ``"received"``.
        layer: the layer's :attr:`LayerAttention.label`.
        query: the requested input point (``None`` in ``"received"`` mode).
        query_point: input row where the layer's query point sits (equals ``query`` in the first
            layer; in deeper layers the kept point nearest to it).
        neighborhood: input rows of the query's neighbours in this layer (the query included).
        layer_values: ``(M,)`` the values on the layer's own points, before mapping back.
        label: a caption for the colour bar.
        active: ``(P,)`` bool, ``"query"`` mode: the input points whose layer point is one of the
            query's neighbours (the rest get no weight and are drawn grey by :meth:`colors`).
    """

    values: np.ndarray
    mode: str
    layer: str
    query: Optional[int] = None
    query_point: Optional[int] = None
    neighborhood: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    layer_values: Optional[np.ndarray] = None
    label: str = ""
    active: Optional[np.ndarray] = None

    def colors(self, cmap: str = "viridis", inactive=INACTIVE_COLOR) -> np.ndarray:
        """``(P, 3)`` RGB: the colour map over ``[vmin, vmax]``; in ``"query"`` mode the points outside
        the query's neighbourhood (``~active``; they get no weight at all) are light grey."""
        colors = colorize(self.values, cmap, self.vmin, self.vmax)
        if self.active is not None:
            colors[~self.active] = inactive
        return colors

    @property
    def vmin(self) -> float:
        return 0.0 if self.mode == "query" else float(self.values.min())

    @property
    def vmax(self) -> float:
        top = float(self.values.max())
        return top if top > self.vmin else self.vmin + 1e-6


def _nearest(points: Tensor, queries: Tensor) -> Tensor:
    """Row of ``points`` nearest to each row of ``queries``: ``(M,)``."""
    return knn(points.contiguous(), 1, query=queries.contiguous())[:, 0]


def point_values(
    layer: LayerAttention,
    pos: Union[Tensor, np.ndarray],
    mode: str = "query",
    query: int = 0,
    reduce: Union[str, int] = "mean",
    cloud: int = 0,
    include_self: bool = False,
) -> PointValues:
    """Turn one layer's attention into a value per input point.

    * ``mode="query"``: the weight the query point gives each of its neighbours (0 elsewhere).
    * ``mode="received"``: for every point, the total weight it receives from the points whose
      neighbourhood contains it (``sum_i w_ij``, a scatter-add over the neighbour index; the
      weight a point gives itself is left out unless ``include_self``).

    Groups/heads are reduced first (:func:`reduce_groups`).

    Deeper layers live on farthest-point-sampled subsets of the input. Their points are mapped
    back by nearest neighbour: each layer point is the input point at the same position (FPS
    keeps positions, so this is exact for the kept points), and each input point takes the value
    of its nearest layer point (for dropped points that is the kept point whose region they
    fall in). In ``"query"`` mode the layer's query is the layer point nearest to input point
    ``query`` (itself in the first layer).

    Args:
        layer: a :class:`LayerAttention` of :func:`extract_attention`.
        pos: ``(P, 3)`` the input cloud (as given to the model), or ``(B, P, 3)`` with ``cloud``.
        mode: ``"query"`` or ``"received"``.
        query: input point index (``0 <= query < P``) for ``"query"`` mode.
        reduce: ``"mean"``, ``"max"`` or a group/head index.
        cloud: which cloud of a batch.
        include_self: count the self-weight in ``"received"`` mode.

    Returns:
        :class:`PointValues` with ``values (P,)``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    pos = torch.as_tensor(pos, dtype=torch.float32).cpu()
    if pos.dim() == 3:
        if not 0 <= cloud < pos.shape[0]:
            raise ValueError(f"cloud {cloud} out of range for a batch of {pos.shape[0]}")
        pos = pos[cloud]
    if pos.dim() != 2 or pos.shape[-1] != 3:
        raise ValueError(f"pos must be (P, 3), got {tuple(pos.shape)}")
    num_points = pos.shape[0]
    rows = (layer.batch == cloud).nonzero().flatten()
    if rows.numel() == 0:
        raise ValueError(f"layer {layer.label} holds no points of cloud {cloud}")
    start = int(rows[0])  # rows of one cloud are contiguous (sorted batch)
    layer_pos = layer.pos[rows].to(pos.device)
    weights = reduce_groups(layer.weights[rows], reduce).double()            # (M, K)
    neighbors = layer.neighbors[rows] - start                                 # local rows, empty slots < 0
    valid = layer.neighbors[rows] >= 0
    count = rows.numel()
    if layer_pos.shape == pos.shape and torch.equal(layer_pos, pos):
        # the layer runs on the input points themselves: identity (a nearest-neighbour search could
        # swap duplicated points, which padded clouds have)
        input_to_layer = layer_to_input = torch.arange(num_points)
    else:
        input_to_layer = _nearest(layer_pos, pos)                             # (P,) nearest layer point
        layer_to_input = _nearest(pos, layer_pos)                             # (M,) the same position in the input

    if mode == "query":
        if isinstance(query, bool) or not isinstance(query, (int, np.integer)) or not 0 <= query < num_points:
            raise ValueError(f"query {query!r} out of range: the cloud has {num_points} points (0..{num_points - 1})")
        q = int(input_to_layer[query])
        layer_values = torch.zeros(count, dtype=torch.float64)
        keep = valid[q]
        layer_values[neighbors[q][keep]] = weights[q][keep]
        neighborhood = layer_to_input[neighbors[q][keep]].numpy()
        in_neighborhood = torch.zeros(count, dtype=torch.bool)
        in_neighborhood[neighbors[q][keep]] = True
        active = in_neighborhood[input_to_layer].numpy()
        query_point = int(layer_to_input[q])
        label = f"weight from query point {query}"
    else:
        keep = valid.clone()
        if not include_self:
            keep &= neighbors != torch.arange(count)[:, None]
        layer_values = torch.zeros(count, dtype=torch.float64).index_add_(0, neighbors[keep], weights[keep])
        neighborhood, query_point, query, active = np.zeros(0, dtype=np.int64), None, None, None
        label = "attention received"
    values = layer_values[input_to_layer].numpy()
    return PointValues(values, mode, layer.label, query, query_point, neighborhood, layer_values.numpy(), label,
                       active)


# ============================================================================ colours
def colorize(values: np.ndarray, cmap: str = "viridis", vmin: Optional[float] = None,
             vmax: Optional[float] = None) -> np.ndarray:
    """Map ``values (P,)`` linearly from ``[vmin, vmax]`` (default: their range) to ``(P, 3)`` RGB in [0, 1]."""
    from matplotlib import colormaps

    values = np.asarray(values, dtype=np.float64)
    low = float(values.min()) if vmin is None else float(vmin)
    high = float(values.max()) if vmax is None else float(vmax)
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.asarray(colormaps[cmap](np.clip(scaled, 0.0, 1.0))[:, :3], dtype=np.float64)


# ============================================================================ rendering
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
    return center, center + distance * direction, up


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
        result = (False, f"open3d is not installed ({error}); pip install open3d")
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


def _render_open3d(pos, colors, angles, size, sizes, highlight, neighborhood, up_axis, fov):
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


def _render_matplotlib(pos, colors, angles, size, sizes, highlight, neighborhood, up_axis, fov):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d import proj3d

    width, height = size
    base, big, marker = sizes
    rest = np.setdiff1d(np.arange(len(pos)), neighborhood)
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
        point_size: pixel size of ordinary points (default from the image size and point count).
        fov: vertical field of view in degrees.

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
                  None if highlight is None else int(highlight), neighborhood, up_axis, fov)


# ============================================================================ composing
@dataclass
class FigureRow:
    """One row of a picture: the views of one cloud colouring, a caption, and its colour scale."""

    images: List[np.ndarray]
    title: str = ""
    vmin: float = 0.0
    vmax: float = 1.0
    label: str = ""
    cmap: str = "viridis"


def _fit(text: str, characters: int) -> str:
    return text if len(text) <= characters else text[: max(1, characters - 3)] + "..."


def compose_figure(rows: Sequence[FigureRow], title: str = "", path=None, colorbar: bool = True,
                   view_titles: Optional[Sequence[str]] = None, footer: str = "") -> np.ndarray:
    """Tile rendered views (rows x views) with row captions, a title and a colour bar per row.

    Images are placed pixel for pixel (no resampling), so the rendered colours reach the file
    unchanged. ``view_titles`` label the columns (under the last row), ``footer`` is a line of
    small text at the bottom (a legend). Writes a PNG to ``path`` if given.

    Returns:
        The composed ``(H, W, 3)`` uint8 image.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    if not rows or not all(row.images for row in rows):
        raise ValueError("compose_figure needs at least one row with at least one image")
    h, w = rows[0].images[0].shape[:2]
    columns = max(len(row.images) for row in rows)
    gap, header, top = 8, 30, (44 if title else 8)
    bar = 110 if colorbar else 0
    total_w = gap + columns * (w + gap) + bar
    # the legend wraps to the picture's width (about 6 px per character at 8 pt)
    footer_lines = textwrap.wrap(footer, max(20, (total_w - gap) // 6)) if footer else []
    bottom = 10 + 12 * len(footer_lines) if footer_lines else 0
    total_h = top + len(rows) * (header + h + gap) + bottom
    dpi = 100
    figure = Figure(figsize=(total_w / dpi, total_h / dpi), dpi=dpi, facecolor="white")
    canvas = FigureCanvasAgg(figure)
    if title:
        # about 10 px per character at 13 pt bold: shorten rather than overflow a narrow picture
        figure.text(0.5, 1 - 12 / total_h, _fit(title, total_w // 10), ha="center", va="top", fontsize=13,
                    weight="bold")
    for r, row in enumerate(rows):
        y0 = top + r * (header + h + gap) + header            # top edge of the images, in pixels from the top
        figure.text(gap / total_w, 1 - (y0 - 7) / total_h, _fit(row.title, (total_w - gap) // 6), ha="left",
                    va="bottom", fontsize=10)
        for c, image in enumerate(row.images):
            x0 = gap + c * (w + gap)
            ax = figure.add_axes([x0 / total_w, 1 - (y0 + h) / total_h, w / total_w, h / total_h])
            ax.imshow(image, interpolation="nearest", aspect="auto")
            ax.set_axis_off()
            if view_titles and c < len(view_titles) and r == len(rows) - 1:
                ax.text(0.5, 0.01, view_titles[c], transform=ax.transAxes, ha="center", va="bottom",
                        fontsize=7, color="0.4")
        if colorbar:
            cax = figure.add_axes([(total_w - bar + 18) / total_w, 1 - (y0 + h - 10) / total_h,
                                   14 / total_w, (h - 20) / total_h])
            mappable = ScalarMappable(norm=Normalize(row.vmin, row.vmax), cmap=colormaps[row.cmap])
            bar_ = figure.colorbar(mappable, cax=cax)
            bar_.set_label(row.label, fontsize=8)
            bar_.ax.tick_params(labelsize=7)
    if footer_lines:
        figure.text(gap / total_w, 6 / total_h, "\n".join(footer_lines), ha="left", va="bottom",
                    fontsize=8, color="0.3", linespacing=1.25)
    canvas.draw()
    image = np.array(canvas.buffer_rgba())[..., :3]
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=dpi, facecolor="white")
    return image


# ============================================================================ one call
class RowResult(NamedTuple):
    """What :func:`attention_picture` computed for one (model, layer) row."""

    name: str
    layer: LayerAttention
    values: PointValues
    colors: np.ndarray           # (P, 3)
    probabilities: Optional[Tensor]   # (num_classes,) softmax of the logits, or None


class AttentionPicture(NamedTuple):
    image: np.ndarray
    rows: List[RowResult]


def attention_picture(
    models: Union[nn.Module, Sequence[Tuple[str, nn.Module]]],
    pos: Tensor,
    x: Optional[Tensor] = None,
    layers: Sequence[Union[int, str, None]] = (None,),
    mode: str = "query",
    query: int = 0,
    reduce: Union[str, int] = "mean",
    views: Union[int, Sequence[Tuple[float, float]]] = 1,
    size: Tuple[int, int] = (480, 480),
    up_axis: int = 1,
    backend: str = "auto",
    title: str = "",
    path=None,
    colorbar: bool = True,
) -> AttentionPicture:
    """Extract, colour, render and tile: one row per (model, layer), one column per view.

    ``models`` is one model or ``[(name, model), ...]`` (e.g. vector and scalar checkpoints side by
    side); ``layers`` lists layer indices or names (``None`` = first attention layer), each its own
    row. ``pos (P, 3)`` is one cloud, ``x (P, C)`` its features. Writes a PNG to ``path`` if given.
    """
    if isinstance(models, nn.Module):
        models = [("", models)]
    pos = torch.as_tensor(pos, dtype=torch.float32)
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos must be one cloud (P, 3), got {tuple(pos.shape)}")
    if mode == "query" and (isinstance(query, bool) or not 0 <= int(query) < pos.shape[0]):
        raise ValueError(f"query {query} out of range: the cloud has {pos.shape[0]} points (0..{pos.shape[0] - 1})")
    results, figure_rows = [], []
    for name, model in models:
        extraction = extract_attention(model, pos, x)
        output = extraction.output
        probabilities = torch.softmax(output[0].float(), -1) if isinstance(output, Tensor) and output.dim() == 2 else None
        for which in layers:
            layer = select_layer(extraction.layers, which)
            values = point_values(layer, pos, mode=mode, query=query, reduce=reduce)
            colors = values.colors()
            images = render_views(pos, colors, views, size, values.query_point, values.neighborhood, up_axis, backend)
            caption = f"{name + ': ' if name else ''}layer {layer.index} {layer.name} ({layer.kind}, " \
                      f"{layer.pos.shape[0]} pts), " + (f"query point {query}" if mode == "query" else "received") + \
                      (f", {reduce} over groups" if reduce != "mean" else "")
            results.append(RowResult(name, layer, values, colors, probabilities))
            figure_rows.append(FigureRow(images, caption, values.vmin, values.vmax, values.label))
    view_titles = [f"azimuth {a:.0f}, elevation {e:.0f}" for a, e in view_angles(views)]
    if mode == "query":
        footer = ("magenta point and ring: the query (in deeper layers the kept point nearest to it); large points: "
                  "its neighbours in that layer, coloured by the weight it gives them; grey: outside its "
                  "neighbourhood (weight 0)")
    else:
        footer = "colour: total attention weight each point receives from the other points whose neighbourhood holds it"
    image = compose_figure(figure_rows, title, path, colorbar, view_titles, footer)
    return AttentionPicture(image, results)


# ============================================================================ files and windows
def write_ply(path, pos: Union[Tensor, np.ndarray], colors: np.ndarray) -> Path:
    """Write a coloured point cloud as binary ``.ply`` (opens in MeshLab, CloudCompare, Open3D).

    ``pos (P, 3)``, ``colors (P, 3)`` in [0, 1] (stored as 8-bit RGB).
    """
    import open3d as o3d

    pos = np.asarray(pos.detach().cpu() if isinstance(pos, Tensor) else pos, dtype=np.float64)
    colors = np.asarray(colors, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3 or colors.shape != pos.shape:
        raise ValueError(f"pos and colors must both be (P, 3), got {pos.shape} and {colors.shape}")
    path = Path(path)
    if path.suffix.lower() != ".ply":
        raise ValueError(f"{path}: the coloured cloud is written as .ply; give a path ending in .ply")
    path.parent.mkdir(parents=True, exist_ok=True)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pos))
    cloud.colors = o3d.utility.Vector3dVector(np.clip(colors, 0.0, 1.0))
    if not o3d.io.write_point_cloud(str(path), cloud, write_ascii=False):
        raise OSError(f"{path}: Open3D could not write the file")
    return path


def has_display() -> bool:
    """Is there a screen for an interactive window (``$DISPLAY`` or ``$WAYLAND_DISPLAY`` set)?"""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def show_interactive(pos, colors: np.ndarray, highlight: Optional[int] = None,
                     neighborhood: Optional[Sequence[int]] = None, title: str = "pcattn attention") -> None:
    """Open an interactive Open3D window (``draw_geometries``); the query is a magenta sphere.

    Raises:
        RuntimeError: no display (``$DISPLAY``/``$WAYLAND_DISPLAY`` unset).
    """
    if not has_display():
        raise RuntimeError("no display: $DISPLAY and $WAYLAND_DISPLAY are unset, so no window can open "
                           "(write a picture with --out, or a coloured .ply with --ply, and open it elsewhere)")
    import open3d as o3d

    pos = np.asarray(pos.detach().cpu() if isinstance(pos, Tensor) else pos, dtype=np.float64)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pos))
    cloud.colors = o3d.utility.Vector3dVector(np.asarray(colors, dtype=np.float64))
    geometries = [cloud]
    if highlight is not None:
        extent = float(np.linalg.norm(pos.max(0) - pos.min(0)))
        sphere = o3d.geometry.TriangleMesh.create_sphere(radius=0.015 * extent)
        sphere.translate(pos[int(highlight)])
        sphere.paint_uniform_color(QUERY_COLOR)
        geometries.append(sphere)
    o3d.visualization.draw_geometries(geometries, window_name=title)


# ============================================================================ input clouds
def prepare_cloud(pos: np.ndarray, normals: Optional[np.ndarray] = None, num_points: Optional[int] = 1024,
                  sampling: str = "fps", seed: int = 0) -> Tuple[Tensor, Optional[Tensor]]:
    """Bring a raw cloud to what a classifier was trained on.

    ``num_points`` points are kept by farthest point sampling (``sampling="fps"``, deterministic,
    as the cached datasets) or at random (``"random"``, seeded); a smaller cloud is used whole
    (the models take any number of points). Then it is centred and scaled to the unit sphere, as
    :class:`~pcattn.data.transforms.NormalizeUnitSphere` does at evaluation.

    Returns:
        ``pos (P', 3)`` float32 tensor and ``normals (P', 3)`` or ``None``.
    """
    from ..data.base import farthest_point_indices, normalize_unit_sphere

    pos = np.asarray(pos, dtype=np.float32)
    if num_points is not None and len(pos) > num_points:
        if sampling == "fps":
            index = farthest_point_indices(pos, num_points)
        elif sampling == "random":
            index = np.random.default_rng(seed).choice(len(pos), size=num_points, replace=False)
        else:
            raise ValueError(f"sampling must be 'fps' or 'random', got {sampling!r}")
        pos = pos[index]
        normals = None if normals is None else np.asarray(normals)[index]
    pos = normalize_unit_sphere(pos).astype(np.float32)
    return torch.from_numpy(pos), None if normals is None else torch.as_tensor(np.asarray(normals, np.float32))


def load_cloud(path, num_points: Optional[int] = 1024, use_normals: bool = False, sampling: str = "fps",
               seed: int = 0) -> Tuple[Tensor, Optional[Tensor]]:
    """Read ``.ply .pcd .xyz .txt .npy .off`` (:func:`pcattn.data.io.read_point_cloud`) and :func:`prepare_cloud` it.

    Returns ``pos (P, 3)`` and the model input ``x``: ``None`` (positions only), or
    ``cat([pos, normals], -1) (P, 6)`` when ``use_normals``.

    Raises:
        FileNotFoundError / ValueError: missing or unreadable file (named), or no normals in the
        file when ``use_normals``.
    """
    from ..data.io import read_point_cloud

    raw, normals = read_point_cloud(path)
    if use_normals and normals is None:
        raise ValueError(f"{path}: the model was trained with normals (6 input channels) but the file has none")
    pos, normals = prepare_cloud(raw, normals if use_normals else None, num_points, sampling, seed)
    return pos, (torch.cat([pos, normals], dim=-1) if use_normals else None)


# ============================================================================ training plots
def _read_metrics(path: Path) -> List[dict]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(path.read_text().splitlines()):  # a run killed mid-write: ignore its last line
                warnings.warn(f"{path}:{number}: incomplete last line ignored")
                continue
            raise ValueError(f"{path}:{number}: not a JSON object ({error})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected one JSON object per epoch, found a {type(row).__name__}")
        rows.append(row)
    return rows


def plot_run(run_dir) -> List[Path]:
    """Draw a training run's plots into its folder.

    * ``curves.png``: train/test loss and train/test accuracy (overall and mean per class) per
      epoch, from ``metrics.jsonl`` (one JSON object per epoch).
    * ``confusion.png``: the confusion matrix (row-normalised colours, counts written in the
      cells when there are few classes) from ``eval.json``, if present.

    Returns:
        The paths written.

    Raises:
        FileNotFoundError: no ``metrics.jsonl`` and no ``eval.json`` in ``run_dir``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    metrics_path, eval_path = run_dir / "metrics.jsonl", run_dir / "eval.json"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    if not metrics_path.is_file() and not eval_path.is_file():
        raise FileNotFoundError(f"{run_dir}: neither metrics.jsonl nor eval.json found (is it a training run folder?)")
    written = []
    if metrics_path.is_file():
        rows = _read_metrics(metrics_path)
        if rows:
            figure = Figure(figsize=(11, 4.2), dpi=100)
            FigureCanvasAgg(figure)
            loss_ax, acc_ax = figure.subplots(1, 2)
            epochs = [row.get("epoch", i + 1) for i, row in enumerate(rows)]

            def series(key):
                points = [(e, row[key]) for e, row in zip(epochs, rows) if isinstance(row.get(key), (int, float))]
                return ([e for e, _ in points], [v for _, v in points]) if points else None

            for key, label, ax in (("train_loss", "train loss", loss_ax), ("test_loss", "test loss", loss_ax),
                                   ("train_acc", "train accuracy", acc_ax), ("test_oa", "test overall accuracy", acc_ax),
                                   ("test_macc", "test mean class accuracy", acc_ax)):
                found = series(key)
                if found:
                    ax.plot(*found, marker="o" if len(found[0]) < 30 else None, markersize=3, label=label)
            from matplotlib.ticker import MaxNLocator

            loss_ax.set(title="loss", xlabel="epoch", ylabel="cross-entropy")
            acc_ax.set(title="accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
            for ax in (loss_ax, acc_ax):
                ax.grid(alpha=0.3)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                if ax.lines:
                    ax.legend(fontsize=8)
            best = series("test_oa")
            if best:
                i = int(np.argmax(best[1]))
                acc_ax.annotate(f"best {best[1][i]:.3f} (epoch {best[0][i]})", (best[0][i], best[1][i]),
                                textcoords="offset points", xytext=(-10, -18), fontsize=8, ha="right")
            figure.suptitle(f"training curves: {run_dir.name}")
            figure.tight_layout()
            figure.savefig(run_dir / "curves.png")
            written.append(run_dir / "curves.png")
    if eval_path.is_file():
        try:
            result = json.loads(eval_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{eval_path}: not valid JSON ({error})") from None
        if "confusion" not in result:
            raise ValueError(f"{eval_path}: no 'confusion' field")
        confusion = np.asarray(result["confusion"], dtype=np.float64)
        if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
            raise ValueError(f"{eval_path}: 'confusion' must be a square matrix, got shape {confusion.shape}")
        n = confusion.shape[0]
        classes = list(result.get("classes") or [str(i) for i in range(n)])
        if len(classes) != n:
            raise ValueError(f"{eval_path}: {len(classes)} class names for a {n}x{n} confusion matrix")
        rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
        side = min(16.0, 3.0 + 0.38 * n)
        figure = Figure(figsize=(side + 1.5, side), dpi=100)
        FigureCanvasAgg(figure)
        ax = figure.subplots()
        shown = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(n), classes, rotation=90, fontsize=max(5, 9 - n // 10))
        ax.set_yticks(range(n), classes, fontsize=max(5, 9 - n // 10))
        ax.set(xlabel="predicted class", ylabel="true class")
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if confusion[i, j]:
                        ax.text(j, i, f"{int(confusion[i, j])}", ha="center", va="center", fontsize=7,
                                color="white" if rates[i, j] > 0.5 else "black")
        figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
        oa, macc = result.get("oa"), result.get("macc")
        scores = ", ".join(f"{k} {v:.3f}" for k, v in (("OA", oa), ("mAcc", macc)) if isinstance(v, (int, float)))
        ax.set_title(f"confusion matrix: {run_dir.name}" + (f" ({scores})" if scores else ""))
        figure.tight_layout()
        figure.savefig(run_dir / "confusion.png")
        written.append(run_dir / "confusion.png")
    return written
