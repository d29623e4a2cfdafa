"""What both attention layers share: the constructor's checks, and running one chunk's formula over all
query rows, in plain autograd or through the recomputing backward."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from ...deprecation import warn_renamed
from ..geometry import tracing
from .gather import gather_chunk
from .layout import RecordedAttention, check_count, check_in_channels
from .pairs import has_batchnorm
from .recompute import AttendChunk, RecomputedChunks
from .replay import needs_verification
from .sizing import chunk_rows

__all__ = ["NeighborhoodAttention", "recompute_switch"]


def recompute_switch(recompute: bool, checkpoint: Optional[bool]) -> bool:
    """The layers' ``recompute`` argument, or the deprecated ``checkpoint`` when that was given."""
    if checkpoint is None:
        return recompute
    warn_renamed("the layers' checkpoint= argument", "recompute=")
    return bool(checkpoint)


class NeighborhoodAttention(nn.Module):
    """What both layers share: the chunked loop over query rows, and recomputation in backward.

    A layer's ``forward`` computes its per-point rows, then calls :meth:`attend_in_chunks` with its
    per-chunk formula ``attend(query_rows (M, Cq), gathered neighbours) -> (out (M, C), weights (M, K, G))``.
    Subclasses define ``_pair_modules()`` (the modules used inside ``attend``) and ``_pair_channels``
    (the channels of one pair, for sizing chunks).

    The query rows need not be rows of the key table: ``query (M, Cq)`` with ``query_pos (M, 3)``
    attend over ``neighbors (M, K)`` rows of ``key``/``value``/``pos (N, ...)`` (self-attention:
    ``query_pos is pos``).
    """

    #: whether ``in_channels`` may be ``-1`` (lazy) or a ``(source, target)`` pair
    _lazy_and_bipartite_inputs = False

    def __init__(self, in_channels, out_channels: Optional[int], chunk_size: Optional[int], recompute: bool):
        check_in_channels(in_channels, self._lazy_and_bipartite_inputs)
        if out_channels is not None:
            check_count("out_channels", out_channels)
        elif not isinstance(in_channels, int) or in_channels == -1:
            raise ValueError(f"out_channels must be given when in_channels is {in_channels!r}")
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

    @property
    def _pair_channels(self) -> int:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Re-initialise every weight of the layer."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def attend_in_chunks(self, attend: AttendChunk, query: Tensor, query_pos: Optional[Tensor], key: Tensor,
                         value: Tensor, pos: Optional[Tensor], neighbors: Tensor,
                         want_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        """``attend`` over chunks of query rows: each chunk's neighbours gathered
        (:func:`~pcattn.nn.chunked.gather.gather_chunk`), its formula applied, the outputs concatenated.

        ``query (M, Cq)`` at ``query_pos (M, 3)`` attends over ``neighbors (M, K)`` rows of ``key``/``value``
        ``(N, C)`` at ``pos (N, 3)`` (``pos=None``: no relative positions are formed). Returns ``out (M, C)``
        and, when ``want_weights``, ``weights (M, K, G)``.

        In training (``recompute``) the chunks run through :class:`~pcattn.nn.chunked.recompute.RecomputedChunks`,
        which keeps nothing per pair and recomputes each chunk in backward; without ``recompute`` (and no
        ``chunk_size`` set) training runs one chunk, since autograd keeps every pair anyway. BatchNorm in the
        pair modules in training runs as one chunk in plain autograd: its statistics must see all pairs at once, and
        a recomputation would update its running statistics twice.
        """
        modules = [module for module in self._pair_modules() if module is not None]
        params = [p for module in modules for p in module.parameters() if p.requires_grad]
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (query, key, value, query_pos, pos, *params))
        batchnorm_training = self.training and has_batchnorm(*modules)
        if tracing() and not self.chunk_size:  # compile/export: one chunk (any batch size), plain autograd
            out, w = attend(query, gather_chunk(key, value, query_pos, pos, neighbors, 0, neighbors.shape[0]))
            return out, (w if want_weights else None)
        n, k = neighbors.shape
        # plain autograd keeps every chunk's pairs for backward anyway: smaller chunks would save no memory
        one_chunk = batchnorm_training or (needs_grad and not self.recompute and not self.chunk_size)
        rows = n if one_chunk else chunk_rows(k, self._pair_channels, self.chunk_size, neighbors.device)
        if needs_grad and not tracing() and self.recompute and not want_weights and not batchnorm_training:
            return RecomputedChunks.apply(self, attend, rows, needs_verification(modules), query, key, value,
                                          query_pos, pos, neighbors, *params), None
        outs: List[Tensor] = []
        weights: List[Tensor] = []
        for start in range(0, n, rows):
            stop = start + rows
            out, w = attend(query[start:stop], gather_chunk(key, value, query_pos, pos, neighbors, start, stop))
            outs.append(out)
            if want_weights:  # (M, K, G) per chunk: keep only when asked, it is K*G/C times the output
                weights.append(w)
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        return out, (torch.cat(weights) if want_weights else None)
