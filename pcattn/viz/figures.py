"""Pictures and outputs: tiling rendered views into one figure, the one-call :func:`attention_picture`,
coloured ``.ply`` files and the interactive Open3D window.

Owns :class:`FigureRow` and :func:`compose_figure` (rows x views, captions, colour bars),
:func:`attention_picture` (extract, colour, render and tile for one or more models and layers),
:func:`write_ply`, :func:`has_display` and :func:`show_interactive` (Open3D imported lazily).
"""
from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..optional import require
from .extract import LayerAttention, extract_attention, select_layer
from .render import render_views, view_angles
from .values import QUERY_COLOR, PointValues, point_values

__all__ = ["FigureRow", "compose_figure", "RowResult", "AttentionPicture", "attention_picture", "write_ply",
           "has_display", "show_interactive"]


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


# The legend column: a square swatch per entry, its name beside it.
LEGEND_SWATCH, LEGEND_LINE = 12, 17


def compose_figure(rows: Sequence[FigureRow], title: str = "", path=None, colorbar: bool = True,
                   view_titles: Optional[Sequence[str]] = None, footer: str = "",
                   legend: Optional[Sequence[Tuple[str, Sequence[float]]]] = None) -> np.ndarray:
    """Tile rendered views (rows x views) with row captions, a title and a colour bar per row.

    Images are placed pixel for pixel (no resampling), so the rendered colours reach the file
    unchanged. ``view_titles`` label the columns (under the last row), ``footer`` is a line of
    small text at the bottom (a legend). ``legend`` ``[(name, rgb in [0, 1]), ...]`` adds a column
    on the right with a square swatch of each colour (exactly that colour, ``LEGEND_SWATCH`` pixels
    wide) and its name, from the top of the first row down. Writes a PNG to ``path`` if given.

    Returns:
        The composed ``(H, W, 3)`` uint8 image.
    """
    require("matplotlib", "viz", "composing a figure")
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
    legend = list(legend or [])
    # about 7 px per character at 9 pt (and a margin), after the swatch and a space
    legend_w = (2 * gap + LEGEND_SWATCH + 6 + int(7.5 * max(len(name) for name, _ in legend))) if legend else 0
    total_w = gap + columns * (w + gap) + bar + legend_w
    # the legend wraps to the picture's width (about 6 px per character at 8 pt)
    footer_lines = textwrap.wrap(footer, max(20, (total_w - gap) // 6)) if footer else []
    bottom = 10 + 12 * len(footer_lines) if footer_lines else 0
    total_h = top + len(rows) * (header + h + gap) + bottom
    total_h = max(total_h, top + header + len(legend) * LEGEND_LINE + gap + bottom)
    dpi = 100
    figure = Figure(figsize=(total_w / dpi, total_h / dpi), dpi=dpi, facecolor="white")
    canvas = FigureCanvasAgg(figure)
    if title:
        # about 12 px per character at 13 pt bold (digits and capitals are wide): a longer title is set smaller,
        # down to 9 pt, then shortened, rather than overflow the picture's edges
        width = total_w - gap
        size = min(13.0, max(9.0, 13.0 * width / (12 * len(title))))
        figure.text(0.5, 1 - 12 / total_h, _fit(title, int(width * 13.0 / (12 * size))), ha="center", va="top",
                    fontsize=size, weight="bold")
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
    for number, (name, color) in enumerate(legend):
        y = top + header + number * LEGEND_LINE                  # top edge of the swatch, in pixels from the top
        x = total_w - legend_w + gap
        swatch = figure.add_axes([x / total_w, 1 - (y + LEGEND_SWATCH) / total_h, LEGEND_SWATCH / total_w,
                                  LEGEND_SWATCH / total_h])
        swatch.imshow(np.full((LEGEND_SWATCH, LEGEND_SWATCH, 3), np.round(np.asarray(color) * 255), dtype=np.uint8),
                      interpolation="nearest", aspect="auto")
        swatch.set_axis_off()
        figure.text((x + LEGEND_SWATCH + 6) / total_w, 1 - (y + LEGEND_SWATCH / 2) / total_h, name, ha="left",
                    va="center", fontsize=9)
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


class RowResult(NamedTuple):
    """What :func:`attention_picture` computed for one (model, layer) row."""

    name: str
    layer: LayerAttention
    values: PointValues
    colors: np.ndarray           # (P, 3)
    probabilities: Optional[Tensor]   # softmax of the logits: a classifier's (num_classes,), a segmenter's
                                      # (P, num_classes), else None
    drawn: Optional[np.ndarray] = None   # (M,) the rows of the cloud drawn (zoomed), None: every point


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
    title: Union[str, Callable[[List["RowResult"]], str]] = "",
    path=None,
    colorbar: bool = True,
    category: Optional[int] = None,
    zoom: Optional[float] = None,
    query_name: Optional[str] = None,
) -> AttentionPicture:
    """Extract, colour, render and tile: one row per (model, layer), one column per view.

    ``models`` is one model or ``[(name, model), ...]`` (e.g. vector and scalar checkpoints side by
    side); ``layers`` lists layer indices or names (``None`` = first attention layer), each its own
    row. ``pos (P, 3)`` is one cloud, ``x (P, C)`` its features; ``category`` is its object
    category id, which part segmenters take (``None`` for classifiers). ``title`` may be a function
    of the rows' results (:class:`RowResult`: e.g. to name what the models predict). ``zoom``
    (``"query"`` mode, a room rather than an object): each row draws only the points within ``zoom``
    times the radius of the query's neighbourhood in that layer (at least 1). ``query_name`` names the
    query in captions (default ``"point <query>"``). Writes a PNG to ``path`` if given.
    """
    if isinstance(models, nn.Module):
        models = [("", models)]
    pos = torch.as_tensor(pos, dtype=torch.float32)
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos must be one cloud (P, 3), got {tuple(pos.shape)}")
    if mode == "query" and (isinstance(query, bool) or not 0 <= int(query) < pos.shape[0]):
        raise ValueError(f"query {query} out of range: the cloud has {pos.shape[0]} points (0..{pos.shape[0] - 1})")
    if zoom is not None and (mode != "query" or not zoom >= 1):
        raise ValueError(f"zoom must be None, or at least 1 in 'query' mode, got zoom={zoom!r} in mode {mode!r}")
    results, figure_rows = [], []
    for name, model in models:
        extraction = extract_attention(model, pos, x, category=category)
        output = extraction.output
        # a classifier's (1, num_classes), a segmenter's (1, P, num_classes): the first cloud's
        probabilities = torch.softmax(output[0].float(), -1) if isinstance(output, Tensor) and output.dim() in (2, 3) \
            else None
        for which in layers:
            layer = select_layer(extraction.layers, which)
            values = point_values(layer, pos, mode=mode, query=query, reduce=reduce)
            colors = values.colors()
            if mode == "query" and query_name is not None:
                values.label = f"weight from {query_name}"
            drawn, highlight, neighborhood, within = _zoomed(pos, values, zoom)
            images = render_views(pos[drawn], colors[drawn], views, size, highlight, neighborhood, up_axis, backend)
            caption = f"{name + ': ' if name else ''}layer {layer.index} {layer.name} ({layer.kind}, " \
                      f"{layer.pos.shape[0]} pts), " + (f"query {query_name or f'point {query}'}" if mode == "query" else "received") + \
                      (f", {reduce} over groups" if reduce != "mean" else "") + within
            results.append(RowResult(name, layer, values, colors, probabilities, None if zoom is None else drawn))
            figure_rows.append(FigureRow(images, caption, values.vmin, values.vmax, values.label))
    view_titles = [f"azimuth {a:.0f}, elevation {e:.0f}" for a, e in view_angles(views)]
    if mode == "query":
        footer = ("magenta point and ring: the query (in deeper layers the kept point nearest to it); large points: "
                  "its neighbours in that layer, coloured by the weight it gives them; grey: outside its "
                  "neighbourhood (weight 0)")
    else:
        footer = "colour: total attention weight each point receives from the other points whose neighbourhood holds it"
    if callable(title):
        title = title(results)
    image = compose_figure(figure_rows, title, path, colorbar, view_titles, footer)
    return AttentionPicture(image, results)


def _zoomed(pos: Tensor, values: PointValues, zoom: Optional[float]):
    """``(drawn rows (M,), the query's row among them, its neighbours' rows among them, a caption)``: every
    point when ``zoom`` is ``None``, else those within ``zoom`` times the neighbourhood's radius of the query."""
    if zoom is None:
        return slice(None), values.query_point, values.neighborhood, ""
    distance = torch.linalg.vector_norm(pos - pos[values.query_point], dim=1)
    reach = float(distance[torch.as_tensor(values.neighborhood, dtype=torch.long)].max()) \
        if len(values.neighborhood) else 0.0
    radius = zoom * max(reach, 1e-6)
    drawn = (distance <= radius).nonzero().flatten().numpy()
    local = np.full(pos.shape[0], -1)
    local[drawn] = np.arange(len(drawn))
    return drawn, int(local[values.query_point]), local[values.neighborhood], f", points within {radius:.2f} of it"


def write_ply(path, pos: Union[Tensor, np.ndarray], colors: np.ndarray) -> Path:
    """Write a coloured point cloud as binary ``.ply`` (opens in MeshLab, CloudCompare, Open3D).

    ``pos (P, 3)``, ``colors (P, 3)`` in [0, 1] (stored as 8-bit RGB).
    """
    o3d = require("open3d", "viz", "writing a coloured .ply")

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
    o3d = require("open3d", "viz", "an interactive window")

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
