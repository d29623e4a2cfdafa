"""Benchmark harness: pcattn against PyG, a dense reference, lucidrains' layer and brute force.

This module runs the measurements: the worker subprocesses and their allocator settings, the
interleaved timing, the peak-memory probes, the per-case summary (medians, speedups, memory
ratios), and the command line (:func:`add_arguments`, :func:`run`, :func:`main`; ``pcattn bench``,
``python -m pcattn.bench`` and ``scripts/benchmark.py`` all land here). What each case builds is
in :mod:`.cases`, the table in :mod:`.report`, the implementations compared against in
:mod:`.reference`.

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

On a GPU (``--device cuda``) the same cases run with every module and input on the device:

- Timing: ``torch.cuda.synchronize()`` before reading the clock and after the call
  (:func:`time_call`), after at least two warm-up calls per side (CUDA's lazy start-up, cuBLAS
  handles and workspaces).
- Peak memory: ``torch.cuda.max_memory_allocated()`` minus ``torch.cuda.memory_allocated()`` just
  before the call, the peak statistics reset before it (:func:`peak_call`), around every timed call
  (max over them). It counts the allocator's live tensors, not its cache, so every side is measured
  in every process and no memory-only processes are needed.
- The glibc allocator settings do not apply: one allocator column, ``"cuda"`` (``--allocators`` is
  ignored, with a note). The memory guard defaults to three quarters of the GPU's memory.
- A side that cannot run there (a CPU-only reference, an error on the device, an out-of-memory)
  is reported with its reason instead of stopping the run.
- ``--precision bf16|fp16`` runs the forward passes of every side of the layer and classifier
  cases under ``torch.autocast`` (fp16 training steps with a gradient scaler); it works on the
  CPU too. It is in the configuration line and the JSON.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .cases import (BUILDERS, CUDA_ALLOCATOR, DEVICES, MIB, PRECISIONS, Case, build_cases, memory_budget_gib)
from .report import markdown

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


# ============================================================================ device helpers
def _is_cuda(device: Any) -> bool:
    return str(device).split(":")[0] == "cuda"


def synchronize(device: Any) -> None:
    """Wait for the work queued on ``device`` (``torch.cuda.synchronize``); nothing on the CPU."""
    if _is_cuda(device):
        import torch

        torch.cuda.synchronize(device)


def time_call(step: Callable[[], Any], device: Any = "cpu") -> float:
    """Wall-clock seconds of one ``step()``. On CUDA the device is synchronised before the clock is
    read at the start (earlier queued work is not counted) and after the call (its kernels are)."""
    cuda = _is_cuda(device)
    if cuda:
        synchronize(device)
    t0 = time.perf_counter()
    step()
    if cuda:
        synchronize(device)
    return time.perf_counter() - t0


def peak_call(step: Callable[[], Any], device: Any = "cpu") -> Tuple[int, bool, float]:
    """Run ``step()`` once; ``(peak_bytes, exact, seconds)``: the memory it needed above what was in use before.

    CPU: the process's resident high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``)
    minus the resident size before (``exact`` is ``False`` where the mark cannot be reset: then only
    a call that raises the process's all-time peak is seen). CUDA: ``torch.cuda.max_memory_allocated``
    minus ``torch.cuda.memory_allocated`` before, the peak statistics of ``device`` reset first.
    """
    if _is_cuda(device):
        import torch

        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        seconds = time_call(step, device)          # synchronises after the call: the peak is final
        return max(0, torch.cuda.max_memory_allocated(device) - before), True, seconds
    gc.collect()
    exact = _reset_peak()
    before = _rss_bytes()
    if not exact:
        before = max(before, _peak_bytes())
    seconds = time_call(step, device)
    return max(0, _peak_bytes() - before), exact, seconds


def _is_oom(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or "alloc" in text or "out of memory" in text


def _short(error: BaseException, limit: int = 120) -> str:
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ============================================================================ one subprocess
_OPEN3D_KINDS = ("knn", "lucidrains", "scale", "classifier", "vector", "scalar", "scene")
CUDA_MIN_WARMUP = 2


def worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Run one process's share of a case: build, measure the first side's memory, warm up, time interleaved.

    ``spec["device"]`` (default ``"cpu"``) and ``spec["precision"]`` (default ``"32"``) reach the
    builder as parameters. On CUDA, peaks are measured around every timed call of every side
    (:func:`peak_call`) and a side whose warm-up fails is reported with the reason, not raised.
    """
    import torch

    device, precision = spec.get("device", "cpu"), spec.get("precision", "32")
    cuda = _is_cuda(device)
    torch.set_num_threads(spec["threads"])
    if cuda:
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {device}: CUDA is not available in the worker process")
    elif spec["kind"] in _OPEN3D_KINDS:
        # pcattn imports Open3D lazily on its first large kNN; load it in setup so the memory
        # probe sees the call, not the ~170 MiB of the library. (On CUDA pcattn never uses it.)
        try:
            import open3d.core  # noqa: F401
        except Exception:
            pass
    t_setup = time.perf_counter()
    built = BUILDERS[spec["kind"]]({**spec["params"], "device": device, "precision": precision})
    synchronize(device)
    setup_s = time.perf_counter() - t_setup
    names = [n for n in spec["order"] if n in built.sides]
    result: Dict[str, Any] = {"sides": {}, "checks": {}, "extra": built.extra, "setup_s": setup_s,
                              "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
                              "threads": torch.get_num_threads(), "device": device, "precision": precision}
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
    warmup = max(CUDA_MIN_WARMUP if cuda else 1, spec["warmup"])
    for name in runnable:                        # warm-up; on the CPU the first side's first call is its memory probe
        entry = result["sides"][name]
        try:
            for i in range(warmup):
                if first and i == 0 and not cuda:
                    entry["peak_bytes"], entry["peak_exact"], _ = peak_call(built.sides[name].step, device)
                else:
                    built.sides[name].step()
            synchronize(device)                  # a failed kernel reports here, in this side's warm-up
        except (MemoryError, RuntimeError) as error:
            if _is_oom(error):
                entry["status"] = f"OOM ({type(error).__name__})"
            elif cuda:                           # e.g. a CPU-only implementation: report it, run the others
                entry["status"] = f"failed on {device}: {_short(error)}"
            else:
                raise
            if cuda:
                torch.cuda.empty_cache()
        first = False
        gc.collect()
    alive = [n for n in runnable if result["sides"][n]["status"] == "ok"]
    for it in range(spec["iters"]):
        order = alive if it % 2 == 0 else alive[::-1]
        for name in order:
            entry, side = result["sides"][name], built.sides[name]
            if cuda and side.scale == 1.0:       # cheap there: the peak of every timed call (not of a slice)
                peak, _, seconds = peak_call(side.step, device)
                entry["peak_bytes"], entry["peak_exact"] = max(peak, entry.get("peak_bytes", 0)), True
            else:
                seconds = time_call(side.step, device)
            entry["times"].append(seconds * side.scale)
    if spec["params"].get("check") and built.check is not None:
        result["checks"] = built.check()
    return result


def worker_spec(case: Case, args: argparse.Namespace, order: List[str], warmup: int, iters: int,
                check: bool) -> Dict[str, Any]:
    """What one worker process of ``case`` is told (JSON): builder kind and parameters, sides in order,
    calls, threads, device and precision."""
    return {"kind": case.kind, "params": {**case.params, "sides": case.sides, "check": check}, "order": order,
            "warmup": warmup, "iters": iters, "threads": args.threads,
            "device": getattr(args, "device", "cpu"), "precision": getattr(args, "precision", "32")}


def _run_worker_process(spec: Dict[str, Any], allocator: str, timeout: float) -> Dict[str, Any]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    env.update({} if allocator == CUDA_ALLOCATOR else ALLOCATORS[allocator])
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


# ============================================================================ one case, all its processes
def _summarise(times: List[float]) -> Dict[str, Any]:
    if not times:
        return {}
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


def run_case(case: Case, allocator: str, args: argparse.Namespace, log: Callable[[str], None]) -> Dict[str, Any]:
    """Run ``case`` under ``allocator`` in its worker processes; the JSON record of its sides and ratios."""
    sides = case.sides
    record: Dict[str, Any] = {"name": case.name, "kind": case.kind, "group": case.group, "unit": case.unit,
                              "allocator": allocator, "params": case.params, "sides": {}, "checks": {},
                              "extra": {}, "errors": []}
    times: Dict[str, List[float]] = {s: [] for s in sides}
    peaks: Dict[str, List[int]] = {s: [] for s in sides}
    status: Dict[str, str] = {}
    notes: Dict[str, str] = {}

    def launch(order: List[str], warmup: int, iters: int, check: bool) -> None:
        spec = worker_spec(case, args, order, warmup, iters, check)
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


# ============================================================================ the run
def configuration(args: argparse.Namespace) -> Dict[str, Any]:
    """What a run's numbers depend on: versions, processor, device, precision, threads, allocators, date."""
    import torch

    device = getattr(args, "device", "cpu")
    config: Dict[str, Any] = {"torch": torch.__version__}
    if _is_cuda(device):
        config["cuda"] = torch.version.cuda
    config.update({"python": platform.python_version(), "machine": platform.machine(),
                   "cpus": os.cpu_count(), "threads": args.threads, "quick": args.quick})
    if _is_cuda(device):
        props = torch.cuda.get_device_properties(device)
        config["device"] = f"cuda ({torch.cuda.get_device_name(device)}, {props.total_memory / 1024 ** 3:.0f} GiB)"
        config["precision"] = getattr(args, "precision", "32")
        config["allocators"] = CUDA_ALLOCATOR
        config["memory_budget_gib"] = round(memory_budget_gib(args), 1)
    else:
        config["device"] = "cpu"
        config["precision"] = getattr(args, "precision", "32")
        config["allocators"] = "/".join(args.allocators)
    config.update({"processor": _cpu_name(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())})
    return config


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
DEFAULT_ALLOCATORS = ["default", "tuned"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark's options (shared by ``pcattn bench`` and ``scripts/benchmark.py``)."""
    parser.add_argument("--quick", action="store_true",
                        help="small subset (smoke test): under a minute on the CPU, about two with --device cuda")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="run every case (every side, PyG's included) on this device (default cpu)")
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="32",
                        help="32 (default): float32; bf16 / fp16: torch.autocast around the forward passes of "
                             "every side of the layer and classifier cases (fp16 training with a gradient scaler)")
    parser.add_argument("--out", default="benchmark.json", help="JSON results file (default benchmark.json)")
    parser.add_argument("--markdown", default=None, help="also write the markdown table to this file")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every process (default 2)")
    parser.add_argument("--processes", type=int, default=0,
                        help="timing processes per case and allocator (default 3, --quick 1)")
    parser.add_argument("--allocators", nargs="+", default=list(DEFAULT_ALLOCATORS), choices=sorted(ALLOCATORS),
                        help="glibc settings to run every comparison under (CPU only: --device cuda runs one "
                             "'cuda' column)")
    parser.add_argument("--cases", nargs="*", default=None,
                        help="only cases whose name contains one of these words (or kind: vector, lucidrains, "
                             "scalar, knn, fps, classifier, scale, ceiling, scene; e.g. --cases scene runs the "
                             "scene networks' rows alone)")
    parser.add_argument("--memory-budget-gib", type=float, default=None,
                        help="do not run a side estimated to need more (reported as OOM-guard); default 4 on "
                             "the CPU, three quarters of the GPU's memory with --device cuda")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per subprocess")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the markdown table, write JSON. Returns a process exit code."""
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    device = getattr(args, "device", "cpu")
    if _is_cuda(device):
        import torch

        if not torch.cuda.is_available():
            build = f"a build without CUDA: {torch.__version__}" if torch.version.cuda is None else "no GPU visible"
            print(f"pcattn bench: error: --device {device}: CUDA is not available ({build}); "
                  "use --device cpu", file=sys.stderr)
            return 2
        if args.memory_budget_gib is None:
            args.memory_budget_gib = 0.75 * torch.cuda.get_device_properties(device).total_memory / 1024 ** 3
        if list(args.allocators) != DEFAULT_ALLOCATORS:
            print("note: --allocators sets glibc's allocator of the CPU and is ignored with --device cuda "
                  f"(one '{CUDA_ALLOCATOR}' column)", flush=True)
    cases = build_cases(args)
    if not cases:
        every = build_cases(argparse.Namespace(**{**vars(args), "cases": None}))
        kinds = sorted({case.kind for case in every})
        print(f"pcattn bench: error: --cases {' '.join(args.cases)} matches no case; give a word of a case name "
              f"or a kind ({', '.join(kinds)}); names: " + "; ".join(case.name for case in every), file=sys.stderr)
        return 2
    config = configuration(args)
    print("pcattn benchmark: " + ", ".join(f"{k}={v}" for k, v in config.items()), flush=True)
    start = time.perf_counter()
    results = []
    for case in cases:
        for allocator in case.allocators:
            t0 = time.perf_counter()
            record = run_case(case, allocator, args, print)
            results.append(record)
            ratios = ", ".join(f"{n} {r['speedup']:.2f}x" for n, r in record["ratios"].items())
            skipped = "; ".join(f"{n}: {e['status']}" for n, e in record["sides"].items()
                                if e["status"] != "ok" and e["status"] not in record["errors"])
            print(f"  {case.name} [{allocator}] {time.perf_counter() - t0:.1f} s  {ratios}"
                  + (f"  not run: {skipped}" if skipped else "")
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
