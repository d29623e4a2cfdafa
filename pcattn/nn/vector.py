"""Vector self-attention (Point Transformer): one weight per channel group and neighbour."""
from __future__ import annotations

import copy
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .chunked.base import NeighborhoodAttention, recompute_switch
from .chunked.gather import GatheredNeighbors
from .chunked.layout import check_count, finish, prepare, resolve_neighbors
from .chunked.pairs import has_batchnorm, mlp, normalize, pairwise
from .geometry import cloud_start_rows, tracing

__all__ = ["VectorSelfAttention"]


class VectorSelfAttention(NeighborhoodAttention):
    r"""Vector self-attention over k nearest neighbours (Point Transformer, Zhao et al. 2021).

    .. math::
        \mathbf{y}_i = \sum_{j \in \mathcal{N}(i)} \operatorname{softmax}_j\big(
            \gamma(\varphi(\mathbf{x}_i) - \psi(\mathbf{x}_j) + \delta_{ij})\big)
            \odot \big(\alpha(\mathbf{x}_j) + \delta_{ij}\big),
        \qquad \delta_{ij} = \theta(\mathbf{p}_i - \mathbf{p}_j)

    :math:`\mathcal{N}(i)` holds the ``k`` nearest neighbours of point ``i`` in its own
    cloud (itself included). :math:`\varphi, \psi, \alpha` are linear maps to
    ``out_channels``; :math:`\theta` is the positional encoding of the relative position
    :math:`\mathbf{p}_i - \mathbf{p}_j`; :math:`\gamma` maps each relation to ``groups``
    weights. **The softmax runs over the neighbours j, separately for each point i and each
    group**; each weight is shared by the ``out_channels / groups`` channels of its group
    (``groups = out_channels`` is the paper's pure vector attention, ``groups = 1`` a
    single weight per neighbour).

    Positions far from the origin: the output depends on the positions only through
    :math:`\mathbf{p}_i - \mathbf{p}_j`, formed in the positions' dtype (float32 or float64, also
    under autocast) before any module sees it, so a cloud moved by :math:`10^5` in float32 (or by
    :math:`10^2` under bf16 autocast) gives the output of the centred cloud when its relative
    positions are the same numbers.

    A ``Linear(3, C)`` positional encoding (PyG's default) splits about the first point
    :math:`\mathbf{r}` of each cloud as :math:`\delta_{ij} = (W (p_i - r) + b) - W (p_j - r)`;
    with the subtraction or addition relation and weights that sum to one (softmax, l1relu) its
    parts are folded into the per-point query, key and value, so no per-pair position tensor is
    built (the same function up to float rounding of the cloud's extent). It folds in float32 or
    float64 outside autocast, in eager calls; under autocast (a half-precision projection would
    round :math:`p - r` to the cloud's extent), while compiling, and in
    :class:`pcattn.nn.pyg.PointTransformerConv` (a graph has no clouds) :math:`\delta_{ij}` is
    computed per pair (set ``layer.fold_linear_encoding = False`` to always do so).

    Args:
        in_channels: input feature size ``C_in``; ``-1`` sizes the projections at the first call
            (lazy). A pair ``(source, target)`` sizes :math:`\psi, \alpha` for the source points and
            :math:`\varphi` for the target points of a bipartite graph (as
            :class:`pcattn.nn.pyg.PointTransformerConv` takes it; the layer's own call takes one ``x``).
        out_channels: output size ``C`` (default ``in_channels``).
        k: neighbours per point (used when ``neighbors`` is not given).
        groups: weights per neighbour; must divide ``out_channels`` (default ``out_channels``).
        positional_encoding: ``"mlp"`` (:math:`\theta` = Linear-ReLU-Linear, default),
            ``"linear"`` (one ``Linear(3, C)``, as PyG's default), ``"none"``
            (:math:`\delta = 0`), or any module mapping ``(M, 3)`` to ``(M, C)``.
        relation: how :math:`\varphi(x_i)` and :math:`\psi(x_j)` are combined before
            :math:`\gamma`: ``"subtraction"`` (default), ``"addition"``, ``"hadamard"``
            (element-wise product; :math:`\delta` is added after), or ``"concat"``
            (:math:`\gamma` sees :math:`[\varphi(x_i), \psi(x_j), \delta_{ij}]`).
        normalization: ``"softmax"`` over the neighbours (default), ``"sigmoid"`` (an
            independent gate per neighbour, no normalisation), or ``"l1relu"`` (ReLU, then
            divide by the sum over the neighbours).
        mapping: :math:`\gamma`: ``"mlp"`` (Linear-ReLU-Linear, default), ``"linear"``,
            ``"none"`` (identity; needs ``groups == out_channels``), or a module mapping
            ``(M, C_rel)`` to ``(M, groups)``.
        pos_hidden: hidden width of the ``"mlp"`` positional encoding.
        bias: whether :math:`\varphi, \psi, \alpha` have biases.
        chunk_size: query points processed at once (default: about 256k pair-channels on the
            CPU, sized from free memory on a GPU; see :func:`pcattn.nn.chunked.sizing.chunk_elements`).
        recompute: recompute each chunk's pairwise tensors in the backward pass instead of
            storing them (much less memory in training). The recomputation replays the forward's
            autocast and random state, so gradients equal plain autograd's, dropout included;
            double backward (``create_graph=True``) works too. (``checkpoint=``: the
            name of 0.1, deprecated.) Pair modules that are not plain
            Linear/activation stacks are checked on recomputation and raise rather than give a
            wrong gradient. BatchNorm inside :math:`\theta`/:math:`\gamma` uses plain autograd in
            training (recomputing would update its running statistics twice).

    Mixed precision: under ``torch.autocast`` the features may be fp16/bf16 while ``pos`` stays
    float32; relative positions are formed in float32, the softmax (or other normalisation) runs
    in float32, and the output has autocast's dtype.

    Shapes:
        - x: ``(N, C_in)`` with pos ``(N, 3)`` and batch ``(N,)``, or ``(B, P, C_in)`` with
          pos ``(B, P, 3)``.
        - neighbors (optional): ``(N, K)`` global rows or ``(B, P, K)`` local indices,
          ``-1`` for an empty slot.
        - returns ``(N, C)`` or ``(B, P, C)``; with ``return_attention=True`` also an
          :class:`AttentionMap` with weights ``(N, K, groups)`` (or ``(B, P, K, groups)``).

    Example:
        >>> layer = VectorSelfAttention(32, 64, k=16)
        >>> y = layer(torch.randn(2, 1024, 32), torch.randn(2, 1024, 3))   # (2, 1024, 64)
    """

    _lazy_and_bipartite_inputs = True

    def __init__(
        self,
        in_channels: Union[int, Tuple[int, int]],
        out_channels: Optional[int] = None,
        k: int = 16,
        groups: Optional[int] = None,
        positional_encoding: Union[str, nn.Module] = "mlp",
        relation: str = "subtraction",
        normalization: str = "softmax",
        mapping: Union[str, nn.Module] = "mlp",
        pos_hidden: int = 16,
        bias: bool = True,
        chunk_size: Optional[int] = None,
        recompute: bool = True,
        checkpoint: Optional[bool] = None,
    ):
        super().__init__(in_channels, out_channels, chunk_size, recompute_switch(recompute, checkpoint))
        out_channels = self.out_channels
        check_count("k", k)
        check_count("groups", groups, allow_none=True)
        groups = groups or out_channels
        if out_channels % groups:
            raise ValueError(f"groups ({groups}) must divide out_channels ({out_channels})")
        if relation not in ("subtraction", "addition", "hadamard", "concat"):
            raise ValueError(f"relation must be subtraction, addition, hadamard or concat, got {relation!r}")
        if normalization not in ("softmax", "sigmoid", "l1relu"):
            raise ValueError(f"normalization must be softmax, sigmoid or l1relu, got {normalization!r}")
        self.k, self.groups = k, groups
        self.relation, self.normalization = relation, normalization
        self.fold_linear_encoding = True

        C = out_channels
        source_channels, target_channels = (in_channels, in_channels) if isinstance(in_channels, int) else in_channels
        self.to_query = projection(target_channels, C, bias)   # phi
        self.to_key = projection(source_channels, C, bias)     # psi
        self.to_value = projection(source_channels, C, bias)   # alpha

        if isinstance(positional_encoding, nn.Module):
            self.pos_encoder: Optional[nn.Module] = positional_encoding
        elif positional_encoding == "mlp":
            self.pos_encoder = mlp(3, pos_hidden, C)
        elif positional_encoding == "linear":
            self.pos_encoder = nn.Linear(3, C)
        elif positional_encoding == "none":
            self.pos_encoder = None
        else:
            raise ValueError(f"positional_encoding must be mlp, linear, none or a module, got {positional_encoding!r}")

        rel_channels = C * (2 + (self.pos_encoder is not None)) if relation == "concat" else C
        if isinstance(mapping, nn.Module):
            self.mapping: nn.Module = mapping
        elif mapping == "mlp":
            self.mapping = mlp(rel_channels, max(groups, min(8, rel_channels)), groups)
        elif mapping == "linear":
            self.mapping = nn.Linear(rel_channels, groups)
        elif mapping == "none":
            if rel_channels != groups:
                raise ValueError(f"mapping='none' needs groups == {rel_channels} (the relation's channels), got {groups}")
            self.mapping = nn.Identity()
        else:
            raise ValueError(f"mapping must be mlp, linear, none or a module, got {mapping!r}")
        self._batchnorm = has_batchnorm(self.pos_encoder, self.mapping)

    def extra_repr(self) -> str:
        pe = "none" if self.pos_encoder is None else type(self.pos_encoder).__name__
        return (f"{self.in_channels}, {self.out_channels}, k={self.k}, groups={self.groups}, "
                f"relation={self.relation}, normalization={self.normalization}, positional_encoding={pe}")

    @classmethod
    def from_pyg(cls, conv: nn.Module, k: int = 16) -> "VectorSelfAttention":
        """A layer computing exactly what a ``torch_geometric.nn.PointTransformerConv`` computes.

        The weights are copied (``lin_dst`` -> :math:`\\varphi`, ``lin_src`` -> :math:`\\psi`,
        ``lin`` -> :math:`\\alpha`, ``pos_nn`` -> :math:`\\theta`, ``attn_nn`` -> :math:`\\gamma`).
        Called on kNN neighbourhoods that include each point itself, both give the same output
        (PyG replaces self loops by exactly one). Only the non-bipartite conv is supported.
        """
        in_channels = conv.in_channels
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"from_pyg needs a conv with an int in_channels, got {in_channels!r}")
        C = conv.out_channels
        mapping = copy.deepcopy(conv.attn_nn) if conv.attn_nn is not None else nn.Identity()
        with torch.no_grad():
            was_training = mapping.training
            mapping.eval()
            probe = conv.lin.weight
            groups = mapping(torch.zeros(2, C, dtype=probe.dtype, device=probe.device)).shape[-1]
            mapping.train(was_training)
        if groups not in (1, C):
            raise ValueError(f"attn_nn must output 1 or {C} channels, got {groups}")
        pos_nn = copy.deepcopy(conv.pos_nn)
        if type(pos_nn).__name__ == "Linear" and type(pos_nn) is not nn.Linear and pos_nn.weight.dim() == 2:
            # PyG's own Linear (its default pos_nn) computes what torch's does; as a torch Linear the
            # layer can fold it into the per-point projections (see the class docstring).
            plain = nn.Linear(pos_nn.weight.shape[1], pos_nn.weight.shape[0], bias=pos_nn.bias is not None)
            with torch.no_grad():
                plain.weight.copy_(pos_nn.weight)
                if pos_nn.bias is not None:
                    plain.bias.copy_(pos_nn.bias)
            pos_nn = plain
        layer = cls(in_channels, C, k=k, groups=groups, positional_encoding=pos_nn, mapping=mapping, bias=False)
        with torch.no_grad():
            layer.to_query.weight.copy_(conv.lin_dst.weight)
            layer.to_key.weight.copy_(conv.lin_src.weight)
            layer.to_value.weight.copy_(conv.lin.weight)
        return layer.to(device=conv.lin.weight.device, dtype=conv.lin.weight.dtype)

    def forward(self, x: Tensor, pos: Tensor, batch: Optional[Tensor] = None,
                neighbors: Optional[Tensor] = None, return_attention: bool = False):
        """The formula step by step; see the class docstring for shapes.

        Steps 2-6 run per chunk of query rows (:meth:`_attend_chunk`); the chunking and the backward that
        recomputes each chunk instead of storing its pairs are :meth:`attend_in_chunks`, the base class's.
        """
        points = prepare(self, x, pos, batch)                           # flat x (N, C_in), pos (N, 3), batch (N,)
        neighbors = resolve_neighbors(points, self.k, neighbors)        # N(i): (N, K) rows, -1 for an empty slot
        # 1. projections phi(x_i), psi(x_j), alpha(x_j): (N, C) each
        query, key, value = self.to_query(points.x), self.to_key(points.x), self.to_value(points.x)
        positions = None if self.pos_encoder is None else points.pos     # (None: no delta, no relative positions)
        own_encoding = None
        if self._fold_is_exact(points.pos):   # a Linear theta joins the per-point rows: no per-pair positions
            query, key, value, own_encoding = self._fold_linear_encoding(query, key, value, points.pos, points.batch)
            positions = None
        # 2. gather the neighbours j of each chunk of rows i, 3.-6. the formula on them (_attend_chunk)
        out, weights = self.attend_in_chunks(self._attend_chunk, query, positions, key, value, positions, neighbors,
                                             want_weights=return_attention or self.record_attention)
        if own_encoding is not None:
            out = out + own_encoding                                     # W (p_i - r) + b, outside the sum over j
        return finish(self, out, weights, neighbors, points, return_attention)

    def _attend_chunk(self, query: Tensor, hood: GatheredNeighbors) -> Tuple[Tensor, Tensor]:
        r"""Steps 3-6 for one chunk: ``query (M, C)`` rows :math:`\varphi(x_i)` and their gathered neighbours
        (``hood.key`` :math:`\psi(x_j)`, ``hood.value`` :math:`\alpha(x_j)`, ``(M, K, C)``; ``hood.rel_pos``
        :math:`p_i - p_j`, ``(M, K, 3)``). Returns ``(M, C)`` outputs and ``(M, K, G)`` weights."""
        m, k = hood.key.shape[:2]
        query_i, key_j, value_j = query[:, None, :], hood.key, hood.value
        # 3. relation of phi(x_i) and psi(x_j), plus the positional encoding delta_ij = theta(p_i - p_j)
        delta = None if hood.rel_pos is None else pairwise(self.pos_encoder, hood.rel_pos)      # (M, K, C)
        if self.relation == "subtraction":
            relation = query_i - key_j
        elif self.relation == "addition":
            relation = query_i + key_j
        elif self.relation == "hadamard":
            relation = query_i * key_j
        else:  # concat
            relation = torch.cat([query_i.expand(-1, k, -1), key_j] + ([delta] if delta is not None else []), dim=-1)
        if delta is not None and self.relation != "concat":
            relation = relation + delta
        # 4. mapping gamma, 5. normalisation over the neighbours j (softmax by default), per group
        weights = normalize(pairwise(self.mapping, relation), hood.valid, self.normalization)   # (M, K, G)
        # 6. aggregation sum_j w_ij (alpha(x_j) + delta_ij), each weight shared by its group's channels
        if delta is not None:
            value_j = value_j + delta
        G = weights.shape[-1]
        grouped = value_j.view(m, k, G, self.out_channels // G)
        out = (weights[..., None] * grouped).sum(dim=1).reshape(m, self.out_channels)
        return out, weights

    def _fold_linear_encoding(self, query: Tensor, key: Tensor, value: Tensor, pos: Tensor,
                              batch: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """A linear encoding's parts joined to the per-point rows ``(N, C)``; returns the new query, key, value
        and the term ``W (p_i - r) + b`` to add to the output.

        A linear encoding splits about any point r: delta_ij = (W (p_i - r) + b) - W (p_j - r). Its parts
        join the per-point query, key and value, and since the weights of a group sum to one over the
        neighbours, sum_j w_ij (v_j - W (p_j - r) + W (p_i - r) + b) = sum_j w_ij (v_j - W (p_j - r)) +
        (W (p_i - r) + b). With r the first point of each cloud, p - r is formed in the positions' dtype
        (float32 or float64) before the projection, so the output depends on where the cloud is only
        through float rounding of its own extent.
        """
        local = pos - pos.index_select(0, cloud_start_rows(batch))                  # p - r, (N, 3)
        projected = F.linear(local, self.pos_encoder.weight)                        # W (p - r), (N, C)
        own = projected if self.pos_encoder.bias is None else projected + self.pos_encoder.bias
        query = query + own
        key = key + projected if self.relation == "subtraction" else key - projected
        return query, key, value - projected, own

    @property
    def _folds_encoding(self) -> bool:
        """Whether the positional encoding is one ``Linear(3, C)`` that may fold into the per-point
        projections (subtraction/addition relation, weights that sum to one over the neighbours)."""
        return (type(self.pos_encoder) is nn.Linear and self.relation in ("subtraction", "addition")
                and self.normalization in ("softmax", "l1relu") and self.fold_linear_encoding)

    def _fold_is_exact(self, pos: Tensor) -> bool:
        """Whether folding keeps ``p_i - p_j`` exact: positions in float32 or float64 and no autocast (its
        half-precision projection would round ``p - r`` to the cloud's extent, not to ``p_i - p_j``), in
        eager mode (recorded graphs take the per-pair path, which needs no cloud starts)."""
        return (self._folds_encoding and pos.dtype in (torch.float32, torch.float64)
                and not torch.is_autocast_enabled(pos.device.type) and not tracing())

    def _pair_modules(self) -> Tuple[Optional[nn.Module], ...]:
        return (self.pos_encoder, self.mapping)

    @property
    def _pair_channels(self) -> int:
        return self.out_channels


def projection(in_channels: int, out_channels: int, bias: bool) -> nn.Linear:
    """A ``Linear(in_channels, out_channels)``; ``in_channels=-1``: a ``LazyLinear`` sized at the first call."""
    if in_channels == -1:
        return nn.LazyLinear(out_channels, bias=bias)
    return nn.Linear(in_channels, out_channels, bias=bias)
