"""Small pieces the layers' per-chunk formulas use on ``(M, K, ...)`` pair tensors: the pair MLP,
applying a module to pairs, normalising logits over the neighbours."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["mlp", "pairwise", "has_batchnorm", "normalize"]


def mlp(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_channels))


def pairwise(module: nn.Module, pairs: Tensor) -> Tensor:
    """Apply ``module`` to ``(M, K, C)`` pairs as ``(M*K, C)`` rows (so BatchNorm1d works too)."""
    m, k, c = pairs.shape
    return module(pairs.reshape(m * k, c)).reshape(m, k, -1)


def has_batchnorm(*modules: Optional[nn.Module]) -> bool:
    return any(isinstance(sub, nn.modules.batchnorm._BatchNorm)
               for module in modules if module is not None for sub in module.modules())


def normalize(logits: Tensor, valid: Optional[Tensor], how: str) -> Tensor:
    """Turn ``(M, K, G)`` logits into weights over the K neighbours (dim 1); empty slots get 0.

    Half-precision logits (autocast) are normalised in float32 and the weights returned in the
    logits' dtype, so the softmax's exponentials and sums never round in fp16/bf16.
    """
    dtype = logits.dtype
    if dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if how == "softmax":
        if valid is not None:
            logits = logits.masked_fill(~valid[..., None], float("-inf"))
        return torch.softmax(logits, dim=1).to(dtype)
    if how == "sigmoid":
        weights = torch.sigmoid(logits)
    else:  # "l1relu": ReLU, then divide by the sum over the neighbours. The small floor makes a
        # neighbourhood whose logits are all negative fall back to uniform weights, not zeros.
        weights = torch.relu(logits) + 1e-6
    if valid is not None:
        weights = weights * valid[..., None].to(weights.dtype)
    if how == "l1relu":
        weights = weights / weights.sum(dim=1, keepdim=True)
    return weights.to(dtype)
