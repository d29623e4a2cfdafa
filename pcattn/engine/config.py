"""A training run's configuration: :class:`TrainConfig`, its option checks, and the rules for resuming
(which settings a resumed run may not change, and how ``--resume`` merges the saved settings with
the options given again)."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from ..models import MODEL_CONFIGS, SEGMENTER_CONFIGS
from .checkpoint import load_checkpoint
from .device import check_precision_name

__all__ = ["TrainConfig", "TASKS", "TASK_DATASETS", "TASK_DEFAULTS", "DATASET_DEFAULTS", "RESULT_FIELDS",
           "CLASS_WEIGHTS", "CLASS_WEIGHT_POWERS", "class_loss_weights", "check_resume_settings",
           "merge_resume_config", "read_run_config"]

# TrainConfig fields that change what a run computes: a resumed run must not change them.
RESULT_FIELDS = ("task", "dataset", "format", "data_root", "model", "attention", "batch_size", "num_points",
                 "use_normals",
                 "lr", "weight_decay", "optimizer", "momentum", "warmup", "lr_schedule", "lr_steps", "lr_step_factor",
                 "label_smoothing", "seed", "augment",
                 "up_axis", "attention_options", "precision", "skip_missing", "init_encoder",
                 "voxel_size", "test_area", "rooms", "room_points", "room_repeats", "eval_fragments",
                 "class_weights", "crop_centres")

#: scenes: how the loss weighs the classes (TrainConfig.class_weights) and how training crops pick their centres
#: (TrainConfig.crop_centres): each kind's power p of the weights f_c^-p (f_c: the class's share of the training
#: points; None: unweighted)
CLASS_WEIGHT_POWERS = {"none": None, "sqrt": 0.5, "inverse": 1.0}
CLASS_WEIGHTS = tuple(CLASS_WEIGHT_POWERS)


def class_loss_weights(counts, kind: str) -> "Optional[torch.Tensor]":
    """The cross-entropy's class weights of :attr:`~pcattn.engine.TrainConfig.class_weights` from the labelled
    training points of each class ``counts (C,)``: ``None`` for ``"none"``; else ``f_c^-p`` (``f_c`` the class's
    share of the points, ``p`` 1/2 for ``"sqrt"``, 1 for ``"inverse"``) scaled to a mean of 1 over the classes
    that have points. A class with no training point gets weight 0 (it is never a target). float32 ``(C,)``.
    The weights of :attr:`~pcattn.engine.TrainConfig.crop_centres` too (the crop centre's draw).

    Raises:
        ValueError: an unknown ``kind``, or no labelled point at all.
    """
    import torch

    if kind not in CLASS_WEIGHTS:
        raise ValueError(f"class_weights must be one of {', '.join(CLASS_WEIGHTS)}, got {kind!r}")
    power = CLASS_WEIGHT_POWERS[kind]
    if power is None:
        return None
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if not bool((counts > 0).any()):
        raise ValueError("the training rooms hold no labelled point: no class weights can be computed")
    present = counts > 0
    weight = torch.zeros_like(counts)
    weight[present] = (counts[present] / counts.sum()) ** -power
    return (weight / weight[present].mean()).float()


#: the tasks a run trains, and the datasets of each (the first is the task's default)
TASKS = ("classification", "partseg", "semseg")
TASK_DATASETS = {"classification": ("builtin", "modelnet10", "modelnet40"),
                 "partseg": ("builtin-parts", "shapenetpart"),
                 "semseg": ("builtin-rooms", "s3dis", "scannet", "folder")}
#: the defaults of the settings that depend on the task (the part segmenter was tuned on the built-in parts:
#: a higher learning rate, smaller batches and no label smoothing)
TASK_DEFAULTS = {"classification": dict(epochs=15, batch_size=32, lr=2e-3, weight_decay=1e-4, label_smoothing=0.1),
                 "partseg": dict(epochs=15, batch_size=16, lr=5e-3, weight_decay=1e-2, label_smoothing=0.0),
                 "semseg": dict(epochs=15, batch_size=4, lr=5e-3, weight_decay=1e-2, label_smoothing=0.0)}
#: scene datasets' own defaults, before the task's (the real scans: the scene papers' schedules with AdamW as
#: the Point Transformer v2 trains, 100 epochs, crops of 80,000 (S3DIS) or 100,000 (ScanNet) points, each S3DIS
#: room cropped 30 times per epoch as the official Point Transformer code loops over its 204 training rooms)
DATASET_DEFAULTS = {
    # the built-in rooms as the scene main job trains on them on a CPU (an 8 cm grid for pt-scene-tiny-*, the
    # rare classes weighed up)
    "builtin-rooms": dict(num_points=4096, room_repeats=8, voxel_size=0.08, class_weights="sqrt"),
    "s3dis": dict(epochs=100, batch_size=8, lr=5e-3, weight_decay=0.05, num_points=80_000, room_repeats=30),
    "scannet": dict(epochs=100, batch_size=8, lr=5e-3, weight_decay=0.02, num_points=100_000, room_repeats=1),
    "folder": dict(num_points=80_000, room_repeats=1),
}
#: file formats of each dataset family (``None`` in a config: guessed from the files)
_FORMATS = {"classification": ("off", "normal_resampled", "hdf5", "folder"), "partseg": ("normal", "v0", "hdf5"),
            "semseg": ("raw", "npy", "folders")}


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in its checkpoints and ``config.json``).

    Attributes:
        task: ``"classification"`` (one label per cloud), ``"partseg"`` (part segmentation: one
            part label per point, the object category given) or ``"semseg"`` (semantic segmentation of
            scenes: one class per point of whole rooms); ``None`` takes the dataset's task
            (``"classification"`` when neither is given).
        dataset: classification: ``"builtin"`` (generated, no download; the default), ``"modelnet10"``
            or ``"modelnet40"``; part segmentation: ``"builtin-parts"`` (generated, no download; the
            default) or ``"shapenetpart"``; scenes: ``"builtin-rooms"`` (generated, no download; the
            default), ``"s3dis"``, ``"scannet"`` (preprocessed, ``train/`` and ``val/``: evaluated on ``val``)
            or ``"folder"`` (your own labelled rooms: ``<data_root>/classes.txt``, ``train/``, ``test/``).
        format: ModelNet file format (``off``, ``normal_resampled``, ``hdf5``, ``folder``) or
            ShapeNetPart layout (``normal``, ``v0``, ``hdf5``) or S3DIS layout (``raw``, ``npy``,
            ``folders``); ``None`` guesses it from the files.
        data_root: dataset folder; ``None`` looks under ``datasets/`` (see ``datasets/README.md``).
        skip_missing: ShapeNetPart: leave out (with a warning) shapes its split lists name but whose
            files are absent; by default such a shape is an error naming the file.
        model: a name of :func:`pcattn.models.create_model`; ``None`` picks ``pt-tiny-<attention>``
            for the built-in dataset, ``pt-<attention>`` for ModelNet, ``pt-seg-tiny-<attention>``
            for the built-in parts and ``pt-seg-<attention>`` for ShapeNetPart.
        attention: ``"vector"`` (default) or ``"scalar"``; with ``model`` given it must agree with it.
        init_encoder: a classifier's checkpoint whose encoder initialises the model's (e.g. a
            ``pt-tiny-vector`` run's ``best.pt`` for ``pt-seg-tiny-vector``: each named segmenter's encoder
            is its classifier's, :data:`pcattn.models.ENCODER_OF`); the rest starts at random. A
            resumed run continues from its own checkpoint.
        attention_options: options of every attention layer of the model, e.g.
            ``{"positional_encoding": "none"}`` or ``{"relation": "addition"}`` (see
            :class:`pcattn.VectorSelfAttention` / :class:`pcattn.ScalarSelfAttention`).
        epochs, batch_size, num_points: the usual (``batch_size`` is the global batch under
            ``torchrun``: each of N processes takes ``batch_size / N``); ``num_points=None`` is 512 for the built-in
            datasets, 1024 for ModelNet and 2048 for ShapeNetPart. Scenes: ``batch_size`` crops per step and
            ``num_points`` the crop's budget (at most that many grid-sampled points around a random point:
            4,096 for the built-in rooms, 80,000 S3DIS, 100,000 ScanNet).
        voxel_size: scenes: the grid sampling's voxel edge in metres (default 0.04, the Point Transformer's;
            0.08 for the built-in rooms, a CPU-sized grid), in training and in the evaluation on whole rooms.
        test_area: S3DIS: the area held out for testing, 1-6 (default 5: train on the other five).
        rooms: built-in rooms: ``(train, test)`` numbers of rooms (default ``(16, 4)``).
        room_points: built-in rooms: the range of points per room (default ``(50000, 200000)``).
        eval_fragments: scenes: the evaluation after each epoch segments at most this many grid fragments of
            each test room (``None``, the default: all, the scene papers' protocol); the points of no kept
            fragment take their voxel's scores (:func:`~pcattn.engine.scene_inference.segment_room`). A
            cheaper evaluation for short runs on a CPU; ``pcattn eval`` keeps the full protocol.
        room_repeats: scenes: crops drawn from each training room per epoch (default 8 for the built-in
            rooms, 30 for S3DIS, 1 otherwise).
        class_weights: scenes: the cross-entropy's weight of each class, from its share ``f_c`` of the
            labelled training points: ``"none"`` (every point alike; the default but for the built-in rooms),
            ``"sqrt"`` (``f_c^-1/2``, the built-in rooms' default) or
            ``"inverse"`` (``f_c^-1``), scaled to a mean of 1 over the classes. Rooms are mostly floor, walls
            and ceiling; mIoU counts every class alike, so weighing the rare ones up raises it.
        crop_centres: scenes: how a training crop picks the point it is centred on: ``"none"`` (any point
            alike; the default) or, as ``class_weights`` weighs the loss, with a probability proportional to
            ``f_c^-p`` for a point of class ``c`` (``"sqrt"``: class ``c`` is the centre of a share
            ``f_c^1/2`` of the crops, before normalising; ``"inverse"``: every class as often), so crops fall on
            the rare classes (the built-in rooms' doors, windows, boards) more often
            (:class:`~pcattn.data.grid.SphereCrop`).
        lr, weight_decay, optimizer (``"adamw"`` or ``"sgd"``), momentum (SGD only).
            ``None`` for ``epochs``, ``batch_size``, ``lr``, ``weight_decay`` and ``label_smoothing`` takes the
            task's default (:data:`TASK_DEFAULTS`: 15, 32, 2e-3, 1e-4, 0.1 for classification; 15, 16, 5e-3,
            1e-2, 0 for part segmentation).
        warmup: fraction of the iterations with a linear learning-rate warm-up, followed by the
            ``lr_schedule`` (stepped every iteration).
        lr_schedule: ``"cosine"`` (default: a cosine decay to zero) or ``"step"`` (the rate multiplied by
            ``lr_step_factor``, default 0.1, at the start of each epoch after one in ``lr_steps``: the
            papers' ``--lr-steps 120,160`` of 200 epochs trains epochs 1-120 at ``lr``, 121-160 at
            ``lr / 10``, 161-200 at ``lr / 100``).
        deterministic: ``torch.use_deterministic_algorithms(True)`` for the run, with what CUDA needs
            for it (``CUBLAS_WORKSPACE_CONFIG=:4096:8``, cuDNN deterministic and not benchmarking):
            on a GPU the same seed then gives the same metrics on the same GPU model, software and
            number of processes, at some cost in speed (see :func:`pcattn.engine.device.deterministic_algorithms`).
            The CPU is deterministic without it. Not a result setting: a resume may change it.
        label_smoothing: cross-entropy label smoothing.
        use_normals: feed normals as features (``in_channels = 6``).
        download: fetch the Princeton ModelNet zip (format ``off``), or the ShapeNetPart archive of
            ``format`` (default ``normal``), into ``data_root`` (default ``datasets/``) when it is not
            there yet; needs the internet.
        up_axis: the vertical axis of the data (0, 1, 2), for the rotation augmentation and test-time
            voting; ``None`` takes the dataset's (y for the built-in shapes and PointNet++ files, z for
            Princeton OFF meshes and point folders).
        augment: the training augmentation of :func:`pcattn.data.train_transforms` (scale,
            rotation about the up axis, shift, jitter, point dropout).
        seed: seeds weights, augmentation, dropout and shuffling: the same seed gives the same
            metrics on the same CPU and thread count.
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        precision: ``"32"``, ``"bf16"`` (autocast) or ``"fp16"`` (autocast and a gradient scaler),
            for training and evaluation; ``None`` is ``"fp16"`` on CUDA and ``"32"`` on the CPU (the
            run records the value it used). See :mod:`pcattn.engine.device`.
        num_workers: data-loading processes (per process of a ``torchrun`` job).
        sync_bn: under ``torchrun`` with several processes, replace BatchNorm by SyncBatchNorm (batch
            statistics of the global batch); ``None`` is on with several processes. Not a result
            setting: a resume may change it (with the number of processes).
        threads: ``torch.set_num_threads`` for the run (``None`` keeps torch's default).
        out: the run folder.
        resume: continue the run in ``out`` from ``last.pt``; without one, start it again from its
            ``config.json`` when it was killed before recording an epoch, refuse when it recorded
            some, and start a new run in an empty folder.
        progress: show progress bars.
        plots: draw ``curves.png`` and ``confusion.png`` at the end: ``pcattn train`` does, after
            :func:`~pcattn.engine.train` returns (the engine does not import :mod:`pcattn.viz`); in
            Python call :func:`pcattn.viz.plot_run` on the run folder.
    """

    task: Optional[str] = None
    dataset: Optional[str] = None
    format: Optional[str] = None
    data_root: Optional[str] = None
    skip_missing: bool = False
    model: Optional[str] = None
    attention: Optional[str] = None
    attention_options: Optional[Dict[str, Any]] = None
    init_encoder: Optional[str] = None
    voxel_size: Optional[float] = None
    test_area: Optional[int] = None
    rooms: Optional[Tuple[int, int]] = None
    room_points: Optional[Tuple[int, int]] = None
    room_repeats: Optional[int] = None
    eval_fragments: Optional[int] = None
    class_weights: Optional[str] = None
    crop_centres: Optional[str] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    num_points: Optional[int] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    optimizer: str = "adamw"
    momentum: float = 0.9
    warmup: float = 0.1
    lr_schedule: str = "cosine"
    lr_steps: Optional[Tuple[int, ...]] = None
    lr_step_factor: float = 0.1
    label_smoothing: Optional[float] = None
    use_normals: bool = False
    download: bool = False
    up_axis: Optional[int] = None
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    precision: Optional[str] = None
    num_workers: int = 0
    sync_bn: Optional[bool] = None
    deterministic: bool = False
    threads: Optional[int] = None
    out: str = "runs/run"
    resume: bool = False
    progress: bool = True
    plots: bool = True

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> "TrainConfig":
        """A config from a saved ``train_config`` (keys this version does not know are skipped)."""
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in saved.items() if key in known})

    def resolved(self) -> "TrainConfig":
        """A copy with the ``None`` defaults filled in and the arguments checked (``precision``
        stays ``None`` until the device is known: see :func:`pcattn.engine.device.resolve_precision`)."""
        config = dataclasses.replace(self)
        _resolve_task(config)
        for name, value in DATASET_DEFAULTS.get(config.dataset, {}).items():
            if getattr(config, name) is None:
                setattr(config, name, value)
        for name, value in TASK_DEFAULTS[config.task].items():
            if getattr(config, name) is None:
                setattr(config, name, value)
        if config.attention not in (None, "vector", "scalar"):
            raise ValueError(f"attention must be 'vector' or 'scalar', got {config.attention!r}")
        models = MODEL_CONFIGS if config.task == "classification" else SEGMENTER_CONFIGS
        if config.model is None:
            attention = config.attention or "vector"
            tiny = "tiny-" if config.dataset in ("builtin", "builtin-parts", "builtin-rooms") else ""
            kind = {"classification": "", "partseg": "seg-", "semseg": "scene-"}[config.task]
            config.model = f"pt-{kind}{tiny}{attention}"
        if config.model not in models:
            other = "segmentation" if config.task == "classification" else "classification"
            hint = f" ({config.model!r} is a {other} model)" if config.model in {**MODEL_CONFIGS, **SEGMENTER_CONFIGS} \
                else ""
            raise ValueError(f"unknown model {config.model!r} for {config.task}{hint}; available: "
                             f"{', '.join(sorted(models))}")
        model_attention = models[config.model].get("attention", "vector")
        if config.attention not in (None, model_attention):
            raise ValueError(f"model {config.model!r} uses {model_attention} attention, but attention="
                             f"{config.attention!r} was asked for; change one of them")
        config.attention = model_attention
        if config.init_encoder is not None:
            config.init_encoder = str(Path(config.init_encoder).expanduser())
            if not Path(config.init_encoder).is_file():
                raise ValueError(f"init_encoder {config.init_encoder}: no such checkpoint file")
        if config.num_points is None:
            config.num_points = {"builtin": 512, "builtin-parts": 512, "shapenetpart": 2048}.get(config.dataset, 1024)
        config.optimizer = config.optimizer.lower()
        if config.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {config.optimizer!r}")
        for name in ("epochs", "batch_size", "num_points"):
            if int(getattr(config, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
        for name in ("lr", "weight_decay", "momentum", "warmup", "label_smoothing"):
            if not math.isfinite(float(getattr(config, name))):
                raise ValueError(f"{name} must be a finite number, got {getattr(config, name)}")
        if not config.lr > 0:
            raise ValueError(f"lr must be > 0, got {config.lr}")
        if config.weight_decay < 0 or config.momentum < 0:
            raise ValueError(f"weight_decay and momentum must be >= 0, got {config.weight_decay} and {config.momentum}")
        if config.threads is not None and int(config.threads) < 1:
            raise ValueError(f"threads must be >= 1, got {config.threads}")
        if not 0 <= config.warmup < 1:
            raise ValueError(f"warmup is a fraction of the iterations in [0, 1), got {config.warmup}")
        _check_lr_schedule(config)
        if not 0 <= config.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {config.label_smoothing}")
        if config.attention_options:
            _check_attention_options(config.attention, dict(config.attention_options))
        if config.up_axis is not None and config.up_axis not in (0, 1, 2):
            raise ValueError(f"up_axis must be 0, 1 or 2 (x, y, z), got {config.up_axis!r}")
        _check_scene_options(config)
        config.precision = check_precision_name(config.precision)
        if config.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {config.num_workers}")
        if config.download:
            if config.task == "semseg":
                raise ValueError(f"download is for ModelNet and ShapeNetPart; {config.dataset} is "
                                 + ("generated locally" if config.dataset == "builtin-rooms" else
                                    "not downloaded by pcattn (see datasets/README.md for its sources)"))
            if config.dataset in ("builtin", "builtin-parts"):
                raise ValueError(f"download is for ModelNet and ShapeNetPart; the {config.dataset} dataset is "
                                 f"generated locally")
            if config.dataset == "shapenetpart":
                config.format = config.format or "normal"
            elif config.format not in (None, "off"):
                raise ValueError(f"download fetches the Princeton OFF meshes (format 'off'), not format "
                                 f"{config.format!r}; see datasets/README.md for the other archives")
            else:
                config.format = "off"
        from ..data import check_generated_options

        check_generated_options(config.dataset, config.data_root, config.format)  # before the run folder exists
        if config.data_root is not None:
            config.data_root = str(Path(config.data_root).expanduser())
        config.out = str(config.out)
        return config

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _check_lr_schedule(config: TrainConfig) -> None:
    """Check ``lr_schedule``, ``lr_steps`` (epochs, increasing, stored as a list) and ``lr_step_factor``."""
    if config.lr_schedule not in ("cosine", "step"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'step', got {config.lr_schedule!r}")
    if config.lr_schedule == "cosine":
        if config.lr_steps:
            raise ValueError(f"lr_steps {list(config.lr_steps)} are for lr_schedule='step'; the cosine schedule has "
                             f"no steps")
        return
    steps = list(config.lr_steps or [])
    if not steps:
        raise ValueError("lr_schedule 'step' needs lr_steps: the epochs after which the rate drops, e.g. 120,160")
    if any(isinstance(step, bool) or not isinstance(step, int) or step < 1 for step in steps) or \
            steps != sorted(set(steps)):
        raise ValueError(f"lr_steps must be increasing whole epochs >= 1, got {steps}")
    if not (math.isfinite(float(config.lr_step_factor)) and 0 < config.lr_step_factor <= 1):
        raise ValueError(f"lr_step_factor must be in (0, 1], got {config.lr_step_factor}")
    config.lr_steps = steps


def _check_scene_options(config: TrainConfig) -> None:
    """The scene settings: only for ``semseg`` (and ``test_area`` only for S3DIS, ``rooms`` / ``room_points``
    only for the built-in rooms); ``voxel_size`` filled in (0.04) and every value checked."""
    scene_only = ("voxel_size", "test_area", "rooms", "room_points", "room_repeats", "eval_fragments",
                  "class_weights", "crop_centres")
    if config.task != "semseg":
        given = [name for name in scene_only if getattr(config, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} (--{given[0].replace('_', '-')}) are for scene segmentation "
                             f"(task semseg); the {config.task} task has no rooms")
        return
    if config.up_axis not in (None, 2):
        raise ValueError(f"up_axis {config.up_axis}: scenes stand with z up (their augmentation turns them about z); "
                         f"leave up_axis unset for semseg")
    if config.voxel_size is None:
        config.voxel_size = 0.04
    if not (isinstance(config.voxel_size, (int, float)) and math.isfinite(config.voxel_size)
            and config.voxel_size > 0):
        raise ValueError(f"voxel_size must be a positive number of metres, got {config.voxel_size!r}")
    config.voxel_size = float(config.voxel_size)
    for name in ("class_weights", "crop_centres"):  # the same kinds of weights (CLASS_WEIGHT_POWERS)
        kind = "none" if getattr(config, name) is None else getattr(config, name)
        if kind not in CLASS_WEIGHTS:
            raise ValueError(f"{name} must be one of {', '.join(CLASS_WEIGHTS)}, got {kind!r}")
        setattr(config, name, kind)
    if config.eval_fragments is not None and (isinstance(config.eval_fragments, bool)
                                              or not isinstance(config.eval_fragments, int)
                                              or config.eval_fragments < 1):
        raise ValueError(f"eval_fragments must be a whole number >= 1 (or unset: every fragment), got "
                         f"{config.eval_fragments!r}")
    if config.test_area is not None and config.dataset != "s3dis":
        raise ValueError(f"test_area (--test-area) picks S3DIS's held-out area; {config.dataset} has no areas")
    if config.dataset == "s3dis":
        config.test_area = 5 if config.test_area is None else config.test_area
        if isinstance(config.test_area, bool) or config.test_area not in range(1, 7):
            raise ValueError(f"test_area must be one of the S3DIS areas 1-6, got {config.test_area!r}")
    for name in ("rooms", "room_points"):
        value = getattr(config, name)
        if value is None:
            continue
        if config.dataset != "builtin-rooms":
            raise ValueError(f"{name} (--{name.replace('_', '-')}) is for the generated built-in rooms, not "
                             f"{config.dataset}")
        value = list(value)
        if len(value) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
            raise ValueError(f"{name} must be two positive whole numbers, got {getattr(config, name)!r}")
        if name == "room_points" and value[0] > value[1]:
            raise ValueError(f"room_points must be (low, high) with low <= high, got {value}")
        setattr(config, name, value)
    if isinstance(config.room_repeats, bool) or not isinstance(config.room_repeats, int) or config.room_repeats < 1:
        raise ValueError(f"room_repeats must be a whole number >= 1, got {config.room_repeats!r}")
    if config.dataset in ("scannet", "folder") and config.format is not None:
        raise ValueError(f"format {config.format!r} (--format) picks an S3DIS layout; {config.dataset} has one "
                         f"layout")


def _resolve_task(config: TrainConfig) -> None:
    """Fill in and check ``task``, ``dataset`` and ``format`` (each task has its datasets and formats)."""
    if config.task is not None and config.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {config.task!r}")
    dataset = config.dataset.lower() if config.dataset is not None else None
    if dataset is not None:
        owner = next((task for task, names in TASK_DATASETS.items() if dataset in names), None)
        if owner is None:
            known = ", ".join(name for names in TASK_DATASETS.values() for name in names)
            raise ValueError(f"dataset must be one of {known}, got {config.dataset!r}")
        if config.task not in (None, owner):
            raise ValueError(f"dataset {dataset!r} is a {owner} dataset, not a {config.task} one; the {config.task} "
                             f"datasets are {', '.join(TASK_DATASETS[config.task])}")
        config.task = owner
    config.task = config.task or "classification"
    config.dataset = dataset or TASK_DATASETS[config.task][0]
    if config.format is not None and config.format not in _FORMATS[config.task]:
        raise ValueError(f"format {config.format!r} is not a format of {config.dataset}; expected one of "
                         f"{', '.join(_FORMATS[config.task])} (or none: guessed from the files)")
    if config.skip_missing and config.dataset != "shapenetpart":
        raise ValueError("skip_missing is for ShapeNetPart's split lists; the other datasets list no files")


# Arguments of the attention layers that the model sets itself, stage by stage.
_MODEL_SET_OPTIONS = ("in_channels", "out_channels", "k", "groups", "heads")


def _check_attention_options(attention: str, options: Dict[str, Any]) -> None:
    """Build one layer with ``options`` and run it on a small cloud, so a bad name or value fails
    (as a ``ValueError`` naming the options) before any data is loaded or the run folder is touched."""
    import torch

    from ..nn import ScalarSelfAttention, VectorSelfAttention

    taken = [key for key in options if key in _MODEL_SET_OPTIONS]
    if taken:
        raise ValueError(f"attention option {', '.join(map(repr, taken))} is set by the model itself (stage by "
                         f"stage: its widths, k, groups/group_size, heads); choose another --model, or build one "
                         f"with pcattn.models.create_model(..., groups=..., heads=..., k=...)")
    layer = VectorSelfAttention if attention == "vector" else ScalarSelfAttention
    try:
        module = layer(8, 8, k=4, **({"groups": 2} if attention == "vector" else {"heads": 2}), **options)
        with torch.no_grad():
            module(torch.randn(1, 6, 8), torch.randn(1, 6, 3))
    except Exception as error:  # whatever a bad value raises, inside the layer or later in its forward
        raise ValueError(f"attention options {options} not accepted by {layer.__name__}: "
                         f"{type(error).__name__}: {error}") from None


def read_run_config(out) -> Optional[Dict[str, Any]]:
    """The saved settings of the run in the folder ``out`` (its ``config.json``), or ``None``.

    Raises:
        ValueError: ``config.json`` exists but is not a JSON object.
    """
    path = Path(out) / "config.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not readable JSON ({error}); the run's settings are unknown") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: expected a JSON object of settings, found {type(saved).__name__}")
    return saved


def check_resume_settings(config: TrainConfig, saved: Mapping[str, Any], path) -> None:
    """Refuse to resume the run saved in ``path`` (its ``train_config`` is ``saved``) with settings that
    change its results (:data:`RESULT_FIELDS`); a field left ``None`` in ``config`` is not compared."""
    different = {key: (saved.get(key), getattr(config, key)) for key in RESULT_FIELDS
                 if key in saved and getattr(config, key) is not None and saved.get(key) != getattr(config, key)}
    if different:
        details = ", ".join(f"{key}: run has {old!r}, now {new!r}" for key, (old, new) in different.items())
        raise ValueError(f"cannot resume {path} with different settings ({details}); resume with the run's own "
                         f"settings (omit these options) or start a new run in another --out")


def merge_resume_config(config: TrainConfig, explicit: Sequence[str]) -> TrainConfig:
    """For ``--resume``: the saved run's settings (from ``last.pt``, else from ``config.json``, which a
    run writes before its first epoch), overridden only by the options given explicitly
    (``explicit`` names the :class:`TrainConfig` fields the user set). A folder with neither is
    returned as given (a new run)."""
    out = Path(config.out)
    if not config.resume:
        return config
    if (out / "last.pt").exists():
        saved = load_checkpoint(out / "last.pt").get("train_config") or {}
    else:
        saved = read_run_config(out)
        if saved is None:
            return config
    merged = TrainConfig.from_dict(saved)
    for name in explicit:
        setattr(merged, name, getattr(config, name))
    merged.out, merged.resume = config.out, True
    return merged
