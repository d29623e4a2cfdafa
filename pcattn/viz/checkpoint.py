"""Attention pictures of trained checkpoints: what ``pcattn visualize`` does, step by step::

    classifiers = load_classifiers(["vector/best.pt", "scalar/best.pt"])   # compared row by row
    cloud = checkpoint_input(classifiers[0], dataset="builtin", index=7)     # as the run was trained
    result = checkpoint_picture(classifiers, cloud, layers=[0], views=3, path="attention.png")

Owns loading classifiers that can see the same input (:func:`load_classifiers`), choosing that
input as the training run saw it (:func:`checkpoint_input`: a file or a dataset sample; the
number of points, the normals and the up axis default to the run's settings), naming what each
model predicts (:func:`predictions`) and :func:`checkpoint_picture`, which draws the attention
with :func:`~pcattn.viz.figures.attention_picture` under a title naming the input and the
predictions. The engine (checkpoints) and the data package (datasets) are imported when a
function runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from .figures import AttentionPicture, attention_picture

__all__ = ["TrainedClassifier", "CheckpointInput", "CheckpointPicture", "load_classifiers", "checkpoint_input",
           "predictions", "checkpoint_picture"]


class TrainedClassifier(NamedTuple):
    """A trained classifier loaded from a checkpoint (:func:`load_classifiers`)."""

    name: str                  # "run/best.pt": the checkpoint's folder and file, for captions
    model: nn.Module           # in eval mode, on the CPU
    classes: List[str]         # class names, index = label
    train_config: Dict         # the run's training settings ({} for a checkpoint without them)


class CheckpointInput(NamedTuple):
    """The cloud a checkpoint is shown (:func:`checkpoint_input`)."""

    pos: Tensor                # (P, 3) float32, centred in the unit sphere
    x: Optional[Tensor]        # (P, 6) positions and normals for a model trained with normals, else None
    source: str                # "chair.ply" or "builtin test #3", for titles
    truth: Optional[str]       # the sample's true class (dataset samples), else None
    up_axis: int               # 0, 1 or 2


class CheckpointPicture(NamedTuple):
    """Output of :func:`checkpoint_picture`."""

    picture: AttentionPicture
    predictions: List[str]     # one per classifier: "chair (p = 0.912)"
    title: str


def _short(path) -> str:
    """``run/best.pt`` rather than a long absolute path, for captions."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def load_classifiers(checkpoints: Sequence) -> List[TrainedClassifier]:
    """Load the classifiers of ``checkpoints`` (paths) for inference.

    Raises:
        ValueError: no checkpoint, or two that take different input channels (they could not
            see the same input).
        FileNotFoundError, :class:`~pcattn.engine.CheckpointError`: a missing or unreadable file.
    """
    from ..engine import load_model

    if not checkpoints:
        raise ValueError("checkpoints is empty: give at least one checkpoint path")
    classifiers = []
    for path in checkpoints:
        model, classes, checkpoint = load_model(path)
        if classifiers and model.in_channels != classifiers[0].model.in_channels:
            raise ValueError(f"{path} takes {model.in_channels} input channels but {checkpoints[0]} "
                             f"takes {classifiers[0].model.in_channels}: they cannot see the same input")
        classifiers.append(TrainedClassifier(_short(path), model, classes, checkpoint.get("train_config") or {}))
    return classifiers


def checkpoint_input(
    classifier: TrainedClassifier,
    input_file=None,
    dataset: Optional[str] = None,
    index: int = 0,
    split: str = "test",
    data_root=None,
    format: Optional[str] = None,
    num_points: Optional[int] = None,
    sampling: str = "fps",
    up_axis: Optional[int] = None,
) -> CheckpointInput:
    """The cloud to show ``classifier``: ``input_file`` or sample ``index`` of ``dataset``, as in its training.

    Args:
        classifier: from :func:`load_classifiers`; its ``train_config`` gives the defaults.
        input_file: a point cloud file (``.ply .pcd .xyz .txt .npy .off``, see
            :func:`pcattn.data.load_cloud`); subsampled to ``num_points`` with ``sampling``.
        dataset: ``"builtin"``, ``"modelnet10"`` or ``"modelnet40"`` (exactly one of
            ``input_file`` and ``dataset``). ``format`` and ``data_root`` default to the
            training run's when it used the same dataset.
        index, split: which sample.
        num_points: points per cloud (default: as in training, else 1024).
        up_axis: 0, 1 or 2 (default: the axis the run trained with; for a dataset sample of another
            dataset, that dataset's own; else 1).

    Raises:
        ValueError: both or neither source, ``index`` out of range, an unreadable file or one
            without the normals the model was trained with.
        FileNotFoundError: a missing file or dataset.
    """
    if (input_file is None) == (dataset is None):
        raise ValueError("give exactly one of input_file and dataset")
    train = classifier.train_config
    use_normals = classifier.model.in_channels == 6
    num_points = num_points or train.get("num_points") or 1024
    if input_file is not None:
        from ..data.cloud import load_cloud

        pos, x = load_cloud(input_file, num_points, use_normals, sampling)
        trained_axis = train.get("up_axis")
        default_axis = 1 if trained_axis is None else int(trained_axis)
        return CheckpointInput(pos, x, Path(input_file).name, None, default_axis if up_axis is None else up_axis)

    from ..data import build_dataset, test_transforms

    same = dataset == train.get("dataset")
    samples = build_dataset(dataset, format=format or (train.get("format") if same else None),
                            root=data_root or (train.get("data_root") if same else None),
                            split=split, num_points=num_points, use_normals=use_normals, transform=test_transforms())
    if not 0 <= index < len(samples):
        raise ValueError(f"index {index} out of range: the {dataset} {split} split has "
                         f"{len(samples)} samples (0..{len(samples) - 1})")
    sample = samples[index]
    pos = sample["pos"]
    x = torch.cat([pos, sample["normals"]], -1) if use_normals else None
    # the axis the run trained with (it may have been set by hand), else the dataset's own
    trained_axis = train.get("up_axis") if same else None
    if trained_axis is None:
        trained_axis = getattr(samples, "up_axis", None)
    default_axis = 1 if trained_axis is None else int(trained_axis)
    return CheckpointInput(pos, x, f"{dataset} {split} #{index}", samples.classes[int(sample["label"])],
                           default_axis if up_axis is None else up_axis)


def predictions(classifiers: Sequence[TrainedClassifier], cloud: CheckpointInput) -> List[str]:
    """What each classifier predicts for ``cloud``: ``"chair (p = 0.912)"`` (class name and softmax probability)."""
    described = []
    x = None if cloud.x is None else cloud.x[None]
    for classifier in classifiers:
        with torch.no_grad():
            probabilities = torch.softmax(classifier.model(x, cloud.pos[None])[0], -1)
        p, c = probabilities.max(0)
        names = classifier.classes
        name = names[int(c)] if names and int(c) < len(names) else str(int(c))
        described.append(f"{name} (p = {float(p):.3f})")
    return described


def checkpoint_picture(classifiers: Sequence[TrainedClassifier], cloud: CheckpointInput, title: Optional[str] = None,
                       **options) -> CheckpointPicture:
    """Draw the classifiers' attention on ``cloud``: one row per (classifier, layer), one column per view.

    ``options`` go to :func:`~pcattn.viz.figures.attention_picture` (``layers``, ``mode``,
    ``query``, ``reduce``, ``views``, ``size``, ``backend``, ``colorbar``, ``path``); the up axis is
    ``cloud.up_axis``. The default ``title`` names the input, its true class and each prediction.

    Raises:
        ValueError: a ``query`` or layer out of range.
        :class:`~pcattn.viz.render.RenderingUnavailable`: ``backend="open3d"`` cannot run here.
    """
    # Probabilities first (cheap), so the title can say what the models predict.
    predicted = predictions(classifiers, cloud)
    if title is None:
        title = f"{cloud.source}" + (f" (true: {cloud.truth})" if cloud.truth else "") + " - predicted: " + \
                " | ".join(predicted)
    picture = attention_picture([(c.name, c.model) for c in classifiers], cloud.pos, cloud.x,
                                up_axis=cloud.up_axis, title=title, **options)
    return CheckpointPicture(picture, predicted, title)
