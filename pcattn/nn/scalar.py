"""Scalar (multi-head dot-product) self-attention over kNN groups or the whole cloud."""
from __future__ import annotations

import copy
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .chunked.base import NeighborhoodAttention, recompute_switch
from .chunked.gather import GatheredNeighbors
from .chunked.layout import Points, check_count, finish, prepare, resolve_neighbors
from .chunked.pairs import mlp, normalize, pairwise
from .geometry import ragged_index

__all__ = ["ScalarSelfAttention"]


class ScalarSelfAttention(NeighborhoodAttention):
    r"""Multi-head scalar (dot-product) self-attention over kNN groups or the whole cloud.

    .. math::
        \mathbf{y}_i = W_o \big\Vert_{h=1}^{H} \sum_{j \in \mathcal{N}(i)}
            \operatorname{softmax}_j\Big(\frac{\mathbf{q}^h_i \cdot (\mathbf{k}^h_j + \delta^{k,h}_{ij})}
            {\sqrt{d}}\Big)\,(\mathbf{v}^h_j + \delta^{v,h}_{ij})

    with :math:`\mathbf{q}^h_i = W^h_q \mathbf{x}_i` (likewise k, v) of ``qk_channels``
    (``d``) and ``v_channels`` per head, and :math:`\delta_{ij} = \theta(\mathbf{p}_i - \mathbf{p}_j)`
    a positional encoding of the relative position, added to the keys and the values.
    One weight per head and neighbour; **the softmax runs over the neighbours j**; heads are
    concatenated and projected by :math:`W_o` to ``out_channels``.

    ``k=None`` attends over the whole cloud (each cloud of a batch separately) with
    :func:`torch.nn.functional.scaled_dot_product_attention`, in chunks of queries, so no
    ``N x N`` relative-position tensor is ever built. There the positional encoding is
    linear, :math:`\delta_{ij} = W_p(\mathbf{p}_i - \mathbf{p}_j)`, computed exactly through
    :math:`q_i \cdot W_p p_i` being constant over j (it cancels in the softmax) and the
    weights summing to one: :math:`\sum_j w_{ij}(v_j + W_p p_i - W_p p_j) =
    \sum_j w_{ij}(v_j - W_p p_j) + W_p p_i`, with positions taken relative to the first point
    of each cloud (formed in float32): translation changes nothing but rounding of the cloud's
    extent. A non-linear relative MLP would need all pairs.

    Positions far from the origin: in kNN mode the relative positions :math:`p_i - p_j` are
    formed in float32 (also under autocast) before the encoding sees them, as in
    :class:`VectorSelfAttention`.

    Args:
        in_channels: input size ``C_in``.
        out_channels: output size (default ``in_channels``).
        k: neighbours per point, or ``None`` for the whole cloud.
        heads: number of heads ``H``.
        qk_channels: query/key size per head ``d`` (default ``out_channels // heads``).
        v_channels: value size per head (default ``out_channels // heads``).
        positional_encoding: ``"mlp"`` (default; linear in whole-cloud mode, see above) or ``"none"``.
        pos_hidden: hidden width of the positional MLP.
        bias: biases of the q, k, v maps.
        chunk_size: query points processed at once (default automatic).
        recompute: recompute each chunk in backward instead of storing it (kNN mode; exact, as
            :class:`VectorSelfAttention` describes; mixed precision as there too; ``checkpoint=``:
            the name of 0.1, deprecated).

    Shapes: as :class:`VectorSelfAttention`; attention weights are ``(N, K, heads)``; in
    whole-cloud mode ``K`` is the largest cloud's size and ``neighbors`` lists each cloud's
    points (``-1`` padded).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: Optional[int] = None,
        k: Optional[int] = 16,
        heads: int = 4,
        qk_channels: Optional[int] = None,
        v_channels: Optional[int] = None,
        positional_encoding: str = "mlp",
        pos_hidden: int = 16,
        bias: bool = True,
        chunk_size: Optional[int] = None,
        recompute: bool = True,
        checkpoint: Optional[bool] = None,
    ):
        check_count("k", k, allow_none=True)   # None: the whole cloud
        check_count("heads", heads)
        check_count("qk_channels", qk_channels, allow_none=True)
        check_count("v_channels", v_channels, allow_none=True)
        if positional_encoding not in ("mlp", "none"):
            raise ValueError(f"positional_encoding must be mlp or none, got {positional_encoding!r}")
        super().__init__(in_channels, out_channels, chunk_size, recompute_switch(recompute, checkpoint))
        out_channels = self.out_channels
        dq = qk_channels or max(1, out_channels // heads)
        dv = v_channels or max(1, out_channels // heads)
        self.k, self.heads = k, heads
        self.qk_channels, self.v_channels = dq, dv
        self.positional_encoding = positional_encoding
        self.to_query = nn.Linear(in_channels, heads * dq, bias=bias)
        self.to_key = nn.Linear(in_channels, heads * dq, bias=bias)
        self.to_value = nn.Linear(in_channels, heads * dv, bias=bias)
        self.proj = nn.Linear(heads * dv, out_channels)
        pe_channels = heads * (dq + dv)
        if positional_encoding == "none":
            self.pos_encoder: Optional[nn.Module] = None
        elif k is None:
            self.pos_encoder = nn.Linear(3, pe_channels, bias=False)
        else:
            self.pos_encoder = mlp(3, pos_hidden, pe_channels)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, k={self.k}, heads={self.heads}, "
                f"qk_channels={self.qk_channels}, v_channels={self.v_channels}, "
                f"positional_encoding={self.positional_encoding}")

    def forward(self, x: Tensor, pos: Tensor, batch: Optional[Tensor] = None,
                neighbors: Optional[Tensor] = None, return_attention: bool = False):
        """See the class docstring for shapes."""
        points = prepare(self, x, pos, batch)
        want_weights = return_attention or self.record_attention
        query, key, value = self.to_query(points.x), self.to_key(points.x), self.to_value(points.x)
        if self.k is None and neighbors is None:
            out, weights, neighbors = self._attend_global(query, key, value, points, want_weights)
        else:
            neighbors = resolve_neighbors(points, self.k or 1, neighbors)
            positions = None if self.pos_encoder is None else points.pos
            out, weights = self.attend_in_chunks(self._attend_chunk, query, positions, key, value, positions,
                                                 neighbors, want_weights)
        return finish(self, self.proj(out), weights, neighbors, points, return_attention)

    # kNN groups ------------------------------------------------------------
    def _pair_modules(self) -> Tuple[Optional[nn.Module], ...]:
        return (self.pos_encoder,)

    @property
    def _pair_channels(self) -> int:
        return self.heads * (self.qk_channels + self.v_channels)

    def _attend_chunk(self, query: Tensor, hood: GatheredNeighbors) -> Tuple[Tensor, Tensor]:
        """One chunk: ``query (M, H*d)`` rows and their gathered neighbours -> ``(M, H*dv)`` outputs (before
        :math:`W_o`), ``(M, K, H)`` weights."""
        m, k = hood.key.shape[:2]
        H, dq, dv = self.heads, self.qk_channels, self.v_channels
        key_j = hood.key.view(m, k, H, dq)
        value_j = hood.value.view(m, k, H, dv)
        if self.pos_encoder is not None:
            delta = pairwise(self.pos_encoder, hood.rel_pos)
            key_j = key_j + delta[..., :H * dq].view(m, k, H, dq)
            value_j = value_j + delta[..., H * dq:].view(m, k, H, dv)
        logits = (query.view(m, 1, H, dq) * key_j).sum(-1) / math.sqrt(dq)    # (M, K, H)
        weights = normalize(logits, hood.valid, "softmax")
        out = (weights[..., None] * value_j).sum(dim=1).reshape(m, H * dv)
        return out, weights

    # whole cloud -----------------------------------------------------------
    def _attend_global(self, query, key, value, points: Points, want_weights):
        H, dq, dv = self.heads, self.qk_channels, self.v_channels
        pos, batch = points.pos, points.batch
        # Clouds as they appear in the sorted batch (ids with no points are skipped).
        _, sizes = torch.unique_consecutive(batch, return_counts=True)
        sizes = sizes.cpu()
        B, P = sizes.numel(), int(sizes.max())
        cloud_of_row = torch.arange(B, device=pos.device).repeat_interleave(sizes.to(pos.device))
        equal = bool((sizes == P).all())
        index = ragged_index(sizes).to(pos.device)
        if self.pos_encoder is not None:
            # W_p (p - r) with r the first point of each cloud, p - r formed in float32 (or float64):
            # the encoding depends on where the cloud is only through the rounding of its own extent.
            local = pos - pos.index_select(0, index[cloud_of_row, 0])
            enc = self.pos_encoder(local)                   # W_p (p - r), (N, H*(dq+dv))
            key = key - enc[:, :H * dq]
            value = value - enc[:, H * dq:]
        safe = index.clamp(min=0)

        def heads_first(t: Tensor, d: int) -> Tensor:  # (N, H*d) -> (B, H, P, d)
            return t[safe].view(B, P, H, d).transpose(1, 2)

        q, k, v = heads_first(query, dq), heads_first(key, dq), heads_first(value, dv)
        mask = None if equal else (index >= 0)[:, None, None, :]        # (B, 1, 1, P): keys to attend
        rows = max(1, (1 << 24) // max(1, B * H * P))
        outs, weights = [], []
        for start in range(0, P, rows):
            q_c = q[:, :, start:start + rows]
            if want_weights:
                logits = q_c @ k.transpose(-1, -2) / math.sqrt(dq)
                if mask is not None:
                    logits = logits.masked_fill(~mask, float("-inf"))
                w = torch.softmax(logits, dim=-1)                          # (B, H, c, P)
                outs.append(w @ v)
                weights.append(w)
            else:
                outs.append(F.scaled_dot_product_attention(q_c, k, v, attn_mask=mask))
        out = torch.cat(outs, dim=2).transpose(1, 2).reshape(B * P, H * dv)    # (B*P, H*dv)
        flat_rows = index.reshape(-1) >= 0
        out = out[flat_rows] if not equal else out
        if self.pos_encoder is not None:
            out = out + enc[:, H * dq:]
        neighbors = index[cloud_of_row]
        if not want_weights:
            return out, None, neighbors
        w = torch.cat(weights, dim=2).permute(0, 2, 3, 1).reshape(B * P, P, H)   # (B*P, P, H)
        w = w[flat_rows] if not equal else w
        return out, w, neighbors
