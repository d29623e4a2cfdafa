"""Export a trained classifier for inference: TorchScript, ``torch.export`` or ONNX, checked against eager.

The exported graph holds the whole model, kNN and farthest point sampling included, in plain torch
ops (batched ``cdist`` + ``topk``, never Open3D): recorded, pcattn takes its static-shape paths
(:func:`pcattn.nn.geometry.tracing`). Input ``points (B, P, C_in)`` (``C_in`` = 3 for xyz, 6 for
xyz + normals; the first three channels are the positions), output logits ``(B, num_classes)``.
``P`` is fixed at export; ``B`` is dynamic for ``torch-export`` and ``onnx``, fixed for
``torchscript`` (a trace records it).

ONNX needs the ``export`` extra: ``pip install pcattn[export]`` (onnx, onnxscript, onnxruntime).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

__all__ = ["FORMATS", "ExportedModel", "PointsToLogits", "export_classifier", "example_clouds"]

FORMATS = ("onnx", "torchscript", "torch-export")
TOLERANCE = 1e-4


class ExportedModel(NamedTuple):
    """What :func:`export_classifier` wrote and how closely it reproduces eager."""

    path: Path
    format: str
    max_abs_diff: float       # exported against eager on the check clouds
    checked_batch_size: int   # batch size of the check (differs from the export's when B is dynamic)
    dynamic_batch: bool


class PointsToLogits(nn.Module):
    """A classifier behind one input: ``points (B, P, C_in)``, positions in channels 0-2 -> logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, points: Tensor) -> Tensor:
        pos = points[..., :3]
        return self.model(None if points.shape[-1] == 3 else points, pos)


def example_clouds(batch_size: int, num_points: int, in_channels: int = 3, seed: int = 0) -> Tensor:
    """``(batch_size, num_points, in_channels)`` clouds of the built-in shapes (xyz, then normals)."""
    import numpy as np

    from .data.builtin import BUILTIN_CLASSES, generate_shape

    rng = np.random.default_rng(seed)
    clouds = [generate_shape(BUILTIN_CLASSES[i % len(BUILTIN_CLASSES)], rng, num_points)[:, :in_channels]
              for i in range(batch_size)]
    return torch.from_numpy(np.stack(clouds)).float()


def export_classifier(model: nn.Module, path, format: str, num_points: int = 1024, batch_size: int = 2,
                      check: bool = True) -> ExportedModel:
    """Export ``model`` (a :class:`~pcattn.models.PointTransformerClassifier`) to ``path`` and check it.

    The exported model is loaded back (ONNX through ``onnxruntime``) and run on built-in shapes,
    ``batch_size + 1`` clouds where the batch is dynamic; a largest absolute difference from eager
    above 1e-4 raises ``RuntimeError``. Returns an :class:`ExportedModel`.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if num_points < 1 or batch_size < 1:
        raise ValueError(f"num_points and batch_size must be positive, got {num_points} and {batch_size}")
    if format == "onnx":
        _require_onnx()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = PointsToLogits(model).eval()
    in_channels = getattr(model, "in_channels", 3)
    example = example_clouds(batch_size, num_points, in_channels)
    dynamic = format != "torchscript"
    with torch.no_grad():
        if format == "torchscript":
            traced = torch.jit.trace(wrapper, (example,), check_trace=False)
            torch.jit.save(traced, str(path))
        else:
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            program = torch.export.export(wrapper, (example,), dynamic_shapes={"points": {0: batch}})
            if format == "torch-export":
                torch.export.save(program, str(path))
            else:
                torch.onnx.export(program, (example,), str(path), input_names=["points"], output_names=["logits"],
                                  dynamo=True, external_data=False)
    if not check:
        return ExportedModel(path, format, math.nan, 0, dynamic)
    clouds = example_clouds(batch_size + 1 if dynamic else batch_size, num_points, in_channels, seed=1)
    with torch.no_grad():
        expected = wrapper(clouds)
    got = run_exported(path, format, clouds)
    diff = float((got - expected).abs().max())
    if not diff <= TOLERANCE:
        raise RuntimeError(f"the exported {format} model differs from eager by {diff:.3g} (> {TOLERANCE:g}) "
                           f"on {clouds.shape[0]} clouds: not exported correctly")
    return ExportedModel(path, format, diff, clouds.shape[0], dynamic)


def run_exported(path, format: str, points: Tensor) -> Tensor:
    """Load an exported model the way a deployment would (no pcattn needed) and run it on ``points``."""
    if format == "torchscript":
        return torch.jit.load(str(path))(points)
    if format == "torch-export":
        return torch.export.load(str(path)).module()(points)
    _require_onnx()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"points": points.numpy()})[0])


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(f"ONNX export needs the export extra: pip install 'pcattn[export]' "
                          f"(onnx, onnxscript, onnxruntime); {error}") from None
