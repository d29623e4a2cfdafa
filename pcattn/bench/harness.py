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
from typing import Any, Callable, Dict, List, Optional

from .cases import BUILDERS, MIB, Case, build_cases
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


# ============================================================================ one subprocess
_OPEN3D_KINDS = ("knn", "lucidrains", "scale", "classifier", "vector", "scalar")


def worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Run one process's share of a case: build, measure the first side's memory, warm up, time interleaved."""
    import torch

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


# ============================================================================ the run
def configuration(args: argparse.Namespace) -> Dict[str, Any]:
    """What a run's numbers depend on: versions, processor, threads, allocators, date."""
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
