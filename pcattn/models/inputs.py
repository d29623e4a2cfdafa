"""The models' entry check: validate ``(x, pos, batch)`` once and make it flat.

Both networks (:class:`~pcattn.models.PointTransformerClassifier`,
:class:`~pcattn.models.PointTransformerSegmenter`) call :func:`flat_model_inputs` first and then run
their layers inside :func:`~pcattn.nn.geometry.checked_inputs`, so nothing below checks again.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ..nn.geometry import check_batch, check_positions, to_flat, tracing

__all__ = ["ModelInputs", "flat_model_inputs", "static_clouds"]


class ModelInputs(NamedTuple):
    """Checked, flat inputs: ``x (N, C_in)``, ``pos (N, 3)``, sorted ``batch (N,)``, the number of
    clouds, and ``(B, P)`` for dense input (``None`` for flat input)."""

    x: Tensor
    pos: Tensor
    batch: Tensor
    clouds: int
    dense_shape: Optional[Tuple[int, int]]


def flat_model_inputs(x: Optional[Tensor], pos: Tensor, batch: Optional[Tensor], in_channels: int,
                      parameter_dtype: Optional[torch.dtype] = None) -> ModelInputs:
    """Raise a ``TypeError``/``ValueError`` naming the problem, else return the flat inputs.

    ``x=None`` uses the positions as the features (``in_channels == 3`` only); ``x`` must match ``pos``
    point for point with ``in_channels`` channels and be finite; dense ``(B, P, 3)`` input takes no
    ``batch`` and holds at least one cloud; flat input takes a sorted ``batch`` (default: one cloud).
    ``pos`` and ``x`` must have the model's ``parameter_dtype`` (under ``torch.autocast``: any float up
    to float32), as the layers require.
    """
    check_positions(pos)
    if parameter_dtype is not None:
        _check_dtype(pos, "pos", parameter_dtype)
        if x is not None and isinstance(x, Tensor):
            _check_dtype(x, "x", parameter_dtype)
    if x is None:
        if in_channels != 3:
            raise ValueError(f"the model takes {in_channels} input channels: pass x "
                             f"(e.g. torch.cat([pos, normals], -1)); x=None only works for in_channels=3")
        x = pos
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor or None, got {type(x).__name__}")
    if x.shape[:-1] != pos.shape[:-1] or x.shape[-1] != in_channels:
        raise ValueError(f"x must be {tuple(pos.shape[:-1]) + (in_channels,)} to match pos "
                         f"{tuple(pos.shape)}, got {tuple(x.shape)}")
    if x is not pos and not tracing() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"x contains NaN or infinite values ({int((~torch.isfinite(x)).any(-1).sum())} points)")
    if pos.dim() == 3:
        if batch is not None:
            raise ValueError("batch is only for flat (N, 3) positions; dense (B, P, 3) input needs none")
        if pos.shape[0] == 0:
            raise ValueError(f"pos holds no point cloud (B = 0): got {tuple(pos.shape)}")
        if pos.shape[1] == 0:
            raise ValueError("the point clouds are empty (P = 0)")
        B, P = pos.shape[:2]
        pos, x, batch = to_flat(pos, x)
        return ModelInputs(x, pos, batch, B, (B, P))
    if pos.shape[0] == 0:
        raise ValueError("the point cloud is empty (0 points)")
    if batch is None:
        batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
    check_batch(batch, pos.shape[0], pos.device)
    return ModelInputs(x, pos, batch, int(batch[-1]) + 1, None)


def _check_dtype(tensor: Tensor, name: str, parameter_dtype: torch.dtype) -> None:
    """``tensor`` must have the weights' dtype; under autocast any half or single precision is fine."""
    if tensor.dtype == parameter_dtype:
        return
    autocast = torch.is_autocast_enabled(tensor.device.type)
    if autocast and tensor.dtype in (torch.float16, torch.bfloat16, torch.float32):
        return
    raise TypeError(f"{name} is {tensor.dtype} but the model's parameters are {parameter_dtype}: convert the "
                    f"input ({name}.to({parameter_dtype})) or the model (model.to({tensor.dtype}))")


def static_clouds(inputs: ModelInputs) -> Optional[int]:
    """The number of equal-sized clouds the rows hold when the network should take the static-shape kNN
    and FPS (:func:`~pcattn.nn.geometry.knn_equal_clouds`: one batched search, no host synchronisation),
    else ``None`` (the per-cloud path). Taken always while ``torch.compile`` / export records dense
    input, and on accelerators, where reading the cloud sizes at every stage would stall the device;
    flat input on an accelerator is checked once here. Both paths give the same result."""
    accelerator = inputs.pos.device.type != "cpu"
    if inputs.dense_shape is not None:
        return inputs.clouds if tracing() or accelerator else None
    if not accelerator or tracing():
        return None
    counts = torch.bincount(inputs.batch, minlength=inputs.clouds)
    return inputs.clouds if bool((counts == counts[0]).all()) and int(counts[0]) > 0 else None

