"""The attention layers' input layout and checks: the call both layers take, made flat and checked, and
the output given back in the input's layout.

Both layers take ``layer(x, pos, batch=None, neighbors=None, return_attention=False)`` in either layout:

* flat ``x (N, C_in)``, ``pos (N, 3)`` and a sorted ``batch (N,)`` (PyTorch Geometric style);
* dense ``x (B, P, C_in)``, ``pos (B, P, 3)``.

Internally everything is flat (:func:`prepare`); a neighbourhood is an ``(N, K)`` index into the rows,
with ``-1`` marking an empty slot (a cloud smaller than ``k``) (:func:`resolve_neighbors`). :func:`finish`
gives the output (and the attention map) the input's layout.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from ..geometry import (check_batch, check_positions, global_to_local, inputs_checked, knn, knn_equal_clouds,
                        local_to_global, to_flat, tracing)

__all__ = ["AttentionMap", "RecordedAttention", "Points", "check_count", "check_in_channels", "prepare",
           "resolve_neighbors", "finish"]


class AttentionMap(NamedTuple):
    """Attention weights and the neighbourhoods they are over, in the layout of the input.

    Flat input: ``weights (N, K, G)``, ``neighbors (N, K)`` global rows.
    Dense input: ``weights (B, P, K, G)``, ``neighbors (B, P, K)`` indices within each cloud.
    ``G`` is the number of groups (vector) or heads (scalar); ``-1`` marks an empty slot.
    """

    weights: Tensor
    neighbors: Tensor


class RecordedAttention(NamedTuple):
    """What a layer stores in ``last_attention`` when ``record_attention`` is set (always flat, detached).

    ``weights (N, K, G)``, ``neighbors (N, K)`` rows of ``pos (N, 3)``, ``batch (N,)``.
    """

    weights: Tensor
    neighbors: Tensor
    pos: Tensor
    batch: Tensor


def check_count(name: str, value, allow_none: bool = False) -> None:
    """Raise a ``TypeError``/``ValueError`` naming ``name`` unless ``value`` is a positive int (or ``None`` if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive integer{' or None' if allow_none else ''}, "
                        f"got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")


def check_in_channels(value, lazy_and_bipartite: bool) -> None:
    """``in_channels``: a positive int; where the layer allows it (``lazy_and_bipartite``) also ``-1`` (sized
    at the first call) or a pair ``(source, target)`` of those (a bipartite graph, PyG's convention)."""
    if not lazy_and_bipartite:
        check_count("in_channels", value)
        return
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"in_channels must be an int or a pair (source, target), got {value!r}")
        for name, channels in zip(("in_channels[0]", "in_channels[1]"), value):
            _check_one_in_channels(name, channels)
        return
    _check_one_in_channels("in_channels", value)


def _check_one_in_channels(name: str, value) -> None:
    """A positive int or ``-1`` (lazy)."""
    if isinstance(value, int) and not isinstance(value, bool) and value == -1:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive integer or -1 (lazy), got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer or -1 (lazy), got {value}")


class Points(NamedTuple):
    """Validated flat inputs plus what is needed to give the output the input's layout."""

    x: Tensor
    pos: Tensor
    batch: Tensor
    dense_shape: Optional[Tuple[int, int]]  # (B, P) for dense input
    clouds: Optional[int] = None            # equal-sized clouds the rows hold, when known without looking (B, or 1)


def prepare(layer: nn.Module, x: Tensor, pos: Tensor, batch: Optional[Tensor]) -> Points:
    """Check a layer's inputs (unless a model checked them: :func:`~pcattn.nn.geometry.checked_inputs`)
    and make them flat.

    Under ``torch.autocast`` the features may be half precision (a Linear or BatchNorm before the
    layer gives them) while the positions stay float32: relative positions are formed in float32
    (half-precision positions are promoted), and the output dtype follows autocast.
    """
    autocast = torch.is_autocast_enabled(pos.device.type) if isinstance(pos, Tensor) else False
    if not inputs_checked():
        _check_layer_inputs(layer, x, pos, batch, autocast)
    if autocast and pos.dtype in (torch.float16, torch.bfloat16):
        pos = pos.float()
    if pos.dim() == 3:
        flat_pos, flat_x, flat_batch = to_flat(pos, x)
        return Points(flat_x, flat_pos, flat_batch, tuple(pos.shape[:2]), pos.shape[0])
    if batch is None:
        return Points(x, pos, torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device), None, 1)
    return Points(x, pos, batch.long(), None)


def _input_width(layer: nn.Module) -> Optional[int]:
    """The feature width ``x`` must have, or ``None`` while a lazy layer has not seen its first input."""
    channels = layer.in_channels
    if isinstance(channels, (tuple, list)):
        if channels[0] != channels[1]:
            raise ValueError(f"the layer was built for a bipartite graph (in_channels={tuple(channels)}); "
                             f"self-attention takes one x: use pcattn.nn.pyg.PointTransformerConv for (x_src, x_dst)")
        channels = channels[0]
    if channels != -1:
        return channels
    projection = getattr(layer, "to_query", None)
    if isinstance(projection, nn.Linear) and not isinstance(projection, nn.LazyLinear):
        return projection.in_features   # a lazy layer after its first call
    return None


def _check_layer_inputs(layer: nn.Module, x: Tensor, pos: Tensor, batch: Optional[Tensor], autocast: bool) -> None:
    check_positions(pos)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != pos.dim():
        raise ValueError(f"x must be (N, C) with pos (N, 3), or (B, P, C) with pos (B, P, 3); "
                         f"got x {tuple(x.shape)} and pos {tuple(pos.shape)}")
    if x.shape[:-1] != pos.shape[:-1]:
        raise ValueError(f"x and pos must have the same points, got x {tuple(x.shape)} and pos {tuple(pos.shape)}")
    width = _input_width(layer)
    if width is not None and x.shape[-1] != width:
        raise ValueError(f"x must have {width} channels (in_channels), got {x.shape[-1]}")
    if x.device != pos.device:
        raise ValueError(f"x is on {x.device} but pos is on {pos.device}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating point tensor, got {x.dtype}")
    weight = next(layer.parameters())
    if weight.device != x.device:
        raise ValueError(f"the layer is on {weight.device} but x is on {x.device}: call layer.to(device)")
    if not autocast:  # (under autocast, half-precision features beside float32 positions and weights are expected)
        if x.dtype != pos.dtype:
            raise TypeError(f"x and pos must share a dtype, got x {x.dtype} and pos {pos.dtype} "
                            f"(or run under torch.autocast)")
        if weight.dtype != x.dtype:
            raise TypeError(f"the layer's parameters are {weight.dtype} but x is {x.dtype}: call layer.to({x.dtype})")
    if pos.dim() == 3 and pos.shape[0] == 0:
        raise ValueError(f"the batch is empty: x {tuple(x.shape)} holds no cloud (B = 0)")
    if x.shape[-2] == 0:
        raise ValueError("the point cloud is empty (0 points)")
    if not tracing() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(-1).sum())
        raise ValueError(f"x contains NaN or infinite values ({bad} points)")
    if pos.dim() == 3 and batch is not None:
        raise ValueError("batch is only for flat (N, C) input; dense (B, P, C) input needs none")
    if pos.dim() == 2 and batch is not None:
        check_batch(batch, pos.shape[0], pos.device)


def resolve_neighbors(points: Points, k: int, neighbors: Optional[Tensor]) -> Tensor:
    """The ``(N, K)`` flat neighbour index: computed by kNN, or the user's, checked and made global."""
    if neighbors is None:
        if tracing() and points.clouds is not None:   # static shapes for torch.compile / export
            return knn_equal_clouds(points.pos, k, points.clouds)
        return knn(points.pos, k, points.batch)
    if inputs_checked():  # a model's own kNN: already global, in range and within each cloud
        return neighbors
    if not isinstance(neighbors, Tensor) or neighbors.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"neighbors must be an integer tensor, got "
                        f"{getattr(neighbors, 'dtype', type(neighbors).__name__)}")
    if neighbors.device != points.pos.device:
        raise ValueError(f"neighbors is on {neighbors.device} but pos is on {points.pos.device}")
    n = points.pos.shape[0]
    if points.dense_shape is not None:
        B, P = points.dense_shape
        if neighbors.dim() != 3 or neighbors.shape[:2] != (B, P):
            raise ValueError(f"neighbors must be (B, P, K) = ({B}, {P}, K) for dense input, got {tuple(neighbors.shape)}")
        if neighbors.numel() and (int(neighbors.min()) < -1 or int(neighbors.max()) >= P):
            raise ValueError(f"neighbors must index points of their cloud (-1 <= index < {P})")
        neighbors = local_to_global(neighbors)
    else:
        if neighbors.dim() != 2 or neighbors.shape[0] != n:
            raise ValueError(f"neighbors must be (N, K) = ({n}, K), got {tuple(neighbors.shape)}")
        if neighbors.numel() and (int(neighbors.min()) < -1 or int(neighbors.max()) >= n):
            raise ValueError(f"neighbors must be row indices in [-1, {n}), got [{int(neighbors.min())}, "
                             f"{int(neighbors.max())}]")
    neighbors = neighbors.long()
    if neighbors.shape[1] == 0 or not bool((neighbors >= 0).any(1).all()):
        raise ValueError("every point needs at least one neighbour (a row of neighbors is all -1)")
    cross = (points.batch[neighbors.clamp(min=0)] != points.batch[:, None]) & (neighbors >= 0)
    if bool(cross.any()):
        raise ValueError("neighbors links points of different clouds of the batch")
    return neighbors


def finish(layer: nn.Module, out: Tensor, weights: Optional[Tensor], neighbors: Tensor,
            points: Points, return_attention: bool):
    """Record the attention if asked, and give the output (and map) the input's layout."""
    if weights is not None and layer.record_attention:
        layer.last_attention = RecordedAttention(weights.detach(), neighbors, points.pos.detach(), points.batch)
    if points.dense_shape is not None:
        B, P = points.dense_shape
        out = out.reshape(B, P, -1)
    if not return_attention:
        return out
    if points.dense_shape is not None:
        B, P = points.dense_shape
        neighbors = global_to_local(neighbors, B)
        weights = weights.reshape(B, P, *weights.shape[1:])
    return out, AttentionMap(weights, neighbors)
