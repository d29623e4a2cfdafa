"""Checkpoints of pcattn classifiers: the format, the atomic writer, the reader with named errors,
rebuilding a model from one, and the random-state serialisation that lets a resumed run continue
bit for bit.

A checkpoint is a dictionary readable with ``torch.load(weights_only=True)``: ``kind``,
``format_version``, ``model_config``, ``model_state``, ``classes`` (always), and for a training
run also ``optimizer``, ``scheduler``, ``scaler`` (fp16 only, else ``None``), ``epoch``,
``rng_state``, ``best_acc``, ``best_epoch``, ``metrics``, ``train_config`` and ``torch_version``.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..models import PointTransformerClassifier, create_model
from .device import resolve_device

__all__ = ["CHECKPOINT_KIND", "FORMAT_VERSION", "CheckpointError", "classifier_checkpoint", "save_checkpoint",
           "load_checkpoint", "model_from_checkpoint", "load_model", "seed_everything", "rng_state",
           "set_rng_state"]

CHECKPOINT_KIND = "pcattn-classifier"
FORMAT_VERSION = 1
_REQUIRED_KEYS = ("kind", "format_version", "model_config", "model_state", "classes")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, truncated, or not a pcattn classifier."""


# ============================================================================ writing and reading
def classifier_checkpoint(model: nn.Module, classes: List[str], **extra: Any) -> Dict[str, Any]:
    """The checkpoint dictionary of ``model`` (a :class:`PointTransformerClassifier`) and its class
    names, with ``extra`` entries (``epoch``, ``optimizer``, ...)."""
    return {"kind": CHECKPOINT_KIND, "format_version": FORMAT_VERSION, "model_config": model.config,
            "model_state": model.state_dict(), "classes": list(classes), **extra,
            "torch_version": str(torch.__version__)}


def save_checkpoint(path, checkpoint: Dict[str, Any]) -> Path:
    """Write ``checkpoint`` to ``path`` atomically.

    The dictionary is written to a temporary file in the same folder, flushed to disk, then
    renamed over ``path``: a run killed mid-write leaves the previous checkpoint intact, never
    a truncated one. Everything in it must be loadable with ``torch.load(weights_only=True)``
    (tensors, numbers, strings, lists, dicts).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; a checkpoint is an ordinary file
        with os.fdopen(handle, "wb") as stream:
            torch.save(checkpoint, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Read a pcattn classifier checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is truncated or corrupt, or is not a pcattn classifier checkpoint
            (a bare ``state_dict``, another library's checkpoint, a newer format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the checkpoint file is empty (0 bytes)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        text = str(error)
        if "Unsupported global" in text:
            found = text.split("Unsupported global:", 1)[1].strip().split(" was ")[0]
            raise CheckpointError(f"{path}: holds Python objects other than tensors and plain values ({found}), so "
                                  f"it is not a pcattn checkpoint; refusing to unpickle arbitrary code") from None
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0] \
            if "WeightsUnpickler error:" in text else (text.strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, the file is truncated or corrupt "
                              f"({detail})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: expected a pcattn checkpoint (a dict), found a {type(checkpoint).__name__}")
    kind = checkpoint.get("kind")
    if kind != CHECKPOINT_KIND:
        if kind is None and checkpoint and all(isinstance(v, Tensor) for v in checkpoint.values()):
            raise CheckpointError(f"{path}: a bare state_dict, not a pcattn checkpoint (it has no model config); "
                                  f"build the model yourself and call model.load_state_dict(torch.load(...))")
        found = f"kind {kind!r}" if kind is not None else f"keys {sorted(map(str, checkpoint))[:8]}"
        raise CheckpointError(f"{path}: not a pcattn classifier checkpoint (expected kind {CHECKPOINT_KIND!r}, "
                              f"found {found})")
    version = checkpoint.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r} is not supported by this pcattn "
                              f"(reads up to {FORMAT_VERSION}); upgrade pcattn")
    missing = [key for key in _REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: incomplete pcattn checkpoint, missing {missing}")
    return checkpoint


def model_from_checkpoint(checkpoint: Dict[str, Any], path="checkpoint") -> PointTransformerClassifier:
    """Rebuild the model described by ``checkpoint["model_config"]`` and load its weights."""
    config = dict(checkpoint["model_config"])
    try:
        name = config.pop("name")
        model = create_model(name, **config)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: its model config {checkpoint['model_config']} cannot be built by this "
                              f"pcattn: {error}") from None
    try:
        model.load_state_dict(checkpoint["model_state"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: its weights do not fit the model it describes ({name}): "
                              f"{str(error).splitlines()[0]} ...") from None
    return model


def load_model(path, device: Union[str, torch.device] = "cpu") -> Tuple[PointTransformerClassifier, List[str], Dict]:
    """Load a trained classifier for inference.

    Returns:
        ``(model, classes, checkpoint)``: the model in eval mode on ``device``, its class names
        (index = label) and the checkpoint dictionary (``train_config``, ``epoch``, ...).
    """
    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint, path).to(resolve_device(str(device))).eval()
    return model, list(checkpoint["classes"]), checkpoint


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
        torch.cuda.set_rng_state_all(state["cuda"])


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
