"""Training, evaluation and checkpoints for point-cloud classifiers.

>>> from pcattn.engine import TrainConfig, train, load_model, evaluate
>>> result = train(TrainConfig(dataset="builtin", attention="vector", out="runs/demo"))
>>> model, classes, checkpoint = load_model("runs/demo/best.pt")

A run folder holds:

* ``last.pt`` / ``best.pt``: checkpoints (see :func:`save_checkpoint`), written atomically at the
  end of every epoch (``best.pt`` when the test overall accuracy improves);
* ``metrics.jsonl``: one JSON object per epoch (``epoch, train_loss, train_acc, test_loss,
  test_oa, test_macc, lr, epoch_time, samples_per_s``);
* ``config.json``: the run's :class:`TrainConfig`;
* ``eval.json``: evaluation of ``best.pt`` at the end of training (OA, mAcc, per-class accuracy,
  confusion matrix), and ``curves.png`` / ``confusion.png`` drawn from these files.

Resuming (``TrainConfig(resume=True)``) restores the model, optimizer, scheduler, epoch and every
random stream (torch's global RNG, which drives augmentation and dropout, and the data loader's
shuffling generator), so a run killed at any point and resumed gives the same weights and
metrics as an uninterrupted run, on the same machine and thread count.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import MODEL_CONFIGS, PointTransformerClassifier, create_model

__all__ = [
    "CHECKPOINT_KIND",
    "CheckpointError",
    "TrainConfig",
    "train",
    "evaluate",
    "evaluate_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "resolve_device",
]

CHECKPOINT_KIND = "pcattn-classifier"
FORMAT_VERSION = 1
_REQUIRED_KEYS = ("kind", "format_version", "model_config", "model_state", "classes")

# TrainConfig fields that change what a run computes: a resumed run must not change them.
_RESULT_FIELDS = ("dataset", "format", "data_root", "model", "attention", "batch_size", "num_points", "use_normals",
                  "lr", "weight_decay", "optimizer", "momentum", "warmup", "label_smoothing", "seed", "augment",
                  "up_axis", "attention_options")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, truncated, or not a pcattn classifier."""


# ============================================================================ configuration
@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in its checkpoints and ``config.json``).

    Attributes:
        dataset: ``"builtin"`` (generated, no download), ``"modelnet10"`` or ``"modelnet40"``.
        format: ModelNet file format (``off``, ``normal_resampled``, ``hdf5``, ``folder``);
            ``None`` guesses it from the files.
        data_root: dataset folder; ``None`` looks under ``datasets/`` (see ``datasets/README.md``).
        model: a name of :func:`pcattn.models.create_model`; ``None`` picks ``pt-tiny-<attention>``
            for the built-in dataset and ``pt-<attention>`` for ModelNet.
        attention: ``"vector"`` (default) or ``"scalar"``; with ``model`` given it must agree with it.
        attention_options: options of every attention layer of the model, e.g.
            ``{"positional_encoding": "none"}`` or ``{"relation": "addition"}`` (see
            :class:`pcattn.VectorSelfAttention` / :class:`pcattn.ScalarSelfAttention`).
        epochs, batch_size, num_points: the usual; ``num_points=None`` is 512 for the built-in
            dataset and 1024 for ModelNet.
        lr, weight_decay, optimizer (``"adamw"`` or ``"sgd"``), momentum (SGD only).
        warmup: fraction of the iterations with a linear learning-rate warm-up, followed by a
            cosine decay to zero (stepped every iteration).
        label_smoothing: cross-entropy label smoothing.
        use_normals: feed normals as features (``in_channels = 6``).
        download: fetch the Princeton ModelNet zip (format ``off``) into ``data_root`` (default
            ``datasets/``) when it is not there yet; needs the internet.
        up_axis: the vertical axis of the data (0, 1, 2), for the rotation augmentation and test-time
            voting; ``None`` takes the dataset's (y for the built-in shapes and PointNet++ files, z for
            Princeton OFF meshes and point folders).
        augment: the training augmentation of :func:`pcattn.data.train_transforms` (scale,
            rotation about the up axis, shift, jitter, point dropout).
        seed: seeds weights, augmentation, dropout and shuffling: the same seed gives the same
            metrics on the same CPU and thread count.
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``. AMP is used on CUDA only.
        num_workers: data-loading processes.
        threads: ``torch.set_num_threads`` for the run (``None`` keeps torch's default).
        out: the run folder.
        resume: continue the run in ``out`` from ``last.pt`` (starts afresh if there is none).
        progress: show progress bars.
        plots: draw ``curves.png`` and ``confusion.png`` at the end.
    """

    dataset: str = "builtin"
    format: Optional[str] = None
    data_root: Optional[str] = None
    model: Optional[str] = None
    attention: Optional[str] = None
    attention_options: Optional[Dict[str, Any]] = None
    epochs: int = 15
    batch_size: int = 32
    num_points: Optional[int] = None
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    momentum: float = 0.9
    warmup: float = 0.1
    label_smoothing: float = 0.1
    use_normals: bool = False
    download: bool = False
    up_axis: Optional[int] = None
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    threads: Optional[int] = None
    out: str = "runs/run"
    resume: bool = False
    progress: bool = True
    plots: bool = True

    def resolved(self) -> "TrainConfig":
        """A copy with the ``None`` defaults filled in and the arguments checked."""
        config = dataclasses.replace(self)
        config.dataset = config.dataset.lower()
        if config.dataset not in ("builtin", "modelnet10", "modelnet40"):
            raise ValueError(f"dataset must be 'builtin', 'modelnet10' or 'modelnet40', got {config.dataset!r}")
        if config.attention not in (None, "vector", "scalar"):
            raise ValueError(f"attention must be 'vector' or 'scalar', got {config.attention!r}")
        if config.model is None:
            attention = config.attention or "vector"
            config.model = f"pt-tiny-{attention}" if config.dataset == "builtin" else f"pt-{attention}"
        if config.model not in MODEL_CONFIGS:
            raise ValueError(f"unknown model {config.model!r}; available: {', '.join(sorted(MODEL_CONFIGS))}")
        model_attention = MODEL_CONFIGS[config.model].get("attention", "vector")
        if config.attention not in (None, model_attention):
            raise ValueError(f"model {config.model!r} uses {model_attention} attention, but attention="
                             f"{config.attention!r} was asked for; change one of them")
        config.attention = model_attention
        if config.num_points is None:
            config.num_points = 512 if config.dataset == "builtin" else 1024
        config.optimizer = config.optimizer.lower()
        if config.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {config.optimizer!r}")
        for name in ("epochs", "batch_size", "num_points"):
            if int(getattr(config, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
        if not config.lr > 0:
            raise ValueError(f"lr must be > 0, got {config.lr}")
        if not 0 <= config.warmup < 1:
            raise ValueError(f"warmup is a fraction of the iterations in [0, 1), got {config.warmup}")
        if not 0 <= config.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {config.label_smoothing}")
        if config.attention_options:
            _check_attention_options(config.attention, dict(config.attention_options))
        if config.up_axis is not None and config.up_axis not in (0, 1, 2):
            raise ValueError(f"up_axis must be 0, 1 or 2 (x, y, z), got {config.up_axis!r}")
        if config.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {config.num_workers}")
        if config.download:
            if config.dataset == "builtin":
                raise ValueError("download is for ModelNet; the built-in dataset is generated locally")
            if config.format not in (None, "off"):
                raise ValueError(f"download fetches the Princeton OFF meshes (format 'off'), not format "
                                 f"{config.format!r}; see datasets/README.md for the other archives")
            config.format = "off"
        if config.data_root is not None:
            config.data_root = str(Path(config.data_root).expanduser())
        config.out = str(config.out)
        return config

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _check_attention_options(attention: str, options: Dict[str, Any]) -> None:
    """Build one layer with ``options`` so a bad name or value fails before any data is loaded."""
    from ..nn import ScalarSelfAttention, VectorSelfAttention

    layer = VectorSelfAttention if attention == "vector" else ScalarSelfAttention
    try:
        layer(8, 8, k=4, **({"groups": 2} if attention == "vector" else {"heads": 2}), **options)
    except TypeError as error:
        raise ValueError(f"attention option not accepted by {layer.__name__}: {error}") from None


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA GPU (use --device cpu or auto)")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return resolved


# ============================================================================ checkpoints
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


# ============================================================================ data
def build_loaders(config: TrainConfig, generator: torch.Generator, with_train: bool = True):
    """Train and test datasets and loaders for a resolved config: ``(train_loader, test_loader)``."""
    from torch.utils.data import DataLoader

    from ..data import build_dataset, seed_worker, test_transforms, train_transforms

    common = dict(format=config.format, root=config.data_root, num_points=config.num_points,
                  use_normals=config.use_normals)
    if config.download:
        from ..data import default_data_dir

        common.update(root=config.data_root or str(default_data_dir()), download=True)
    test_set = build_dataset(config.dataset, split="test", transform=test_transforms(), **common)
    if config.up_axis is not None:
        test_set.up_axis = config.up_axis
    loader_options = dict(batch_size=config.batch_size, num_workers=config.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=False)
    test_loader = DataLoader(test_set, shuffle=False, drop_last=False, **loader_options)
    if not with_train:
        return None, test_loader
    train_set = build_dataset(config.dataset, split="train", **common)
    if config.up_axis is not None:
        train_set.up_axis = config.up_axis
    train_set.transform = (train_transforms(up_axis=train_set.up_axis) if config.augment
                           else test_transforms())
    if train_set.classes != test_set.classes:
        raise ValueError(f"train and test splits disagree on the classes: {train_set.classes} vs {test_set.classes}")
    if len(train_set) < config.batch_size:
        raise ValueError(f"the training split has {len(train_set)} shapes, fewer than batch_size={config.batch_size}")
    # drop_last: BatchNorm cannot take a batch of one cloud.
    train_loader = DataLoader(train_set, shuffle=True, drop_last=True, generator=generator,
                              worker_init_fn=seed_worker, **loader_options)
    return train_loader, test_loader


def _inputs(batch: Dict[str, Tensor], device: torch.device, use_normals: bool) -> Tuple[Tensor, Optional[Tensor]]:
    pos = batch["pos"].to(device, non_blocking=True)
    x = torch.cat([pos, batch["normals"].to(device, non_blocking=True)], -1) if use_normals else None
    return pos, x


# ============================================================================ evaluation
def _vote_augment(pos: Tensor, x: Optional[Tensor], up_axis: int, generator: torch.Generator):
    """A random rotation about the up axis and an isotropic scale in [0.9, 1.1], per cloud."""
    B = pos.shape[0]
    angle = torch.rand(B, generator=generator) * 2 * math.pi
    scale = 0.9 + 0.2 * torch.rand(B, generator=generator)
    c, s = torch.cos(angle), torch.sin(angle)
    a, b = [axis for axis in range(3) if axis != up_axis]
    rotation = torch.zeros(B, 3, 3)
    rotation[:, up_axis, up_axis] = 1
    rotation[:, a, a], rotation[:, a, b], rotation[:, b, a], rotation[:, b, b] = c, -s, s, c
    rotation = rotation.to(pos.device, pos.dtype)
    new_pos = pos @ rotation.transpose(1, 2) * scale.to(pos.device, pos.dtype)[:, None, None]
    if x is None:
        return new_pos, None
    normals = x[..., 3:6] @ rotation.transpose(1, 2)
    return new_pos, torch.cat([new_pos, normals, x[..., 6:]], -1)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: Union[str, torch.device, None] = None, votes: int = 1,
             classes: Optional[Sequence[str]] = None, up_axis: int = 1, seed: int = 0,
             label_smoothing: float = 0.0, progress: bool = False) -> Dict[str, Any]:
    """Classification metrics of ``model`` on ``loader``.

    Args:
        votes: number of passes averaged (softmax probabilities); pass 1 sees the clouds as they
            are, further passes see them rotated about ``up_axis`` and scaled (test-time voting).
        seed: seeds the voting augmentation.

    Returns:
        ``{"oa", "macc", "loss", "per_class": {name: acc}, "confusion": [[...]] (rows = true class),
        "classes", "votes", "samples"}``. ``macc`` averages the classes present in the data.
    """
    if votes < 1:
        raise ValueError(f"votes must be >= 1, got {votes}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    classes = list(classes) if classes is not None else list(getattr(loader.dataset, "classes", []))
    num_classes = getattr(model, "num_classes", None) or len(classes)
    use_normals = getattr(model, "in_channels", 3) == 6
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    loss_sum, count = 0.0, 0
    from tqdm.auto import tqdm

    for batch in tqdm(loader, desc="evaluating", leave=False, disable=not progress, unit="batch"):
        pos, x = _inputs(batch, device, use_normals)
        labels = batch["label"].to(device)
        probabilities = torch.zeros(pos.shape[0], num_classes, device=device)
        for vote in range(votes):
            p, f = (pos, x) if vote == 0 else _vote_augment(pos, x, up_axis, generator)
            logits = model(f, p).float()
            if vote == 0:
                loss_sum += float(F.cross_entropy(logits, labels, label_smoothing=label_smoothing,
                                                  reduction="sum"))
            probabilities += logits.softmax(-1)
        predicted = probabilities.argmax(-1).cpu()
        confusion += torch.bincount(labels.cpu() * num_classes + predicted,
                                    minlength=num_classes * num_classes).view(num_classes, num_classes)
        count += pos.shape[0]
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    support = confusion.sum(1)
    correct = confusion.diag()
    present = support > 0
    per_class_acc = torch.where(present, correct.double() / support.clamp(min=1), torch.nan)
    names = classes if len(classes) == num_classes else [str(i) for i in range(num_classes)]
    return {
        "oa": float(correct.sum()) / count,
        "macc": float(per_class_acc[present].mean()) if bool(present.any()) else float("nan"),
        "loss": loss_sum / count,
        "per_class": {name: (None if math.isnan(a) else float(a)) for name, a in zip(names, per_class_acc.tolist())},
        "confusion": confusion.tolist(),
        "classes": names,
        "votes": votes,
        "samples": count,
    }


def evaluate_checkpoint(checkpoint_path, votes: int = 1, device: str = "auto", batch_size: Optional[int] = None,
                        num_workers: int = 0, seed: int = 0, data_root: Optional[str] = None,
                        progress: bool = True) -> Dict[str, Any]:
    """Evaluate a checkpoint on the test split of the data it was trained on (from the checkpoint
    alone; ``data_root`` overrides where the data is). Returns :func:`evaluate`'s dictionary plus
    ``"checkpoint"`` and ``"epoch"``."""
    model, classes, checkpoint = load_model(checkpoint_path, resolve_device(device))
    saved = dict(checkpoint.get("train_config") or {})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in saved.items() if k in known})
    if data_root is not None:
        config.data_root = data_root
    if batch_size is not None:
        config.batch_size = batch_size
    config.num_workers = num_workers
    config = config.resolved()
    _, test_loader = build_loaders(config, torch.Generator(), with_train=False)
    if list(test_loader.dataset.classes) != classes:
        raise ValueError(f"{checkpoint_path} was trained on classes {classes} but the test data at "
                         f"{test_loader.dataset.root} has {test_loader.dataset.classes}")
    result = evaluate(model, test_loader, votes=votes, classes=classes, up_axis=test_loader.dataset.up_axis,
                      seed=seed, progress=progress)
    result["checkpoint"] = str(checkpoint_path)
    result["epoch"] = checkpoint.get("epoch")
    return result


# ============================================================================ training
def _schedule(total_steps: int, warmup: float):
    warmup_steps = int(round(warmup * total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _rng_state(generator: torch.Generator) -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "loader": generator.get_state(),
             "numpy": torch.from_numpy(np.frombuffer(json.dumps(_numpy_state()).encode(), dtype=np.uint8).copy()),
             "python": torch.from_numpy(np.frombuffer(json.dumps(_python_state()).encode(), dtype=np.uint8).copy())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state():
    name, keys, position, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(position), int(has_gauss), float(cached)]


def _python_state():
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_rng_state(state: Dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["loader"])
    name, keys, position, has_gauss, cached = json.loads(bytes(state["numpy"].tolist()).decode())
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    version, internal, gauss = json.loads(bytes(state["python"].tolist()).decode())
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _write_json(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(temporary, path)


def _read_metrics_upto(path: Path, epoch: int) -> List[str]:
    """The metrics lines of epochs <= ``epoch`` (a resumed run rewrites what came after)."""
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if isinstance(row, dict) and isinstance(row.get("epoch"), int) and row["epoch"] <= epoch:
            kept.append(line)
    return kept


def _log(message: str, progress: bool) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(message)
    else:
        print(message)


def _prepare_run(config: TrainConfig, out: Path) -> Optional[Dict[str, Any]]:
    """Check the run folder; return the checkpoint to resume from (or ``None`` for a new run)."""
    last = out / "last.pt"
    if not config.resume:
        if last.exists() or (out / "metrics.jsonl").exists():
            raise FileExistsError(f"{out} already holds a training run: pass --resume to continue it, or choose "
                                  f"another --out")
        return None
    if not last.exists():
        return None
    checkpoint = load_checkpoint(last)
    saved = checkpoint.get("train_config") or {}
    different = {key: (saved.get(key), getattr(config, key)) for key in _RESULT_FIELDS
                 if key in saved and getattr(config, key) is not None and saved.get(key) != getattr(config, key)}
    if different:
        details = ", ".join(f"{key}: run has {old!r}, now {new!r}" for key, (old, new) in different.items())
        raise ValueError(f"cannot resume {last} with different settings ({details}); resume with the run's own "
                         f"settings (omit these options) or start a new run in another --out")
    return checkpoint


def merge_resume_config(config: TrainConfig, explicit: Sequence[str]) -> TrainConfig:
    """For ``--resume``: the saved run's settings, overridden only by the options given explicitly
    (``explicit`` names the :class:`TrainConfig` fields the user set)."""
    last = Path(config.out) / "last.pt"
    if not config.resume or not last.exists():
        return config
    saved = load_checkpoint(last).get("train_config") or {}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    merged = {k: v for k, v in saved.items() if k in known}
    merged.update({name: getattr(config, name) for name in explicit})
    merged.update(out=config.out, resume=True)
    return TrainConfig(**merged)


def train(config: TrainConfig) -> Dict[str, Any]:
    """Train a classifier as ``config`` says; returns a summary
    ``{"best_oa", "best_epoch", "final": metrics of the last epoch, "eval": evaluation of best.pt,
    "run_dir", "seconds"}``.

    Raises:
        FileExistsError: ``out`` already holds a run and ``resume`` is off.
        ValueError: bad settings, or ``resume`` with settings that differ from the saved run's.
    """
    config = config.resolved()
    out = Path(config.out)
    checkpoint = _prepare_run(config, out)
    device = resolve_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(int(config.threads))
    _seed_everything(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader, test_loader = build_loaders(config, generator)
    dataset = train_loader.dataset
    config.up_axis = int(dataset.up_axis)
    classes = list(dataset.classes)
    in_channels = 6 if config.use_normals else 3
    model = create_model(config.model, num_classes=len(classes), in_channels=in_channels,
                         **({"attention_kwargs": dict(config.attention_options)} if config.attention_options else {}))
    model = model.to(device)

    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=config.lr)
    else:
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config.epochs * steps_per_epoch,
                                                                       config.warmup))
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    start_epoch, best_oa, best_epoch = 1, -1.0, 0
    if checkpoint is not None:
        if checkpoint["model_config"] != model.config:
            raise CheckpointError(f"{out / 'last.pt'}: holds a {checkpoint['model_config'].get('name')} model "
                                  f"that differs from this run's ({model.config}); start a new --out")
        if list(checkpoint["classes"]) != classes:
            raise CheckpointError(f"{out / 'last.pt'}: trained on classes {checkpoint['classes']}, but the data "
                                  f"now has {classes}")
        model.load_state_dict(checkpoint["model_state"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler") and amp:
            scaler.load_state_dict(checkpoint["scaler"])
        _set_rng_state(checkpoint["rng_state"], generator)
        start_epoch = int(checkpoint["epoch"]) + 1
        best_oa, best_epoch = float(checkpoint.get("best_acc", -1.0)), int(checkpoint.get("best_epoch", 0))
        _log(f"resuming {out} after epoch {checkpoint['epoch']} (best test OA so far {best_oa:.4f})",
             config.progress)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", config.to_dict())
    metrics_path = out / "metrics.jsonl"
    kept = _read_metrics_upto(metrics_path, start_epoch - 1)
    metrics_path.write_text("".join(line + "\n" for line in kept))

    parameters = sum(p.numel() for p in model.parameters())
    _log(f"training {config.model} ({parameters / 1e6:.2f} M parameters) on {config.dataset} "
         f"({len(dataset)} train / {len(test_loader.dataset)} test shapes, {len(classes)} classes, "
         f"{config.num_points} points) on {device}" + (" with AMP" if amp else "")
         + f", {torch.get_num_threads()} threads", config.progress)

    from tqdm.auto import tqdm

    started = time.perf_counter()
    last_metrics: Dict[str, Any] = {}
    for epoch in range(start_epoch, config.epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{config.epochs}", disable=not config.progress,
                   unit="batch", leave=False, dynamic_ncols=True)
        for batch in bar:
            pos, x = _inputs(batch, device, config.use_normals)
            labels = batch["label"].to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                logits = model(x, pos)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
            if not torch.isfinite(loss.detach()):
                raise FloatingPointError(f"epoch {epoch}: the training loss became {float(loss.detach())}; lower --lr "
                                         f"(now {config.lr}) or check the data for NaN coordinates")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            size = labels.shape[0]
            loss_sum += float(loss.detach()) * size
            correct += int((logits.argmax(-1) == labels).sum())
            seen += size
            elapsed = time.perf_counter() - epoch_start
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                            rate=f"{seen / max(elapsed, 1e-9):.1f}/s")
        bar.close()
        train_time = time.perf_counter() - epoch_start
        result = evaluate(model, test_loader, device, classes=classes, label_smoothing=config.label_smoothing)
        last_metrics = {
            "epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen,
            "test_loss": result["loss"], "test_oa": result["oa"], "test_macc": result["macc"],
            "lr": optimizer.param_groups[0]["lr"], "epoch_time": time.perf_counter() - epoch_start,
            "samples_per_s": seen / train_time,
        }
        improved = result["oa"] > best_oa
        if improved:
            best_oa, best_epoch = result["oa"], epoch
        state = {
            "kind": CHECKPOINT_KIND, "format_version": FORMAT_VERSION, "model_config": model.config,
            "model_state": model.state_dict(), "classes": classes, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if amp else None, "epoch": epoch,
            "rng_state": _rng_state(generator), "best_acc": best_oa, "best_epoch": best_epoch,
            "metrics": last_metrics, "train_config": config.to_dict(), "torch_version": str(torch.__version__),
        }
        # best first: a kill between the two writes then resumes from the previous last.pt and
        # redoes this epoch, which rewrites the same best.pt.
        if improved:
            save_checkpoint(out / "best.pt", state)
        save_checkpoint(out / "last.pt", state)
        with metrics_path.open("a") as stream:
            stream.write(json.dumps(last_metrics) + "\n")
        _log(f"epoch {epoch:3d}/{config.epochs}  loss {last_metrics['train_loss']:.4f}  train acc "
             f"{last_metrics['train_acc']:.4f}  test OA {result['oa']:.4f}  mAcc {result['macc']:.4f}  "
             f"({last_metrics['samples_per_s']:.1f} samples/s, {last_metrics['epoch_time']:.1f} s)"
             + ("  *best*" if improved else ""), config.progress)

    seconds = time.perf_counter() - started
    summary: Dict[str, Any] = {"best_oa": best_oa, "best_epoch": best_epoch, "final": last_metrics,
                               "run_dir": str(out), "seconds": seconds}
    best_path = out / "best.pt"
    if best_path.exists():
        best_model, _, _ = load_model(best_path, device)
        evaluation = evaluate(best_model, test_loader, device, classes=classes, up_axis=config.up_axis)
        evaluation.update(checkpoint=str(best_path), epoch=best_epoch)
        _write_json(out / "eval.json", evaluation)
        summary["eval"] = evaluation
    if config.plots:
        try:
            from ..viz import plot_run

            for path in plot_run(out):
                _log(f"wrote {path}", config.progress)
        except Exception as error:  # plots are a convenience: never lose a finished run to them
            warnings.warn(f"could not draw the training plots: {error}")
    _log(f"done: best test OA {best_oa:.4f} at epoch {best_epoch}; checkpoints in {out}", config.progress)
    return summary
