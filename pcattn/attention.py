"""Self-attention layers for point clouds: vector (Point Transformer) and scalar (dot product).

Both layers take the same call, ``layer(x, pos, batch=None, neighbors=None,
return_attention=False)``, in either layout:

* flat ``x (N, C_in)``, ``pos (N, 3)`` and a sorted ``batch (N,)`` (PyTorch Geometric style);
* dense ``x (B, P, C_in)``, ``pos (B, P, 3)``.

Internally everything is flat; a neighbourhood is an ``(N, K)`` index into the rows, with
``-1`` marking an empty slot (a cloud smaller than ``k``), which gets weight zero.
"""
from __future__ import annotations

import copy
import math
from typing import NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .geometry import check_batch, check_positions, knn

__all__ = [
    "VectorSelfAttention",
    "ScalarSelfAttention",
    "AttentionMap",
    "RecordedAttention",
    "ATTENTION_LAYERS",
]

# Rows of a chunk hold about this many (pair, channel) elements: 1 MiB in float32, small
# enough to stay in cache and below glibc's mmap threshold, so no fresh zeroed pages per op.
_CHUNK_ELEMENTS = 1 << 18


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


# ----------------------------------------------------------------------------- helpers
def _mlp(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_channels))


def gather(rows: Tensor, index: Tensor) -> Tensor:
    """``rows[index]`` for an ``(M, K)`` index: ``(M, K, ...)``.

    ``index_select`` rather than advanced indexing: its backward is an ``index_add`` that
    runs 2-10x faster on the CPU than the ``index_put`` of ``rows[index]``.
    """
    return rows.index_select(0, index.reshape(-1)).view(*index.shape, *rows.shape[1:])


def _pairwise(module: nn.Module, pairs: Tensor) -> Tensor:
    """Apply ``module`` to ``(M, K, C)`` pairs as ``(M*K, C)`` rows (so BatchNorm1d works too)."""
    m, k, c = pairs.shape
    return module(pairs.reshape(m * k, c)).reshape(m, k, -1)


def _has_batchnorm(*modules: Optional[nn.Module]) -> bool:
    return any(isinstance(sub, nn.modules.batchnorm._BatchNorm)
               for module in modules if module is not None for sub in module.modules())


def _normalize(logits: Tensor, valid: Optional[Tensor], how: str) -> Tensor:
    """Turn ``(M, K, G)`` logits into weights over the K neighbours (dim 1); empty slots get 0."""
    if how == "softmax":
        if valid is not None:
            logits = logits.masked_fill(~valid[..., None], float("-inf"))
        return torch.softmax(logits, dim=1)
    if how == "sigmoid":
        weights = torch.sigmoid(logits)
    else:  # "l1relu": ReLU, then divide by the sum over the neighbours. The small floor makes a
        # neighbourhood whose logits are all negative fall back to uniform weights, not zeros.
        weights = torch.relu(logits) + 1e-6
    if valid is not None:
        weights = weights * valid[..., None].to(weights.dtype)
    if how == "l1relu":
        weights = weights / weights.sum(dim=1, keepdim=True)
    return weights


class _Points(NamedTuple):
    """Validated flat inputs plus what is needed to give the output the input's layout."""

    x: Tensor
    pos: Tensor
    batch: Tensor
    dense_shape: Optional[Tuple[int, int]]  # (B, P) for dense input


def _prepare(layer: nn.Module, x: Tensor, pos: Tensor, batch: Optional[Tensor]) -> _Points:
    check_positions(pos)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != pos.dim():
        raise ValueError(f"x must be (N, C) with pos (N, 3), or (B, P, C) with pos (B, P, 3); "
                         f"got x {tuple(x.shape)} and pos {tuple(pos.shape)}")
    if x.shape[:-1] != pos.shape[:-1]:
        raise ValueError(f"x and pos must have the same points, got x {tuple(x.shape)} and pos {tuple(pos.shape)}")
    if x.shape[-1] != layer.in_channels:
        raise ValueError(f"x must have {layer.in_channels} channels (in_channels), got {x.shape[-1]}")
    if x.device != pos.device:
        raise ValueError(f"x is on {x.device} but pos is on {pos.device}")
    if x.dtype != pos.dtype:
        raise TypeError(f"x and pos must share a dtype, got x {x.dtype} and pos {pos.dtype}")
    weight = next(layer.parameters())
    if weight.device != x.device:
        raise ValueError(f"the layer is on {weight.device} but x is on {x.device}: call layer.to(device)")
    if weight.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"the layer's parameters are {weight.dtype} but x is {x.dtype}: call layer.to({x.dtype})")
    if x.shape[-2] == 0:
        raise ValueError("the point cloud is empty (0 points)")
    if pos.dim() == 3:
        if batch is not None:
            raise ValueError("batch is only for flat (N, C) input; dense (B, P, C) input needs none")
        B, P = pos.shape[:2]
        return _Points(x.reshape(B * P, -1), pos.reshape(B * P, 3),
                       torch.arange(B, device=pos.device).repeat_interleave(P), (B, P))
    if batch is None:
        batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
    else:
        check_batch(batch, pos.shape[0], pos.device)
    return _Points(x, pos, batch.long(), None)


def _neighbors(points: _Points, k: int, neighbors: Optional[Tensor]) -> Tensor:
    """The ``(N, K)`` flat neighbour index: computed by kNN, or the user's, checked and made global."""
    if neighbors is None:
        return knn(points.pos, k, points.batch)
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
        offset = (torch.arange(B, device=neighbors.device) * P)[:, None, None]
        neighbors = torch.where(neighbors >= 0, neighbors + offset, neighbors).reshape(n, -1)
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


def _finish(layer: nn.Module, out: Tensor, weights: Optional[Tensor], neighbors: Tensor,
            points: _Points, return_attention: bool):
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
        offset = (torch.arange(B, device=neighbors.device) * P)[:, None, None]
        local = neighbors.reshape(B, P, -1)
        neighbors = torch.where(local >= 0, local - offset, local)
        weights = weights.reshape(B, P, *weights.shape[1:])
    return out, AttentionMap(weights, neighbors)


def _chunk_rows(k: int, channels: int, chunk_size: Optional[int]) -> int:
    return chunk_size or max(1, _CHUNK_ELEMENTS // max(1, k * channels))


class _Neighbourhood(NamedTuple):
    """One chunk's neighbours gathered: ``(M, K, ...)`` rows, ``valid (M, K)`` or ``None`` if all are."""

    key: Tensor
    value: Tensor
    rel_pos: Optional[Tensor]   # p_i - p_j; None when the layer needs no pairwise positions
    valid: Optional[Tensor]


def _gather_chunk(key: Tensor, value: Tensor, pos: Optional[Tensor], neighbors: Tensor, start: int,
                  stop: int) -> _Neighbourhood:
    """Gather the neighbours of query rows ``start:stop`` (``pos=None``: no relative positions)."""
    neighbors = neighbors[start:stop]
    valid = neighbors >= 0
    if bool(valid.all()):
        valid = None
    else:
        neighbors = neighbors.clamp(min=0)
    rel_pos = None if pos is None else pos[start:stop, None, :] - gather(pos, neighbors)
    return _Neighbourhood(gather(key, neighbors), gather(value, neighbors), rel_pos, valid)


class _NeighborhoodAttention(nn.Module):
    """What both layers share: the chunked loop over query rows, and recomputation in backward.

    Subclasses define ``_pairs(query_rows (M, Cq), neighbourhood) -> (out (M, C), weights (M, K, G))``
    and ``_pair_modules()`` (the modules used inside ``_pairs``).
    """

    record_attention: bool
    last_attention: Optional[RecordedAttention]
    chunk_size: Optional[int]
    checkpoint: bool

    def _pair_modules(self) -> Tuple[Optional[nn.Module], ...]:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Re-initialise every weight of the layer."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def _over_chunks(self, query: Tensor, key: Tensor, value: Tensor, pos: Tensor, neighbors: Tensor,
                     rows: int, want_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        params = [p for module in self._pair_modules() if module is not None
                  for p in module.parameters() if p.requires_grad]
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value, pos, *params))
        # Batch statistics and dropout masks would differ when recomputed: those modules use plain autograd.
        stochastic = self.training and any(
            isinstance(sub, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd))
            for module in self._pair_modules() if module is not None for sub in module.modules())
        if needs_grad and self.checkpoint and not want_weights and not stochastic:
            return _RecomputedChunks.apply(self, rows, query, key, value, pos, neighbors, *params), None
        outs, weights = [], []
        for start in range(0, neighbors.shape[0], rows):
            stop = start + rows
            out, w = self._pairs(query[start:stop], _gather_chunk(key, value, pos, neighbors, start, stop))
            outs.append(out)
            if want_weights:  # (M, K, G) per chunk: keep only when asked, it is K*G/C times the output
                weights.append(w)
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        return out, (torch.cat(weights) if want_weights else None)


class _RecomputedChunks(torch.autograd.Function):
    """The chunk loop, storing nothing per pair: backward gathers and recomputes one chunk at a time.

    Unlike generic checkpointing, each chunk's gradients for the gathered rows are added into a
    single ``(N, C)`` buffer (``index_add_``), so backward costs O(N) memory and time, not one
    full-size gradient per chunk.
    """

    @staticmethod
    def forward(ctx, layer, rows, query, key, value, pos, neighbors, *params):
        ctx.layer, ctx.rows = layer, rows
        ctx.autocast = (query.device.type, torch.is_autocast_enabled(query.device.type))
        ctx.save_for_backward(query, key, value, pos, neighbors, *params)
        outs = []
        for start in range(0, neighbors.shape[0], rows):
            stop = start + rows
            outs.append(layer._pairs(query[start:stop], _gather_chunk(key, value, pos, neighbors, start, stop))[0])
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, pos, neighbors, *params = ctx.saved_tensors
        layer, rows = ctx.layer, ctx.rows
        need_q, need_k, need_v, need_pos = ctx.needs_input_grad[2:6]
        grads = [torch.zeros_like(t) if need else None
                 for t, need in zip((query, key, value, pos), (need_q, need_k, need_v, need_pos))]
        grad_q, grad_k, grad_v, grad_pos = grads
        grad_params = [torch.zeros_like(p) for p in params]
        device_type, autocast = ctx.autocast
        for start in range(0, neighbors.shape[0], rows):
            stop = start + rows
            nbr = neighbors[start:stop]
            index = nbr.clamp(min=0).reshape(-1)
            with torch.enable_grad(), torch.autocast(device_type, enabled=autocast):
                q_rows = query[start:stop].detach().requires_grad_(need_q)
                hood = _gather_chunk(key.detach(), value.detach(), None if pos is None else pos.detach(), neighbors,
                                     start, stop)
                rel_pos = None if hood.rel_pos is None else hood.rel_pos.requires_grad_(need_pos)
                hood = _Neighbourhood(hood.key.requires_grad_(need_k), hood.value.requires_grad_(need_v),
                                      rel_pos, hood.valid)
                out = layer._pairs(q_rows, hood)[0]
                inputs = [q_rows, hood.key, hood.value, rel_pos, *params]
                wanted = [t for t in inputs if t is not None and t.requires_grad]
                found = iter(torch.autograd.grad(out, wanted, grad_out[start:stop], allow_unused=True))
                g_q, g_key, g_value, g_rel, *g_params = [next(found) if t is not None and t.requires_grad else None
                                                         for t in inputs]
            m, k = nbr.shape
            if g_q is not None:
                grad_q[start:stop] += g_q
            if g_key is not None:
                grad_k.index_add_(0, index, g_key.reshape(m * k, -1).to(grad_k.dtype))
            if g_value is not None:
                grad_v.index_add_(0, index, g_value.reshape(m * k, -1).to(grad_v.dtype))
            if g_rel is not None:  # rel_pos = p_i - p_j
                grad_pos[start:stop] += g_rel.sum(dim=1).to(grad_pos.dtype)
                grad_pos.index_add_(0, index, -g_rel.reshape(m * k, 3).to(grad_pos.dtype))
            for total, g in zip(grad_params, g_params):
                if g is not None:
                    total += g
        return (None, None, grad_q, grad_k, grad_v, grad_pos, None, *grad_params)


# ----------------------------------------------------------------------------- vector attention
class VectorSelfAttention(_NeighborhoodAttention):
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

    A ``Linear(3, C)`` positional encoding (PyG's default) splits as
    :math:`\delta_{ij} = (W p_i + b) - W p_j`; with the subtraction or addition relation and
    weights that sum to one (softmax, l1relu) its parts are folded into the per-point query, key
    and value, so no per-pair position tensor is built (the same function up to float rounding;
    set ``layer.fold_linear_encoding = False`` to compute :math:`\delta_{ij}` per pair).

    Args:
        in_channels: input feature size ``C_in``.
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
        chunk_size: query points processed at once (default: about 256k pair-channels).
        checkpoint: recompute each chunk's pairwise tensors in the backward pass instead of
            storing them (much less memory in training; same gradients; no double backward).
            Modules with BatchNorm or dropout inside :math:`\theta`/:math:`\gamma` are not
            recomputed in training (their statistics and masks would differ).

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

    def __init__(
        self,
        in_channels: int,
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
        checkpoint: bool = True,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        groups = groups or out_channels
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if out_channels % groups:
            raise ValueError(f"groups ({groups}) must divide out_channels ({out_channels})")
        if relation not in ("subtraction", "addition", "hadamard", "concat"):
            raise ValueError(f"relation must be subtraction, addition, hadamard or concat, got {relation!r}")
        if normalization not in ("softmax", "sigmoid", "l1relu"):
            raise ValueError(f"normalization must be softmax, sigmoid or l1relu, got {normalization!r}")
        self.in_channels, self.out_channels, self.k, self.groups = in_channels, out_channels, k, groups
        self.relation, self.normalization = relation, normalization
        self.chunk_size, self.checkpoint = chunk_size, checkpoint
        self.fold_linear_encoding = True
        self.record_attention = False
        self.last_attention: Optional[RecordedAttention] = None

        C = out_channels
        self.to_query = nn.Linear(in_channels, C, bias=bias)   # phi
        self.to_key = nn.Linear(in_channels, C, bias=bias)     # psi
        self.to_value = nn.Linear(in_channels, C, bias=bias)   # alpha

        if isinstance(positional_encoding, nn.Module):
            self.pos_encoder: Optional[nn.Module] = positional_encoding
        elif positional_encoding == "mlp":
            self.pos_encoder = _mlp(3, pos_hidden, C)
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
            self.mapping = _mlp(rel_channels, max(groups, min(8, rel_channels)), groups)
        elif mapping == "linear":
            self.mapping = nn.Linear(rel_channels, groups)
        elif mapping == "none":
            if rel_channels != groups:
                raise ValueError(f"mapping='none' needs groups == {rel_channels} (the relation's channels), got {groups}")
            self.mapping = nn.Identity()
        else:
            raise ValueError(f"mapping must be mlp, linear, none or a module, got {mapping!r}")
        self._batchnorm = _has_batchnorm(self.pos_encoder, self.mapping)

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
        """See the class docstring for shapes."""
        points = _prepare(self, x, pos, batch)
        neighbors = _neighbors(points, self.k, neighbors)
        query, key, value = self.to_query(points.x), self.to_key(points.x), self.to_value(points.x)
        want_weights = return_attention or self.record_attention
        if self._folds_encoding:
            # A linear encoding splits: delta_ij = (W p_i + b) - W p_j. Its parts join the per-point
            # query, key and value, and since the weights of a group sum to one over the neighbours,
            # sum_j w_ij (v_j - W p_j + W p_i + b) = sum_j w_ij (v_j - W p_j) + (W p_i + b).
            # No pairwise positions remain: the same function with fewer per-pair operations.
            projected = F.linear(points.pos, self.pos_encoder.weight)                        # W p, (N, C)
            own = projected if self.pos_encoder.bias is None else projected + self.pos_encoder.bias
            query = query + own
            key = key + projected if self.relation == "subtraction" else key - projected
            out, weights = self._attend(query, key, value - projected, None, neighbors, want_weights)
            out = out + own
        else:
            out, weights = self._attend(query, key, value, points.pos, neighbors, want_weights)
        return _finish(self, out, weights, neighbors, points, return_attention)

    @property
    def _folds_encoding(self) -> bool:
        """Whether the positional encoding is one ``Linear(3, C)`` folded into the per-point projections
        (subtraction/addition relation, weights that sum to one over the neighbours)."""
        return (type(self.pos_encoder) is nn.Linear and self.relation in ("subtraction", "addition")
                and self.normalization in ("softmax", "l1relu") and self.fold_linear_encoding)

    def _pair_modules(self) -> Tuple[Optional[nn.Module], ...]:
        return (None if self._folds_encoding else self.pos_encoder, self.mapping)

    def _attend(self, query: Tensor, key: Tensor, value: Tensor, pos: Tensor, neighbors: Tensor,
                want_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        n, k = neighbors.shape
        # BatchNorm inside theta or gamma needs all pairs at once in training to match its statistics.
        whole = self._batchnorm and self.training
        rows = n if whole else _chunk_rows(k, self.out_channels, self.chunk_size)
        return self._over_chunks(query, key, value, pos, neighbors, rows, want_weights)

    def _pairs(self, query: Tensor, hood: _Neighbourhood) -> Tuple[Tensor, Tensor]:
        """One chunk of query rows ``(M, C)`` and their gathered neighbours: ``(M, C)`` outputs, ``(M, K, G)`` weights."""
        m, k = hood.key.shape[:2]
        key_j, value_j, delta = hood.key, hood.value, None
        if self.pos_encoder is not None and hood.rel_pos is not None:   # (None: folded, see forward)
            delta = _pairwise(self.pos_encoder, hood.rel_pos)                # theta(p_i - p_j): (M, K, C)
            value_j = value_j + delta
        query_i = query[:, None, :]
        if self.relation == "subtraction":
            rel = query_i - key_j
        elif self.relation == "addition":
            rel = query_i + key_j
        elif self.relation == "hadamard":
            rel = query_i * key_j
        else:  # concat
            parts = [query_i.expand(-1, k, -1), key_j] + ([delta] if delta is not None else [])
            rel = torch.cat(parts, dim=-1)
        if delta is not None and self.relation != "concat":
            rel = rel + delta
        weights = _normalize(_pairwise(self.mapping, rel), hood.valid, self.normalization)  # (M, K, G)
        G = weights.shape[-1]
        grouped = value_j.view(m, k, G, self.out_channels // G)
        out = (weights[..., None] * grouped).sum(dim=1).reshape(m, self.out_channels)
        return out, weights


# ----------------------------------------------------------------------------- scalar attention
class ScalarSelfAttention(_NeighborhoodAttention):
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
    \sum_j w_{ij}(v_j - W_p p_j) + W_p p_i`. A non-linear relative MLP would need all pairs.

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
        checkpoint: recompute each chunk in backward instead of storing it (kNN mode).

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
        checkpoint: bool = True,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1 or None (whole cloud), got {k}")
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        if positional_encoding not in ("mlp", "none"):
            raise ValueError(f"positional_encoding must be mlp or none, got {positional_encoding!r}")
        dq = qk_channels or max(1, out_channels // heads)
        dv = v_channels or max(1, out_channels // heads)
        self.in_channels, self.out_channels, self.k, self.heads = in_channels, out_channels, k, heads
        self.qk_channels, self.v_channels = dq, dv
        self.positional_encoding = positional_encoding
        self.chunk_size, self.checkpoint = chunk_size, checkpoint
        self.record_attention = False
        self.last_attention: Optional[RecordedAttention] = None
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
            self.pos_encoder = _mlp(3, pos_hidden, pe_channels)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, k={self.k}, heads={self.heads}, "
                f"qk_channels={self.qk_channels}, v_channels={self.v_channels}, "
                f"positional_encoding={self.positional_encoding}")

    def forward(self, x: Tensor, pos: Tensor, batch: Optional[Tensor] = None,
                neighbors: Optional[Tensor] = None, return_attention: bool = False):
        """See the class docstring for shapes."""
        points = _prepare(self, x, pos, batch)
        want_weights = return_attention or self.record_attention
        query, key, value = self.to_query(points.x), self.to_key(points.x), self.to_value(points.x)
        if self.k is None and neighbors is None:
            out, weights, neighbors = self._attend_global(query, key, value, points, want_weights)
        else:
            neighbors = _neighbors(points, self.k or 1, neighbors)
            out, weights = self._attend_knn(query, key, value, points.pos, neighbors, want_weights)
        return _finish(self, self.proj(out), weights, neighbors, points, return_attention)

    # kNN groups ------------------------------------------------------------
    def _pair_modules(self) -> Tuple[Optional[nn.Module], ...]:
        return (self.pos_encoder,)

    def _attend_knn(self, query, key, value, pos, neighbors, want_weights):
        rows = _chunk_rows(neighbors.shape[1], self.heads * (self.qk_channels + self.v_channels), self.chunk_size)
        return self._over_chunks(query, key, value, pos, neighbors, rows, want_weights)

    def _pairs(self, query: Tensor, hood: _Neighbourhood) -> Tuple[Tensor, Tensor]:
        m, k = hood.key.shape[:2]
        H, dq, dv = self.heads, self.qk_channels, self.v_channels
        key_j = hood.key.view(m, k, H, dq)
        value_j = hood.value.view(m, k, H, dv)
        if self.pos_encoder is not None:
            delta = _pairwise(self.pos_encoder, hood.rel_pos)
            key_j = key_j + delta[..., :H * dq].view(m, k, H, dq)
            value_j = value_j + delta[..., H * dq:].view(m, k, H, dv)
        logits = (query.view(m, 1, H, dq) * key_j).sum(-1) / math.sqrt(dq)    # (M, K, H)
        weights = _normalize(logits, hood.valid, "softmax")
        out = (weights[..., None] * value_j).sum(dim=1).reshape(m, H * dv)
        return out, weights

    # whole cloud -----------------------------------------------------------
    def _attend_global(self, query, key, value, points: _Points, want_weights):
        H, dq, dv = self.heads, self.qk_channels, self.v_channels
        pos, batch = points.pos, points.batch
        if self.pos_encoder is not None:
            enc = self.pos_encoder(pos)                     # W_p p, (N, H*(dq+dv))
            key = key - enc[:, :H * dq]
            value = value - enc[:, H * dq:]
        # Clouds as they appear in the sorted batch (ids with no points are skipped).
        _, sizes = torch.unique_consecutive(batch, return_counts=True)
        sizes = sizes.cpu()
        ptr = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])
        B, P = sizes.numel(), int(sizes.max())
        n = pos.shape[0]
        cloud_of_row = torch.arange(B, device=pos.device).repeat_interleave(sizes.to(pos.device))
        equal = bool((sizes == P).all())
        if equal:
            index = torch.arange(n, device=pos.device).view(B, P)
        else:
            local = torch.arange(P)[None, :]
            index = torch.where(local < sizes[:, None], ptr[:-1, None] + local, torch.full_like(local, -1))
            index = index.to(pos.device)
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


ATTENTION_LAYERS = (VectorSelfAttention, ScalarSelfAttention)
