"""Benchmark harness: pcattn against PyG, a dense reference, lucidrains' layer and brute force.

``pcattn bench`` / ``scripts/benchmark.py`` call :func:`add_arguments` and :func:`run`.

How a number is made (why each step is there):

- Every case runs in fresh subprocesses (``python -m pcattn.bench --worker SPEC``), so one
  case's peak memory and allocator state cannot leak into the next.
- Every comparison runs twice: with glibc's default allocator and with
  ``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736`` (set in the
  subprocess environment, for both sides). With the defaults, tensors over 32 MiB get fresh
  zeroed pages from the kernel on every allocation; the tuned setting keeps them in the heap.
- In a process the sides are built first (same weights, same inputs, kNN precomputed), then
  warmed up, then timed interleaved: A B C, C B A, A B C, ... so a stall of the shared machine
  hits every side alike. ``--processes`` such processes per case; min / median / max over all.
- Peak memory of a side: the process's resident high-water mark (``VmHWM``, reset by writing
  ``5`` to ``/proc/self/clear_refs``) during the side's *first* call in a process where it runs
  first, minus the resident size after setup. The first side of each process is rotated; a side
  that never ran first gets a short memory-only process.
- Speedup = their median time / our median time (> 1: ours faster). Memory ratio = our peak /
  their peak (< 1: ours smaller).
- Where the other side would take minutes (brute force at 100k+ points) it runs on a slice and
  is extrapolated (marked "estimated"); where it would need more memory than
  ``--memory-budget-gib`` (lucidrains' layer builds every N x N pair) it is not run and the
  table says "OOM-guard (needs X GiB)".
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

GIB = 1024 ** 3
MIB = 1024 ** 2
ALLOCATORS: Dict[str, Dict[str, str]] = {
    "default": {},
    "tuned": {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736"},
}
_MARK = "PCATTN-BENCH-RESULT "


# ============================================================================ memory probes
def _status_kib(field_name: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's resident high-water mark (Linux >= 4.0); ``False`` if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_bytes() -> int:
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource  # fallback: ru_maxrss never resets, so it is only right for the first side

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ============================================================================ sides of a case
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
    sides: Dict[str, Side]
    # Max abs differences against "ours"; run after the timing so the memory probe sees a fresh heap.
    check: Optional[Callable[[], Dict[str, float]]] = None
    extra: Dict[str, Any] = field(default_factory=dict)      # e.g. FLOPs per call


def _torch():
    import torch

    return torch


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
    torch.manual_seed(0)
    n = B * P
    pos = torch.rand(n, 3)
    batch = torch.arange(B).repeat_interleave(P)
    x = torch.randn(n, C, requires_grad=(mode == "fwdbwd"))
    if maths == "paper":
        conv = PointTransformerConv(C, C, pos_nn=pyg_mlp([3, 64, C]), attn_nn=pyg_mlp([C, 64, C]))
    else:
        conv = PointTransformerConv(C, C)
    neighbors = knn(pos, k, batch)                                    # (N, k), shared by every side
    edge_index = neighbors_to_edge_index(neighbors)
    ours = VectorSelfAttention.from_pyg(conv, k=k)
    dense = DenseVectorAttention.from_pyg(conv)
    grad_out = torch.randn(n, C)

    calls = {
        "ours": (lambda: ours(x, pos, neighbors=neighbors), list(ours.parameters())),
        "pyg": (lambda: conv(x, pos, edge_index), list(conv.parameters())),
        "dense": (lambda: dense(x, pos, neighbors), list(dense.parameters())),
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
    torch.manual_seed(0)
    pos = torch.rand(B, P, 3)
    x = torch.randn(B, P, C, requires_grad=(mode == "fwdbwd"))
    grad_out = torch.randn(B, P, C)
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
    sides["ours"] = Side(_fwd_or_fwdbwd(lambda: ours(x, pos), list(ours.parameters()), [x], mode, grad_out))
    if theirs is not None and "lucidrains" not in sides:
        sides["lucidrains"] = Side(_fwd_or_fwdbwd(lambda: theirs(x, pos), list(theirs.parameters()), [x], mode, grad_out))
    built = Built({name: sides[name] for name in ("ours", "lucidrains")},
                  extra={"lucidrains_estimated_gib": round(need / GIB, 2)})
    if built.sides["lucidrains"].step is not None:
        def check() -> Dict[str, float]:
            with torch.no_grad():
                return {"max|ours-lucidrains| out": float((ours(x, pos) - theirs(x, pos)).abs().max())}
        built.check = check
    return built


def _build_scalar(p: Dict[str, Any]) -> Built:
    """ScalarSelfAttention (kNN groups or whole cloud) vs the straightforward formula."""
    torch = _torch()
    from pcattn import ScalarSelfAttention
    from pcattn.nn.geometry import knn
    from pcattn.bench.reference import global_attention_reference, scalar_attention_reference

    B, P, C, k, mode = p["B"], p["P"], p["C"], p["k"], p["mode"]
    torch.manual_seed(0)
    layer = ScalarSelfAttention(C, C, k=k, heads=4)
    pos = torch.rand(B, P, 3)
    x = torch.randn(B, P, C, requires_grad=(mode == "fwdbwd"))
    grad_out = torch.randn(B, P, C)
    params = list(layer.parameters())
    if k is None:
        ours_call = lambda: layer(x, pos)                                         # noqa: E731
        ref_call = lambda: global_attention_reference(layer, x, pos)              # noqa: E731
    else:
        neighbors = knn(pos.reshape(-1, 3), k, torch.arange(B).repeat_interleave(P))
        flat_pos = pos.reshape(-1, 3)
        ours_call = lambda: layer(x.reshape(-1, C), flat_pos, neighbors=neighbors).view(B, P, C)      # noqa: E731
        ref_call = lambda: scalar_attention_reference(layer, x.reshape(-1, C), flat_pos, neighbors).view(B, P, C)  # noqa: E731
    def check() -> Dict[str, float]:
        with torch.no_grad():
            return {"max|ours-reference| out": float((ours_call() - ref_call()).abs().max())}

    return Built({"ours": Side(_fwd_or_fwdbwd(ours_call, params, [x], mode, grad_out)),
                  "reference": Side(_fwd_or_fwdbwd(ref_call, params, [x], mode, grad_out))}, check=check)


def brute_knn(pos, k: int, queries=None, chunk: int = 2048):
    """Torch brute force: cdist + topk over chunks of query rows, ``(M, k)``."""
    torch = _torch()
    queries = pos if queries is None else queries
    out = []
    for start in range(0, queries.shape[0], chunk):
        dist = torch.cdist(queries[start:start + chunk], pos)
        out.append(dist.topk(k, dim=1, largest=False).indices)
    return torch.cat(out)


def brute_fps(pos, count: int, iterations: Optional[int] = None):
    """The textbook loop: keep the distance to the chosen set, pick its argmax, ``count`` times."""
    torch = _torch()
    n = pos.shape[0]
    chosen = torch.empty(count, dtype=torch.long)
    nearest = torch.full((n,), float("inf"))
    last = 0
    for i in range(iterations or count):
        chosen[i] = last
        nearest = torch.minimum(nearest, ((pos - pos[last]) ** 2).sum(dim=1))
        last = int(nearest.argmax())
    return chosen


def _build_knn(p: Dict[str, Any]) -> Built:
    torch = _torch()
    from pcattn.nn.geometry import knn

    N, k = p["N"], p["k"]
    torch.manual_seed(0)
    if p.get("B"):  # a batch of B clouds of N points (the layer cases' neighbourhoods): brute force per cloud
        clouds = torch.rand(p["B"], N, 3)
        sides = {"ours": Side(lambda: knn(clouds, k)),
                 "brute": Side(lambda: [brute_knn(cloud, k) for cloud in clouds])}

        def batch_check() -> Dict[str, float]:
            ours, cloud = knn(clouds, k)[-1], clouds[-1]
            theirs = brute_knn(cloud, k)
            d_ours, d_theirs = ((cloud[i] - cloud[:, None]).norm(dim=-1) for i in (ours, theirs))
            return {"max|dist ours-brute| (last cloud)": float((d_ours.sort(1).values
                                                                 - d_theirs.sort(1).values).abs().max())}
        return Built(sides, check=batch_check)
    pos = torch.rand(N, 3)
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


def _build_fps(p: Dict[str, Any]) -> Built:
    torch = _torch()
    from pcattn.nn.geometry import farthest_point_sampling

    N, M = p["N"], p["M"]
    torch.manual_seed(0)
    pos = torch.rand(N, 3)
    sides = {"ours": Side(lambda: farthest_point_sampling(pos, count=M))}
    limit = p["brute_fps_iters"]
    if M > limit:
        sides["brute"] = Side(lambda: brute_fps(pos, M, iterations=limit), scale=M / limit,
                              note=f"estimated from {limit} of {M} iterations")
    else:
        sides["brute"] = Side(lambda: brute_fps(pos, M))
    def check() -> Dict[str, float]:
        m = min(M, 64)
        ours = farthest_point_sampling(pos, count=M)[:m]
        theirs = brute_fps(pos, M, iterations=m)[:m]
        return {"fps: first 64 indices differing": float((ours != theirs).sum())}

    return Built(sides, check=check)


def _build_classifier(p: Dict[str, Any]) -> Built:
    """One training step (forward, loss, backward, AdamW) of PyG's example network, built with
    PyG's ``PointTransformerConv`` and with pcattn's layer in its place (same weights, same maths)."""
    torch = _torch()
    import torch.nn.functional as F

    from pcattn.bench.reference import PyGPointTransformerNet, pcattn_version

    B, P, classes = p["B"], p["P"], p["classes"]
    torch.manual_seed(0)
    pos = torch.rand(B, P, 3) * 2 - 1
    labels = torch.randint(0, classes, (B,))
    flat = pos.reshape(-1, 3)
    batch = torch.arange(B).repeat_interleave(P)
    theirs = PyGPointTransformerNet(3, classes, layer="pyg").train()
    ours = pcattn_version(theirs).train()
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-3)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-3)

    def step(model, optimizer):
        def run():
            optimizer.zero_grad(set_to_none=True)
            F.nll_loss(model(flat, flat, batch), labels).backward()
            optimizer.step()
        return run

    with torch.no_grad():  # compared before any step: training makes the two copies drift apart
        ours.eval(), theirs.eval()
        difference = float((ours(flat, flat, batch) - theirs(flat, flat, batch)).abs().max())
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
    torch.manual_seed(0)
    layer = VectorSelfAttention(C, C, k=k)
    pos = torch.rand(N, 3)
    x = torch.randn(N, C, requires_grad=(mode == "fwdbwd"))
    return Built({"ours": Side(_fwd_or_fwdbwd(lambda: layer(x, pos), list(layer.parameters()), [x], mode))})


def _build_ceiling(p: Dict[str, Any]) -> Built:
    """The machine's own rates: float32 matmul (GFLOP/s) and a large copy (GB/s, read + write)."""
    torch = _torch()
    n, copy_mib = p["matmul_n"], p["copy_mib"]
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    src = torch.randn(copy_mib * MIB // 4)
    dst = torch.empty_like(src)
    return Built({"matmul": Side(lambda: torch.mm(a, b, out=c)), "copy": Side(lambda: dst.copy_(src))},
                 extra={"matmul_flops": 2.0 * n ** 3, "copy_bytes": 2.0 * copy_mib * MIB})


BUILDERS: Dict[str, Callable[[Dict[str, Any]], Built]] = {
    "vector": _build_vector, "lucidrains": _build_lucidrains, "scalar": _build_scalar, "knn": _build_knn,
    "fps": _build_fps, "classifier": _build_classifier, "scale": _build_scale, "ceiling": _build_ceiling,
}


# ============================================================================ one subprocess
_OPEN3D_KINDS = ("knn", "lucidrains", "scale", "classifier", "vector", "scalar")


def worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Run one process's share of a case: build, measure the first side's memory, warm up, time interleaved."""
    torch = _torch()
    torch.set_num_threads(spec["threads"])
    if spec["kind"] in _OPEN3D_KINDS:
        # pcattn imports Open3D lazily on its first large kNN; load it in setup so the memory
        # probe sees the call, not the ~170 MiB of the library.
        try:
            import open3d.core  # noqa: F401
        except Exception:
            pass
    t_setup = time.perf_counter()
    built = BUILDERS[spec["kind"]](dict(spec["params"]))
    setup_s = time.perf_counter() - t_setup
    names = [n for n in spec["order"] if n in built.sides]
    result: Dict[str, Any] = {"sides": {}, "checks": {}, "extra": built.extra, "setup_s": setup_s,
                              "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
                              "threads": torch.get_num_threads()}
    runnable = []
    for name in names:
        side = built.sides[name]
        entry = {"times": [], "scale": side.scale, "note": side.note}
        if side.skip or side.step is None:
            entry["status"] = side.skip or "skipped"
        else:
            entry["status"] = "ok"
            runnable.append(name)
        result["sides"][name] = entry
    first = True
    for name in runnable:                        # warm-up; the first side's first call is its memory probe
        entry = result["sides"][name]
        try:
            for i in range(max(1, spec["warmup"])):
                if first and i == 0:
                    gc.collect()
                    exact = _reset_peak()
                    before = _rss_bytes()
                    if not exact:
                        before = max(before, _peak_bytes())
                    built.sides[name].step()
                    entry["peak_bytes"] = max(0, _peak_bytes() - before)
                    entry["peak_exact"] = exact
                else:
                    built.sides[name].step()
        except (MemoryError, RuntimeError) as error:
            if isinstance(error, RuntimeError) and "alloc" not in str(error).lower():
                raise
            entry["status"] = f"OOM ({type(error).__name__})"
        first = False
        gc.collect()
    alive = [n for n in runnable if result["sides"][n]["status"] == "ok"]
    for it in range(spec["iters"]):
        order = alive if it % 2 == 0 else alive[::-1]
        for name in order:
            t0 = time.perf_counter()
            built.sides[name].step()
            result["sides"][name]["times"].append((time.perf_counter() - t0) * built.sides[name].scale)
    if spec["params"].get("check") and built.check is not None:
        result["checks"] = built.check()
    return result


def _run_worker_process(spec: Dict[str, Any], allocator: str, timeout: float) -> Dict[str, Any]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    env.update(ALLOCATORS[allocator])
    env["OMP_NUM_THREADS"] = str(spec["threads"])
    env["MKL_NUM_THREADS"] = str(spec["threads"])
    cmd = [sys.executable, "-m", "pcattn.bench", "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):])
    if proc.returncode < 0 or proc.returncode == 137:
        return {"error": f"killed (signal {-proc.returncode if proc.returncode < 0 else 9}; OOM?)"}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}


# ============================================================================ cases and the run
@dataclass
class Case:
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


def build_cases(args: argparse.Namespace) -> List[Case]:
    quick = args.quick
    both = list(args.allocators)
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
    budget = args.memory_budget_gib
    lucid_sizes = [(1, 256)] if quick else [(1, 1024), (1, 4096), (B, P)]
    for lb, lp in lucid_sizes:
        # Where the guard will refuse lucidrains' side, only ours runs: once, one allocator.
        guarded = lucidrains_bytes(lb, lp, C) > budget * GIB
        cases.append(Case(f"vector paper-maths fwdbwd B={lb} P={lp} (kNN inside)", "lucidrains",
                          dict(B=lb, P=lp, C=C, k=k, mode="fwdbwd", memory_budget_gib=budget),
                          ["ours", "lucidrains"], ["default"] if quick or guarded else both,
                          1 if quick or guarded else 2, 1, 2 if quick else 3, "layers"))
    for sk in (16, None):
        sB, sP = (2, 256) if quick else (B, P)
        cases.append(Case(f"scalar k={sk or 'all'} fwdbwd B={sB} P={sP} C={C}", "scalar",
                          dict(B=sB, P=sP, C=C, k=sk, mode="fwdbwd"), ["ours", "reference"],
                          both if not quick else ["default"], 1 if quick else 2, 1, 2 if quick else 4, "layers"))
    sizes = [1000] if quick else [1000, 16000, 100000, 1000000]
    geo_alloc = ["default"] if quick else both
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
        cases.append(Case("scale: VectorSelfAttention C=32 k=16 inference N=1M", "scale",
                          dict(N=1_000_000, C=32, k=16, mode="fwd"), ["ours"], ["default"], 1, 1, 1, "scale"))
        cases.append(Case("scale: VectorSelfAttention C=32 k=16 fwd+bwd N=100k", "scale",
                          dict(N=100_000, C=32, k=16, mode="fwdbwd"), ["ours"], ["default"], 1, 1, 2, "scale"))
    cases.append(Case("machine ceiling", "ceiling", dict(matmul_n=1024 if quick else 2048, copy_mib=256),
                      ["matmul", "copy"], ["default"], 1, 1, 3 if quick else 5, "ceiling", unit="ceiling"))
    if quick:   # the smoke test's budget: extra memory-only processes for the main layer case only
        for case in cases:
            case.memory_probe = case.kind == "vector"
    if args.cases:
        cases = [c for c in cases if any(word in c.name or word == c.kind for word in args.cases)]
    return cases


def _summarise(times: List[float]) -> Dict[str, Any]:
    if not times:
        return {}
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


def run_case(case: Case, allocator: str, args: argparse.Namespace, log: Callable[[str], None]) -> Dict[str, Any]:
    sides = case.sides
    record: Dict[str, Any] = {"name": case.name, "kind": case.kind, "group": case.group, "unit": case.unit,
                              "allocator": allocator, "params": case.params, "sides": {}, "checks": {},
                              "extra": {}, "errors": []}
    times: Dict[str, List[float]] = {s: [] for s in sides}
    peaks: Dict[str, List[int]] = {s: [] for s in sides}
    status: Dict[str, str] = {}
    notes: Dict[str, str] = {}

    def launch(order: List[str], warmup: int, iters: int, check: bool) -> None:
        spec = {"kind": case.kind, "params": {**case.params, "sides": sides, "check": check}, "order": order,
                "warmup": warmup, "iters": iters, "threads": args.threads}
        out = _run_worker_process(spec, allocator, args.timeout)
        if "error" in out:
            record["errors"].append(out["error"])
            for name in order:
                status.setdefault(name, out["error"])
            return
        record["checks"].update(out.get("checks", {}))
        record["malloc_env"], record["threads"] = out.get("malloc_env"), out.get("threads")
        record["extra"].update(out.get("extra", {}))
        for name, entry in out["sides"].items():
            times[name].extend(entry["times"])
            if entry["status"] != "ok":
                status[name] = entry["status"]      # a failure in any process is the side's status
            else:
                status.setdefault(name, "ok")
            if entry.get("note"):
                notes[name] = entry["note"]
            if "peak_bytes" in entry:
                peaks[name].append(entry["peak_bytes"])

    for r in range(case.processes):
        order = sides[r % len(sides):] + sides[:r % len(sides)]
        launch(order, case.warmup, case.iters, check=(r == 0 and allocator == case.allocators[0]))
    if case.unit != "ceiling" and case.memory_probe:
        for name in sides:                      # memory-only processes for sides that never ran first
            if not peaks[name] and status.get(name) == "ok" and not notes.get(name):
                launch([name], 1, 0, check=False)
    for name in sides:
        entry = {"status": status.get(name, "not run"), **_summarise(times[name])}
        if notes.get(name):
            entry["note"] = notes[name]
        if peaks[name]:
            entry["peak_mib"] = max(peaks[name]) / MIB
        record["sides"][name] = entry
    ours = record["sides"].get("ours", {})
    ratios = {}
    for name, entry in record["sides"].items():
        if name == "ours" or "median_s" not in entry or "median_s" not in ours:
            continue
        ratio = {"speedup": entry["median_s"] / ours["median_s"]}
        if ours.get("peak_mib") and entry.get("peak_mib"):
            ratio["memory_ratio"] = ours["peak_mib"] / entry["peak_mib"]
        ratios[name] = ratio
    record["ratios"] = ratios
    if case.unit == "samples/s":
        B = case.params["B"]
        for entry in record["sides"].values():
            if "median_s" in entry:
                entry["samples_per_s"] = B / entry["median_s"]
    if case.unit == "ceiling":
        extra = record["extra"]
        if "median_s" in record["sides"].get("matmul", {}):
            extra["matmul_gflops"] = extra["matmul_flops"] / record["sides"]["matmul"]["min_s"] / 1e9
        if "median_s" in record["sides"].get("copy", {}):
            extra["copy_gbs"] = extra["copy_bytes"] / record["sides"]["copy"]["min_s"] / 1e9
    if "flops" in record["extra"] and "median_s" in ours:
        record["extra"]["ours_gflops"] = record["extra"]["flops"] / ours["median_s"] / 1e9
    return record


# ============================================================================ report
def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    if value < 600:
        return f"{value:.2f} s"
    return f"{value / 60:.0f} min"


def _fmt_time(entry: Dict[str, Any]) -> str:
    if "median_s" not in entry:
        return entry.get("status", "n/a")
    if entry.get("note"):          # extrapolated: one number is all it is worth
        return f"~{_seconds(entry['median_s'])} est."
    if entry["n"] == 1:
        return _seconds(entry["median_s"])
    return f"{_seconds(entry['median_s'])} ({_seconds(entry['min_s'])}-{_seconds(entry['max_s'])})"


def targets(results: List[Dict[str, Any]]) -> List[str]:
    """Issue 5's targets, read off this run's numbers: one line each, met or not."""
    lines = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for rec in results:
        ratio = rec["ratios"].get("pyg", {})
        if rec["kind"] == "vector" and rec["params"]["mode"] == "fwdbwd" and "speedup" in ratio:
            need = 3.0 if rec["allocator"] == "default" else 2.0
            text = (f"- {rec['name']} [{rec['allocator']}]: {ratio['speedup']:.2f}x faster than PyG "
                    f"(target {need:.0f}x: {verdict(ratio['speedup'] >= need)})")
            if rec["allocator"] == "default" and "memory_ratio" in ratio:
                text += f"; memory {ratio['memory_ratio']:.2f} of PyG's (target <= 0.33: " \
                        f"{verdict(ratio['memory_ratio'] <= 1 / 3)})"
            lines.append(text)
        if rec["kind"] == "classifier" and "speedup" in rec["ratios"].get("pyg-example", {}):
            value = rec["ratios"]["pyg-example"]["speedup"]
            lines.append(f"- classifier training [{rec['allocator']}]: PyG's example network trains at {value:.2f}x "
                         f"the samples/s with pcattn's layer in place of PointTransformerConv "
                         f"(target 2x: {verdict(value >= 2)})")
        if rec["kind"] == "scale" and rec["sides"]["ours"].get("peak_mib"):
            gib = rec["sides"]["ours"]["peak_mib"] / 1024
            lines.append(f"- {rec['name']}: peak {gib:.2f} GiB (target <= 8 GiB: {verdict(gib <= 8)}), "
                         f"{_fmt_time(rec['sides']['ours'])}")
        if rec["kind"] == "knn" and rec["params"]["N"] >= 1_000_000 and "median_s" in rec["sides"]["ours"]:
            lines.append(f"- kNN of 1M points [{rec['allocator']}]: {_seconds(rec['sides']['ours']['median_s'])} "
                         f"(target: seconds, not minutes: {verdict(rec['sides']['ours']['median_s'] < 60)})")
    return lines


def _fmt_mem(entry: Dict[str, Any]) -> str:
    return f"{entry['peak_mib']:.0f}" if entry.get("peak_mib") is not None else "-"


def markdown(results: List[Dict[str, Any]], config: Dict[str, Any]) -> str:
    lines = ["## pcattn benchmark", "",
             "Configuration: " + ", ".join(f"{k}={v}" for k, v in config.items()), "",
             "Times in ms: median (min-max) over all timed calls of all processes. Speedup = theirs / ours "
             "(> 1: ours faster); memory = our peak / their peak (< 1: ours smaller). Peaks in MiB above the "
             "process's resident size after setup (first call in a fresh process). `est.` = extrapolated from a "
             "slice of the work. check = max abs difference of outputs (and input gradients) against ours.", "",
             "| case | allocator | ours time | ours MiB | other | other time | other MiB | speedup | memory | check |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    extras = []
    for rec in results:
        sides = rec["sides"]
        if rec["unit"] == "ceiling":
            ex = rec["extra"]
            extras.append(f"- Machine ceiling ({rec['allocator']}): matmul {rec['params']['matmul_n']}^2 float32 "
                          f"{ex.get('matmul_gflops', float('nan')):.1f} GFLOP/s; copy {rec['params']['copy_mib']} MiB "
                          f"{ex.get('copy_gbs', float('nan')):.1f} GB/s (read + write), best of "
                          f"{sides.get('matmul', {}).get('n', 0)}.")
            continue
        ours = sides.get("ours", {})
        checks = "; ".join(f"{k} {v:.1e}" for k, v in rec["checks"].items())
        others = [n for n in sides if n != "ours"]
        if not others:
            lines.append(f"| {rec['name']} | {rec['allocator']} | {_fmt_time(ours)} | {_fmt_mem(ours)} "
                         f"| - | - | - | - | - | {checks} |")
        for name in others:
            entry, ratio = sides[name], rec["ratios"].get(name, {})
            speed = f"{ratio['speedup']:.2f}x" if "speedup" in ratio else "-"
            mem = f"{ratio['memory_ratio']:.2f}" if "memory_ratio" in ratio else "-"
            lines.append(f"| {rec['name']} | {rec['allocator']} | {_fmt_time(ours)} | {_fmt_mem(ours)} | {name} "
                         f"| {_fmt_time(entry)} | {_fmt_mem(entry)} | {speed} | {mem} | {checks} |")
        if rec["unit"] == "samples/s" and "samples_per_s" in ours:
            rates = ", ".join(f"{n} {e['samples_per_s']:.1f}" for n, e in sides.items() if "samples_per_s" in e)
            extras.append(f"- Classifier training samples/s ({rec['allocator']}): {rates}.")
        if "ours_gflops" in rec["extra"]:
            extras.append(f"- {rec['name']} ({rec['allocator']}): ours ~{rec['extra']['ours_gflops']:.1f} GFLOP/s "
                          "(rough FLOP count).")
        for error in rec.get("errors", []):
            extras.append(f"- {rec['name']} ({rec['allocator']}): {error}")
    goal = targets(results)
    if goal:
        extras += ["", "Targets of issue 5 in this run:"] + goal
    return "\n".join(lines + [""] + extras) + "\n"


def configuration(args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    return {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "threads": args.threads, "quick": args.quick,
            "allocators": "/".join(args.allocators),
            "processor": _cpu_name(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ============================================================================ public entry points
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark's options (shared by ``pcattn bench`` and ``scripts/benchmark.py``)."""
    parser.add_argument("--quick", action="store_true", help="small subset, under a minute (smoke test)")
    parser.add_argument("--out", default="benchmark.json", help="JSON results file (default benchmark.json)")
    parser.add_argument("--markdown", default=None, help="also write the markdown table to this file")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every process (default 2)")
    parser.add_argument("--processes", type=int, default=0,
                        help="timing processes per case and allocator (default 3, --quick 1)")
    parser.add_argument("--allocators", nargs="+", default=["default", "tuned"], choices=sorted(ALLOCATORS),
                        help="glibc settings to run every comparison under")
    parser.add_argument("--cases", nargs="*", default=None,
                        help="only cases whose name contains one of these words (or kind: vector, lucidrains, "
                             "scalar, knn, fps, classifier, scale, ceiling)")
    parser.add_argument("--memory-budget-gib", type=float, default=4.0,
                        help="do not run a side estimated to need more (reported as OOM-guard)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per subprocess")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the markdown table, write JSON. Returns a process exit code."""
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    config = configuration(args)
    print("pcattn benchmark: " + ", ".join(f"{k}={v}" for k, v in config.items()), flush=True)
    start = time.perf_counter()
    results = []
    for case in build_cases(args):
        for allocator in case.allocators:
            t0 = time.perf_counter()
            record = run_case(case, allocator, args, print)
            results.append(record)
            ratios = ", ".join(f"{n} {r['speedup']:.2f}x" for n, r in record["ratios"].items())
            print(f"  {case.name} [{allocator}] {time.perf_counter() - t0:.1f} s  {ratios}"
                  + (f"  errors: {record['errors']}" if record["errors"] else ""), flush=True)
    config["wall_s"] = round(time.perf_counter() - start, 1)
    table = markdown(results, config)
    print()
    print(table)
    with open(args.out, "w") as handle:
        json.dump({"config": config, "cases": results}, handle, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(table)
    print(f"wrote {args.out} ({config['wall_s']} s)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pcattn-bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        result = worker(json.loads(args.worker))
        print(_MARK + json.dumps(result), flush=True)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
