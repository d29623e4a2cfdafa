"""The encoder every network shares: a stem, stages of Point Transformer blocks, transition down
between stages, and the neighbour index of each stage.

One module under one set of parameter names (``stem``, ``stages.S.B``, ``down.S``), so the
classifier (encoder + pooling + head) and the segmenter (encoder + decoder + head) hold the same
encoder, and a trained classifier's encoder initialises a segmenter's
(:func:`~pcattn.models.checkpoint.load_encoder`).
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from torch import Tensor, nn

from ..nn.blocks import PointTransformerBlock, TransitionDown
from ..nn.grid import GridPool
from ..nn.geometry import cloud_start_rows, knn, knn_equal_clouds

__all__ = ["Encoder", "EncoderLevel", "ENCODER_ARGUMENTS", "make_stage", "rename_legacy_keys"]

#: The constructor arguments of the networks that shape their encoder (and nothing else).
ENCODER_ARGUMENTS = ("in_channels", "attention", "widths", "depths", "k", "stride", "group_size", "groups",
                     "heads", "attention_kwargs", "grid_sizes")


class EncoderLevel(NamedTuple):
    """One level of the encoder's output: its features ``x (N_l, C_l)``, positions ``pos (N_l, 3)``,
    batch vector ``batch (N_l,)``, the kNN ``neighbors (N_l, k)`` its blocks attended over, and, for a
    level made by grid pooling, ``cluster (N_{l-1},)``: the row of this level (the voxel) that each point
    of the finer level was pooled into, what :class:`~pcattn.nn.grid.GridUnpool` copies back along
    (``None`` for level 0 and after farthest point sampling)."""

    x: Tensor
    pos: Tensor
    batch: Tensor
    neighbors: Tensor
    cluster: Optional[Tensor] = None


def make_stage(width: int, depth: int, attention: str = "vector", k: int = 16, group_size: int = 8,
               groups: Optional[int] = None, heads: int = 4, attention_kwargs: Optional[Dict[str, Any]] = None
               ) -> nn.ModuleList:
    """``depth`` Point Transformer blocks of ``width`` channels: an encoder's or a decoder's stage.
    Vector attention gets ``groups`` groups (at most ``width``) when given, else one per ``group_size``
    channels."""
    stage_groups = min(groups, width) if groups else max(1, width // group_size)
    return nn.ModuleList(PointTransformerBlock(width, attention, k=k, groups=stage_groups, heads=heads,
                                               **dict(attention_kwargs or {}))
                         for _ in range(depth))


class Encoder(nn.Module):
    r"""Stem MLP, then stage 0 (``depths[0]`` Point Transformer blocks at ``widths[0]`` channels), then
    for each further stage ``s`` a :class:`~pcattn.nn.blocks.TransitionDown` (``down[s - 1]``: farthest
    point sampling to ``1/stride`` of each cloud, kNN max-pooling) and ``depths[s]`` blocks. The blocks
    of a stage share one kNN of ``k`` neighbours, computed once per stage.

    Args:
        in_channels: input feature size (3: xyz; 6: xyz + normals).
        attention: ``"vector"`` or ``"scalar"`` self-attention in every block.
        widths: channels per stage.
        depths: blocks per stage.
        k: neighbours for attention and for transition down.
        stride: downsampling factor of each transition down.
        group_size: channels sharing one vector-attention weight (``width / group_size`` groups).
        groups: a fixed number of groups in every stage instead (overrides ``group_size``).
        heads: scalar attention heads.
        attention_kwargs: further options of the attention layers.
        grid_sizes: ``len(widths) - 1`` voxel sides (in the positions' unit, e.g. metres): transition
            down by :class:`~pcattn.nn.grid.GridPool` (one point per occupied voxel, the scene networks'
            way) instead of farthest point sampling; ``stride`` is then unused. The number of points per
            level then depends on the data, so ``clouds`` must be ``None``. The levels' positions are then
            relative to each cloud's first point (see :func:`relative_to_first_point`).

    Shapes:
        ``x (N, in_channels)``, ``pos (N, 3)``, sorted ``batch (N,)``, and ``clouds``: ``None`` (each
        cloud searched on its own) or the number of equal-sized clouds the rows hold back to back
        (static shapes: one batched search, see :func:`~pcattn.nn.geometry.knn_equal_clouds`; both
        give the same result). Returns one :class:`EncoderLevel` per stage, finest first; the last
        level's ``x`` has ``widths[-1]`` channels; with ``grid_sizes``, each level after the first
        holds the ``cluster`` its grid pooling grouped the level before by.
    """

    def __init__(self, in_channels: int = 3, attention: str = "vector",
                 widths: Sequence[int] = (32, 64, 128, 256, 512), depths: Sequence[int] = (1, 1, 1, 1, 1),
                 k: int = 16, stride: int = 4, group_size: int = 8, groups: Optional[int] = None, heads: int = 4,
                 attention_kwargs: Optional[Dict[str, Any]] = None, grid_sizes: Optional[Sequence[float]] = None):
        super().__init__()
        if not widths or len(widths) != len(depths):
            raise ValueError(f"widths and depths must have the same non-zero length, got {widths} and {depths}")
        if grid_sizes is not None and len(grid_sizes) != len(widths) - 1:
            raise ValueError(f"grid_sizes needs len(widths) - 1 = {len(widths) - 1} voxel sizes, got {grid_sizes}")
        self.k = k
        self.widths = tuple(widths)
        self.stem = nn.Sequential(nn.Linear(in_channels, widths[0], bias=False), nn.BatchNorm1d(widths[0]), nn.ReLU())
        self.stages = nn.ModuleList(make_stage(width, depth, attention, k, group_size, groups, heads, attention_kwargs)
                                    for width, depth in zip(widths, depths))
        self.grid_sizes = tuple(grid_sizes) if grid_sizes is not None else None
        # down[s] brings level s to level s + 1
        if self.grid_sizes is None:
            self.down = nn.ModuleList(TransitionDown(fine, coarse, stride=stride, k=k)
                                      for fine, coarse in zip(widths[:-1], widths[1:]))
        else:
            self.down = nn.ModuleList(GridPool(fine, coarse, size)
                                      for fine, coarse, size in zip(widths[:-1], widths[1:], self.grid_sizes))

    def forward(self, x: Tensor, pos: Tensor, batch: Tensor, clouds: Optional[int] = None) -> List[EncoderLevel]:
        if clouds is not None and self.grid_sizes is not None:
            raise ValueError("an encoder with grid pooling has data-dependent level sizes: pass clouds=None")
        if self.grid_sizes is not None:
            pos = relative_to_first_point(pos, batch)
        x = self.stem(x)
        levels: List[EncoderLevel] = []
        cluster: Optional[Tensor] = None
        for stage, blocks in enumerate(self.stages):
            if stage > 0:
                # GridPool's last field is the voxel of each finer point; TransitionDown's the kept rows
                x, pos, batch, fine_to_coarse = self.down[stage - 1](x, pos, batch, clouds)
                cluster = fine_to_coarse if self.grid_sizes is not None else None
            neighbors = knn(pos, self.k, batch) if clouds is None else knn_equal_clouds(pos, self.k, clouds)
            for block in blocks:
                x = block(x, pos, batch, neighbors)
            levels.append(EncoderLevel(x, pos, batch, neighbors, cluster))
        return levels


def relative_to_first_point(pos: Tensor, batch: Tensor) -> Tensor:
    """``pos (N, 3)`` minus the first point of each point's cloud (sorted ``batch (N,)``).

    Exact in float32 for a cloud far from the origin (two numbers within a factor 2 of each other
    subtract exactly), so what follows, e.g. :class:`~pcattn.nn.grid.GridPool`'s mean positions, is
    computed on small numbers: a room at 10^5 m gives the output it gives at the origin."""
    return pos - pos.index_select(0, cloud_start_rows(batch))


def rename_legacy_keys(state_dict: Dict[str, Any], prefix: str, renames: Sequence[Tuple[str, str]]) -> None:
    """Rename, in place, the keys of ``state_dict`` under ``prefix`` that match an old name, so a
    checkpoint written before the shared :class:`Encoder` loads (a ``load_state_dict`` pre-hook of the
    networks). ``renames``: ``(pattern, replacement)`` pairs of :func:`re.sub`, anchored at the start
    of the key below ``prefix``; the first that matches renames a key."""
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        local = key[len(prefix):]
        for pattern, replacement in renames:
            renamed, count = re.subn("^" + pattern, replacement, local)
            if count:
                state_dict[prefix + renamed] = state_dict.pop(key)
                break
