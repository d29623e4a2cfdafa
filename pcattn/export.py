"""Export a trained network for inference: TorchScript, ``torch.export`` or ONNX, checked against eager.

Every network exports: classifiers, part segmenters and scene segmenters. The exported graph holds
the whole model, kNN, farthest point sampling and grid pooling included, in plain torch ops (never
Open3D). Inputs and outputs (``C_in`` channels, the first three the positions; 3 for xyz, 6 for xyz +
normals or xyz + colours):

* classifier: ``points (B, P, C_in)`` -> ``logits (B, classes)``;
* part segmenter: ``points (B, P, C_in)`` and, when it takes the object category, ``category (B,)``
  int64 -> ``logits (B, P, parts)``;
* scene segmenter (grid pooling): one cloud, ``points (N, C_in)`` -> ``logits (N, classes)``.

Recorded by ``torch.export`` (``torch-export`` and ``onnx``), the number of points stays a dynamic size
(:func:`pcattn.nn.geometry.exporting`): farthest point sampling and kNN are loops that stay loops
(an ONNX ``Loop``), grid pooling numbers its voxels with ``unique``; the batch is dynamic too. So one file
serves clouds of any size from the smallest the graph allows (:attr:`ExportedModel.min_points`; ONNX
files record it in their metadata, ``pcattn.min_points``). kNN holds a ``(B, 256, P)`` distance block at
a time, never ``(B, P, P)``. ``torchscript`` (a trace) keeps the shapes it recorded, so its file checks
the shape before its trace runs (a trace alone would reuse the sizes it recorded and return wrong
logits) and scene segmenters are refused (their number of voxels is data dependent).
:func:`run_exported` names the shapes a file takes for all three formats.

ONNX needs the ``export`` extra: ``pip install pcattn[export]`` (onnx, onnxscript, onnxruntime).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["FORMATS", "EXTENSIONS", "ExportedModel", "PointsToLogits", "PointsToPartLogits", "CloudToLogits",
           "export_model", "export_classifier", "example_clouds", "example_scene", "network_kind",
           "run_exported", "load_exported", "exported_points_range"]

FORMATS = ("onnx", "torchscript", "torch-export")
TOLERANCE = 1e-4
# The file name extensions of each format: a name with another format's extension is refused.
EXTENSIONS = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts", ".jit", ".torchscript"),
              "torch-export": (".pt2",)}
# TorchScript unrolls farthest point sampling into its trace (one step per kept point) and holds a
# (B, P, P) float32 distance matrix: its exports stay below these.
MAX_SAMPLING_STEPS = 4096
MAX_DISTANCE_BYTES = 4 << 30
# The dynamic formats take clouds of up to this many points (a limit torch.export needs; ONNX's is the
# same, recorded in the file).
MAX_POINTS = 1 << 24
class ExportedModel(NamedTuple):
    """What :func:`export_model` wrote and how closely it reproduces eager."""

    path: Path
    format: str
    max_abs_diff: float       # exported against eager on the check clouds
    checked_batch_size: int   # batch size of the check (differs from the export's when B is dynamic)
    dynamic_batch: bool
    kind: str = "classifier"  # "classifier", "part segmenter" or "scene segmenter"
    min_points: int = 0       # the smallest cloud the file takes (dynamic formats), else the fixed count
    max_points: int = 0
    checked_points: Tuple[int, ...] = ()   # the cloud sizes the check ran at
    seconds: float = math.nan              # the export alone (no check)


class PointsToLogits(nn.Module):
    """A classifier behind one input: ``points (B, P, C_in)``, positions in channels 0-2 -> logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, points: Tensor) -> Tensor:
        pos = points[..., :3]
        return self.model(None if points.shape[-1] == 3 else points, pos)


class PointsToPartLogits(nn.Module):
    """A part segmenter behind ``points (B, P, C_in)`` and ``category (B,)`` int64 (the object category of
    each cloud) -> per-point logits ``(B, P, parts)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, points: Tensor, category: Tensor) -> Tensor:
        return self.model(None if points.shape[-1] == 3 else points, points[..., :3], category=category)


class CloudToLogits(nn.Module):
    """A segmenter behind one cloud, ``points (N, C_in)`` -> per-point logits ``(N, classes)`` (scene
    segmenters: grid pooling takes any number of points)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, points: Tensor) -> Tensor:
        points = points[None]
        return self.model(None if points.shape[-1] == 3 else points, points[..., :3])[0]


def network_kind(model: nn.Module) -> str:
    """``"classifier"``, ``"part segmenter"`` (farthest point sampling; with or without a category input)
    or ``"scene segmenter"`` (grid pooling)."""
    from .models import PointTransformerClassifier, PointTransformerSegmenter

    if isinstance(model, PointTransformerClassifier):
        return "classifier"
    if isinstance(model, PointTransformerSegmenter):
        return "scene segmenter" if model.encoder.grid_sizes is not None else "part segmenter"
    raise TypeError(f"pcattn exports its classifiers and segmenters, got {type(model).__name__}")


def example_clouds(batch_size: int, num_points: int, in_channels: int = 3, seed: int = 0) -> Tensor:
    """``(batch_size, num_points, in_channels)`` clouds of the built-in shapes (xyz, then normals)."""
    import numpy as np

    from .data.builtin import BUILTIN_CLASSES, generate_shape

    rng = np.random.default_rng(seed)
    clouds = [generate_shape(BUILTIN_CLASSES[i % len(BUILTIN_CLASSES)], rng, num_points)[:, :in_channels]
              for i in range(batch_size)]
    return torch.from_numpy(np.stack(clouds)).float()


def example_scene(num_points: int, in_channels: int = 6, seed: int = 0) -> Tensor:
    """``(num_points, in_channels)``: a crop of a room, centred (a floor, two walls and a table, 4 x 4 x 2.5 m,
    positions in metres, then colours in [0, 1] and further channels at random)."""
    generator = torch.Generator().manual_seed(seed)
    u, v = torch.rand(2, num_points, generator=generator)
    surface = torch.randint(0, 4, (num_points,), generator=generator)
    zero = torch.zeros(num_points)
    floor = torch.stack([4 * u, 4 * v, zero], 1)
    wall_x = torch.stack([zero, 4 * u, 2.5 * v], 1)
    wall_y = torch.stack([4 * u, zero, 2.5 * v], 1)
    table = torch.stack([1.5 + u, 1.5 + v, zero + 0.75], 1)
    pos = torch.stack([floor, wall_x, wall_y, table])[surface, torch.arange(num_points)]
    pos = pos + 0.01 * torch.randn(num_points, 3, generator=generator) - torch.tensor([2.0, 2.0, 1.25])
    rest = torch.rand(num_points, max(in_channels - 3, 0), generator=generator)
    return torch.cat([pos, rest], 1)[:, :in_channels]


class ExportCost(NamedTuple):
    """What a TorchScript export of a model at ``num_points`` implies (see :func:`export_cost`)."""

    sampling_steps: int     # farthest point sampling steps unrolled into the trace
    distance_bytes: int     # the first kNN's (B, P, P) float32 distance matrix


def export_cost(model: nn.Module, num_points: int, batch_size: int) -> ExportCost:
    """The unrolled sampling steps (``ceil(P / stride)`` per transition down, stage after stage) and the
    size of the largest distance matrix of a TorchScript trace of ``model`` at ``num_points`` points."""
    strides = [module.stride for module in model.modules() if isinstance(getattr(module, "stride", None), int)]
    steps, points = 0, num_points
    for stride in strides:  # the transitions down, in order
        points = math.ceil(points / stride)
        steps += points
    return ExportCost(steps, batch_size * num_points * num_points * 4)


def check_export_size(model: nn.Module, num_points: int, batch_size: int) -> ExportCost:
    """Refuse, before anything is built, a TorchScript trace whose graph or memory would be out of reach.

    Raises:
        ValueError: naming the unrolled sampling steps and the distance matrix it implies."""
    cost = export_cost(model, num_points, batch_size)
    if cost.sampling_steps > MAX_SAMPLING_STEPS or cost.distance_bytes > MAX_DISTANCE_BYTES:
        raise ValueError(f"num_points {num_points:,}: the TorchScript trace would unroll {cost.sampling_steps:,} "
                         f"farthest point sampling steps into its graph and build a ({batch_size}, {num_points:,}, "
                         f"{num_points:,}) float32 distance matrix ({_bytes(cost.distance_bytes)}); pcattn traces at "
                         f"most {MAX_SAMPLING_STEPS:,} steps and a {_bytes(MAX_DISTANCE_BYTES)} matrix; export fewer "
                         f"points, or to onnx or torch-export (any number of points, in bounded memory)")
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
    """A TorchScript trace behind a check of its inputs' shapes: a trace replays the sizes it recorded,
    so clouds of another number of points (or another batch) would get wrong logits, not an error."""

    def __init__(self, traced: nn.Module, shape: List[int]):  # (TorchScript infers the attribute's List[int])
        super().__init__()
        self.traced = traced
        self.shape = shape

    def forward(self, points: Tensor) -> Tensor:
        _check_traced_shape(points, self.shape)
        return self.traced(points)


class _FixedShapeWithCategory(_FixedShape):
    """:class:`_FixedShape` of a part segmenter's trace: ``points`` and ``category (B,)``."""

    def forward(self, points: Tensor, category: Tensor) -> Tensor:  # type: ignore[override]
        _check_traced_shape(points, self.shape)
        if list(category.shape) != self.shape[:1]:
            raise ValueError("this TorchScript model takes one category per cloud, category of shape "
                             + str(self.shape[:1]) + ", got " + str(list(category.shape)))
        return self.traced(points, category)


def _check_traced_shape(points: Tensor, shape: List[int]) -> None:
    if list(points.shape) != shape:
        raise ValueError("this TorchScript model was exported for points of shape " + str(shape)
                         + " (batch, points, channels), got " + str(list(points.shape))
                         + ": export again with pcattn export --num-points/--batch-size, or use onnx or "
                         + "torch-export for any batch size and number of points")


def _example_inputs(kind: str, model: nn.Module, batch_size: int, num_points: int, seed: int) -> Tuple[Tensor, ...]:
    in_channels = getattr(model, "in_channels", 3)
    if kind == "scene segmenter":
        return (example_scene(num_points, in_channels, seed),)
    clouds = example_clouds(batch_size, num_points, in_channels, seed)
    if kind == "part segmenter" and model.num_categories is not None:
        category = torch.arange(batch_size) % model.num_categories
        return clouds, category
    return (clouds,)


def _wrapper(kind: str, model: nn.Module) -> nn.Module:
    if kind == "classifier":
        return PointsToLogits(model).eval()
    if kind == "scene segmenter":
        return CloudToLogits(model).eval()
    return (PointsToPartLogits(model) if model.num_categories is not None else PointsToLogits(model)).eval()


def _names(kind: str, inputs: Tuple[Tensor, ...]) -> List[str]:
    return ["points", "category"][:len(inputs)]


def export_model(model: nn.Module, path, format: str, num_points: int = 1024, batch_size: int = 2,
                 check: bool = True, progress: Optional[Callable[[str], None]] = None) -> ExportedModel:
    """Export ``model`` (a classifier, a part segmenter or a scene segmenter) to ``path`` and check it.

    ``num_points`` and ``batch_size`` shape the example input (a scene segmenter takes one cloud:
    ``batch_size`` is unused). The exported model is loaded back (ONNX through ``onnxruntime``) and run
    on fresh clouds; the dynamic formats are also run at another number of points (and batch size) than
    the export's; a largest absolute difference from eager above 1e-4 raises ``RuntimeError``.
    ``progress`` (e.g. ``print``) is told each phase as it starts. Returns an :class:`ExportedModel`.

    Raises:
        ValueError: an unknown format, a size below 1 (or beyond :func:`check_export_size`'s limits for
            TorchScript), a file name with another format's extension, TorchScript of a scene segmenter.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if isinstance(num_points, bool) or isinstance(batch_size, bool) or num_points < 1 or batch_size < 1:
        raise ValueError(f"num_points and batch_size must be positive, got {num_points} and {batch_size}")
    check_extension(path, format)
    kind = network_kind(model)
    if format == "torchscript":
        if kind == "scene segmenter":
            raise ValueError("a scene segmenter's number of voxels depends on the cloud, which a TorchScript trace "
                             "would record as a constant: export it to onnx or torch-export (any number of points)")
        check_export_size(model, num_points, batch_size)
    if format == "onnx":
        _require_onnx()
    if kind == "scene segmenter":
        batch_size = 1
    say = progress or (lambda message: None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _wrapper(kind, model)
    example = _example_inputs(kind, model, batch_size, num_points, seed=0)
    names = _names(kind, example)
    dynamic = format != "torchscript"
    say(f"exporting the {kind} to {format}: example input {' and '.join(str(tuple(t.shape)) for t in example)}"
        + (", the number of points dynamic" if dynamic else ", shapes fixed"))
    started = time.perf_counter()
    points_range = (num_points, num_points)
    with torch.no_grad():
        if format == "torchscript":
            traced = torch.jit.trace(wrapper, example, check_trace=False)
            fixed = _FixedShapeWithCategory if len(example) == 2 else _FixedShape
            torch.jit.save(torch.jit.script(fixed(traced, list(example[0].shape))), str(path))
        else:
            program = torch.export.export(wrapper, example, dynamic_shapes=_dynamic_shapes(kind, names))
            points_range = exported_points_range(program)
            if format == "torch-export":
                torch.export.save(program, str(path))
            else:
                say("writing ONNX (a minute for a large network)")
                torch.onnx.export(program, example, str(path), input_names=names, output_names=["logits"],
                                  dynamo=True, external_data=False, optimize=False, verbose=False)
                _record_points_range(path, points_range)
    seconds = time.perf_counter() - started
    say(f"wrote {path} in {seconds:.0f} s")
    result = ExportedModel(path, format, math.nan, 0, dynamic, kind, points_range[0], points_range[1], (), seconds)
    if not check:
        return result
    diffs, sizes = [], []
    checks = _check_sizes(kind, dynamic, batch_size, num_points, points_range[0])
    run = load_exported(path, format)    # once for every check (a torch-export file takes seconds to load)
    for checked in checks:
        inputs = _example_inputs(kind, model, *checked, seed=1 + len(sizes))
        say(f"checking the exported model against eager on {' and '.join(str(tuple(t.shape)) for t in inputs)}")
        with torch.no_grad():
            expected = wrapper(*inputs)
        got = run(*inputs)
        diff = float((got - expected).abs().max())
        if not diff <= TOLERANCE:
            raise RuntimeError(f"the exported {format} model differs from eager by {diff:.3g} (> {TOLERANCE:g}) "
                               f"on input {tuple(inputs[0].shape)}: not exported correctly")
        diffs.append(diff)
        sizes.append(checked[1])
    return result._replace(max_abs_diff=max(diffs), checked_batch_size=checks[0][0], checked_points=tuple(sizes))


def export_classifier(model: nn.Module, path, format: str, num_points: int = 1024, batch_size: int = 2,
                      check: bool = True, progress: Optional[Callable[[str], None]] = None) -> ExportedModel:
    """:func:`export_model` (the name of earlier versions, which exported classifiers only)."""
    return export_model(model, path, format, num_points, batch_size, check, progress)


def _dynamic_shapes(kind: str, names: List[str]) -> Dict[str, Dict[int, object]]:
    dim = torch.export.Dim.DYNAMIC   # (torch.export finds the smallest size the graph allows)
    if kind == "scene segmenter":
        return {"points": {0: dim}}
    shapes: Dict[str, Dict[int, object]] = {"points": {0: dim, 1: dim}}
    if "category" in names:
        shapes["category"] = {0: dim}
    return shapes


def _check_sizes(kind: str, dynamic: bool, batch_size: int, num_points: int, min_points: int
                 ) -> List[Tuple[int, int]]:
    """(batch, points) of the check runs: the export's, and for a dynamic format another batch and a
    larger and a smaller cloud (not below the smallest the graph allows)."""
    if not dynamic:
        return [(batch_size, num_points)]
    batch = 1 if kind == "scene segmenter" else batch_size + 1
    smaller = max(min_points, num_points // 2)
    return [(batch, num_points + num_points // 2 + 1), (batch, smaller)]


def exported_points_range(program) -> Tuple[int, int]:
    """The number of points a ``torch.export`` program takes: ``(smallest, largest)``, from the range of
    its first input's points axis (axis 1 of ``(B, P, C)``, axis 0 of one cloud's ``(N, C)``)."""
    placeholder = next(node for node in program.graph.nodes if node.op == "placeholder"
                       and node.name == program.graph_signature.user_inputs[0])
    shape = placeholder.meta["val"].shape
    size = shape[1] if len(shape) == 3 else shape[0]
    if isinstance(size, int):
        return size, size
    bounds = program.range_constraints[size.node.expr]
    upper = bounds.upper if bounds.upper < MAX_POINTS else MAX_POINTS
    return int(bounds.lower), int(upper)


def _record_points_range(path: Path, points_range: Tuple[int, int]) -> None:
    """Write the range into the ONNX file's metadata (``pcattn.min_points``, ``pcattn.max_points``)."""
    import onnx

    model = onnx.load(str(path))
    for key, value in (("pcattn.min_points", points_range[0]), ("pcattn.max_points", points_range[1])):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(path))


def _refuse_size(path, points: Tensor, allowed: Tuple[int, int], dense: bool) -> None:
    count = points.shape[1] if dense else points.shape[0]
    if not allowed[0] <= count <= allowed[1]:
        layout = "(batch, points, channels)" if dense else "(points, channels)"
        raise ValueError(f"{path}: takes clouds of {allowed[0]:,} to {allowed[1]:,} points {layout}, got "
                         f"{tuple(points.shape)}: the graph was recorded for clouds at least that large")


def run_exported(path, format: str, points: Tensor, category: Optional[Tensor] = None) -> Tensor:
    """Load an exported model the way a deployment would (no pcattn needed) and run it on ``points``
    (and ``category``, for a part segmenter that takes one).

    Raises:
        ValueError: ``points`` has another number of channels than the export, or a number of points the
            file does not take (TorchScript: another shape than the export's), naming what it takes."""
    return load_exported(path, format)(points, category)


def load_exported(path, format: str) -> Callable[..., Tensor]:
    """Load an exported model once (as :func:`run_exported` does); returns ``run(points, category=None)``,
    which checks and runs one input as :func:`run_exported` does. Loading a ``torch-export`` file takes
    seconds, so checking a file on several inputs loads it once."""
    if format == "torchscript":
        module = torch.jit.load(str(path))
        expected = list(getattr(module, "shape", []))   # (files of older versions have no shape check)

        def run_torchscript(points: Tensor, category: Optional[Tensor] = None) -> Tensor:
            if expected and list(points.shape) != expected:
                raise ValueError(f"{path}: exported for points of shape {tuple(expected)} (batch, points, channels), "
                                 f"got {tuple(points.shape)}")
            with torch.no_grad():
                return module(*_inputs(points, category))
        return run_torchscript
    if format == "torch-export":
        program = torch.export.load(str(path))
        example = program.example_inputs[0][0] if program.example_inputs else None
        allowed = exported_points_range(program)
        graph = program.module()

        def run_program(points: Tensor, category: Optional[Tensor] = None) -> Tensor:
            if example is not None and (example.dim() != points.dim() or points.shape[-1] != example.shape[-1]):
                raise ValueError(f"{path}: exported for points of shape ({'B, P' if example.dim() == 3 else 'N'}, "
                                 f"{example.shape[-1]}), got {tuple(points.shape)}")
            _refuse_size(path, points, allowed, points.dim() == 3)
            with torch.no_grad():
                return graph(*_inputs(points, category))
        return run_program
    _require_onnx()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected_shape = session.get_inputs()[0].shape                 # [a name or an int, ...]
    metadata = session.get_modelmeta().custom_metadata_map
    allowed = ((int(metadata["pcattn.min_points"]), int(metadata["pcattn.max_points"]))
               if "pcattn.min_points" in metadata else None)   # files of older versions record no range

    def run_session(points: Tensor, category: Optional[Tensor] = None) -> Tensor:
        if len(expected_shape) != points.dim() or any(isinstance(size, int) and size != got
                                                      for size, got in zip(expected_shape, points.shape)):
            raise ValueError(f"{path}: exported for points of shape ({', '.join(map(str, expected_shape))}), "
                             f"got {tuple(points.shape)}")
        if allowed is not None:
            _refuse_size(path, points, allowed, points.dim() == 3)
        feeds = {"points": points.numpy()}
        if category is not None:
            feeds["category"] = category.numpy()
        return torch.from_numpy(session.run(None, feeds)[0])
    return run_session


def _inputs(points: Tensor, category: Optional[Tensor]) -> Tuple[Tensor, ...]:
    return (points,) if category is None else (points, category)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(f"ONNX export needs the export extra: pip install 'pcattn[export]' "
                          f"(onnx, onnxscript, onnxruntime); {error}") from None
