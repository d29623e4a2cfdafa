"""The Point Transformer classifier: the shared :class:`~pcattn.models.encoder.Encoder`, pooling, head."""
from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from ..nn.geometry import checked_inputs, tracing
from .encoder import Encoder, rename_legacy_keys
from .inputs import flat_model_inputs, static_clouds

__all__ = ["PointTransformerClassifier"]


class PointTransformerClassifier(nn.Module):
    r"""Point Transformer classifier (Zhao et al. 2021, Sec. 4.2 / Fig. 3).

    :class:`~pcattn.models.encoder.Encoder` (stem MLP -> stage 1, ``depths[0]`` Point Transformer
    blocks at ``widths[0]`` channels -> for each further stage a
    :class:`~pcattn.nn.blocks.TransitionDown`, farthest point sampling to ``1/stride`` of the points
    and kNN max-pooling, and ``depths[s]`` blocks; one kNN per stage shared by its blocks) -> global
    average pooling per cloud -> MLP head with dropout.

    Args:
        num_classes: number of classes.
        in_channels: input feature size: 3 (xyz, the default) or 6 (xyz + normals).
        attention: ``"vector"`` or ``"scalar"`` self-attention in every block.
        widths: channels per stage (default the paper's 32, 64, 128, 256, 512).
        depths: blocks per stage (default one each, as PyG's example).
        k: neighbours for attention and for transition down.
        stride: downsampling factor of each transition down.
        group_size: channels sharing one vector-attention weight: each layer of width ``C`` has
            ``C / group_size`` groups. ``8`` (default) is the official Point Transformer code's
            ``share_planes = 8``; ``1`` is pure vector attention (one weight per channel).
        groups: a fixed number of groups in every layer instead (overrides ``group_size``).
        heads: scalar attention heads.
        head_channels: hidden sizes of the classification MLP.
        dropout: dropout of the classification MLP.
        attention_kwargs: extra options of the attention layers (``positional_encoding``,
            ``relation``, ``normalization``, ...).

    Shapes:
        - call: ``model(x, pos, batch=None)``, the order of the attention layers and of PyG.
        - x: input features ``(B, P, in_channels)`` / ``(N, in_channels)``; ``None`` uses ``pos``
          (needs ``in_channels == 3``). For normals pass ``torch.cat([pos, normals], -1)``.
        - pos: ``(B, P, 3)``, or flat ``(N, 3)`` with a sorted ``batch (N,)``.
        - returns logits ``(B, num_classes)`` (one row per cloud id ``0..batch.max()``).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        attention: str = "vector",
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        depths: Sequence[int] = (1, 1, 1, 1, 1),
        k: int = 16,
        stride: int = 4,
        group_size: int = 8,
        groups: Optional[int] = None,
        heads: int = 4,
        head_channels: Sequence[int] = (256, 128),
        dropout: float = 0.5,
        attention_kwargs: Optional[Dict[str, Any]] = None,
    ):
        super().__init__()
        if len(widths) != len(depths) or not widths:
            raise ValueError(f"widths and depths must have the same non-zero length, got {widths} and {depths}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.in_channels, self.k = num_classes, in_channels, k
        self.encoder = Encoder(in_channels, attention, widths, depths, k=k, stride=stride, group_size=group_size,
                               groups=groups, heads=heads, attention_kwargs=attention_kwargs)
        layers = []
        channels = widths[-1]
        for hidden in head_channels:
            layers += [nn.Linear(channels, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(dropout)]
            channels = hidden
        layers.append(nn.Linear(channels, num_classes))
        self.head = nn.Sequential(*layers)
        self.config: Dict[str, Any] = {}
        self._register_load_state_dict_pre_hook(_legacy_keys)

    def forward(self, x: Optional[Tensor], pos: Optional[Tensor] = None, batch: Optional[Tensor] = None) -> Tensor:
        """Logits per cloud; the call order is the layers' (and PyG's): ``model(x, pos, batch)``.

        ``x=None`` uses the positions as the input features (``in_channels == 3``). The call order
        of pcattn 0.1, ``model(pos)`` / ``model(pos, x, batch)``, still works for this release with
        a ``FutureWarning`` (once per model; see :func:`_legacy_order`).
        """
        x, pos, legacy = _legacy_order(x, pos, self.in_channels)
        if legacy and not tracing() and not getattr(self, "_warned_legacy_order", False):
            # once per model, and never while torch.compile/export records (a warning there breaks
            # fullgraph=True): a training loop calling model(pos) is told once, not every step
            self._warned_legacy_order = True
            warnings.warn(f"{legacy} is the call order of pcattn 0.1; call model(x, pos, batch) as the layers do "
                          f"(x=None uses the positions); the old order goes in the next release",
                          FutureWarning, stacklevel=2)
        inputs = flat_model_inputs(x, pos, batch, self.in_channels, self.head[-1].weight.dtype)
        x, pos, batch, B, _ = inputs
        clouds = static_clouds(inputs)  # equal-sized clouds on accelerators / while tracing: batched kNN, FPS
        with checked_inputs():  # checked above: the layers below skip their checks (no host syncs)
            coarsest = self.encoder(x, pos, batch, clouds)[-1]
            x, batch = coarsest.x, coarsest.batch
        # Average per cloud, summed in at least float32 (a bf16 sum of 1024 points would round).
        dtype = torch.promote_types(x.dtype, torch.float32)
        pooled = x.new_zeros(B, x.shape[1], dtype=dtype).index_add_(0, batch, x.to(dtype))
        counts = x.new_zeros(B, dtype=dtype).index_add_(0, batch, x.new_ones(batch.shape[0], dtype=dtype))
        return self.head(pooled / counts.clamp(min=1)[:, None])


def _legacy_keys(state_dict, prefix, *args) -> None:
    """Checkpoints written before the shared encoder name it ``stem``, ``stages`` and ``transitions``."""
    rename_legacy_keys(state_dict, prefix, [(r"stem\.", "encoder.stem."), (r"stages\.", "encoder.stages."),
                                            (r"transitions\.", "encoder.down.")])


def _legacy_order(x: Optional[Tensor], pos: Optional[Tensor], in_channels: int):
    """Recognise the classifier's 0.1 call order ``(pos, x, batch)``: return ``(x, pos, legacy)``, where
    ``legacy`` names the old call (``None`` for the current order).

    ``model(pos)`` and ``model(pos, None, batch)`` arrive with ``pos=None``; ``model(pos, features)``
    with ``in_channels != 3`` arrives with a 3-channel ``x`` and a ``pos`` of ``in_channels``
    channels. Both are swapped (the caller warns). (With ``in_channels == 3`` and two 3-channel
    tensors the orders cannot be told apart: the new order is assumed.)
    """
    legacy = None
    if pos is None and isinstance(x, Tensor):
        legacy, x, pos = "model(pos)", None, x
    elif (isinstance(x, Tensor) and isinstance(pos, Tensor) and in_channels != 3
          and x.shape[-1] == 3 and pos.shape[-1] == in_channels):
        legacy, x, pos = "model(pos, x)", pos, x
    if pos is None:
        raise TypeError("the classifier needs pos: call model(x, pos, batch) (x=None uses the positions)")
    return x, pos, legacy
