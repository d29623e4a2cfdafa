"""The Point Transformer segmenter: the shared :class:`~pcattn.models.encoder.Encoder`, a decoder of
transitions up and Point Transformer blocks, and a per-point head."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.blocks import TransitionUp
from ..nn.geometry import checked_inputs, tracing
from ..nn.grid import GridUnpool
from .encoder import Encoder, make_stage, rename_legacy_keys
from .inputs import flat_model_inputs, static_clouds

__all__ = ["PointTransformerSegmenter", "UNPOOLINGS"]

#: The transitions up of :class:`PointTransformerSegmenter` (its ``unpool`` argument).
UNPOOLINGS = ("interpolate", "grid")


class PointTransformerSegmenter(nn.Module):
    r"""Point Transformer segmentation U-Net (Zhao et al. 2021, Sec. 4.3 / Fig. 4).

    Encoder: the classifier's :class:`~pcattn.models.encoder.Encoder` (stem MLP, stage 1 of
    ``depths[0]`` blocks at ``widths[0]`` channels, then for each further stage a
    :class:`~pcattn.nn.blocks.TransitionDown`, farthest point sampling to ``1/stride`` of each cloud
    and kNN max-pooling, and ``depths[s]`` blocks), so a classifier's checkpoint initialises it
    (:func:`~pcattn.models.checkpoint.load_encoder`). Decoder: for each level
    from the coarsest up, a :class:`~pcattn.nn.blocks.TransitionUp` (inverse-distance
    interpolation from the 3 nearest coarse points, plus the encoder's features at that level as a
    skip connection) and ``decoder_depths[s]`` blocks. Head: a per-point MLP on the finest
    features, to which the one-hot object category is concatenated when ``num_categories`` is set
    (part segmentation, as the PointNet++ and Point Transformer part-segmentation code does):

    .. math::
        \mathbf{y}_i = \mathrm{MLP}\big([\mathbf{f}_i, \mathrm{onehot}(c_{b(i)})]\big)

    With grid pooling (``grid_sizes``) and ``unpool="grid"``, each transition up is instead a
    :class:`~pcattn.nn.grid.GridUnpool`, as in Point Transformer V2: every point of a voxel takes that
    voxel's coarse features (the voxel it was pooled into on the way down, ``v(i)``), plus its skip:

    .. math::
        \mathbf{y}_i = \mathrm{ReLU}(\mathrm{BN}(W_c \mathbf{x}^{c}_{v(i)}))
            + \mathrm{ReLU}(\mathrm{BN}(W_f \mathbf{x}^{f}_i))

    a copy by index, with no neighbour search and no distances.

    Args:
        num_classes: labels per point (all part labels of all categories for part segmentation).
        in_channels: input feature size: 3 (xyz, the default) or 6 (xyz + normals).
        num_categories: number of object categories; ``None`` (default) for semantic
            segmentation without a category input.
        attention: ``"vector"`` or ``"scalar"`` self-attention in every block.
        widths: channels per level (default the paper's 32, 64, 128, 256, 512).
        depths: encoder blocks per level.
        decoder_depths: decoder blocks per level below the coarsest (``len(widths) - 1`` entries,
            finest first); default one each.
        k: neighbours for attention and for transition down.
        stride: downsampling factor of each transition down.
        group_size, groups, heads, attention_kwargs: as in
            :class:`~pcattn.models.classifier.PointTransformerClassifier`.
        head_channels: hidden sizes of the per-point MLP.
        dropout: dropout in the per-point MLP (0, as the official code, by default).
        grid_sizes: voxel sides of grid-pooling transitions down (scene networks; see
            :class:`~pcattn.models.encoder.Encoder`), instead of farthest point sampling.
        interpolation_power: the transitions up weigh the 3 nearest coarse points by ``1 / d`` (1, the
            official code's) or ``1 / d^2`` (2: segmenter checkpoints of earlier pcattn versions load with it).
            Unused with ``unpool="grid"``.
        unpool: the transitions up: ``"interpolate"`` (default; :class:`~pcattn.nn.blocks.TransitionUp`,
            from the 3 nearest coarse points) or ``"grid"`` (:class:`~pcattn.nn.grid.GridUnpool`, each
            point takes its voxel's features; needs ``grid_sizes``: the scene networks' way).

    Shapes:
        - call: ``model(x, pos, batch=None, category=None)``, the classifier's order.
        - x: ``(B, P, in_channels)`` / ``(N, in_channels)``; ``None`` uses ``pos`` (``in_channels == 3``).
        - pos: ``(B, P, 3)``, or flat ``(N, 3)`` with a sorted ``batch (N,)`` (clouds may differ in size).
        - category: int64 ``(B,)``, one per cloud id ``0..batch.max()``; required iff ``num_categories``.
        - returns per-point logits ``(B, P, num_classes)`` for dense input, ``(N, num_classes)`` for flat.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        num_categories: Optional[int] = None,
        attention: str = "vector",
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        depths: Sequence[int] = (1, 1, 1, 1, 1),
        decoder_depths: Optional[Sequence[int]] = None,
        k: int = 16,
        stride: int = 4,
        group_size: int = 8,
        groups: Optional[int] = None,
        heads: int = 4,
        head_channels: Sequence[int] = (32,),
        dropout: float = 0.0,
        attention_kwargs: Optional[Dict[str, Any]] = None,
        grid_sizes: Optional[Sequence[float]] = None,
        interpolation_power: int = 1,
        unpool: str = "interpolate",
    ):
        super().__init__()
        if not widths or len(widths) != len(depths):
            raise ValueError(f"widths and depths must have the same non-zero length, got {widths} and {depths}")
        if decoder_depths is None:
            decoder_depths = (1,) * (len(widths) - 1)
        if len(decoder_depths) != len(widths) - 1:
            raise ValueError(f"decoder_depths needs len(widths) - 1 = {len(widths) - 1} entries, got {decoder_depths}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if num_categories is not None and num_categories < 1:
            raise ValueError(f"num_categories must be None or >= 1, got {num_categories}")
        if unpool not in UNPOOLINGS:
            raise ValueError(f"unpool must be one of {UNPOOLINGS}, got {unpool!r}")
        if unpool == "grid" and grid_sizes is None:
            raise ValueError("unpool='grid' copies features back along the voxels of grid pooling: it needs "
                             "grid_sizes (got None); use unpool='interpolate' with farthest point sampling")
        self.num_classes, self.in_channels, self.k = num_classes, in_channels, k
        self.unpool = unpool
        self.num_categories = num_categories
        self.encoder = Encoder(in_channels, attention, widths, depths, k=k, stride=stride, group_size=group_size,
                               groups=groups, heads=heads, attention_kwargs=attention_kwargs, grid_sizes=grid_sizes)
        # up[s] and decoder[s] bring level s + 1 back to level s (index 0 is the finest level)
        # (both kinds name their branches coarse and skip: the choice is recorded in model.config)
        if unpool == "grid":
            self.up = nn.ModuleList(GridUnpool(coarse, fine, fine) for fine, coarse in zip(widths[:-1], widths[1:]))
        else:
            self.up = nn.ModuleList(TransitionUp(coarse, fine, fine, interpolation_power=interpolation_power)
                                    for fine, coarse in zip(widths[:-1], widths[1:]))
        self.decoder = nn.ModuleList(make_stage(width, depth, attention, k, group_size, groups, heads, attention_kwargs)
                                     for width, depth in zip(widths[:-1], decoder_depths))

        layers = []
        channels = widths[0] + (num_categories or 0)
        for hidden in head_channels:
            layers += [nn.Linear(channels, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            channels = hidden
        layers.append(nn.Linear(channels, num_classes))
        self.head = nn.Sequential(*layers)
        self.config: Dict[str, Any] = {}
        self._register_load_state_dict_pre_hook(_legacy_keys)

    def forward(self, x: Optional[Tensor], pos: Tensor, batch: Optional[Tensor] = None,
                category: Optional[Tensor] = None) -> Tensor:
        """Per-point logits; see the class docstring for shapes."""
        inputs = flat_model_inputs(x, pos, batch, self.in_channels, self.head[-1].weight.dtype)
        x, pos, batch, count, dense_shape = inputs
        onehot = self._category_features(category, batch, count)
        # equal-sized clouds on accelerators / while tracing: batched kNN, FPS (not after grid pooling,
        # whose levels hold as many points as the clouds fill voxels)
        clouds = static_clouds(inputs) if self.encoder.grid_sizes is None else None
        with checked_inputs():  # checked above: the layers skip their own checks
            levels = self.encoder(x, pos, batch, clouds)  # finest first
            x = levels[-1].x
            for level in reversed(range(len(self.decoder))):
                fine, coarse = levels[level], levels[level + 1]
                if self.unpool == "grid":  # each fine point takes the voxel it was pooled into
                    x = self.up[level](x, fine.x, coarse.cluster)
                else:
                    x = self.up[level](x, coarse.pos, coarse.batch, fine.x, fine.pos, fine.batch, clouds)
                for block in self.decoder[level]:
                    x = block(x, fine.pos, fine.batch, fine.neighbors)
        if onehot is not None:
            x = torch.cat([x, onehot.to(x.dtype)], dim=1)
        logits = self.head(x)
        return logits if dense_shape is None else logits.reshape(*dense_shape, self.num_classes)

    def _category_features(self, category: Optional[Tensor], batch: Tensor, clouds: int) -> Optional[Tensor]:
        """The one-hot category of each point's cloud, ``(N, num_categories)``, or ``None``."""
        if self.num_categories is None:
            if category is not None:
                raise ValueError("category was given but the model has no category input (num_categories=None)")
            return None
        if category is None:
            raise ValueError(f"the model takes the object category: pass category ({clouds},) of ids "
                             f"in [0, {self.num_categories})")
        if not isinstance(category, Tensor):
            raise TypeError(f"category must be a torch.Tensor, got {type(category).__name__}")
        if category.dtype not in (torch.int64, torch.int32) or category.shape != (clouds,):
            raise ValueError(f"category must be an integer ({clouds},) tensor (one id per cloud), "
                             f"got {category.dtype} {tuple(category.shape)}")
        if category.device != batch.device:
            raise ValueError(f"category is on {category.device} but the points are on {batch.device}")
        if not tracing() and bool(((category < 0) | (category >= self.num_categories)).any()):
            raise ValueError(f"category ids must be in [0, {self.num_categories}), got {category.tolist()}")
        return F.one_hot(category.long()[batch], self.num_categories)


def _legacy_keys(state_dict, prefix, *args) -> None:
    """Checkpoints written before the shared encoder name it ``stem``, ``encoder.S`` and ``down``."""
    rename_legacy_keys(state_dict, prefix, [(r"stem\.", "encoder.stem."), (r"encoder\.(\d)", r"encoder.stages.\1"),
                                            (r"down\.", "encoder.down.")])
