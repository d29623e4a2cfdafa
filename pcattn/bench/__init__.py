"""Measuring pcattn: the benchmark harness (``pcattn bench``), the reference implementations it and
the tests compare against, and the attention ablation runner (``pcattn ablate``).

Used by nothing in the library but the command line; it imports only the standard library at
module level, so ``pcattn --help`` stays instant.
"""
from .harness import add_arguments, main, run

__all__ = ["add_arguments", "run", "main"]
