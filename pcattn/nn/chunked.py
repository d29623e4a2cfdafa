"""The machinery both attention layers share: input checks, chunked neighbourhoods, recomputation.

Both layers take the same call, ``layer(x, pos, batch=None, neighbors=None,
return_attention=False)``, in either layout:

* flat ``x (N, C_in)``, ``pos (N, 3)`` and a sorted ``batch (N,)`` (PyTorch Geometric style);
* dense ``x (B, P, C_in)``, ``pos (B, P, 3)``.

Internally everything is flat; a neighbourhood is an ``(N, K)`` index into the rows, with
``-1`` marking an empty slot (a cloud smaller than ``k``), which gets weight zero. A layer
defines how one chunk of query rows attends to its gathered neighbours (``_pairs``);
:class:`NeighborhoodAttention` runs that over chunks, and :class:`RecomputedChunks` is the
autograd function that stores nothing per pair and recomputes each chunk in backward.
"""
from __future__ import annotations

import os
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from ..deprecation import warn_renamed
from .geometry import (check_batch, check_positions, global_to_local, inputs_checked, knn, knn_equal_clouds,
                       local_to_global, to_flat, tracing)

__all__ = [
    "AttentionMap",
    "RecordedAttention",
    "NeighborhoodAttention",
    "recompute_switch",
    "RecomputedChunks",
    "gather",
    "check_count",
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
def mlp(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_channels))


def gather(rows: Tensor, index: Tensor) -> Tensor:
    """``rows[index]`` for an ``(M, K)`` index: ``(M, K, ...)``.

    ``index_select`` rather than advanced indexing: its backward is an ``index_add`` that
    runs 2-10x faster on the CPU than the ``index_put`` of ``rows[index]``.
    """
    return rows.index_select(0, index.reshape(-1)).view(*index.shape, *rows.shape[1:])


def pairwise(module: nn.Module, pairs: Tensor) -> Tensor:
    """Apply ``module`` to ``(M, K, C)`` pairs as ``(M*K, C)`` rows (so BatchNorm1d works too)."""
    m, k, c = pairs.shape
    return module(pairs.reshape(m * k, c)).reshape(m, k, -1)


def has_batchnorm(*modules: Optional[nn.Module]) -> bool:
    return any(isinstance(sub, nn.modules.batchnorm._BatchNorm)
               for module in modules if module is not None for sub in module.modules())


def normalize(logits: Tensor, valid: Optional[Tensor], how: str) -> Tensor:
    """Turn ``(M, K, G)`` logits into weights over the K neighbours (dim 1); empty slots get 0.

    Half-precision logits (autocast) are normalised in float32 and the weights returned in the
    logits' dtype, so the softmax's exponentials and sums never round in fp16/bf16.
    """
    dtype = logits.dtype
    if dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if how == "softmax":
        if valid is not None:
            logits = logits.masked_fill(~valid[..., None], float("-inf"))
        return torch.softmax(logits, dim=1).to(dtype)
    if how == "sigmoid":
        weights = torch.sigmoid(logits)
    else:  # "l1relu": ReLU, then divide by the sum over the neighbours. The small floor makes a
        # neighbourhood whose logits are all negative fall back to uniform weights, not zeros.
        weights = torch.relu(logits) + 1e-6
    if valid is not None:
        weights = weights * valid[..., None].to(weights.dtype)
    if how == "l1relu":
        weights = weights / weights.sum(dim=1, keepdim=True)
    return weights.to(dtype)


def check_count(name: str, value, allow_none: bool = False) -> None:
    """Raise a ``TypeError``/``ValueError`` naming ``name`` unless ``value`` is a positive int (or ``None`` if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive integer{' or None' if allow_none else ''}, "
                        f"got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")


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


def _check_layer_inputs(layer: nn.Module, x: Tensor, pos: Tensor, batch: Optional[Tensor], autocast: bool) -> None:
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


def chunk_elements(device: torch.device) -> int:
    """(pair, channel) elements per chunk on ``device``: cache-sized on the CPU, memory-budget-sized on a GPU.

    On the CPU a chunk's pair tensors stay in cache (1 MiB in float32). On a GPU a chunk is sized
    from the memory free when the device is first used (about 1/64 of it in elements of 4 bytes,
    between 1M and 64M), so a ModelNet batch runs in one or a few launches per layer. The
    environment variable ``PCATTN_CHUNK_ELEMENTS`` overrides both; a layer's ``chunk_size``
    (rows) overrides this. While ``torch.compile``/export records, nothing asks the device (a
    query such as ``torch.cuda.mem_get_info`` cannot be recorded): the recorded layer runs one
    chunk anyway, and the size returned is a fixed default.
    """
    override = os.environ.get("PCATTN_CHUNK_ELEMENTS")
    if override:
        return max(1, int(override))
    if tracing():
        return _CHUNK_ELEMENTS
    key = str(device)
    if key not in _DEVICE_CHUNK_ELEMENTS:
        _DEVICE_CHUNK_ELEMENTS[key] = _measure_chunk_elements(device)
    return _DEVICE_CHUNK_ELEMENTS[key]


def _measure_chunk_elements(device: torch.device) -> int:
    """Ask ``device`` how large a chunk may be (eager calls only: see :func:`chunk_elements`)."""
    if device.type == "cpu":
        return _CHUNK_ELEMENTS
    budget = 1 << 24
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 64
    return int(min(max(budget, 1 << 20), 1 << 26))


_DEVICE_CHUNK_ELEMENTS: dict = {}


def chunk_rows(k: int, channels: int, chunk_size: Optional[int], device: torch.device) -> int:
    """Query rows per chunk: the layer's ``chunk_size``, else :func:`chunk_elements` over ``k * channels``."""
    return chunk_size or max(1, chunk_elements(device) // max(1, k * channels))


def recompute_switch(recompute: bool, checkpoint: Optional[bool]) -> bool:
    """The layers' ``recompute`` argument, or the deprecated ``checkpoint`` when that was given."""
    if checkpoint is None:
        return recompute
    warn_renamed("the layers' checkpoint= argument", "recompute=")
    return bool(checkpoint)


class GatheredNeighbors(NamedTuple):
    """One chunk's neighbours gathered: ``(M, K, ...)`` rows, ``valid (M, K)`` or ``None`` if all are."""

    key: Tensor
    value: Tensor
    rel_pos: Optional[Tensor]   # p_i - p_j; None when the layer needs no pairwise positions
    valid: Optional[Tensor]


def gather_chunk(key: Tensor, value: Tensor, query_pos: Optional[Tensor], pos: Optional[Tensor], neighbors: Tensor,
                 start: int, stop: int) -> GatheredNeighbors:
    """Gather the neighbours of query rows ``start:stop``: rows of ``key``/``value``/``pos`` named by
    ``neighbors``, and the relative positions ``query_pos[i] - pos[j]``, formed here in the positions'
    dtype (float32 or float64, also under autocast) before any module sees them (``pos=None``: none)."""
    neighbors = neighbors[start:stop]
    valid = neighbors >= 0
    # Masking costs an extra pass, asking whether it is needed costs a host synchronisation:
    # on the CPU asking is free, on an accelerator always masking is cheaper (same values).
    if neighbors.device.type == "cpu" and not tracing() and bool(valid.all()):
        valid = None
    else:
        neighbors = neighbors.clamp(min=0)
    rel_pos = None if pos is None else query_pos[start:stop, None, :] - gather(pos, neighbors)
    return GatheredNeighbors(gather(key, neighbors), gather(value, neighbors), rel_pos, valid)


class NeighborhoodAttention(nn.Module):
    """What both layers share: the chunked loop over query rows, and recomputation in backward.

    Subclasses define ``_pairs(query_rows (M, Cq), neighbourhood) -> (out (M, C), weights (M, K, G))``
    and ``_pair_modules()`` (the modules used inside ``_pairs``).

    The query rows need not be rows of the key table: ``query (M, Cq)`` with ``query_pos (M, 3)``
    attend over ``neighbors (M, K)`` rows of ``key``/``value``/``pos (N, ...)`` (self-attention:
    ``query_pos is pos``).
    """

    def __init__(self, in_channels: int, out_channels: Optional[int], chunk_size: Optional[int], recompute: bool):
        check_count("in_channels", in_channels)
        if out_channels is not None:
            check_count("out_channels", out_channels)
        if chunk_size is not None:
            check_count("chunk_size", chunk_size)
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels or in_channels
        self.chunk_size, self.recompute = chunk_size, recompute
        self.record_attention = False
        self.last_attention: Optional[RecordedAttention] = None

    @property
    def checkpoint(self) -> bool:
        """Deprecated name of ``recompute`` (``checkpoint`` also names checkpoint files and ``--checkpoint``)."""
        warn_renamed("layer.checkpoint", "layer.recompute")
        return self.recompute

    @checkpoint.setter
    def checkpoint(self, value: bool) -> None:
        warn_renamed("layer.checkpoint", "layer.recompute")
        self.recompute = value

    def _pair_modules(self) -> Tuple[Optional[nn.Module], ...]:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Re-initialise every weight of the layer."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def _over_chunks(self, query: Tensor, query_pos: Optional[Tensor], key: Tensor, value: Tensor,
                     pos: Optional[Tensor], neighbors: Tensor, rows: int,
                     want_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        modules = [module for module in self._pair_modules() if module is not None]
        params = [p for module in modules for p in module.parameters() if p.requires_grad]
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (query, key, value, query_pos, pos, *params))
        # BatchNorm in training updates its running statistics on every call: a recomputation would
        # update them twice. Those modules use plain autograd (see the layers' ``_attend``).
        batchnorm_training = self.training and any(isinstance(sub, nn.modules.batchnorm._BatchNorm)
                                                   for module in modules for sub in module.modules())
        if tracing() and not self.chunk_size:  # compile/export: one chunk (any batch size), plain autograd
            out, w = self._pairs(query, gather_chunk(key, value, query_pos, pos, neighbors, 0, neighbors.shape[0]))
            return out, (w if want_weights else None)
        if needs_grad and not tracing() and self.recompute and not want_weights and not batchnorm_training:
            verify = not all(type(sub) in _DETERMINISTIC_MODULES for module in modules for sub in module.modules())
            return RecomputedChunks.apply(self, rows, verify, query, key, value, query_pos, pos, neighbors,
                                          *params), None
        outs, weights = [], []
        for start in range(0, neighbors.shape[0], rows):
            stop = start + rows
            out, w = self._pairs(query[start:stop], gather_chunk(key, value, query_pos, pos, neighbors, start, stop))
            outs.append(out)
            if want_weights:  # (M, K, G) per chunk: keep only when asked, it is K*G/C times the output
                weights.append(w)
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        return out, (torch.cat(weights) if want_weights else None)


# Modules whose output depends on their input and parameters alone. Pair modules built only from
# these need no check that the backward recomputation gave the forward's values; any other module
# (dropout, a custom mapping that may call F.dropout, ...) is checked chunk by chunk.
_DETERMINISTIC_MODULES = (nn.Sequential, nn.Linear, nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
                          nn.Softplus, nn.Identity, nn.LayerNorm)


class _ForwardReplay:
    """What the forward ran under, restored in backward so the recomputation replays it bit for bit:
    autocast (enabled, dtype, cache) on the tensors' device and the CPU and device random states
    (as :func:`torch.utils.checkpoint.checkpoint` does)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.device_type = device.type
        self.autocast = (torch.is_autocast_enabled(self.device_type), torch.get_autocast_dtype(self.device_type),
                         torch.is_autocast_cache_enabled())
        self.cpu_rng = torch.get_rng_state()
        self.device_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=[self.device] if self.device_rng is not None else [],
                                           device_type=self.device_type if self.device_rng is not None else "cuda")
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_rng)
        if self.device_rng is not None:
            torch.cuda.set_rng_state(self.device_rng, self.device)
        enabled, dtype, cache = self.autocast
        self._autocast = torch.autocast(self.device_type, enabled=enabled, dtype=dtype, cache_enabled=cache)
        self._autocast.__enter__()
        return self

    def __exit__(self, *exc):
        self._autocast.__exit__(*exc)
        return self._fork.__exit__(*exc)


def _fingerprint(out: Tensor) -> Tensor:
    """Two numbers that change when a chunk's output does: its sum and the sum of magnitudes (float64)."""
    out = out.detach().double()
    return torch.stack([out.sum(), out.abs().sum()])


class RecomputedChunks(torch.autograd.Function):
    """The chunk loop, storing nothing per pair: backward gathers and recomputes one chunk at a time.

    Unlike generic checkpointing, each chunk's gradients for the gathered rows are added into a
    single ``(N, C)`` buffer (``index_add_``), so backward costs O(N) memory and time, not one
    full-size gradient per chunk.

    Exactness: the recomputation runs under the forward's autocast state and random state
    (:class:`_ForwardReplay`), chunks in the forward's order, so dropout (a module or a call inside
    a custom module) draws the same masks. Pair modules that are not plainly deterministic
    (``verify``) also have each recomputed chunk checked against the forward's; a difference
    raises an error naming ``recompute=False`` instead of returning a wrong gradient.
    A double backward (``create_graph=True``) recomputes with the graph kept, so second-order
    gradients equal plain autograd's.
    """

    @staticmethod
    def forward(ctx, layer, rows, verify, query, key, value, query_pos, pos, neighbors, *params):
        ctx.layer, ctx.rows = layer, rows
        ctx.replay = _ForwardReplay(query.device)
        ctx.save_for_backward(query, key, value, query_pos, pos, neighbors, *params)
        outs: List[Tensor] = []
        prints: List[Tensor] = []
        for start in range(0, neighbors.shape[0], rows):
            stop = start + rows
            out = layer._pairs(query[start:stop], gather_chunk(key, value, query_pos, pos, neighbors, start, stop))[0]
            outs.append(out)
            if verify:
                prints.append(_fingerprint(out))
        ctx.prints = torch.stack(prints) if verify else None
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            return RecomputedChunks._backward_with_graph(ctx, grad_out)
        query, key, value, query_pos, pos, neighbors, *params = ctx.saved_tensors
        layer, rows = ctx.layer, ctx.rows
        need_q, need_k, need_v, need_query_pos, need_pos = ctx.needs_input_grad[3:8]
        grads = [torch.zeros_like(t) if need else None
                 for t, need in zip((query, key, value, query_pos, pos),
                                    (need_q, need_k, need_v, need_query_pos, need_pos))]
        grad_q, grad_k, grad_v, grad_query_pos, grad_pos = grads
        grad_params = [torch.zeros_like(p) for p in params]
        prints = []
        with ctx.replay:
            for start in range(0, neighbors.shape[0], rows):
                stop = start + rows
                nbr = neighbors[start:stop]
                index = nbr.clamp(min=0).reshape(-1)
                with torch.enable_grad():
                    q_rows = query[start:stop].detach().requires_grad_(need_q)
                    hood = gather_chunk(key.detach(), value.detach(), None if pos is None else query_pos.detach(),
                                        None if pos is None else pos.detach(), neighbors, start, stop)
                    rel_pos = None if hood.rel_pos is None else hood.rel_pos.requires_grad_(need_pos or need_query_pos)
                    hood = GatheredNeighbors(hood.key.requires_grad_(need_k), hood.value.requires_grad_(need_v),
                                             rel_pos, hood.valid)
                    out = layer._pairs(q_rows, hood)[0]
                    if ctx.prints is not None:
                        prints.append(_fingerprint(out))
                    inputs = [q_rows, hood.key, hood.value, rel_pos, *params]
                    wanted = [t for t in inputs if t is not None and t.requires_grad]
                    found = iter(torch.autograd.grad(out, wanted, grad_out[start:stop], allow_unused=True))
                    g_q, g_key, g_value, g_rel, *g_params = [next(found) if t is not None and t.requires_grad
                                                             else None for t in inputs]
                m, k = nbr.shape
                if g_q is not None:
                    grad_q[start:stop] += g_q
                if g_key is not None:
                    grad_k.index_add_(0, index, g_key.reshape(m * k, -1).to(grad_k.dtype))
                if g_value is not None:
                    grad_v.index_add_(0, index, g_value.reshape(m * k, -1).to(grad_v.dtype))
                if g_rel is not None and need_query_pos:  # rel_pos = query_pos_i - pos_j
                    grad_query_pos[start:stop] += g_rel.sum(dim=1).to(grad_query_pos.dtype)
                if g_rel is not None and need_pos:
                    grad_pos.index_add_(0, index, -g_rel.reshape(m * k, 3).to(grad_pos.dtype))
                for total, g in zip(grad_params, g_params):
                    if g is not None:
                        total += g
        if ctx.prints is not None:
            _check_replay(ctx.prints, torch.stack(prints), layer)
        return (None, None, None, grad_q, grad_k, grad_v, grad_query_pos, grad_pos, None, *grad_params)

    @staticmethod
    def _backward_with_graph(ctx, grad_out):
        """Recompute every chunk from the saved inputs with their history, then differentiate with
        ``create_graph=True``: the gradients are functions of the inputs, so they can be differentiated again."""
        query, key, value, query_pos, pos, neighbors, *params = ctx.saved_tensors
        layer, rows = ctx.layer, ctx.rows
        inputs = [query, key, value, query_pos, pos, *params]
        needed = list(ctx.needs_input_grad[3:8]) + list(ctx.needs_input_grad[9:])
        outs, prints = [], []
        with ctx.replay:
            for start in range(0, neighbors.shape[0], rows):
                stop = start + rows
                out = layer._pairs(query[start:stop],
                                   gather_chunk(key, value, query_pos, pos, neighbors, start, stop))[0]
                outs.append(out)
                if ctx.prints is not None:
                    prints.append(_fingerprint(out))
        if ctx.prints is not None:
            _check_replay(ctx.prints, torch.stack(prints), layer)
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        wanted = [t for t, need in zip(inputs, needed) if need]
        found = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
        grads = [next(found) if need else None for need in needed]
        grads = [torch.zeros_like(t) if g is None and need else g for t, g, need in zip(inputs, grads, needed)]
        return (None, None, None, *grads[:5], None, *grads[5:])


def _check_replay(forward: Tensor, recomputed: Tensor, layer: nn.Module) -> None:
    """Raise unless every recomputed chunk gave the forward's values (compared by :func:`_fingerprint`)."""
    scale = forward[:, 1].abs() + recomputed[:, 1].abs()
    tolerance = 1e-6 * scale + 1e-12
    if bool(((forward - recomputed).abs() > tolerance[:, None]).any()):
        raise RuntimeError(
            f"{type(layer).__name__}: the backward recomputation of the attention did not reproduce the forward "
            f"(a module inside the positional encoding or the mapping gives different values when called again: "
            f"randomness that does not come from torch's generators, or state that changes per call). Its "
            f"gradients would be wrong: construct the layer with recompute=False (or set layer.recompute = False).")
