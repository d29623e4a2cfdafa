"""Part-segmentation pictures: every point coloured by its part, the truth below the prediction, the wrong points.

Owns the part colours (:func:`part_palette`: matplotlib's qualitative ``tab10`` by the part's index
within its category, ``tab20`` for categories of more than ten parts; the table is
:func:`pcattn.engine.prediction.label_palette`'s, which colours predict's labelled files), :func:`part_colors`,
:func:`error_colors` (:data:`WRONG_COLOR` red, :data:`RIGHT_COLOR` light grey), :func:`part_legend`
and :func:`parts_picture`, which renders the rows with :func:`~pcattn.viz.render.render_views` and
tiles them with :func:`~pcattn.viz.figures.compose_figure`. Nothing here runs a model:
:func:`pcattn.viz.checkpoint.checkpoint_parts_picture` does.
"""
from __future__ import annotations

from typing import List, NamedTuple, Sequence, Tuple, Union

import numpy as np
from torch import Tensor

from .figures import FigureRow, compose_figure
from .render import render_views, view_angles
from .values import INACTIVE_COLOR

__all__ = ["WRONG_COLOR", "RIGHT_COLOR", "part_palette", "part_colors", "error_colors", "part_legend", "PartsPicture",
           "parts_picture"]

WRONG_COLOR = (1.0, 0.0, 0.0)      # pure red: none of the palette's colours
RIGHT_COLOR = INACTIVE_COLOR       # light grey

_TAB10_NAMES = ("blue", "orange", "green", "red", "purple", "brown", "pink", "grey", "olive", "cyan")
_TAB20_NAMES = tuple(name for base in _TAB10_NAMES for name in (base, f"light {base}"))


def part_palette(count: int) -> List[Tuple[str, np.ndarray]]:
    """The colours of the ``count`` parts of one category, by the part's index within it.

    Matplotlib's ``tab10`` for up to ten parts, ``tab20`` beyond (its colours repeat after twenty).

    Returns:
        ``[(colour name, rgb (3,) float64 in [0, 1]), ...]``, one per part.
    """
    from ..engine.prediction import label_palette  # the one tab10/tab20 table: predict's labelled files use it too

    if count < 1:
        raise ValueError(f"a category has at least one part, got count={count}")
    names = _TAB10_NAMES if count <= 10 else _TAB20_NAMES
    return [(names[i % len(names)], rgb) for i, rgb in enumerate(label_palette(count))]


def _numpy_labels(labels: Union[Tensor, np.ndarray, Sequence[int]]) -> np.ndarray:
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels, dtype=np.int64).reshape(-1)


def part_colors(labels: Union[Tensor, np.ndarray], parts: Sequence[int]) -> np.ndarray:
    """``(P, 3)`` RGB of ``labels (P,)`` (global part ids), each the :func:`part_palette` colour of
    its index in ``parts`` (the global part ids of the shape's category).

    Raises:
        ValueError: a label that is not one of ``parts``.
    """
    labels, parts = _numpy_labels(labels), np.asarray(parts, dtype=np.int64)
    slots = labels[:, None] == parts[None, :]                                  # (P, len(parts))
    if not slots.any(1).all():
        strangers = sorted(set(labels[~slots.any(1)].tolist()))
        raise ValueError(f"part labels {strangers} are not among the category's parts {parts.tolist()}")
    palette = np.stack([rgb for _, rgb in part_palette(len(parts))])
    return palette[slots.argmax(1)]


def error_colors(predicted: Union[Tensor, np.ndarray], truth: Union[Tensor, np.ndarray]) -> np.ndarray:
    """``(P, 3)`` RGB: :data:`WRONG_COLOR` (red) where ``predicted (P,)`` differs from ``truth (P,)``,
    :data:`RIGHT_COLOR` (light grey) where it is right."""
    predicted, truth = _numpy_labels(predicted), _numpy_labels(truth)
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted and truth must label the same points, got {predicted.shape} and {truth.shape}")
    return np.where((predicted != truth)[:, None], np.asarray(WRONG_COLOR), np.asarray(RIGHT_COLOR))


def part_legend(part_names: Sequence[str]) -> str:
    """``"seat: blue, back: orange, legs: green"``: each part of a category with its colour's name."""
    return ", ".join(f"{name}: {color}" for name, (color, _) in zip(part_names, part_palette(len(part_names))))


class PartsPicture(NamedTuple):
    """Output of :func:`parts_picture`."""

    image: np.ndarray            # (H, W, 3) uint8, the composed picture
    colors: List[np.ndarray]     # (P, 3) predicted-part colours, one per prediction
    captions: List[str]          # the rows' captions, top to bottom


def parts_picture(
    pos: Union[Tensor, np.ndarray],
    predictions: Sequence[Tuple[str, Union[Tensor, np.ndarray]]],
    parts: Sequence[int],
    part_names: Sequence[str],
    truth: Union[Tensor, np.ndarray, None] = None,
    views: Union[int, Sequence[Tuple[float, float]]] = 3,
    size: Tuple[int, int] = (480, 480),
    up_axis: int = 1,
    backend: str = "auto",
    title: str = "",
    path=None,
) -> PartsPicture:
    """Draw predicted parts (and, when ``truth`` is known, the true parts and the wrong points) of one cloud.

    Rows, one column per view: ``"predicted parts"`` for each prediction, then ``"true parts"`` and a
    ``"wrong points"`` row per prediction (wrong points red, right ones light grey). Parts are coloured
    by :func:`part_palette`; the row captions name each part's colour (:func:`part_legend`).

    Args:
        pos: ``(P, 3)`` the cloud.
        predictions: ``[(name, labels (P,)), ...]`` predicted global part ids, each one of ``parts``;
            ``name`` (e.g. the checkpoint, ``""`` for none) starts the row captions.
        parts: the global part ids of the shape's category.
        part_names: the names of ``parts`` (``"legs"``), in the same order.
        truth: ``(P,)`` true global part ids, or ``None``.
        views, size, up_axis, backend: as in :func:`~pcattn.viz.render.render_views`.
        title: the picture's title. Writes a PNG to ``path`` if given.

    Raises:
        ValueError: no prediction, labels outside ``parts`` or of another length than ``pos``.
        :class:`~pcattn.viz.render.RenderingUnavailable`: ``backend="open3d"`` cannot run here.
    """
    if not predictions:
        raise ValueError("parts_picture needs at least one prediction")
    if len(part_names) != len(parts):
        raise ValueError(f"{len(part_names)} part names for {len(parts)} parts")
    num_points = len(pos)
    for name, labels in predictions:
        if _numpy_labels(labels).shape != (num_points,):
            raise ValueError(f"prediction {name!r} labels {_numpy_labels(labels).shape[0]} points, the cloud has "
                             f"{num_points}")
    if truth is not None and _numpy_labels(truth).shape != (num_points,):
        raise ValueError(f"truth labels {_numpy_labels(truth).shape[0]} points, the cloud has {num_points}")

    def render(colors: np.ndarray) -> List[np.ndarray]:
        return render_views(pos, colors, views, size, up_axis=up_axis, backend=backend)

    legend = part_legend(part_names)
    predicted_colors = [part_colors(labels, parts) for _, labels in predictions]
    rows = [FigureRow(render(colors), f"{name + ': ' if name else ''}predicted parts - {legend}")
            for (name, _), colors in zip(predictions, predicted_colors)]
    if truth is not None:
        rows.append(FigureRow(render(part_colors(truth, parts)), f"true parts - {legend}"))
        for name, labels in predictions:
            wrong = int((_numpy_labels(labels) != _numpy_labels(truth)).sum())
            rows.append(FigureRow(render(error_colors(labels, truth)),
                                  f"{name + ': ' if name else ''}wrong points (red): {wrong} of {num_points} "
                                  f"({100.0 * wrong / num_points:.1f}%); right: light grey"))
    view_titles = [f"azimuth {a:.0f}, elevation {e:.0f}" for a, e in view_angles(views)]
    footer = (f"part colours (matplotlib {'tab10' if len(parts) <= 10 else 'tab20'}, by the part's index in "
              f"the category): {legend}")
    image = compose_figure(rows, title, path, colorbar=False, view_titles=view_titles, footer=footer)
    return PartsPicture(image, predicted_colors, [row.title for row in rows])
