"""Scene (room) pictures: every point coloured by its class, the true classes below the predicted ones, the
wrong points; from above and in perspective, with a class legend.

Gives the class colours of scenes (:func:`class_palette`, the table that ``pcattn predict``'s labelled scene
files use too: matplotlib's ``tab10`` for the first ten classes, then the light shades of ``tab20``, then
``tab20b`` and ``tab20c``, so S3DIS's 13 and ScanNet's 20 classes each get their own colour),
:data:`UNLABELLED_COLOR` (black: points whose true label is the ignore label), :func:`label_colors`,
:func:`scene_error_colors` (wrong red, right light grey, unlabelled black, as :mod:`pcattn.viz.parts` colours
parts), :func:`class_legend`, what is drawn of a room (:func:`drawn_points`: the points below a cut height, so
the ceiling does not hide the floor plan, at most ``max_points`` of them), and :func:`semseg_picture`, which
renders the rows with :func:`~pcattn.viz.render.render_views` (an orthographic camera from above, perspective
cameras at an angle) and tiles them with :func:`~pcattn.viz.figures.compose_figure`. Nothing here runs a
model: :func:`pcattn.viz.checkpoint.checkpoint_semseg_picture` does.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from torch import Tensor

from ..data.scenes import IGNORE_INDEX
from .figures import FigureRow, compose_figure
from .parts import RIGHT_COLOR, WRONG_COLOR, _numpy_labels  # labels as a flat int64 array
from .render import render_views

__all__ = ["UNLABELLED_COLOR", "TOP_VIEW", "PERSPECTIVE_VIEWS", "MAX_DRAWN_POINTS", "class_palette", "label_colors",
           "scene_error_colors", "class_legend", "DrawnPoints", "drawn_points", "ScenePicture", "semseg_picture"]

UNLABELLED_COLOR = (0.0, 0.0, 0.0)   # black: in none of the palettes
#: the camera from above: (azimuth, elevation) in degrees, z up: x to the right, y up in the picture
TOP_VIEW = (-90.0, 90.0)
#: the default perspective camera: from a corner, looking down into the room
PERSPECTIVE_VIEWS: Tuple[Tuple[float, float], ...] = ((-60.0, 50.0),)
#: at most this many points of a room are drawn (an even, fixed subset): more do not show at a few hundred pixels
MAX_DRAWN_POINTS = 150_000
# The default cut: points higher than this fraction of the room's height above its floor are not drawn.
_CUT_FRACTION = 0.7


def class_palette(count: int) -> np.ndarray:
    """``(count, 3)`` RGB in [0, 1], one colour per class (label = row):
    :func:`pcattn.engine.prediction.scene_palette` (``tab10``, then the light shades of ``tab20`` for
    classes 10-19, then ``tab20b`` and ``tab20c``; beyond 60 classes the colours repeat), the colours of
    ``pcattn predict``'s labelled scene files too.
    """
    from ..engine.prediction import scene_palette

    return scene_palette(count)


def label_colors(labels: Union[Tensor, np.ndarray], num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``(N, 3)`` RGB of ``labels (N,)``: the :func:`class_palette` colour of each class,
    :data:`UNLABELLED_COLOR` (black) for ``ignore_index``.

    Raises:
        ValueError: a label outside ``[0, num_classes)`` that is not ``ignore_index``.
    """
    labels = _numpy_labels(labels)
    unlabelled = labels == ignore_index
    outside = ~unlabelled & ((labels < 0) | (labels >= num_classes))
    if outside.any():
        raise ValueError(f"labels {sorted(set(labels[outside].tolist()))[:5]} are outside [0, {num_classes}) and "
                         f"not the ignore label {ignore_index}")
    colors = class_palette(num_classes)[np.where(unlabelled, 0, labels)]
    colors[unlabelled] = UNLABELLED_COLOR
    return colors


def scene_error_colors(predicted: Union[Tensor, np.ndarray], truth: Union[Tensor, np.ndarray],
                       ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``(N, 3)`` RGB: :data:`~pcattn.viz.parts.WRONG_COLOR` (red) where ``predicted (N,)`` differs from
    ``truth (N,)``, :data:`~pcattn.viz.parts.RIGHT_COLOR` (light grey) where it is right, and
    :data:`UNLABELLED_COLOR` (black) where the truth is ``ignore_index`` (not scored)."""
    predicted, truth = _numpy_labels(predicted), _numpy_labels(truth)
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted and truth must label the same points, got {predicted.shape} and {truth.shape}")
    colors = np.where((predicted != truth)[:, None], np.asarray(WRONG_COLOR), np.asarray(RIGHT_COLOR))
    colors[truth == ignore_index] = UNLABELLED_COLOR
    return colors


def class_legend(class_names: Sequence[str]) -> List[Tuple[str, np.ndarray]]:
    """``[(class name, rgb (3,)), ...]``: each class with its :func:`class_palette` colour."""
    return list(zip(class_names, class_palette(len(class_names))))


class DrawnPoints(NamedTuple):
    """What :func:`drawn_points` keeps of a room."""

    rows: np.ndarray      # (M,) int64, sorted: the rows of the room that are drawn
    floor: float          # height of the floor (the 0.5th percentile of the heights), in the room's units
    cut: float            # points higher than this (absolute height) are not drawn (inf: none cut)


def drawn_points(pos: Union[Tensor, np.ndarray], up_axis: int = 2, cut_height: Optional[float] = None,
                 max_points: Optional[int] = MAX_DRAWN_POINTS, seed: int = 0) -> DrawnPoints:
    """The points of a room that a picture draws: those at most ``cut_height`` above the floor (so that
    the ceiling, and the tops of the walls, do not hide the room from above), then at most ``max_points``
    of them, an even random subset fixed by ``seed``. A drawn point keeps its own label: only which points
    are drawn changes.

    Args:
        pos: ``(N, 3)`` the room.
        up_axis: the vertical axis (2: z, as S3DIS, ScanNet and the built-in rooms).
        cut_height: in the units of ``pos``, above the floor (the 0.5th percentile of the heights, robust
            to stray points); ``None``: 70% of the room's height (the floor to the 99.5th percentile);
            ``inf``: nothing cut.
        max_points: at most this many points (``None``: all).

    Raises:
        ValueError: an empty room, a non-positive ``cut_height`` or ``max_points``.
    """
    pos = np.asarray(pos.detach().cpu() if isinstance(pos, Tensor) else pos, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3 or len(pos) == 0:
        raise ValueError(f"pos must be (N, 3) with N > 0, got {pos.shape}")
    if up_axis not in (0, 1, 2):
        raise ValueError(f"up_axis must be 0, 1 or 2, got {up_axis!r}")
    if cut_height is not None and not cut_height > 0:
        raise ValueError(f"cut_height must be a positive height above the floor, got {cut_height!r}")
    if max_points is not None and max_points < 1:
        raise ValueError(f"max_points must be at least 1, got {max_points!r}")
    height = pos[:, up_axis]
    floor, top = np.percentile(height, [0.5, 99.5])
    cut = float(floor + (_CUT_FRACTION * (top - floor) if cut_height is None else cut_height))
    rows = np.flatnonzero(height <= cut)
    if not len(rows):
        raise ValueError(f"no point lies below the cut at {cut - floor:.3g} above the floor: raise cut_height")
    if max_points is not None and len(rows) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_points, replace=False))
    return DrawnPoints(rows, float(floor), cut)


class ScenePicture(NamedTuple):
    """Output of :func:`semseg_picture`."""

    image: np.ndarray            # (H, W, 3) uint8, the composed picture
    drawn: DrawnPoints           # the rows of the room drawn in every view
    colors: np.ndarray           # (M, 3) the predicted classes' colours of the drawn rows
    captions: List[str]          # the rows' captions, top to bottom
    view_titles: List[str]       # the columns: "from above", then each perspective camera


def semseg_picture(
    pos: Union[Tensor, np.ndarray],
    predicted: Union[Tensor, np.ndarray],
    class_names: Sequence[str],
    truth: Union[Tensor, np.ndarray, None] = None,
    ignore_index: int = IGNORE_INDEX,
    perspective: Sequence[Tuple[float, float]] = PERSPECTIVE_VIEWS,
    size: Tuple[int, int] = (480, 480),
    up_axis: int = 2,
    cut_height: Optional[float] = None,
    max_points: Optional[int] = MAX_DRAWN_POINTS,
    point_size: Optional[float] = None,
    backend: str = "auto",
    title: str = "",
    path=None,
    name: str = "",
) -> ScenePicture:
    """Draw a room's predicted classes and, when ``truth`` is known, its true classes and the wrong points.

    Rows: ``"predicted classes"``, then ``"true classes"`` and ``"wrong points"`` (wrong red, right light
    grey, unlabelled black). Columns: the room from above (orthographic: a floor plan), then one per
    ``perspective`` camera. Only the points below the cut are drawn, at most ``max_points`` of them
    (:func:`drawn_points`), the same ones in every view; a legend on the right gives each class's colour.
    Positions are centred in float64 before drawing, so a room far from the origin draws as well.

    Args:
        pos: ``(N, 3)`` the room (any units; metres for the default cut).
        predicted: ``(N,)`` predicted labels in ``[0, len(class_names))``.
        class_names: the classes (label = index).
        truth: ``(N,)`` true labels (``ignore_index`` for unlabelled points), or ``None``.
        perspective: ``(azimuth, elevation)`` of each perspective camera, in degrees (may be empty).
        size, up_axis, backend: as in :func:`~pcattn.viz.render.render_views`; ``point_size`` in pixels
            (default from the image size and the number of points drawn).
        cut_height, max_points: as in :func:`drawn_points`.
        title: the picture's title; ``name`` (e.g. the checkpoint) ends the predictions' caption. Writes a
            PNG to ``path`` if given.

    Raises:
        ValueError: labels of another length than ``pos`` or outside the classes, no class names.
        :class:`~pcattn.viz.render.RenderingUnavailable`: ``backend="open3d"`` cannot run here.
    """
    if not class_names:
        raise ValueError("class_names is empty: a scene picture needs the names of the classes")
    num_points, num_classes = len(pos), len(class_names)
    predicted = _numpy_labels(predicted)
    if predicted.shape != (num_points,):
        raise ValueError(f"predicted labels {predicted.shape[0]} points, the room has {num_points}")
    if truth is not None:
        truth = _numpy_labels(truth)
        if truth.shape != (num_points,):
            raise ValueError(f"truth labels {truth.shape[0]} points, the room has {num_points}")
    if ((predicted < 0) | (predicted >= num_classes)).any():
        raise ValueError(f"predicted labels must be classes in [0, {num_classes}), found "
                         f"{sorted(set(predicted[(predicted < 0) | (predicted >= num_classes)].tolist()))[:5]}")
    predicted_colors = label_colors(predicted, num_classes)
    drawn = drawn_points(pos, up_axis, cut_height, max_points)
    rows = drawn.rows
    pos = np.asarray(pos.detach().cpu() if isinstance(pos, Tensor) else pos, dtype=np.float64)[rows]
    pos = pos - (pos.min(0) + pos.max(0)) / 2    # in float64: a room 1e5 m away loses nothing when drawn
    width, height = int(size[0]), int(size[1])
    if point_size is None:   # points of about the spacing of the drawn points on the image, from above
        point_size = float(np.clip(1.6 * np.sqrt(0.5 * width * height / len(rows)), 2.0, 6.0))

    def render(colors: np.ndarray) -> List[np.ndarray]:
        images = render_views(pos, colors, [TOP_VIEW], (width, height), up_axis=up_axis, backend=backend,
                              point_size=point_size, orthographic=True)
        if perspective:
            images += render_views(pos, colors, list(perspective), (width, height), up_axis=up_axis,
                                   backend=backend, point_size=point_size)
        return images

    figure_rows = [FigureRow(render(predicted_colors[rows]), "predicted classes" + (f" ({name})" if name else ""))]
    if truth is not None:
        figure_rows.append(FigureRow(render(label_colors(truth, num_classes, ignore_index)[rows]), "true classes"
                                     + (" (black: unlabelled)" if (truth == ignore_index).any() else "")))
        scored = truth != ignore_index
        wrong = int((predicted[scored] != truth[scored]).sum())
        figure_rows.append(FigureRow(render(scene_error_colors(predicted, truth, ignore_index)[rows]),
                                     f"wrong points (red): {wrong:,} of {int(scored.sum()):,} labelled "
                                     f"({100.0 * wrong / max(int(scored.sum()), 1):.1f}%); right: light grey"))
    view_titles = ["from above"] + [f"azimuth {a:.0f}, elevation {e:.0f}" for a, e in perspective]
    cut = "no points hidden" if np.isinf(drawn.cut) else \
        f"points more than {drawn.cut - drawn.floor:.2f} above the floor hidden (the ceiling)"
    footer = (f"columns: {', '.join(view_titles)}; {cut}; {len(rows):,} of {num_points:,} points drawn; "
              f"class colours: matplotlib tab10, then tab20's light shades")
    image = compose_figure(figure_rows, title, path, colorbar=False, view_titles=view_titles, footer=footer,
                           legend=class_legend(class_names))
    return ScenePicture(image, drawn, predicted_colors[rows], [row.title for row in figure_rows], view_titles)
