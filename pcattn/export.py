"""Export a trained classifier for inference: TorchScript, ``torch.export`` or ONNX, checked against eager.

The exported graph holds the whole model, kNN and farthest point sampling included, in plain torch
ops (batched ``cdist`` + ``topk``, never Open3D): recorded, pcattn takes its static-shape paths
(:func:`pcattn.nn.geometry.tracing`). Input ``points (B, P, C_in)`` (``C_in`` = 3 for xyz, 6 for
xyz + normals; the first three channels are the positions), output logits ``(B, num_classes)``.
``P`` is fixed at export; ``B`` is dynamic for ``torch-export`` and ``onnx``, fixed for
``torchscript`` (a trace records it). Every format refuses clouds of another shape: the TorchScript
file checks the shape before its trace runs (a trace alone would reuse the sizes it recorded and
return wrong logits), torch.export's guards and onnxruntime refuse other sizes with their own
messages, and :func:`run_exported` names the expected shape for all three.

ONNX needs the ``export`` extra: ``pip install pcattn[export]`` (onnx, onnxscript, onnxruntime).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional

import torch
from torch import Tensor, nn

__all__ = ["FORMATS", "EXTENSIONS", "ExportedModel", "PointsToLogits", "export_classifier", "example_clouds",
           "export_cost", "run_exported"]

FORMATS = ("onnx", "torchscript", "torch-export")
TOLERANCE = 1e-4
# The file name extensions of each format: a name with another format's extension is refused.
EXTENSIONS = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts", ".jit", ".torchscript"),
              "torch-export": (".pt2",)}
# Export limits: farthest point sampling is unrolled into the graph (one step per kept point; a
# 1024-point model takes minutes to export as ONNX here) and the first kNN is a (B, P, P) float32
# distance matrix.
MAX_SAMPLING_STEPS = 4096
MAX_DISTANCE_BYTES = 4 << 30


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


class ExportCost(NamedTuple):
    """What exporting a model at ``num_points`` implies (see :func:`export_cost`)."""

    sampling_steps: int     # farthest point sampling steps unrolled into the graph
    distance_bytes: int     # the first kNN's (B, P, P) float32 distance matrix


def export_cost(model: nn.Module, num_points: int, batch_size: int) -> ExportCost:
    """The unrolled sampling steps (``ceil(P / stride)`` per transition down, stage after stage) and the
    size of the largest distance matrix of an export of ``model`` at ``num_points`` points."""
    strides = [module.stride for module in model.modules() if isinstance(getattr(module, "stride", None), int)]
    steps, points = 0, num_points
    for stride in strides:  # the transitions down, in order
        points = math.ceil(points / stride)
        steps += points
    return ExportCost(steps, batch_size * num_points * num_points * 4)


def check_export_size(model: nn.Module, num_points: int, batch_size: int) -> ExportCost:
    """Refuse, before anything is built, an export whose graph or memory would be out of reach.

    Raises:
        ValueError: naming the unrolled sampling steps and the distance matrix it implies."""
    cost = export_cost(model, num_points, batch_size)
    if cost.sampling_steps > MAX_SAMPLING_STEPS or cost.distance_bytes > MAX_DISTANCE_BYTES:
        raise ValueError(f"num_points {num_points:,}: the export would unroll {cost.sampling_steps:,} farthest point "
                         f"sampling steps into its graph and build a ({batch_size}, {num_points:,}, {num_points:,}) "
                         f"float32 distance matrix ({_bytes(cost.distance_bytes)}); pcattn exports at most "
                         f"{MAX_SAMPLING_STEPS:,} steps and a {_bytes(MAX_DISTANCE_BYTES)} matrix (exporting 1024 "
                         f"points to ONNX takes minutes); export fewer points (the clouds used in training)")
    return cost


def _bytes(count: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if count >= size:
            return f"{count / size:,.1f} {unit}"
    return f"{count:,} bytes"


def check_extension(path, format: str) -> None:
    """Refuse a file name whose extension belongs to another format (``model.onnx`` for TorchScript)."""
    suffix = Path(path).suffix.lower()
    owner = next((name for name, suffixes in EXTENSIONS.items() if suffix in suffixes), None)
    if owner is not None and owner != format:
        raise ValueError(f"{path}: the {suffix} extension is {owner}'s, but format {format!r} was asked for; name the "
                         f"file {Path(path).with_suffix(EXTENSIONS[format][0]).name} (or use format {owner!r})")


class _FixedShape(nn.Module):
    """A TorchScript trace behind a check of its input's shape: a trace replays the sizes it recorded,
    so clouds of another number of points (or another batch) would get wrong logits, not an error."""

    def __init__(self, traced: nn.Module, shape: List[int]):  # (TorchScript infers the attribute's List[int])
        super().__init__()
        self.traced = traced
        self.shape = shape

    def forward(self, points: Tensor) -> Tensor:
        if list(points.shape) != self.shape:
            raise ValueError("this TorchScript model was exported for points of shape " + str(self.shape)
                             + " (batch, points, channels), got " + str(list(points.shape))
                             + ": export again with pcattn export --num-points/--batch-size, or use onnx or "
                             + "torch-export for any batch size")
        return self.traced(points)


def export_classifier(model: nn.Module, path, format: str, num_points: int = 1024, batch_size: int = 2,
                      check: bool = True, progress: Optional[Callable[[str], None]] = None) -> ExportedModel:
    """Export ``model`` (a :class:`~pcattn.models.PointTransformerClassifier`) to ``path`` and check it.

    The exported model is loaded back (ONNX through ``onnxruntime``) and run on built-in shapes,
    ``batch_size + 1`` clouds where the batch is dynamic; a largest absolute difference from eager
    above 1e-4 raises ``RuntimeError``. ``progress`` (e.g. ``print``) is told each phase as it starts.
    Returns an :class:`ExportedModel`.

    Raises:
        ValueError: an unknown format, a size below 1 or beyond :func:`check_export_size`'s limits, a
            file name with another format's extension.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if isinstance(num_points, bool) or isinstance(batch_size, bool) or num_points < 1 or batch_size < 1:
        raise ValueError(f"num_points and batch_size must be positive, got {num_points} and {batch_size}")
    check_extension(path, format)
    cost = check_export_size(model, num_points, batch_size)
    if format == "onnx":
        _require_onnx()
    say = progress or (lambda message: None)
    started = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = PointsToLogits(model).eval()
    in_channels = getattr(model, "in_channels", 3)
    example = example_clouds(batch_size, num_points, in_channels)
    dynamic = format != "torchscript"
    say(f"exporting to {format}: {num_points} points, {cost.sampling_steps} sampling steps unrolled into the graph")
    with torch.no_grad():
        if format == "torchscript":
            traced = torch.jit.trace(wrapper, (example,), check_trace=False)
            torch.jit.save(torch.jit.script(_FixedShape(traced, list(example.shape))), str(path))
        else:
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            program = torch.export.export(wrapper, (example,), dynamic_shapes={"points": {0: batch}})
            if format == "torch-export":
                torch.export.save(program, str(path))
            else:
                torch.onnx.export(program, (example,), str(path), input_names=["points"], output_names=["logits"],
                                  dynamo=True, external_data=False)
    say(f"wrote {path} in {time.perf_counter() - started:.0f} s")
    if not check:
        return ExportedModel(path, format, math.nan, 0, dynamic)
    clouds = example_clouds(batch_size + 1 if dynamic else batch_size, num_points, in_channels, seed=1)
    say(f"checking the exported model against eager on {clouds.shape[0]} clouds")
    with torch.no_grad():
        expected = wrapper(clouds)
    got = run_exported(path, format, clouds)
    diff = float((got - expected).abs().max())
    if not diff <= TOLERANCE:
        raise RuntimeError(f"the exported {format} model differs from eager by {diff:.3g} (> {TOLERANCE:g}) "
                           f"on {clouds.shape[0]} clouds: not exported correctly")
    return ExportedModel(path, format, diff, clouds.shape[0], dynamic)


def run_exported(path, format: str, points: Tensor) -> Tensor:
    """Load an exported model the way a deployment would (no pcattn needed) and run it on ``points``.

    Raises:
        ValueError: ``points`` has another number of points or channels than the export (or, for
            TorchScript, another batch size), naming the expected shape."""
    if format == "torchscript":
        module = torch.jit.load(str(path))
        expected = list(getattr(module, "shape", []))   # (files of older versions have no shape check)
        if expected and list(points.shape) != expected:
            raise ValueError(f"{path}: exported for points of shape {tuple(expected)} (batch, points, channels), "
                             f"got {tuple(points.shape)}")
        return module(points)
    if format == "torch-export":
        program = torch.export.load(str(path))
        example = program.example_inputs[0][0] if program.example_inputs else None
        if example is not None and tuple(points.shape[1:]) != tuple(example.shape[1:]):
            raise ValueError(f"{path}: exported for points of shape (B, {', '.join(map(str, example.shape[1:]))}), "
                             f"got {tuple(points.shape)}")
        return program.module()(points)
    _require_onnx()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.get_inputs()[0].shape                 # ['batch' (a name) or an int, P, C]
    if len(expected) != points.dim() or any(isinstance(size, int) and size != got
                                            for size, got in zip(expected, points.shape)):
        raise ValueError(f"{path}: exported for points of shape ({', '.join(map(str, expected))}), "
                         f"got {tuple(points.shape)}")
    return torch.from_numpy(session.run(None, {"points": points.numpy()})[0])


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(f"ONNX export needs the export extra: pip install 'pcattn[export]' "
                          f"(onnx, onnxscript, onnxruntime); {error}") from None
