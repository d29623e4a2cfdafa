"""Checkpoints in training: the random-state serialisation that lets a resumed run continue bit for bit.

The checkpoint format, writing and reading, and rebuilding a model live in
:mod:`pcattn.models.checkpoint` (below the engine and :mod:`pcattn.viz`, which both load checkpoints);
they are re-exported here, where earlier versions had them.
"""
from __future__ import annotations

import json
import random
from typing import Any, Dict, Sequence

import numpy as np
import torch
from torch import Tensor

from ..models.checkpoint import (CHECKPOINT_KIND, FORMAT_VERSION, SEGMENTER_KIND, CheckpointError, DiskFullError,
                                 load_checkpoint, load_encoder, load_model, model_checkpoint, model_from_checkpoint,
                                 raise_if_disk_full, save_checkpoint, state_checksum, verify_checkpoint)

__all__ = ["CHECKPOINT_KIND", "SEGMENTER_KIND", "FORMAT_VERSION", "CheckpointError", "DiskFullError",
           "model_checkpoint", "save_checkpoint", "state_checksum", "load_checkpoint", "model_from_checkpoint",
           "load_model", "load_encoder", "raise_if_disk_full", "verify_checkpoint", "seed_everything", "rng_state",
           "set_rng_state", "restore_cuda_rng_states"]


# ============================================================================ random state
def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global random streams."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(generator: torch.Generator) -> Dict[str, Any]:
    """Every random stream a training run draws from, as tensors (``weights_only``-loadable):
    torch's global RNG (augmentation, dropout), ``generator`` (the loader's shuffling and worker
    seeds), NumPy's and Python's global RNGs, and CUDA's when present."""
    state = {"torch": torch.get_rng_state(), "loader": generator.get_state(),
             "numpy": _json_tensor(_numpy_state()), "python": _json_tensor(_python_state())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any], generator: torch.Generator) -> None:
    """Restore what :func:`rng_state` saved (``generator`` receives the loader's stream)."""
    torch.set_rng_state(state["torch"])
    generator.set_state(state["loader"])
    name, keys, position, has_gauss, cached = _from_json_tensor(state["numpy"])
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    version, internal, gauss = _from_json_tensor(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        restore_cuda_rng_states(state["cuda"])


def restore_cuda_rng_states(saved: Sequence[Tensor]) -> int:
    """Give the visible CUDA devices the saved random states, device ``i`` the ``i``-th: the first
    ``min(saved, visible)`` of them (a run saved on 8 GPUs and resumed on 1 restores device 0's
    state; one resumed on more GPUs than it saved leaves the extra devices' streams as seeded).
    Returns the number of states restored."""
    count = min(len(saved), torch.cuda.device_count())
    for index in range(count):
        torch.cuda.set_rng_state(saved[index], index)
    return count


def _numpy_state():
    name, keys, position, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(position), int(has_gauss), float(cached)]


def _python_state():
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _json_tensor(value: Any) -> Tensor:
    # weights_only loading accepts tensors, not arbitrary objects: store the state as JSON bytes.
    return torch.from_numpy(np.frombuffer(json.dumps(value).encode(), dtype=np.uint8).copy())


def _from_json_tensor(tensor: Tensor) -> Any:
    return json.loads(bytes(tensor.tolist()).decode())
