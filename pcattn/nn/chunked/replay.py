"""Replaying the forward in backward: the random state and autocast state a chunk's forward ran under,
restored for its recomputation, and the check that the recomputation gave the forward's values."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

__all__ = ["ForwardReplay", "needs_verification", "fingerprint", "check_replay"]


# Modules whose output depends on their input and parameters alone. Pair modules built only from
# these need no check that the backward recomputation gave the forward's values; any other module
# (dropout, a custom mapping that may call F.dropout, ...) is checked chunk by chunk.
_DETERMINISTIC_MODULES = (nn.Sequential, nn.Linear, nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
                          nn.Softplus, nn.Identity, nn.LayerNorm)


def needs_verification(modules: Iterable[nn.Module]) -> bool:
    """Whether a recomputation through ``modules`` must be checked against the forward (anything beyond
    :data:`_DETERMINISTIC_MODULES`, such as dropout or a custom module, may give other values)."""
    return not all(type(sub) in _DETERMINISTIC_MODULES for module in modules for sub in module.modules())


class ForwardReplay:
    """What the forward ran under, restored in backward so the recomputation replays it bit for bit:
    autocast (enabled, dtype, cache) on the tensors' device and the CPU and device random states
    (as :func:`torch.utils.checkpoint.checkpoint` does)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.device_type = device.type
        self.autocast = (torch.is_autocast_enabled(self.device_type), torch.get_autocast_dtype(self.device_type),
                         torch.is_autocast_cache_enabled())
        self.cpu_rng = torch.get_rng_state()
        self.device_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=[self.device] if self.device_rng is not None else [],
                                           device_type=self.device_type if self.device_rng is not None else "cuda")
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_rng)
        if self.device_rng is not None:
            torch.cuda.set_rng_state(self.device_rng, self.device)
        enabled, dtype, cache = self.autocast
        self._autocast = torch.autocast(self.device_type, enabled=enabled, dtype=dtype, cache_enabled=cache)
        self._autocast.__enter__()
        return self

    def __exit__(self, *exc):
        self._autocast.__exit__(*exc)
        return self._fork.__exit__(*exc)


def fingerprint(out: Tensor) -> Tensor:
    """Two numbers that change when a chunk's output does: its sum and the sum of magnitudes (float64)."""
    out = out.detach().double()
    return torch.stack([out.sum(), out.abs().sum()])


def check_replay(forward: Tensor, recomputed: Tensor, layer: nn.Module) -> None:
    """Raise unless every recomputed chunk gave the forward's values (compared by :func:`fingerprint`)."""
    scale = forward[:, 1].abs() + recomputed[:, 1].abs()
    tolerance = 1e-6 * scale + 1e-12
    if bool(((forward - recomputed).abs() > tolerance[:, None]).any()):
        raise RuntimeError(
            f"{type(layer).__name__}: the backward recomputation of the attention did not reproduce the forward "
            f"(a module inside the positional encoding or the mapping gives different values when called again: "
            f"randomness that does not come from torch's generators, or state that changes per call). Its "
            f"gradients would be wrong: construct the layer with recompute=False (or set layer.recompute = False).")
