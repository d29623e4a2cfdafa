"""Grid (voxel) pooling, the transition down of scene networks (as in Point Transformer V2): the points
of each cloud are grouped by the voxel of side ``grid_size`` they fall in, and each occupied voxel
becomes one point. Farthest point sampling over 10^5 points is a loop of 2.5 x 10^4 sequential steps;
grouping by voxel is a sort, in pure torch, on the CPU and on CUDA alike.

* :func:`voxel_clusters`: the voxel of every point, numbered per batch (``cluster (N,)``, ``M`` voxels).
* :class:`GridPool`: features projected, then max-pooled per voxel; positions averaged per voxel.
* :class:`GridUnpool`: the coarse features copied back to the points of each voxel, plus a skip branch.
"""
from __future__ import annotations

from typing import NamedTuple, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .geometry import batch_ptr, cloud_ordinals, exporting

__all__ = ["check_grid_size", "voxel_clusters", "GridPool", "GridUnpool", "Pooled"]


def check_grid_size(grid_size) -> None:
    """``grid_size`` must be a finite positive number (a voxel's side, in the positions' unit)."""
    if isinstance(grid_size, bool) or not isinstance(grid_size, (int, float)) or not 0 < grid_size < float("inf"):
        raise ValueError(f"grid_size must be a positive number, got {grid_size!r}")


def voxel_clusters(pos: Tensor, batch: Tensor, grid_size: float) -> Tuple[Tensor, int]:
    """The voxel of each point: ``(cluster (N,), M)``, ``cluster[i]`` in ``[0, M)``.

    Voxels are cubes of side ``grid_size`` anchored at each cloud's minimum corner (so a cloud moved by
    any amount is grouped the same way, up to the rounding of its coordinates). Voxels are numbered in
    the order of (cloud, x, y, z), so the pooled rows of a sorted ``batch`` stay sorted by cloud.

    ``pos (N, 3)``, sorted ``batch (N,)``.
    """
    check_grid_size(grid_size)
    if pos.shape[0] == 0:
        raise ValueError("pos holds no point")
    if exporting():
        return _recorded_voxel_clusters(pos, batch, grid_size)
    sizes = batch_ptr(batch, pos.shape[0]).diff()
    clouds = sizes.numel()
    lowest = torch.full((clouds, 3), float("inf"), dtype=pos.dtype, device=pos.device)
    lowest = lowest.scatter_reduce(0, batch[:, None].expand(-1, 3), pos, "amin")
    cells = torch.floor((pos - lowest[batch]) / grid_size).long()           # (N, 3), >= 0
    extent = int(cells.max()) + 1
    if clouds * float(extent) ** 3 < 2.0 ** 62:  # one int64 key per cell, in (cloud, x, y, z) order
        key = ((batch.long() * extent + cells[:, 0]) * extent + cells[:, 1]) * extent + cells[:, 2]
        _, cluster = torch.unique(key, sorted=True, return_inverse=True)
    else:  # a grid too fine for one key (a 10 km scan at 1 mm): number the occupied (cloud, cell) rows
        rows = torch.cat([batch.long()[:, None], cells], dim=1)
        _, cluster = torch.unique(rows, dim=0, sorted=True, return_inverse=True)
    return cluster, int(cluster.max()) + 1


def _recorded_voxel_clusters(pos: Tensor, batch: Tensor, grid_size: float) -> Tuple[Tensor, int]:
    """:func:`voxel_clusters` as ``torch.export`` records it: no size read on the host, the number of
    points dynamic and the number of voxels the size of a ``unique`` (an ONNX ``Unique``).

    The same numbering in (cloud, x, y, z) order, built one coordinate at a time: a cell's rank along
    an axis is below ``N``, so each ``previous * N + rank`` key is below ``N^2`` (no overflow below
    3 x 10^9 points, whatever the grid's extent), and ``unique`` renumbers it below ``N`` again."""
    n = pos.shape[0]
    ordinal = cloud_ordinals(batch)                                                  # (N,) in [0, N)
    lowest = pos.new_full((n, 3), float("inf")).scatter_reduce(0, ordinal[:, None].expand(-1, 3), pos, "amin")
    cells = torch.floor((pos - lowest.index_select(0, ordinal)) / grid_size).long()   # (N, 3), >= 0
    cluster = ordinal
    for axis in range(3):
        _, rank = torch.unique(cells[:, axis], sorted=True, return_inverse=True)
        voxels, cluster = torch.unique(cluster * n + rank, sorted=True, return_inverse=True)
    count = voxels.shape[0]
    torch._check(count >= 1)   # (a cloud of points has a voxel: what the searches after need to know of count)
    return cluster, count


class Pooled(NamedTuple):
    """Output of :class:`GridPool`: one row per occupied voxel."""

    x: Tensor        # (M, C_out) features, the max over the voxel's points
    pos: Tensor      # (M, 3) the mean position of the voxel's points
    batch: Tensor    # (M,) sorted
    cluster: Tensor  # (N,) the voxel of each input point (what GridUnpool copies back along)


class GridPool(nn.Module):
    r"""Transition down by voxel: for each occupied voxel :math:`v` of side ``grid_size``,

    .. math::
        \mathbf{y}_v = \max_{i \in v} \mathrm{ReLU}(\mathrm{BN}(W \mathbf{x}_i)),\qquad
        \mathbf{p}_v = \frac{1}{|v|} \sum_{i \in v} \mathbf{p}_i

    The pooled positions are means of absolute positions: float32 holds them to its step at their
    magnitude (1 mm at 10^4 m), so scene data is centred per crop (in float64) before the network.

    Shapes: ``x (N, C_in)``, ``pos (N, 3)``, sorted ``batch (N,)`` -> :class:`Pooled` with ``M`` rows,
    ``M`` the number of occupied voxels (data dependent). ``clouds`` is accepted for the interface of
    :class:`~pcattn.nn.TransitionDown` and ignored: the number of voxels is not static.
    """

    def __init__(self, in_channels: int, out_channels: int, grid_size: float):
        super().__init__()
        check_grid_size(grid_size)
        self.grid_size = float(grid_size)
        self.linear = nn.Linear(in_channels, out_channels, bias=False)
        self.norm = nn.BatchNorm1d(out_channels)

    def forward(self, x: Tensor, pos: Tensor, batch: Tensor, clouds=None) -> Pooled:
        cluster, voxels = voxel_clusters(pos, batch, self.grid_size)
        features = F.relu(self.norm(self.linear(x)))
        index = cluster[:, None].expand(-1, features.shape[1])
        pooled = features.new_zeros(voxels, features.shape[1]).scatter_reduce(0, index, features, "amax",
                                                                               include_self=False)
        counts = torch.zeros(voxels, dtype=pos.dtype, device=pos.device).index_add_(
            0, cluster, torch.ones_like(pos[:, 0]))
        pos_out = torch.zeros(voxels, 3, dtype=pos.dtype, device=pos.device).index_add_(0, cluster, pos)
        pos_out = pos_out / counts[:, None]
        batch_out = torch.zeros(voxels, dtype=batch.dtype, device=batch.device).scatter_(0, cluster, batch)
        return Pooled(pooled, pos_out, batch_out, cluster)

    def extra_repr(self) -> str:
        return f"{self.linear.in_features}, {self.linear.out_features}, grid_size={self.grid_size}"


class GridUnpool(nn.Module):
    r"""Transition up along the voxels of a :class:`GridPool`: each fine point takes its voxel's
    features, plus a skip branch from the fine level,

    .. math::
        \mathbf{y}_i = \mathrm{ReLU}(\mathrm{BN}(W_c \mathbf{x}^{c}_{v(i)}))
            + \mathrm{ReLU}(\mathrm{BN}(W_f \mathbf{x}^{f}_i))

    Shapes: coarse ``x (M, C_coarse)``, fine ``x (N, C_skip)``, ``cluster (N,)`` -> ``(N, C_out)``.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.coarse = nn.Sequential(nn.Linear(in_channels, out_channels), nn.BatchNorm1d(out_channels), nn.ReLU())
        self.skip = nn.Sequential(nn.Linear(skip_channels, out_channels), nn.BatchNorm1d(out_channels), nn.ReLU())

    def forward(self, x_coarse: Tensor, x_fine: Tensor, cluster: Tensor) -> Tensor:
        return self.coarse(x_coarse)[cluster] + self.skip(x_fine)
