"""Measuring pcattn: the benchmark (``pcattn bench``), the reference implementations it and the
tests compare against, and the attention ablation runner (``pcattn ablate``).

- :mod:`.harness`: runs the benchmark (worker subprocesses, allocators, timing, memory probes)
  and its command line;
- :mod:`.cases`: what each comparison builds, and which cases a run measures;
- :mod:`.report`: the markdown table;
- :mod:`.reference`: the plain implementations compared against (dense attention formulas,
  brute-force kNN and FPS, PyG's example network);
- :mod:`.ablation`: training variants of the attention side by side.

Used by nothing in the library but the command line; the benchmark's modules import only the
standard library at module level, so ``pcattn --help`` stays instant.
"""
from .harness import add_arguments, main, run

__all__ = ["add_arguments", "run", "main"]
