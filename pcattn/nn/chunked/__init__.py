"""The machinery both attention layers share, one module per job:

* :mod:`~pcattn.nn.chunked.layout`: the layers' call in either layout (flat with ``batch``, or dense),
  its checks, the neighbour index, and the output given back in the input's layout;
* :mod:`~pcattn.nn.chunked.sizing`: how many query rows one chunk holds;
* :mod:`~pcattn.nn.chunked.gather`: gathering one chunk's neighbours and relative positions;
* :mod:`~pcattn.nn.chunked.pairs`: small pieces of the per-chunk formulas (pair MLP, normalisation);
* :mod:`~pcattn.nn.chunked.replay`: the random and autocast state replayed when a chunk is recomputed,
  and the check that it gave the forward's values;
* :mod:`~pcattn.nn.chunked.recompute`: the autograd function that stores nothing per pair and
  recomputes each chunk in backward;
* :mod:`~pcattn.nn.chunked.base`: :class:`NeighborhoodAttention`, the layers' base class, which runs a
  layer's per-chunk formula over all query rows, plainly or through the recomputing backward.

Everything that ``pcattn.nn.chunked`` held as one module is importable from here as before.
"""
from .base import NeighborhoodAttention, recompute_switch
from .gather import GatheredNeighbors, gather, gather_chunk
from .layout import (AttentionMap, Points, RecordedAttention, check_count, check_in_channels, finish, prepare,
                     resolve_neighbors)
from .pairs import has_batchnorm, mlp, normalize, pairwise
from .recompute import AttendChunk, RecomputedChunks
from .sizing import chunk_elements, chunk_rows

__all__ = [
    "AttentionMap",
    "RecordedAttention",
    "NeighborhoodAttention",
    "recompute_switch",
    "RecomputedChunks",
    "AttendChunk",
    "gather",
    "gather_chunk",
    "GatheredNeighbors",
    "check_count",
    "check_in_channels",
    "chunk_elements",
    "chunk_rows",
    "Points",
    "prepare",
    "resolve_neighbors",
    "finish",
    "mlp",
    "pairwise",
    "normalize",
    "has_batchnorm",
]
