"""Where a run computes and in what precision: the device, the autocast context and the gradient scaler.

Precision names: ``"32"`` (float32, no autocast), ``"bf16"`` (``torch.autocast`` to bfloat16, no
scaler: bfloat16 has float32's range) and ``"fp16"`` (autocast to float16 with a
``torch.amp.GradScaler``, whose state a checkpoint keeps). ``None`` means the device's default:
``"fp16"`` on CUDA, ``"32"`` on the CPU.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import ContextManager, Iterator, Optional

import torch

__all__ = ["PRECISIONS", "resolve_device", "resolve_precision", "autocast", "grad_scaler",
           "deterministic_algorithms"]

PRECISIONS = ("32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda' (optionally 'cuda:N'), got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA GPU (use --device cpu or auto)")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return resolved


def check_precision_name(precision: Optional[str]) -> Optional[str]:
    """``precision`` as one of :data:`PRECISIONS` (or ``None``); a ``ValueError`` names the others."""
    if precision is None:
        return None
    name = str(precision).lower()
    if name not in PRECISIONS:
        raise ValueError(f"precision must be '32', 'bf16' or 'fp16', got {precision!r}")
    return name


def resolve_precision(precision: Optional[str], device: torch.device) -> str:
    """The precision a run on ``device`` uses: ``None`` -> ``"fp16"`` on CUDA, ``"32"`` on the CPU.

    Raises:
        ValueError: an unknown name, or an autocast type this torch does not support on ``device``
            (e.g. bf16 on a GPU older than Ampere, fp16 on the CPU before torch 2.4).
    """
    name = check_precision_name(precision)
    if name is None:
        return "fp16" if device.type == "cuda" else "32"
    if name != "32" and not _autocast_supported(device.type, _AUTOCAST_DTYPES[name]):
        raise ValueError(f"precision {name!r}: this torch ({torch.__version__}) cannot autocast to "
                         f"{_AUTOCAST_DTYPES[name]} on {device.type}; use --precision 32 or another device")
    return name


def _autocast_supported(device_type: str, dtype: torch.dtype) -> bool:
    # torch does not raise for an unsupported pair: it warns and leaves autocast off, so look inside.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.autocast(device_type, dtype=dtype):
                if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
                    return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == dtype
                if device_type == "cpu":
                    return torch.is_autocast_cpu_enabled() and torch.get_autocast_cpu_dtype() == dtype
                return torch.is_autocast_enabled() and torch.get_autocast_gpu_dtype() == dtype
        except RuntimeError:  # e.g. bf16 on a GPU without bfloat16
            return False


def autocast(device: torch.device, precision: str) -> ContextManager:
    """The context of a forward pass in ``precision`` (a resolved name): ``torch.autocast`` for bf16
    and fp16, nothing for 32."""
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> Optional[torch.amp.GradScaler]:
    """A ``GradScaler`` for fp16 (its small range would flush small gradients to zero), else ``None``."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


#: the cuBLAS workspace setting that makes its matrix products deterministic (CUDA >= 10.2), as
#: torch's reproducibility notes ask; ``:16:8`` also works, with less memory and less speed
CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True) -> Iterator[None]:
    """Within the context (with ``enabled``), every torch op takes its deterministic algorithm or
    raises: ``torch.use_deterministic_algorithms(True)``, cuDNN deterministic and not benchmarking, and
    ``CUBLAS_WORKSPACE_CONFIG`` set for cuBLAS (when the environment does not set it already). The
    previous settings come back at the end.

    What it changes on CUDA: ``index_add_`` (the attention's backward and the classifier's pooling)
    accumulates in a fixed order (sorted indices) instead of with atomics, and cuBLAS keeps a
    fixed workspace. On the CPU pcattn is deterministic already, and this only checks it.
    """
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if workspace is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC_WORKSPACE  # read by torch's cuBLAS check at each call
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2], previous[3]
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
