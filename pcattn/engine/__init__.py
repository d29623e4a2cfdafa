"""Training, evaluation and checkpoints for point-cloud classifiers, part segmenters and scene segmenters.

>>> from pcattn.engine import TrainConfig, train, load_model, evaluate_classification
>>> result = train(TrainConfig(dataset="builtin", attention="vector", out="runs/demo"))
>>> model, classes, checkpoint = load_model("runs/demo/best.pt")
>>> parts = train(TrainConfig(task="partseg", dataset="builtin-parts", out="runs/parts"))
>>> rooms = train(TrainConfig(dataset="builtin-rooms", out="runs/rooms"))  # task "semseg"

Modules:

* :mod:`~pcattn.engine.config`: :class:`TrainConfig`, its checks, the settings a resumed run keeps;
* :mod:`~pcattn.engine.device`: the device and the precision (``32``, ``bf16``, ``fp16``: autocast
  and the gradient scaler);
* :mod:`~pcattn.engine.loaders`: the train and test loaders of a config;
* :mod:`~pcattn.engine.loop`: :func:`train`, built from small steps (set-up, restore, one epoch, save);
* :mod:`~pcattn.engine.tasks`: what differs between classification and part segmentation (model,
  loss, metrics, the score that picks ``best.pt``);
* :mod:`~pcattn.engine.evaluation`: metrics, test-time voting, :func:`evaluate_checkpoint`;
* :mod:`~pcattn.engine.metrics`: part-segmentation accuracy, instance and class mIoU;
* :mod:`~pcattn.engine.scene_inference`: :func:`segment_room` (every point of a whole room) and
  :func:`evaluate_scenes`; :mod:`~pcattn.engine.scene_metrics`: mIoU, mAcc, OA over a split;
* :mod:`~pcattn.engine.checkpoint`: random-state serialisation; it re-exports the checkpoint format,
  atomic writing and reading with named errors, which live in :mod:`pcattn.models.checkpoint` (below
  the engine and :mod:`pcattn.viz`, which both load checkpoints);
* :mod:`~pcattn.engine.run_folder`: the run folder's files.

A run folder holds:

* ``last.pt`` / ``best.pt``: checkpoints (see :func:`save_checkpoint`), written atomically at the
  end of every epoch (``best.pt`` when the test overall accuracy, or for part segmentation the test
  instance mIoU, improves);
* ``metrics.jsonl``: one JSON object per epoch (``epoch, train_loss, train_acc, test_loss,
  test_oa, test_macc, lr, epoch_time, samples_per_s``; part segmentation: ``test_acc,
  test_instance_miou, test_class_miou`` instead of ``test_oa, test_macc``; scenes: ``test_miou, test_macc,
  test_oa``);
* ``config.json``: the run's :class:`TrainConfig`;
* ``eval.json``: evaluation of ``best.pt`` at the end of training (OA, mAcc, per-class accuracy,
  confusion matrix; part segmentation: instance and class mIoU, per-category mIoU, point accuracy,
  part confusion matrix), and ``curves.png`` / ``confusion.png`` drawn from these files by ``pcattn
  train`` (:func:`pcattn.viz.plot_run`; the engine itself does not import :mod:`pcattn.viz`).

Resuming (``TrainConfig(resume=True)``) restores the model, optimizer, scheduler, gradient scaler,
epoch and every random stream (torch's global RNG, which drives augmentation and dropout, and the
data loader's shuffling generator), so a run killed at any point and resumed gives the same weights
and metrics as an uninterrupted run, on the same machine and thread count.
"""
from .checkpoint import (CHECKPOINT_KIND, FORMAT_VERSION, SEGMENTER_KIND, CheckpointError, DiskFullError,
                         load_checkpoint,
                         load_model, model_from_checkpoint, save_checkpoint)
from .config import TrainConfig, merge_resume_config
from .device import PRECISIONS, resolve_device, resolve_precision
from .evaluation import evaluate, evaluate_checkpoint, evaluate_classification, evaluate_parts
from .loaders import build_loaders
from .loop import train
from .metrics import PartSegmentationMetrics, restrict_to_parts, shape_part_ious
from .run_folder import RunFolderInUse, check_writable
from .scene_inference import evaluate_scenes, segment_room

__all__ = [
    "CHECKPOINT_KIND",
    "SEGMENTER_KIND",
    "FORMAT_VERSION",
    "CheckpointError",
    "DiskFullError",
    "RunFolderInUse",
    "PRECISIONS",
    "TrainConfig",
    "train",
    "evaluate_classification",
    "evaluate_parts",
    "evaluate",  # deprecated: evaluate_classification / evaluate_parts
    "evaluate_checkpoint",
    "evaluate_scenes",
    "segment_room",
    "build_loaders",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "model_from_checkpoint",
    "merge_resume_config",
    "check_writable",
    "resolve_device",
    "resolve_precision",
    "PartSegmentationMetrics",
    "restrict_to_parts",
    "shape_part_ious",
]
