"""Attention extraction: record every attention layer of one forward pass, pick a layer, reduce its groups.

Owns :class:`LayerAttention` (one layer's weights ``(N, K, G)``, neighbours ``(N, K)``, positions
``(N, 3)`` and cloud ids ``(N,)``), :func:`extract_attention`, :func:`select_layer`,
:func:`reduce_groups` and :func:`attention_layer_names`. Nothing here draws: turning weights into
per-point values is :mod:`pcattn.viz.values`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..nn import ATTENTION_LAYERS, RecordedAttention, ScalarSelfAttention, VectorSelfAttention
from ..nn.geometry import cloud_start_rows

__all__ = ["LayerAttention", "AttentionExtraction", "attention_layer_names", "extract_attention", "select_layer",
           "reduce_groups"]


@dataclass(frozen=True)
class LayerAttention:
    """One attention layer's weights from one forward pass (flat, over the layer's own input points).

    Attributes:
        name: the module's name in ``model.named_modules()`` (``""`` when the model is the layer).
        index: position among the attention layers that ran in the pass, in ``named_modules``
            order (the index :func:`select_layer` takes).
        kind: ``"vector"`` or ``"scalar"`` (else the class name).
        (All tensors are on the CPU, whatever the model's device.)
        weights: ``(N, K, G)`` attention weights (G = groups or heads), 0 for empty slots.
        neighbors: ``(N, K)`` rows of ``pos`` (``-1`` = empty slot).
        pos: ``(N, 3)`` positions of the layer's points (a subset of the input's in deeper layers, or
            the voxels' mean positions after grid pooling), in the input's frame.
        batch: ``(N,)`` cloud id of each row.
    """

    name: str
    index: int
    kind: str
    weights: Tensor
    neighbors: Tensor
    pos: Tensor
    batch: Tensor

    @property
    def num_groups(self) -> int:
        return int(self.weights.shape[-1])

    @property
    def label(self) -> str:
        return f"{self.index}: {self.name or '<model>'} ({self.kind}, {self.pos.shape[0]} points)"


class AttentionExtraction(NamedTuple):
    """Output of :func:`extract_attention`: the model's output and one record per attention layer."""

    output: object
    layers: List[LayerAttention]


def _attention_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, ATTENTION_LAYERS)]


def attention_layer_names(model: nn.Module) -> List[str]:
    """Names (``named_modules``) of the model's attention layers, in order."""
    return [name for name, _ in _attention_modules(model)]


def _kind(module: nn.Module) -> str:
    if isinstance(module, VectorSelfAttention):
        return "vector"
    if isinstance(module, ScalarSelfAttention):
        return "scalar"
    return type(module).__name__


def _cloud_origins(model: nn.Module, pos: Tensor, batch: Optional[Tensor]) -> Optional[Tensor]:
    """``(B, 3)`` the first point of each input cloud when ``model``'s layers see positions relative to it
    (an :class:`~pcattn.models.encoder.Encoder` with grid pooling subtracts it: exact in float32 far from
    the origin), so the recorded positions are moved back into the input's frame; else ``None``."""
    from ..models.encoder import Encoder

    if not any(isinstance(module, Encoder) and module.grid_sizes is not None for module in model.modules()):
        return None
    if pos.dim() == 3:            # dense (B, P, 3): each cloud's first row
        return pos[:, 0].detach().float().cpu()
    if batch is None:
        return pos[:1].detach().float().cpu()
    starts = torch.unique(cloud_start_rows(batch))   # sorted batch: the first row of each cloud, in cloud order
    return pos[starts].detach().float().cpu()


def _call_model(model: nn.Module, pos: Tensor, x: Optional[Tensor], batch: Optional[Tensor],
                category: Optional[Tensor]):
    if isinstance(model, ATTENTION_LAYERS):  # a bare layer needs features: the positions stand in
        return model(pos if x is None else x, pos, batch)
    if category is not None:  # a part segmenter: the object category of each cloud goes into its head
        return model(x, pos, batch, category=category)
    return model(x, pos, batch)


def extract_attention(
    model: nn.Module,
    pos: Tensor,
    x: Optional[Tensor] = None,
    batch: Optional[Tensor] = None,
    forward: Optional[Callable[[nn.Module], object]] = None,
    category: Union[int, Tensor, None] = None,
) -> AttentionExtraction:
    """Run one forward pass and collect every attention layer's weights and neighbourhoods.

    Every :data:`~pcattn.nn.ATTENTION_LAYERS` module of ``model`` gets
    ``record_attention = True`` for this pass only; its previous ``record_attention`` and
    ``last_attention`` are restored afterwards (also on error). Recording only keeps a detached
    copy of the weights, so the output is the one the model gives without extraction. The pass
    runs under ``torch.no_grad()`` in the model's current mode: call ``model.eval()`` first for a
    trained classifier (otherwise BatchNorm uses batch statistics and updates its running ones).

    Args:
        model: a model containing pcattn attention layers (e.g. a
            :class:`~pcattn.models.PointTransformerClassifier`), or a single attention layer.
        pos: ``(P, 3)`` one cloud (a batch dimension is added), ``(B, P, 3)``, or flat ``(N, 3)``
            with ``batch``.
        x: input features matching ``pos`` (``None``: the model uses ``pos``).
        batch: ``(N,)`` sorted cloud ids for flat input.
        forward: custom call for other model signatures: ``forward(model) -> output``
            (``pos``, ``x``, ``batch`` and ``category`` are then ignored).
        category: for a part segmenter (:class:`~pcattn.models.PointTransformerSegmenter`), the
            object category id of each cloud: int64 ``(B,)``, or an int for one cloud.

    Returns:
        :class:`AttentionExtraction` ``(output, layers)``; ``layers[i]`` is a
        :class:`LayerAttention` in ``named_modules`` order.

    Raises:
        ValueError: the model has no attention layer.
    """
    modules = _attention_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no attention layers (none of "
                         f"{', '.join(c.__name__ for c in ATTENTION_LAYERS)}): nothing to visualise")
    if forward is None:
        if not isinstance(pos, Tensor):
            raise TypeError(f"pos must be a torch.Tensor, got {type(pos).__name__}")
        if pos.dim() == 2 and batch is None:  # one cloud: the models expect (B, P, 3)
            pos = pos[None]
            x = None if x is None else x[None]
        if category is not None:
            category = torch.as_tensor(category, dtype=torch.long, device=pos.device).reshape(-1)
    if model.training and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        warnings.warn(f"{type(model).__name__} is in training mode: BatchNorm uses this batch's statistics "
                      f"(and updates its running ones); call model.eval() to see the trained model's attention",
                      RuntimeWarning, stacklevel=2)
    saved = [(module.record_attention, module.last_attention) for _, module in modules]
    try:
        for _, module in modules:
            module.record_attention = True
            module.last_attention = None
        with torch.no_grad():
            output = forward(model) if forward is not None else _call_model(model, pos, x, batch, category)
        origins = _cloud_origins(model, pos, batch) if forward is None else None
        layers = []
        for name, module in modules:
            recorded: Optional[RecordedAttention] = module.last_attention
            if recorded is None:  # the layer exists but the forward pass did not use it
                continue
            layer_pos, layer_batch = recorded.pos.float().cpu(), recorded.batch.cpu()
            if origins is not None:   # back from the encoder's cloud-relative frame to the input's
                layer_pos = layer_pos + origins[layer_batch]
            # indices count the layers that ran (as select_layer does); values are computed on the CPU
            layers.append(LayerAttention(name, len(layers), _kind(module), recorded.weights.float().cpu(),
                                         recorded.neighbors.cpu(), layer_pos, layer_batch))
    finally:
        for (_, module), (record, last) in zip(modules, saved):
            module.record_attention = record
            module.last_attention = last
    if not layers:
        raise ValueError(f"none of the attention layers of {type(model).__name__} ran in the forward pass")
    return AttentionExtraction(output, layers)


def select_layer(layers: Sequence[LayerAttention], which: Union[int, str, None] = None) -> LayerAttention:
    """Pick a layer by position (``0`` = first, ``-1`` = last; also ``"2"``) or by module name.

    ``None`` picks the first. A name that matches no layer exactly may be a unique suffix
    (``"0.0.attention"``). Raises ``ValueError`` listing the available layers.
    """
    if not layers:
        raise ValueError("no attention layers to choose from")
    if which is None:
        return layers[0]
    available = "; ".join(layer.label for layer in layers)
    if isinstance(which, str) and which.strip().lstrip("-").isdigit():
        which = int(which)
    if isinstance(which, int) and not isinstance(which, bool):
        if not -len(layers) <= which < len(layers):
            raise ValueError(f"layer {which} out of range: the model has {len(layers)} attention layers "
                             f"(0..{len(layers) - 1}): {available}")
        return layers[which]
    if isinstance(which, str):
        exact = [layer for layer in layers if layer.name == which]
        if exact:
            return exact[0]
        suffix = [layer for layer in layers if layer.name.endswith("." + which)]
        if len(suffix) == 1:
            return suffix[0]
        raise ValueError(f"no attention layer named {which!r}; available: {available}")
    raise TypeError(f"layer must be an int index or a module name, got {type(which).__name__}")



def reduce_groups(weights: Tensor, reduce: Union[str, int] = "mean") -> Tensor:
    """``(N, K, G)`` weights -> ``(N, K)``: ``"mean"`` or ``"max"`` over the groups/heads, or group ``g`` (int).

    The mean of softmax weights still sums to 1 over each neighbourhood; the max does not.
    """
    if isinstance(reduce, str) and reduce.strip().lstrip("-").isdigit():
        reduce = int(reduce)
    groups = weights.shape[-1]
    if isinstance(reduce, int) and not isinstance(reduce, bool):
        if not -groups <= reduce < groups:
            raise ValueError(f"reduce={reduce}: this layer has {groups} groups/heads (0..{groups - 1})")
        return weights[..., reduce]
    if reduce == "mean":
        return weights.mean(dim=-1)
    if reduce == "max":
        return weights.amax(dim=-1)
    raise ValueError(f"reduce must be 'mean', 'max' or a group/head index, got {reduce!r}")
