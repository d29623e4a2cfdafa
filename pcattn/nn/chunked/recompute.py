"""The autograd function that stores nothing per pair: the chunk loop in forward, and in backward each
chunk gathered and recomputed, one at a time, its gradients added into ``(N, C)`` buffers."""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .gather import GatheredNeighbors, gather_chunk
from .replay import ForwardReplay, check_replay, fingerprint

__all__ = ["RecomputedChunks", "AttendChunk"]

#: One chunk's formula: ``attend(query (M, Cq), gathered neighbours) -> (out (M, C), weights (M, K, G))``.
AttendChunk = Callable[[Tensor, GatheredNeighbors], Tuple[Tensor, Tensor]]


class RecomputedChunks(torch.autograd.Function):
    """The chunk loop, storing nothing per pair: backward gathers and recomputes one chunk at a time.

    ``RecomputedChunks.apply(layer, attend, rows, verify, query, key, value, query_pos, pos, neighbors, *params)``
    runs ``attend`` (one chunk's formula, :data:`AttendChunk`) over chunks of ``rows`` query rows and returns
    the ``(M, C)`` outputs; ``params`` are the parameters ``attend`` uses beyond the inputs, ``layer`` names
    the layer in errors.

    Unlike generic checkpointing, each chunk's gradients for the gathered rows are added into a
    single ``(N, C)`` buffer (``index_add_``), so backward costs O(N) memory and time, not one
    full-size gradient per chunk.

    Exactness: the recomputation runs under the forward's autocast state and random state
    (:class:`~pcattn.nn.chunked.replay.ForwardReplay`), chunks in the forward's order, so dropout (a
    module or a call inside a custom module) draws the same masks. Pair modules that are not plainly
    deterministic (``verify``) also have each recomputed chunk checked against the forward's; a
    difference raises an error naming ``recompute=False`` instead of returning a wrong gradient.
    A double backward (``create_graph=True``) recomputes with the graph kept, so second-order
    gradients equal plain autograd's.
    """

    @staticmethod
    def forward(ctx, layer: nn.Module, attend: AttendChunk, rows: int, verify: bool, query: Tensor, key: Tensor,
                value: Tensor, query_pos: Optional[Tensor], pos: Optional[Tensor], neighbors: Tensor, *params):
        ctx.layer, ctx.attend, ctx.rows = layer, attend, rows
        ctx.replay = ForwardReplay(query.device)
        ctx.save_for_backward(query, key, value, query_pos, pos, neighbors, *params)
        outs: List[Tensor] = []
        prints: List[Tensor] = []
        for start in range(0, neighbors.shape[0], rows):
            stop = start + rows
            out = attend(query[start:stop], gather_chunk(key, value, query_pos, pos, neighbors, start, stop))[0]
            outs.append(out)
            if verify:
                prints.append(fingerprint(out))
        ctx.prints = torch.stack(prints) if verify else None
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            return RecomputedChunks._backward_with_graph(ctx, grad_out)
        query, key, value, query_pos, pos, neighbors, *params = ctx.saved_tensors
        attend, rows = ctx.attend, ctx.rows
        need_q, need_k, need_v, need_query_pos, need_pos = ctx.needs_input_grad[4:9]
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
                    out = attend(q_rows, hood)[0]
                    if ctx.prints is not None:
                        prints.append(fingerprint(out))
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
            check_replay(ctx.prints, torch.stack(prints), ctx.layer)
        return (None, None, None, None, grad_q, grad_k, grad_v, grad_query_pos, grad_pos, None, *grad_params)

    @staticmethod
    def _backward_with_graph(ctx, grad_out):
        """Recompute every chunk from the saved inputs with their history, then differentiate with
        ``create_graph=True``: the gradients are functions of the inputs, so they can be differentiated again."""
        query, key, value, query_pos, pos, neighbors, *params = ctx.saved_tensors
        attend, rows = ctx.attend, ctx.rows
        inputs = [query, key, value, query_pos, pos, *params]
        needed = list(ctx.needs_input_grad[4:9]) + list(ctx.needs_input_grad[10:])
        outs, prints = [], []
        with ctx.replay:
            for start in range(0, neighbors.shape[0], rows):
                stop = start + rows
                out = attend(query[start:stop], gather_chunk(key, value, query_pos, pos, neighbors, start, stop))[0]
                outs.append(out)
                if ctx.prints is not None:
                    prints.append(fingerprint(out))
        if ctx.prints is not None:
            check_replay(ctx.prints, torch.stack(prints), ctx.layer)
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        wanted = [t for t, need in zip(inputs, needed) if need]
        found = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
        grads = [next(found) if need else None for need in needed]
        grads = [torch.zeros_like(t) if g is None and need else g for t, g, need in zip(inputs, grads, needed)]
        return (None, None, None, None, *grads[:5], None, *grads[5:])
