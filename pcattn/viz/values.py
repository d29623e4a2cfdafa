"""Per-point values and colours: one layer's attention as a value on every input point, then RGB.

Owns :class:`PointValues`, :func:`point_values` (``"query"``: the weights one point gives its
neighbours; ``"received"``: the total weight each point receives), the mapping of deeper
(subsampled) layers back to the input points, :func:`colorize`, and the colours every picture
shares (:data:`QUERY_COLOR`, :data:`INACTIVE_COLOR`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from ..nn.geometry import knn
from ..optional import require
from .extract import LayerAttention, reduce_groups

__all__ = ["PointValues", "point_values", "colorize", "MODES", "QUERY_COLOR", "INACTIVE_COLOR"]

MODES = ("query", "received")
QUERY_COLOR = (1.0, 0.0, 1.0)         # magenta: not in viridis, so the query stands out (and tests can find it)
INACTIVE_COLOR = (0.8, 0.8, 0.8)      # points outside the query's neighbourhood (no weight at all)


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


def colorize(values: np.ndarray, cmap: str = "viridis", vmin: Optional[float] = None,
             vmax: Optional[float] = None) -> np.ndarray:
    """Map ``values (P,)`` linearly from ``[vmin, vmax]`` (default: their range) to ``(P, 3)`` RGB in [0, 1]."""
    colormaps = require("matplotlib", "viz", "colouring points").colormaps

    values = np.asarray(values, dtype=np.float64)
    low = float(values.min()) if vmin is None else float(vmin)
    high = float(values.max()) if vmax is None else float(vmax)
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.asarray(colormaps[cmap](np.clip(scaled, 0.0, 1.0))[:, :3], dtype=np.float64)
