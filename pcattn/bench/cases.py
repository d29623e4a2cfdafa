"""The benchmark's cases: what each comparison builds, and the list of cases a run measures.

A *builder* (one per case kind: ``vector``, ``lucidrains``, ``scalar``, ``knn``, ``fps``,
``classifier``, ``scale``, ``ceiling``, ``scene``) runs inside a worker process: from the case's parameters it
builds every side on the same weights and inputs and returns them as a :class:`Built` (one
:class:`Side` per implementation, an optional correctness check). :func:`build_cases` turns the
command-line options into the list of :class:`Case` records the harness runs.

Only the standard library is imported at module level (torch, PyG and pcattn inside the
builders), so the command line's ``--help`` stays instant.

Devices: a builder reads ``device`` (``"cpu"`` or ``"cuda"``) and ``precision`` (``"32"``,
``"bf16"``, ``"fp16"``) from its parameters (the worker adds them). Inputs are drawn on the CPU
from the seed and moved with ``.to(device)``, so every device sees the same numbers; modules are
built on the CPU and moved likewise. ``precision`` other than ``"32"`` runs the forward passes of
every side of the layer and classifier cases under ``torch.autocast`` (see :func:`autocast`);
the geometry cases and the machine ceiling stay float32.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

GIB = 1024 ** 3
MIB = 1024 ** 2
DEVICES = ("cpu", "cuda")
# --precision -> the torch dtype name autocast uses (None: plain float32, no autocast)
PRECISIONS: Dict[str, Optional[str]] = {"32": None, "bf16": "bfloat16", "fp16": "float16"}
CUDA_ALLOCATOR = "cuda"          # the one allocator column of a --device cuda run (glibc settings do not apply)
CPU_MEMORY_BUDGET_GIB = 4.0      # --memory-budget-gib default on the CPU
SCENE_FPS_CAP_S = 300.0          # a scene case's FPS side is skipped where its sampling alone would take longer


# ============================================================================ what a case is
@dataclass
class Side:
    """One implementation in a case: ``step()`` runs one measured call.

    ``scale`` multiplies its times (extrapolation from a slice of the work, ``note`` says so);
    ``skip`` is a reason not to run it at all (e.g. the memory guard).
    """

    step: Optional[Callable[[], Any]]
    scale: float = 1.0
    note: str = ""
    skip: str = ""


@dataclass
class Built:
    """What a builder returns: the sides by name, a correctness check, extra figures for the report."""

    sides: Dict[str, Side]
    # Max abs differences against "ours"; run after the timing so the memory probe sees a fresh heap.
    check: Optional[Callable[[], Dict[str, float]]] = None
    extra: Dict[str, Any] = field(default_factory=dict)      # e.g. FLOPs per call


@dataclass
class Case:
    """One comparison as the harness runs it: ``kind`` names its builder, ``params`` go to it,
    ``sides`` are the implementations compared (``"ours"`` first), each under every allocator in
    ``allocators``, in ``processes`` worker processes of ``warmup`` + ``iters`` calls per side."""

    name: str
    kind: str
    params: Dict[str, Any]
    sides: List[str]
    allocators: List[str]
    processes: int
    warmup: int
    iters: int
    group: str
    unit: str = "time"          # "time", "samples/s", "ceiling"
    memory_probe: bool = True   # launch memory-only processes for sides that never ran first


# ============================================================================ builders (run in a worker)
def _torch():
    import torch

    return torch


def _device(p: Dict[str, Any]):
    """The ``torch.device`` a builder's parameters ask for (``"cpu"`` when not given)."""
    return _torch().device(p.get("device", "cpu"))


def autocast(device: Any, precision: str = "32"):
    """The context the forward passes run in: nothing at ``"32"``, else
    ``torch.autocast(device_type, dtype)`` with ``bf16`` -> bfloat16, ``fp16`` -> float16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    torch = _torch()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, PRECISIONS[precision]))


def _amp(call: Callable[[], Any], p: Dict[str, Any]) -> Callable[[], Any]:
    """``call`` under :func:`autocast` of ``p``'s device and precision (``call`` itself at ``"32"``)."""
    precision = p.get("precision", "32")
    if precision == "32":
        return call
    device = _device(p)

    def wrapped():
        with autocast(device, precision):
            return call()
    return wrapped


def _fwd_or_fwdbwd(module_call: Callable[[], Any], params: List[Any], inputs: List[Any], mode: str,
                   grad_out=None) -> Callable[[], None]:
    """A step running ``module_call`` under no_grad (``fwd``) or with a backward (``fwdbwd``)."""
    torch = _torch()
    if mode == "fwd":
        def step():
            with torch.no_grad():
                module_call()
        return step

    def step():
        for tensor in list(params) + list(inputs):
            tensor.grad = None
        out = module_call()
        out.backward(grad_out if grad_out is not None else torch.ones_like(out))
    return step


def _vector_flops(n: int, k: int, c: int, maths: str, mode: str) -> float:
    """Rough multiply-add FLOPs of one vector-attention layer call (for GFLOP/s against the ceiling)."""
    linear = 3 * 2 * n * c * c
    if maths == "paper":
        pairs = n * k * (2 * 3 * 64 + 2 * 64 * c + 2 * c * 64 + 2 * 64 * c)
    else:  # the Linear(3, C) encoding is folded into per-point projections: one (N, 3) x (3, C) product
        pairs = 2 * n * 3 * c
    elementwise = n * k * c * 8
    total = linear + pairs + elementwise
    return float(total * (3 if mode == "fwdbwd" else 1))


def _build_vector(p: Dict[str, Any]) -> Built:
    """VectorSelfAttention vs PyG PointTransformerConv (from_pyg) vs the dense reference."""
    torch = _torch()
    from torch_geometric.nn import PointTransformerConv

    from pcattn import VectorSelfAttention
    from pcattn.nn.geometry import knn
    from pcattn.bench.reference import DenseVectorAttention, neighbors_to_edge_index, pyg_mlp

    B, P, C, k, maths, mode = p["B"], p["P"], p["C"], p["k"], p["maths"], p["mode"]
    dev = _device(p)
    torch.manual_seed(0)
    n = B * P
    pos = torch.rand(n, 3).to(dev)
    batch = torch.arange(B, device=dev).repeat_interleave(P)
    x = torch.randn(n, C).to(dev).requires_grad_(mode == "fwdbwd")
    if maths == "paper":
        conv = PointTransformerConv(C, C, pos_nn=pyg_mlp([3, 64, C]), attn_nn=pyg_mlp([C, 64, C]))
    else:
        conv = PointTransformerConv(C, C)
    conv = conv.to(dev)
    neighbors = knn(pos, k, batch)                      # (N, k) on dev, shared by every side
    edge_index = neighbors_to_edge_index(neighbors)     # on the device of neighbors
    ours = VectorSelfAttention.from_pyg(conv, k=k)      # on conv's device
    dense = DenseVectorAttention.from_pyg(conv)         # deep copies of conv's (moved) modules
    grad_out = torch.randn(n, C).to(dev)

    calls = {
        "ours": (_amp(lambda: ours(x, pos, neighbors=neighbors), p), list(ours.parameters())),
        "pyg": (_amp(lambda: conv(x, pos, edge_index), p), list(conv.parameters())),
        "dense": (_amp(lambda: dense(x, pos, neighbors), p), list(dense.parameters())),
    }
    sides = {name: Side(_fwd_or_fwdbwd(call, params, [x], mode, grad_out)) for name, (call, params) in calls.items()
             if name in p["sides"]}
    def check() -> Dict[str, float]:
        outs, grads, found = {}, {}, {}
        for name, (call, params) in calls.items():
            x.grad = None
            out = call()
            if mode == "fwdbwd":
                out.backward(grad_out)
                grads[name] = x.grad.clone()
            outs[name] = out.detach()
        for name in ("pyg", "dense"):
            found[f"max|ours-{name}| out"] = float((outs["ours"] - outs[name]).abs().max())
            if grads:
                found[f"max|ours-{name}| grad x"] = float((grads["ours"] - grads[name]).abs().max())
        return found

    return Built(sides, check=check, extra={"flops": _vector_flops(n, k, C, maths, mode)})


def lucidrains_bytes(B: int, P: int, C: int, hidden: int = 64, mode: str = "fwdbwd") -> int:
    """Estimated peak bytes of lucidrains' ``PointTransformerLayer`` (``attn_mlp_hidden_mult=1``).

    It builds, for all ``B*P*P`` pairs, relative positions (3) and their norm (1), the positional
    MLP's hidden layer (``hidden``) and output (C), ``q_i - k_j`` (C) and the repeated values (C)
    before choosing neighbours; training keeps the hidden layer before and after its ReLU.
    """
    per_pair = 3 + 1 + hidden * (2 if mode == "fwdbwd" else 1) + 3 * C
    return int(B * P * P * per_pair * 4)


def _build_lucidrains(p: Dict[str, Any]) -> Built:
    """Ours vs lucidrains' layer on the paper's maths, weights copied, kNN inside both."""
    torch = _torch()
    import copy

    from pcattn import VectorSelfAttention

    B, P, C, k, mode = p["B"], p["P"], p["C"], p["k"], p["mode"]
    dev = _device(p)
    torch.manual_seed(0)
    pos = torch.rand(B, P, 3).to(dev)
    x = torch.randn(B, P, C).to(dev).requires_grad_(mode == "fwdbwd")
    grad_out = torch.randn(B, P, C).to(dev)
    need = lucidrains_bytes(B, P, C, mode=mode)
    budget = p["memory_budget_gib"] * GIB
    sides: Dict[str, Side] = {}
    try:
        from point_transformer_pytorch import PointTransformerLayer
    except ImportError:
        theirs = None
        sides["lucidrains"] = Side(None, skip="not installed (pip install point-transformer-pytorch)")
    else:
        theirs = PointTransformerLayer(dim=C, pos_mlp_hidden_dim=64, attn_mlp_hidden_mult=1, num_neighbors=k)
        if need > budget:
            sides["lucidrains"] = Side(None, skip=f"OOM-guard (needs ~{need / GIB:.1f} GiB)")
    ours = VectorSelfAttention(C, C, k=k, groups=C,
                               positional_encoding=copy.deepcopy(theirs.pos_mlp) if theirs else "mlp",
                               mapping=copy.deepcopy(theirs.attn_mlp) if theirs else "mlp", bias=False)
    if theirs is not None:
        with torch.no_grad():
            wq, wk, wv = theirs.to_qkv.weight.chunk(3, dim=0)
            ours.to_query.weight.copy_(wq)
            ours.to_key.weight.copy_(wk)
            ours.to_value.weight.copy_(wv)
    ours = ours.to(dev)
    ours_call = _amp(lambda: ours(x, pos), p)
    sides["ours"] = Side(_fwd_or_fwdbwd(ours_call, list(ours.parameters()), [x], mode, grad_out))
    if theirs is not None:
        theirs = theirs.to(dev)
        theirs_call = _amp(lambda: theirs(x, pos), p)
    if theirs is not None and "lucidrains" not in sides:
        sides["lucidrains"] = Side(_fwd_or_fwdbwd(theirs_call, list(theirs.parameters()), [x], mode, grad_out))
    built = Built({name: sides[name] for name in ("ours", "lucidrains")},
                  extra={"lucidrains_estimated_gib": round(need / GIB, 2)})
    if built.sides["lucidrains"].step is not None:
        def check() -> Dict[str, float]:
            with torch.no_grad():
                return {"max|ours-lucidrains| out": float((ours_call() - theirs_call()).float().abs().max())}
        built.check = check
    return built


def _build_scalar(p: Dict[str, Any]) -> Built:
    """ScalarSelfAttention (kNN groups or whole cloud) vs the straightforward formula."""
    torch = _torch()
    from pcattn import ScalarSelfAttention
    from pcattn.nn.geometry import knn
    from pcattn.bench.reference import global_attention_reference, scalar_attention_reference

    B, P, C, k, mode = p["B"], p["P"], p["C"], p["k"], p["mode"]
    dev = _device(p)
    torch.manual_seed(0)
    layer = ScalarSelfAttention(C, C, k=k, heads=4).to(dev)
    pos = torch.rand(B, P, 3).to(dev)
    x = torch.randn(B, P, C).to(dev).requires_grad_(mode == "fwdbwd")
    grad_out = torch.randn(B, P, C).to(dev)
    params = list(layer.parameters())
    if k is None:
        ours_call = lambda: layer(x, pos)                                         # noqa: E731
        ref_call = lambda: global_attention_reference(layer, x, pos)              # noqa: E731
    else:
        neighbors = knn(pos.reshape(-1, 3), k, torch.arange(B, device=dev).repeat_interleave(P))
        flat_pos = pos.reshape(-1, 3)
        ours_call = lambda: layer(x.reshape(-1, C), flat_pos, neighbors=neighbors).view(B, P, C)      # noqa: E731
        ref_call = lambda: scalar_attention_reference(layer, x.reshape(-1, C), flat_pos, neighbors).view(B, P, C)  # noqa: E731
    ours_call, ref_call = _amp(ours_call, p), _amp(ref_call, p)

    def check() -> Dict[str, float]:
        with torch.no_grad():
            return {"max|ours-reference| out": float((ours_call() - ref_call()).float().abs().max())}

    return Built({"ours": Side(_fwd_or_fwdbwd(ours_call, params, [x], mode, grad_out)),
                  "reference": Side(_fwd_or_fwdbwd(ref_call, params, [x], mode, grad_out))}, check=check)


def _build_knn(p: Dict[str, Any]) -> Built:
    torch = _torch()
    from pcattn.bench.reference import brute_knn
    from pcattn.nn.geometry import knn

    N, k = p["N"], p["k"]
    dev = _device(p)
    torch.manual_seed(0)
    if p.get("B"):  # a batch of B clouds of N points (the layer cases' neighbourhoods): brute force per cloud
        clouds = torch.rand(p["B"], N, 3).to(dev)
        sides = {"ours": Side(lambda: knn(clouds, k)),
                 "brute": Side(lambda: [brute_knn(cloud, k) for cloud in clouds])}

        def batch_check() -> Dict[str, float]:
            ours, cloud = knn(clouds, k)[-1], clouds[-1]
            theirs = brute_knn(cloud, k)
            d_ours, d_theirs = ((cloud[i] - cloud[:, None]).norm(dim=-1) for i in (ours, theirs))
            return {"max|dist ours-brute| (last cloud)": float((d_ours.sort(1).values
                                                                 - d_theirs.sort(1).values).abs().max())}
        return Built(sides, check=batch_check)
    pos = torch.rand(N, 3).to(dev)
    sides = {"ours": Side(lambda: knn(pos, k))}
    if N > p["brute_max"]:
        rows = p["brute_rows"]
        sides["brute"] = Side(lambda: brute_knn(pos, k, pos[:rows]), scale=N / rows,
                              note=f"estimated from {rows} of {N} query rows")
    else:
        sides["brute"] = Side(lambda: brute_knn(pos, k))
    def check() -> Dict[str, float]:
        rows = min(N, 1024)
        ours = knn(pos, k)[:rows]
        theirs = brute_knn(pos, k, pos[:rows])
        # Compare distances, not indices: equidistant points may come in either order.
        d_ours = (pos[ours] - pos[:rows, None]).norm(dim=-1)
        d_theirs = (pos[theirs] - pos[:rows, None]).norm(dim=-1)
        return {"max|dist ours-brute|": float((d_ours.sort(1).values - d_theirs.sort(1).values).abs().max())}

    return Built(sides, check=check)


def _fails_on_device(call: Callable[[], Any], device) -> str:
    """``""`` if ``call()`` runs with its inputs on ``device``, else why not (a reference written
    for the CPU that mixes devices). Always ``""`` on the CPU (nothing is tried there)."""
    if device.type == "cpu":
        return ""
    try:
        call()
    except RuntimeError as error:
        if "device" not in str(error).lower():
            raise
        return "is CPU-only (mixes CPU and device tensors)"
    return ""


def _build_fps(p: Dict[str, Any]) -> Built:
    torch = _torch()
    from pcattn.bench.reference import brute_fps
    from pcattn.nn.geometry import farthest_point_sampling

    N, M = p["N"], p["M"]
    dev = _device(p)
    torch.manual_seed(0)
    pos = torch.rand(N, 3).to(dev)
    sides = {"ours": Side(lambda: farthest_point_sampling(pos, count=M))}
    limit = p["brute_fps_iters"]
    unable = _fails_on_device(lambda: brute_fps(pos[:4], 2), dev)
    if unable:
        sides["brute"] = Side(None, skip=f"skipped on {dev.type}: reference brute_fps {unable}")
        return Built(sides)
    if M > limit:
        sides["brute"] = Side(lambda: brute_fps(pos, M, iterations=limit), scale=M / limit,
                              note=f"estimated from {limit} of {M} iterations")
    else:
        sides["brute"] = Side(lambda: brute_fps(pos, M))
    def check() -> Dict[str, float]:
        m = min(M, 64)
        ours = farthest_point_sampling(pos, count=M)[:m]
        theirs = brute_fps(pos, M, iterations=m)[:m]
        return {"fps: first 64 indices differing": float((ours.cpu() != theirs.cpu()).sum())}

    return Built(sides, check=check)


def _build_classifier(p: Dict[str, Any]) -> Built:
    """One training step (forward, loss, backward, AdamW) of PyG's example network, built with
    PyG's ``PointTransformerConv`` and with pcattn's layer in its place (same weights, same maths)."""
    torch = _torch()
    import torch.nn.functional as F

    from pcattn.bench.reference import PyGPointTransformerNet, dropin_version, pcattn_version

    B, P, classes = p["B"], p["P"], p["classes"]
    dev, precision = _device(p), p.get("precision", "32")
    torch.manual_seed(0)
    pos = (torch.rand(B, P, 3) * 2 - 1).to(dev)
    labels = torch.randint(0, classes, (B,)).to(dev)
    flat = pos.reshape(-1, 3)
    batch = torch.arange(B, device=dev).repeat_interleave(P)
    theirs = PyGPointTransformerNet(3, classes, layer="pyg").train()
    # "layer": pcattn's VectorSelfAttention in the conv's place; "dropin": pcattn.nn.pyg.PointTransformerConv,
    # the network's code unchanged but for the import
    ours = (dropin_version(theirs) if p.get("variant") == "dropin" else pcattn_version(theirs)).train()
    theirs, ours = theirs.to(dev), ours.to(dev)       # before the optimizers take their parameters
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-3)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-3)

    def step(model, optimizer):
        if precision == "32":
            def run():
                optimizer.zero_grad(set_to_none=True)
                F.nll_loss(model(flat, flat, batch), labels).backward()
                optimizer.step()
            return run
        # Mixed precision as it is trained: autocast around the forward pass and the loss; fp16 with a
        # gradient scaler (one per side, so both sides pay for it alike).
        scaler = torch.amp.GradScaler(dev.type) if precision == "fp16" else None

        def run_amp():
            optimizer.zero_grad(set_to_none=True)
            with autocast(dev, precision):
                loss = F.nll_loss(model(flat, flat, batch), labels)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
        return run_amp

    with torch.no_grad(), autocast(dev, precision):  # before any step: training makes the two copies drift apart
        ours.eval(), theirs.eval()
        difference = float((ours(flat, flat, batch) - theirs(flat, flat, batch)).float().abs().max())
        ours.train(), theirs.train()

    def check() -> Dict[str, float]:
        return {"max|ours-pyg-example| log-probs (before training)": difference}

    count = lambda m: sum(t.numel() for t in m.parameters())  # noqa: E731
    return Built({"ours": Side(step(ours, opt_ours)), "pyg-example": Side(step(theirs, opt_theirs))}, check=check,
                 extra={"samples_per_step": B, "params_ours": count(ours), "params_pyg": count(theirs)})


def _build_scale(p: Dict[str, Any]) -> Built:
    """One VectorSelfAttention layer on one big cloud, kNN inside the call."""
    torch = _torch()
    from pcattn import VectorSelfAttention

    N, C, k, mode = p["N"], p["C"], p["k"], p["mode"]
    dev = _device(p)
    torch.manual_seed(0)
    layer = VectorSelfAttention(C, C, k=k).to(dev)
    pos = torch.rand(N, 3).to(dev)
    x = torch.randn(N, C).to(dev).requires_grad_(mode == "fwdbwd")
    return Built({"ours": Side(_fwd_or_fwdbwd(_amp(lambda: layer(x, pos), p), list(layer.parameters()), [x], mode))})


@functools.lru_cache(maxsize=4)
def _scene_room(seed: int, points: int) -> Dict[str, Any]:
    """A built-in room of exactly ``points`` points as tensors (``pos`` float64, far from the origin as real
    scans are; ``color``; ``seg``): generated with a tenth more and cut (rows are in random order). Cached
    (callers make new tensors from it)."""
    torch = _torch()
    from pcattn.data import generate_room

    target = int(points * 1.1) + 64
    room = generate_room(seed, (target, target))
    if room["pos"].shape[0] < points:
        raise RuntimeError(f"the built-in room holds {room['pos'].shape[0]} points, fewer than {points}")
    return {"pos": torch.from_numpy(room["pos"][:points]), "color": torch.from_numpy(room["color"][:points]),
            "seg": torch.from_numpy(room["seg"][:points])}


def scene_points(seed: int, points: int) -> Dict[str, Any]:
    """``points`` points of a scene as a scene network sees them: built-in rooms grid-sampled at 0.04 m (one
    random point per voxel), side by side along x (one room holds some 10^4-10^5 points after sampling),
    placed 10^5 m from the origin as scans are, a sphere crop of ``points`` of them centred in float64 (made
    float32 there). A training crop (10^5 points) or a large scene (10^6) alike."""
    torch = _torch()
    from pcattn.data import CentreCrop, GridSample, SphereCrop

    generator = torch.Generator().manual_seed(seed)
    rooms, total, offset = [], 0, 0.0
    room_points = min(200_000, max(4 * points, 2_000))
    while total < 1.2 * points:
        room = GridSample(0.04, generator)(_scene_room(seed + len(rooms), room_points))
        pos = room["pos"] - room["pos"].min(dim=0).values          # float64: exact at metres
        pos[:, 0] += offset
        offset = float(pos[:, 0].max()) + 0.5
        rooms.append({**room, "pos": pos + 1.0e5})
        total += pos.shape[0]
    floor = {key: torch.cat([room[key] for room in rooms]) for key in ("pos", "color", "seg")}
    return CentreCrop()(SphereCrop(points, generator=generator)(floor))


def fps_seconds_estimate(pos, cloud_sizes: List[int], stride: int, levels: int) -> float:
    """Seconds the farthest point sampling of an FPS network's transitions would take on clouds of
    ``cloud_sizes`` points: each of ``levels`` transitions keeps ``1/stride`` of its input, one step per
    kept point, each step costing time proportional to the points. The rate is timed on ``pos``
    (256 steps of :func:`~pcattn.nn.geometry.farthest_point_sampling`)."""
    import time

    from pcattn.nn.geometry import farthest_point_sampling

    steps = 256
    farthest_point_sampling(pos, count=min(16, pos.shape[0]))          # warm-up: the rate, not the first call
    start = time.perf_counter()
    farthest_point_sampling(pos, count=min(steps, pos.shape[0]))
    per_point_step = (time.perf_counter() - start) / (pos.shape[0] * min(steps, pos.shape[0]))
    work = 0.0
    for size in cloud_sizes:
        for _ in range(levels):
            kept = -(-size // stride)
            work += size * kept
            size = kept
    return work * per_point_step


def _build_scene(p: Dict[str, Any]) -> Built:
    """A scene segmenter with grid pooling and unpooling ("ours") against the same widths and depths with farthest
    point sampling + kNN transitions down and interpolation up ("fps-knn"), on ``N`` points of grid-sampled built-in rooms (:func:`scene_points`).

    ``mode="train"``: one training step (forward, cross-entropy, backward, AdamW). ``mode="infer"``: one forward
    pass under ``torch.no_grad`` over all ``N`` points at once. The FPS side is not run where its sampling
    alone is estimated to take more than ``fps_cap_s`` seconds (:func:`fps_seconds_estimate`); the table says so.
    """
    torch = _torch()
    import torch.nn.functional as F

    from pcattn.data import ROOM_CLASSES, scene_model_inputs
    from pcattn.models import create_segmenter

    name, mode, N, cap = p["model"], p["mode"], p["N"], p["fps_cap_s"]
    dev = _device(p)
    scene = scene_points(p.get("seed", 0), N)
    x, pos, batch = (t.to(dev) for t in scene_model_inputs(scene, 6))
    labels = scene["seg"].to(dev)
    torch.manual_seed(0)
    models = {"ours": create_segmenter(name, len(ROOM_CLASSES), in_channels=6),
              "fps-knn": create_segmenter(name, len(ROOM_CLASSES), in_channels=6, grid_sizes=None,
                                          unpool="interpolate")}
    fps_down = models["fps-knn"].encoder.down
    extra: Dict[str, Any] = {"points": N, "params": sum(t.numel() for t in models["ours"].parameters())}

    def train_step(model):
        model.to(dev).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def run():
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x, pos, batch), labels).backward()
            optimizer.step()
        return run

    def inference(model):
        model.to(dev).eval()

        def run():
            with torch.no_grad():
                return model(x, pos, batch)
        return run

    make = train_step if mode == "train" else inference
    sides = {side: Side(make(models[side])) for side in p["sides"]}
    if "fps-knn" in sides:
        estimate = fps_seconds_estimate(pos[:100_000], [N], fps_down[0].stride, len(fps_down))
        extra["fps_estimate_s"] = round(estimate, 3)
        if estimate > cap:
            sides["fps-knn"] = Side(None, skip=f"skipped: its farthest point sampling alone ~{estimate:.0f} s "
                                               f"(estimated from 256 steps), over {cap:.0f} s")
    return Built(sides, extra=extra)


def _build_ceiling(p: Dict[str, Any]) -> Built:
    """The machine's own rates: float32 matmul (GFLOP/s) and a large copy (GB/s, read + write)."""
    torch = _torch()
    dev = _device(p)
    n, copy_mib = p["matmul_n"], p["copy_mib"]
    a, b, c = torch.randn(n, n).to(dev), torch.randn(n, n).to(dev), torch.empty(n, n, device=dev)
    src = torch.randn(copy_mib * MIB // 4).to(dev)
    dst = torch.empty_like(src)
    return Built({"matmul": Side(lambda: torch.mm(a, b, out=c)), "copy": Side(lambda: dst.copy_(src))},
                 extra={"matmul_flops": 2.0 * n ** 3, "copy_bytes": 2.0 * copy_mib * MIB})


BUILDERS: Dict[str, Callable[[Dict[str, Any]], Built]] = {
    "vector": _build_vector, "lucidrains": _build_lucidrains, "scalar": _build_scalar, "knn": _build_knn,
    "fps": _build_fps, "classifier": _build_classifier, "scale": _build_scale, "ceiling": _build_ceiling,
    "scene": _build_scene,
}


# ============================================================================ the cases of a run
def memory_budget_gib(args: argparse.Namespace) -> float:
    """``--memory-budget-gib``, or its default on the CPU when not given (the harness resolves the
    CUDA default from the GPU's memory before building the cases)."""
    budget = getattr(args, "memory_budget_gib", None)
    return CPU_MEMORY_BUDGET_GIB if budget is None else float(budget)


def build_cases(args: argparse.Namespace) -> List[Case]:
    """The cases that ``args`` (see :func:`pcattn.bench.harness.add_arguments`) ask for.

    With ``--device cuda`` the cases are the same (plus a small classifier case in ``--quick``, the
    smoke test of ``--precision``), each under the one allocator column ``"cuda"``, and the machine
    ceiling measures the GPU with larger operands.
    """
    quick = args.quick
    cuda = getattr(args, "device", "cpu") == "cuda"
    both = [CUDA_ALLOCATOR] if cuda else list(args.allocators)
    single = [CUDA_ALLOCATOR] if cuda else ["default"]
    R = args.processes if args.processes else (1 if quick else 3)
    cases: List[Case] = []
    if quick:
        B, P = 2, 512
    else:
        B, P = 8, 1024
    C, k = 64, 16
    for maths in ("pyg", "paper") if not quick else ("pyg",):
        for mode in ("fwd", "fwdbwd") if not quick else ("fwdbwd",):
            sides = ["ours", "pyg"] + ([] if quick else ["dense"])
            cases.append(Case(f"vector {maths}-maths {mode} B={B} P={P} C={C} k={k}", "vector",
                              dict(B=B, P=P, C=C, k=k, maths=maths, mode=mode), sides, both, R,
                              1, 2 if quick else 4, "layers"))
    budget = memory_budget_gib(args)
    lucid_sizes = [(1, 256)] if quick else [(1, 1024), (1, 4096), (B, P)]
    for lb, lp in lucid_sizes:
        # Where the guard will refuse lucidrains' side, only ours runs: once, one allocator.
        guarded = lucidrains_bytes(lb, lp, C) > budget * GIB
        cases.append(Case(f"vector paper-maths fwdbwd B={lb} P={lp} (kNN inside)", "lucidrains",
                          dict(B=lb, P=lp, C=C, k=k, mode="fwdbwd", memory_budget_gib=budget),
                          ["ours", "lucidrains"], single if quick or guarded else both,
                          1 if quick or guarded else 2, 1, 2 if quick else 3, "layers"))
    for sk in (16, None):
        sB, sP = (2, 256) if quick else (B, P)
        cases.append(Case(f"scalar k={sk or 'all'} fwdbwd B={sB} P={sP} C={C}", "scalar",
                          dict(B=sB, P=sP, C=C, k=sk, mode="fwdbwd"), ["ours", "reference"],
                          both if not quick else single, 1 if quick else 2, 1, 2 if quick else 4, "layers"))
    sizes = [1000] if quick else [1000, 16000, 100000, 1000000]
    geo_alloc = single if quick else both
    for N in sizes:
        rows = 4096 if N <= 100000 else 512            # brute force at 1M: ~3 s per 512 query rows
        cases.append(Case(f"knn k=16 N={N}", "knn", dict(N=N, k=16, brute_max=20000, brute_rows=rows),
                          ["ours", "brute"], geo_alloc, 1, 1, 3 if N <= 100000 else 1, "geometry"))
    if not quick:
        cases.append(Case(f"knn k=16 B={B} P={P} (the layer cases' neighbourhoods)", "knn",
                          dict(N=P, B=B, k=16), ["ours", "brute"], geo_alloc, 1, 1, 5, "geometry"))
    for N in sizes:
        M = min(N // 4, 4096)
        cases.append(Case(f"fps N={N} M={M}", "fps", dict(N=N, M=M, brute_fps_iters=256),
                          ["ours", "brute"], geo_alloc, 1, 1, 3 if N <= 100000 else 1, "geometry"))
    if not quick:
        cases.append(Case("classifier train step (PyG example network) B=16 P=1024 classes=40", "classifier",
                          dict(B=16, P=1024, classes=40), ["ours", "pyg-example"], both, 2, 1, 3,
                          "classifier", unit="samples/s"))
        cases.append(Case("classifier train step (PyG example network, pcattn's PointTransformerConv by import) "
                          "B=16 P=1024 classes=40", "classifier", dict(B=16, P=1024, classes=40, variant="dropin"),
                          ["ours", "pyg-example"], both, 2, 1, 3, "classifier", unit="samples/s"))
        cases.append(Case("scale: VectorSelfAttention C=32 k=16 inference N=1M", "scale",
                          dict(N=1_000_000, C=32, k=16, mode="fwd"), ["ours"], single, 1, 1, 1, "scale"))
        cases.append(Case("scale: VectorSelfAttention C=32 k=16 fwd+bwd N=100k", "scale",
                          dict(N=100_000, C=32, k=16, mode="fwdbwd"), ["ours"], single, 1, 1, 2, "scale"))
    elif cuda:  # the GPU smoke test also runs the classifier (the case --precision is meant for)
        cases.append(Case("classifier train step (PyG example network) B=4 P=512 classes=40", "classifier",
                          dict(B=4, P=512, classes=40), ["ours", "pyg-example"], single, 1, 1, 2,
                          "classifier", unit="samples/s"))
    # Scene networks: grid pooling ("ours") against the same widths and depths with FPS + kNN transitions
    # (--quick: a tiny training step, only when --cases selects it: a worker process costs the smoke test seconds)
    scene_sizes = [("train", 1024)] if quick else [("train", 100_000), ("infer", 1_000_000)]
    scene_models = ["pt-scene-tiny-vector"] if quick else ["pt-scene-tiny-vector", "pt-scene-vector"]
    selected = any(word in ("scene", "pt-scene") for word in (args.cases or []))
    for mode, N in scene_sizes if selected or not quick else []:
        for model in scene_models:
            what = "train step (forward, backward, AdamW)" if mode == "train" else "inference (no_grad, one pass)"
            cases.append(Case(f"scene {what} {model} N={N}", "scene",
                              dict(model=model, mode=mode, N=N, fps_cap_s=SCENE_FPS_CAP_S), ["ours", "fps-knn"],
                              single, 1, 1, 1, "scene"))
    if cuda:    # a GPU needs larger operands than a CPU to reach its rates
        ceiling = dict(matmul_n=4096, copy_mib=1024)
    else:
        ceiling = dict(matmul_n=1024 if quick else 2048, copy_mib=256)
    cases.append(Case("machine ceiling", "ceiling", ceiling,
                      ["matmul", "copy"], single, 1, 1, 3 if quick else 5, "ceiling", unit="ceiling"))
    if quick:   # the smoke test's budget: extra memory-only processes for the main layer case only
        for case in cases:
            case.memory_probe = case.kind == "vector"
    if args.cases:
        cases = [c for c in cases if any(word in c.name or word == c.kind for word in args.cases)]
    return cases


