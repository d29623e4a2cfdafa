"""The benchmark's report: a run's results (the harness's JSON records) as a markdown table.

One row per case, allocator and other side: our time and peak, theirs, the speedup (their median
time / ours) and the memory ratio (our peak / theirs), and the correctness checks; then notes
(extrapolations, GFLOP/s, samples/s, the machine ceiling, errors). It reports measurements only:
the goals they are read against are stated in the README.
"""
from __future__ import annotations

from typing import Any, Dict, List


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


def _fmt_mem(entry: Dict[str, Any]) -> str:
    return f"{entry['peak_mib']:.0f}" if entry.get("peak_mib") is not None else "-"


def markdown(results: List[Dict[str, Any]], config: Dict[str, Any]) -> str:
    """The report of ``results`` (records of :func:`pcattn.bench.harness.run_case`) run under ``config``.

    ``config["device"]`` (``"cpu"``, or ``"cuda (GPU name, memory)"``) picks how peaks are described
    and names the ceiling; ``config["precision"]`` other than ``"32"`` adds a note.
    """
    cuda = str(config.get("device", "cpu")).startswith("cuda")
    if cuda:
        peaks = ("Peaks in MiB: torch.cuda.max_memory_allocated during a timed call above the memory allocated "
                 "just before it (max over the timed calls; tensors only, not the allocator's cache).")
    else:
        peaks = ("Peaks in MiB above the process's resident size after setup (first call in a fresh process).")
    lines = ["## pcattn benchmark", "",
             "Configuration: " + ", ".join(f"{k}={v}" for k, v in config.items()), "",
             "Times in ms: median (min-max) over all timed calls of all processes. Speedup = theirs / ours "
             "(> 1: ours faster); memory = our peak / their peak (< 1: ours smaller). " + peaks + " `est.` = "
             "extrapolated from a slice of the work. check = max abs difference of outputs (and input gradients) "
             "against ours.", "",
             "| case | allocator | ours time | ours MiB | other | other time | other MiB | speedup | memory | check |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    extras = []
    precision = str(config.get("precision", "32"))
    if precision != "32":
        extras.append(f"- Precision {precision}: torch.autocast around the forward passes of every side of the "
                      "layer and classifier cases (their checks too); geometry and ceiling in float32.")
    for rec in results:
        sides = rec["sides"]
        if rec["unit"] == "ceiling":
            ex = rec["extra"]
            extras.append(f"- {'GPU' if cuda else 'Machine'} ceiling ({rec['allocator']}): matmul "
                          f"{rec['params']['matmul_n']}^2 float32 "
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
    return "\n".join(lines + [""] + extras) + "\n"


