"""Point Transformer building blocks on flat point batches: the residual attention block,
transition down (FPS + kNN pooling) and transition up (3-NN interpolation + skip).

All blocks take flat rows, ``x (N, C)``, ``pos (N, 3)`` and a sorted ``batch (N,)``
(see :func:`pcattn.nn.geometry.to_flat` to convert dense ``(B, P, C)`` input).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .chunked.gather import gather
from .scalar import ScalarSelfAttention
from .vector import VectorSelfAttention
from .geometry import farthest_point_sampling, fps_equal_clouds, knn, knn_equal_clouds

__all__ = ["make_attention", "PointTransformerBlock", "TransitionDown", "TransitionUp", "Downsampled"]


def make_attention(attention: str, in_channels: int, out_channels: int, k: int = 16,
                   groups: Optional[int] = None, heads: int = 4, **kwargs) -> nn.Module:
    """Build a :class:`VectorSelfAttention` (``attention="vector"``) or :class:`ScalarSelfAttention` (``"scalar"``).

    ``groups`` is used by vector attention, ``heads`` by scalar attention; other keyword
    arguments go to the layer (e.g. ``positional_encoding``, ``relation``, ``normalization``).
    """
    if attention == "vector":
        return VectorSelfAttention(in_channels, out_channels, k=k, groups=groups, **kwargs)
    if attention == "scalar":
        return ScalarSelfAttention(in_channels, out_channels, k=k, heads=heads, **kwargs)
    raise ValueError(f"attention must be 'vector' or 'scalar', got {attention!r}")


class PointTransformerBlock(nn.Module):
    r"""Residual Point Transformer block: linear, self-attention, linear, with normalisation.

    .. math::
        \mathbf{h} = \mathrm{ReLU}(\mathrm{BN}(W_1 \mathbf{x})),\quad
        \mathbf{h} = \mathrm{ReLU}(\mathrm{BN}(\mathrm{Attn}(\mathbf{h}, \mathbf{p}))),\quad
        \mathbf{y} = \mathrm{ReLU}(\mathbf{x} + \mathrm{BN}(W_3 \mathbf{h}))

    Args:
        channels: feature size ``C`` (kept).
        attention: ``"vector"`` or ``"scalar"``.
        k, groups, heads, **attention_kwargs: passed to the attention layer.

    Shapes: ``x (N, C)``, ``pos (N, 3)``, ``batch (N,)``, ``neighbors (N, K)`` (optional,
    computed by kNN when omitted; pass it to share one kNN between blocks) -> ``(N, C)``.
    """

    def __init__(self, channels: int, attention: str = "vector", k: int = 16,
                 groups: Optional[int] = None, heads: int = 4, **attention_kwargs):
        super().__init__()
        self.linear1 = nn.Linear(channels, channels, bias=False)
        self.norm1 = nn.BatchNorm1d(channels)
        self.attention = make_attention(attention, channels, channels, k=k, groups=groups, heads=heads,
                                        **attention_kwargs)
        self.norm2 = nn.BatchNorm1d(channels)
        self.linear3 = nn.Linear(channels, channels, bias=False)
        self.norm3 = nn.BatchNorm1d(channels)

    def forward(self, x: Tensor, pos: Tensor, batch: Optional[Tensor] = None,
                neighbors: Optional[Tensor] = None) -> Tensor:
        h = F.relu(self.norm1(self.linear1(x)))
        h = F.relu(self.norm2(self.attention(h, pos, batch, neighbors)))
        h = self.norm3(self.linear3(h))
        return F.relu(x + h)


class Downsampled(NamedTuple):
    """Output of :class:`TransitionDown`: the kept points and their features."""

    x: Tensor        # (M, C_out)
    pos: Tensor      # (M, 3)
    batch: Tensor    # (M,)
    index: Tensor    # (M,) rows of the input that were kept


class TransitionDown(nn.Module):
    r"""Farthest point sampling to ``1/stride`` of each cloud, then kNN pooling.

    For each kept point ``i`` and its ``k`` nearest input points ``j``:

    .. math::
        \mathbf{y}_i = \max_j \mathrm{ReLU}\big(\mathrm{BN}(W [\mathbf{p}_j - \mathbf{p}_i, \mathbf{x}_j] + b)\big)

    The linear map is split, ``W [p_j - p_i, x_j] = W_p (p_j - p_i) + W_x x_j``: the features are
    projected per point before grouping (no ``(M, k, C_in + 3)`` tensor), the relative positions
    ``p_j - p_i`` are formed per pair in float32 (also under autocast) and then projected, so the
    output depends on the positions only through ``p_j - p_i`` (a cloud far from the origin gives the
    centred cloud's output). Empty slots of clouds smaller than ``k`` repeat the nearest neighbour
    (a no-op for the max).

    Shapes: ``x (N, C_in)``, ``pos (N, 3)``, ``batch (N,)`` -> :class:`Downsampled` with
    ``M = sum over clouds of ceil(n_cloud / stride)`` rows.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 4, k: int = 16):
        super().__init__()
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride, self.k = stride, k
        self.linear = nn.Linear(in_channels + 3, out_channels, bias=False)
        self.norm = nn.BatchNorm1d(out_channels)

    def forward(self, x: Tensor, pos: Tensor, batch: Tensor, clouds: Optional[int] = None) -> Downsampled:
        """``clouds``: the rows are that many equal-sized clouds back to back (static shapes for
        ``torch.compile`` and export; see :func:`~pcattn.nn.geometry.knn_equal_clouds`)."""
        if clouds is None:
            index = farthest_point_sampling(pos, ratio=1.0 / self.stride, batch=batch)
        else:
            index = fps_equal_clouds(pos, 1.0 / self.stride, clouds)
        pos_out, batch_out = pos[index], batch[index]
        if clouds is None:
            neighbors = knn(pos, self.k, batch, query=pos_out, query_batch=batch_out)     # (M, k)
        else:
            neighbors = knn_equal_clouds(pos, self.k, clouds, query=pos_out)
        neighbors = torch.where(neighbors >= 0, neighbors, neighbors[:, :1])
        weight_pos, weight_x = self.linear.weight[:, :3], self.linear.weight[:, 3:]
        rel_pos = gather(pos, neighbors) - pos_out[:, None, :]                        # p_j - p_i: (M, k, 3)
        grouped = F.linear(rel_pos, weight_pos) + gather(F.linear(x, weight_x), neighbors)   # (M, k, C_out)
        m, k, c = grouped.shape
        grouped = F.relu(self.norm(grouped.reshape(m * k, c))).reshape(m, k, c)
        return Downsampled(grouped.max(dim=1).values, pos_out, batch_out, index)


class TransitionUp(nn.Module):
    r"""Interpolate coarse features back to finer points and add a skip connection.

    .. math::
        \mathbf{y}_i = \sum_{j \in \mathrm{3NN}(i)} \frac{w_{ij}}{\sum w}\,
            \mathrm{ReLU}(\mathrm{BN}(W_c \mathbf{x}^{c}_j))
            + \mathrm{ReLU}(\mathrm{BN}(W_f \mathbf{x}^{f}_i)),
        \qquad w_{ij} = 1 / \lVert \mathbf{p}_i - \mathbf{p}_j \rVert^{q}

    ``interpolation_power`` ``q = 1`` (default): inverse distance, as the official Point Transformer
    code (``pointops.interpolation``: ``1 / (d + 1e-8)`` of the Euclidean distance) and the PyTorch
    PointNet++ (``three_nn`` returns distances); ``q = 2``: inverse squared distance, as PointNet++'s
    TensorFlow release (its ``three_nn`` returns squared distances) and earlier pcattn versions.

    Shapes: coarse ``x (M, C_coarse)``, ``pos (M, 3)``, ``batch (M,)``; fine ``x (N, C_skip)``,
    ``pos (N, 3)``, ``batch (N,)`` -> ``(N, C_out)``.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, interpolation_k: int = 3,
                 interpolation_power: int = 1):
        super().__init__()
        if interpolation_power not in (1, 2):
            raise ValueError(f"interpolation_power must be 1 (inverse distance) or 2 (inverse squared distance), "
                             f"got {interpolation_power!r}")
        self.interpolation_k, self.interpolation_power = interpolation_k, interpolation_power
        self.coarse = nn.Sequential(nn.Linear(in_channels, out_channels), nn.BatchNorm1d(out_channels), nn.ReLU())
        self.skip = nn.Sequential(nn.Linear(skip_channels, out_channels), nn.BatchNorm1d(out_channels), nn.ReLU())

    def forward(self, x_coarse: Tensor, pos_coarse: Tensor, batch_coarse: Tensor,
                x_fine: Tensor, pos_fine: Tensor, batch_fine: Tensor, clouds: Optional[int] = None) -> Tensor:
        """``clouds``: the rows are that many equal-sized clouds back to back, at both levels (static
        shapes; see :func:`~pcattn.nn.geometry.knn_equal_clouds`)."""
        if clouds is None:
            neighbors = knn(pos_coarse, self.interpolation_k, batch_coarse, query=pos_fine, query_batch=batch_fine)
        else:
            neighbors = knn_equal_clouds(pos_coarse, self.interpolation_k, clouds, query=pos_fine)
        valid = neighbors >= 0
        neighbors = neighbors.clamp(min=0)
        dist2 = (pos_fine[:, None, :] - gather(pos_coarse, neighbors)).square().sum(-1)
        # a point on a coarse point takes its features alone (the clamp), as the eps of the references does
        power = dist2.clamp_min(1e-16).sqrt() if self.interpolation_power == 1 else dist2.clamp_min(1e-10)
        weights = valid.to(dist2.dtype) / power
        weights = weights / weights.sum(dim=1, keepdim=True)
        coarse = self.coarse(x_coarse)
        # weights from float32 positions, applied in the features' dtype (autocast: fp16/bf16 out)
        return (weights[..., None].to(coarse.dtype) * gather(coarse, neighbors)).sum(dim=1) + self.skip(x_fine)
