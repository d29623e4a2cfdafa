"""Checkpoints of pcattn classifiers and segmenters: the format, the atomic writer, the reader with named errors,
rebuilding a model from one, and a classifier's encoder initialising another network's.

This module depends only on the models and the format, so training (:mod:`pcattn.engine`), pictures
(:mod:`pcattn.viz`) and export all load checkpoints from here without importing each other; the
random-state serialisation of a training run is :mod:`pcattn.engine.checkpoint`'s.

A checkpoint is a dictionary readable with ``torch.load(weights_only=True)``: ``kind``
(``"pcattn-classifier"`` or ``"pcattn-segmenter"``), ``format_version``, ``model_config``,
``model_state``, ``classes`` (always: class names, or a segmenter's part names), for a segmenter
``categories`` and ``category_parts`` (the global part ids of each category), and for a training
run also ``optimizer``, ``scheduler``, ``scaler`` (fp16 only, else ``None``), ``epoch``,
``rng_state``, ``best_score`` (the best test score) and ``best_metric`` (its metrics key: ``"test_oa"``,
or ``"test_instance_miou"`` for part segmentation; checkpoints of 0.1 hold the score as ``best_acc``),
``best_epoch``, ``metrics``, ``history`` (every epoch's metrics row so
far: ``metrics.jsonl`` is rewritten from it on resume), ``run_id`` (the run folder's identity),
``train_config`` and ``torch_version``.

Integrity: ``checksum`` holds a SHA-256 of ``model_state`` and of ``optimizer`` (names, dtypes,
shapes and bytes of every tensor, and the plain values), computed when the dictionary is built and
verified by :func:`load_checkpoint`; a flipped bit in a weight is a :class:`CheckpointError`, and so
are NaN or inf weights. Checkpoints of older versions, without ``checksum``, still load (with a
warning that they cannot be verified).
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .classifier import PointTransformerClassifier
from .encoder import Encoder
from .registry import create_model
from .segmenter import PointTransformerSegmenter

__all__ = ["CHECKPOINT_KIND", "SEGMENTER_KIND", "FORMAT_VERSION", "CheckpointError", "DiskFullError",
           "model_checkpoint",
           "save_checkpoint", "state_checksum", "load_checkpoint", "model_from_checkpoint", "recorded_model_config",
           "load_model", "load_encoder"]

CHECKPOINT_KIND = "pcattn-classifier"
SEGMENTER_KIND = "pcattn-segmenter"
_KINDS = (CHECKPOINT_KIND, SEGMENTER_KIND)
FORMAT_VERSION = 1
_SEGMENTER_KEYS = ("categories", "category_parts")  # what a segmenter's checkpoint adds
_CLASSIFIER_KEYS = ("kind", "format_version", "model_config", "model_state", "classes")
_REQUIRED_KEYS = {CHECKPOINT_KIND: _CLASSIFIER_KEYS, SEGMENTER_KIND: _CLASSIFIER_KEYS + _SEGMENTER_KEYS}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, truncated, corrupt (checksum), non-finite
    weights, or not a pcattn checkpoint (of the kind asked for)."""


class DiskFullError(OSError):
    """A file could not be written for lack of space (or over a file-size limit); what was on disk
    before is intact."""


# The errors of a write that ran out of room: no space, over quota, over the file-size limit.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def raise_if_disk_full(error: OSError, path: Path, kept: str) -> None:
    """Re-raise ``error`` (from writing ``path``) as a :class:`DiskFullError` saying ``kept`` is intact,
    when it is a lack of space; otherwise return."""
    if isinstance(error, OSError) and error.errno in _NO_ROOM:
        raise DiskFullError(error.errno, f"{path}: the disk is full ({os.strerror(error.errno)}) while writing it; "
                            f"{kept} is intact. Free some space and run again") from None


def state_checksum(value: Any) -> str:
    """SHA-256 of a nested structure of tensors and plain values (a ``state_dict``, an optimizer's
    state): key names, dtypes, shapes and bytes, in a fixed order."""
    digest = hashlib.sha256()
    _update_digest(digest, value)
    return digest.hexdigest()


def _update_digest(digest, value: Any) -> None:
    if isinstance(value, Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{flat.dtype}{tuple(value.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    elif isinstance(value, dict):
        digest.update(b"{")
        for key in sorted(value, key=str):
            digest.update(repr(key).encode())
            _update_digest(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _update_digest(digest, item)
        digest.update(b"]")
    else:
        digest.update(repr(value).encode())


def _checksums(checkpoint: Dict[str, Any]) -> Dict[str, str]:
    return {key: state_checksum(checkpoint[key]) for key in ("model_state", "optimizer")
            if checkpoint.get(key) is not None}


# ============================================================================ writing and reading
def model_checkpoint(model: nn.Module, classes: List[str], **extra: Any) -> Dict[str, Any]:
    """The checkpoint dictionary of ``model`` (a :class:`PointTransformerClassifier`, or a
    :class:`PointTransformerSegmenter`, whose ``extra`` must hold ``categories`` and
    ``category_parts``) and its class (part) names, with ``extra`` entries (``epoch``,
    ``optimizer``, ...)."""
    kind = SEGMENTER_KIND if isinstance(model, PointTransformerSegmenter) else CHECKPOINT_KIND
    missing = [key for key in _SEGMENTER_KEYS if key not in extra] if kind == SEGMENTER_KIND else []
    if missing:
        raise ValueError(f"a segmenter's checkpoint needs {missing} (the categories and their global part ids)")
    checkpoint = {"kind": kind, "format_version": FORMAT_VERSION, "model_config": model.config,
                  "model_state": model.state_dict(), "classes": list(classes), **extra,
                  "torch_version": str(torch.__version__)}
    checkpoint["checksum"] = _checksums(checkpoint)
    return checkpoint


def save_checkpoint(path, checkpoint: Dict[str, Any]) -> Path:
    """Write ``checkpoint`` to ``path`` atomically.

    The dictionary is written to a temporary file in the same folder, flushed to disk, then
    renamed over ``path``: a run killed mid-write leaves the previous checkpoint intact, never
    a truncated one. Everything in it must be loadable with ``torch.load(weights_only=True)``
    (tensors, numbers, strings, lists, dicts).

    Raises:
        DiskFullError: no space left (or a file-size limit): the message says so and that the
            previous ``path`` is intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Serialise in memory first: torch's writer reports a full disk as an opaque RuntimeError
    # ("unexpected pos"), a plain write() raises OSError with its errno.
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; a checkpoint is an ordinary file
        with os.fdopen(handle, "wb") as stream:
            stream.write(buffer.getbuffer())
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError):
            raise_if_disk_full(error, path, f"the previous {path.name}" if path.exists() else "nothing else")
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


def load_checkpoint(path, map_location: Union[str, torch.device] = "cpu", kind: Optional[str] = None
                    ) -> Dict[str, Any]:
    """Read a pcattn checkpoint with ``torch.load(weights_only=True)``.

    Args:
        kind: ``"pcattn-classifier"`` or ``"pcattn-segmenter"`` to accept only that kind; ``None``
            accepts both.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is truncated or corrupt, or is not a pcattn checkpoint (of ``kind``):
            a bare ``state_dict``, another library's checkpoint, a newer format.
    """
    if kind is not None and kind not in _KINDS:
        raise ValueError(f"kind must be None, {' or '.join(map(repr, _KINDS))} (CHECKPOINT_KIND, SEGMENTER_KIND), "
                         f"got {kind!r}")
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
        foreign = _foreign_model_file(path)
        if foreign:
            raise CheckpointError(f"{path}: {foreign}, not a pcattn checkpoint (pcattn train writes those: "
                                  f"best.pt / last.pt)") from None
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0] \
            if "WeightsUnpickler error:" in text else (text.strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, the file is truncated or corrupt "
                              f"({detail})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: expected a pcattn checkpoint (a dict), found a {type(checkpoint).__name__}")
    found_kind = checkpoint.get("kind")
    if found_kind not in _KINDS:
        if found_kind is None and checkpoint and all(isinstance(v, Tensor) for v in checkpoint.values()):
            raise CheckpointError(f"{path}: a bare state_dict, not a pcattn checkpoint (it has no model config); "
                                  f"build the model yourself and call model.load_state_dict(torch.load(...))")
        found = f"kind {found_kind!r}" if found_kind is not None else f"keys {sorted(map(str, checkpoint))[:8]}"
        raise CheckpointError(f"{path}: not a pcattn checkpoint (expected kind {' or '.join(map(repr, _KINDS))}, "
                              f"found {found})")
    if kind is not None and found_kind != kind:
        raise CheckpointError(f"{path}: a {found_kind.split('-')[1]} checkpoint, but a {kind.split('-')[1]} is needed "
                              f"here")
    version = checkpoint.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r} is not supported by this pcattn "
                              f"(reads up to {FORMAT_VERSION}); upgrade pcattn")
    missing = [key for key in _REQUIRED_KEYS[found_kind] if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: incomplete pcattn checkpoint, missing {missing}")
    verify_checkpoint(checkpoint, path)
    return checkpoint


def _foreign_model_file(path: Path) -> Optional[str]:
    """What a file that ``torch.load`` cannot read is, when it is an exported model (what
    ``pcattn export`` writes) rather than a damaged checkpoint: a phrase, or ``None``."""
    import zipfile

    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (OSError, zipfile.BadZipFile):
            return None
        if any(name.endswith("/constants.pkl") for name in names) and any("/code/" in name for name in names):
            return "a TorchScript archive (load it with torch.jit.load)"
        if any(name.endswith("/archive_format") for name in names):
            return "a torch.export program (load it with torch.export.load)"
        return None
    try:
        import onnx
    except ImportError:
        return "an ONNX model, by its name (load it with onnxruntime)" if path.suffix.lower() == ".onnx" else None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not protobuf, or not a model: a damaged checkpoint after all
        return None
    if model.ir_version > 0 and len(model.graph.node) > 0:
        return "an ONNX model (load it with onnxruntime)"
    return None


def verify_checkpoint(checkpoint: Dict[str, Any], path) -> None:
    """Check the stored checksums and that every floating-point weight is finite.

    Raises:
        CheckpointError: a checksum that does not match (the file was damaged after it was written),
            or a weight holding NaN or inf.
    """
    stored = checkpoint.get("checksum")
    if stored is None:
        warnings.warn(f"{path}: written by an older pcattn without a checksum; its integrity cannot be verified "
                      f"(saving it again adds one)")
    else:
        for key, value in _checksums(checkpoint).items():
            if key in stored and stored[key] != value:
                raise CheckpointError(f"{path}: checksum mismatch in {key!r}: the file was damaged after it was "
                                      f"written (a changed byte); use another checkpoint (last.pt / best.pt)")
    for name, tensor in checkpoint["model_state"].items():
        if isinstance(tensor, Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: weight {name!r} holds NaN or inf values; the model cannot be used "
                                  f"(a diverged run or a damaged file)")


def recorded_model_config(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """``checkpoint["model_config"]`` with the settings earlier versions did not record filled in with
    what those versions built, so it compares equal to the ``model.config`` of the same network today."""
    config = dict(checkpoint["model_config"])
    if str(config.get("name", "")).startswith("pt-scene-tiny-"):
        config.setdefault("k", 16)  # saved before these set (and recorded) 8 neighbours: the constructor's 16
    if checkpoint.get("kind") == SEGMENTER_KIND:
        config.setdefault("interpolation_power", 2)  # segmenters saved before it was recorded: 1 / d^2
        config.setdefault("unpool", "interpolate")   # and before grid unpooling: every one interpolated
    return config


def model_from_checkpoint(checkpoint: Dict[str, Any], path="checkpoint"
                          ) -> Union[PointTransformerClassifier, PointTransformerSegmenter]:
    """Rebuild the model described by ``checkpoint["model_config"]`` and load its weights."""
    config = recorded_model_config(checkpoint)
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
                              f"{(str(error).splitlines() or [type(error).__name__])[0]} ...") from None
    return model


def load_model(path, device: Union[str, torch.device] = "cpu", kind: Optional[str] = None
               ) -> Tuple[Union[PointTransformerClassifier, PointTransformerSegmenter], List[str], Dict]:
    """Load a trained classifier or segmenter for inference (``kind``: as in :func:`load_checkpoint`).

    Returns:
        ``(model, classes, checkpoint)``: the model in eval mode on ``device``, its class names
        (index = label; a segmenter's part names) and the checkpoint dictionary (``train_config``,
        ``epoch``, a segmenter's ``categories`` and ``category_parts``, ...). ``device="auto"`` is
        CUDA when available, else the CPU.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    checkpoint = load_checkpoint(path, kind=kind)
    model = model_from_checkpoint(checkpoint, path).to(device).eval()
    return model, list(checkpoint["classes"]), checkpoint


def load_encoder(model: nn.Module, path) -> Dict[str, Any]:
    """Initialise ``model.encoder`` (any network with an :class:`~pcattn.models.encoder.Encoder`, e.g. a
    segmenter) with the encoder of the classifier checkpoint at ``path``; returns that checkpoint.

    Each named segmenter's encoder is its classifier's (``pt-seg-vector`` takes ``pt-vector``'s,
    ``pt-seg-tiny-vector`` ``pt-tiny-vector``'s: :data:`~pcattn.models.registry.ENCODER_OF`), so a
    classifier trained on whole shapes starts a part segmenter.

    Raises:
        CheckpointError: ``path`` is not a classifier's checkpoint, or its encoder differs from the
            model's (the message names both configurations and the first parameter that differs).
    """
    if not isinstance(getattr(model, "encoder", None), Encoder):
        raise TypeError(f"model must hold an Encoder as model.encoder (a pcattn classifier or segmenter), got "
                        f"{type(model).__name__}")
    checkpoint = load_checkpoint(path)
    if checkpoint["kind"] != CHECKPOINT_KIND:
        raise CheckpointError(f"{path}: a {checkpoint['kind']} checkpoint; an encoder is initialised from a "
                              f"classifier's ({CHECKPOINT_KIND})")
    classifier = model_from_checkpoint(checkpoint, path)  # also renames the keys of older layouts
    source, target = classifier.encoder.state_dict(), model.encoder.state_dict()
    differences = [f"{name} is missing there" for name in target if name not in source]
    differences += [f"{name} is {tuple(source[name].shape)} there, {tuple(target[name].shape)} here"
                    for name in target if name in source and source[name].shape != target[name].shape]
    differences += [f"{name} is missing here" for name in source if name not in target]
    if differences:
        ours = getattr(model, "config", {}) or {}
        raise CheckpointError(f"{path}: its encoder (of {_describe(checkpoint['model_config'])}) differs from this "
                              f"model's ({_describe(ours)}): {differences[0]}"
                              + (f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""))
    model.encoder.load_state_dict(source)
    return checkpoint


def _describe(config: Dict[str, Any]) -> str:
    """``pt-tiny-vector, widths [32, 64, 128, 256], in_channels 3``: a model config, for error messages."""
    shown = [f"{key} {config[key]}" for key in ("widths", "depths", "in_channels", "attention") if key in config]
    return ", ".join([str(config.get("name", "an unnamed model"))] + shown)
