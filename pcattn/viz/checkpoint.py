"""Pictures of trained checkpoints: what ``pcattn visualize`` does, step by step::

    classifiers = load_trained_models(["vector/best.pt", "scalar/best.pt"])   # compared row by row
    cloud = checkpoint_input(classifiers[0], dataset="builtin", index=7)     # as the run was trained
    result = checkpoint_picture(classifiers, cloud, layers=[0], views=3, path="attention.png")

    segmenters = load_trained_models(["partseg/best.pt"])                      # part segmentation checkpoints
    cloud = checkpoint_input(segmenters[0], dataset="builtin-parts", index=3)   # with its category and parts
    result = checkpoint_parts_picture(segmenters, cloud, views=3, path="parts.png")

Owns loading checkpoints of one kind that can see the same input (:func:`load_trained_models`:
classifiers, or part segmenters of the same categories and parts), choosing that input as the
training run saw it (:func:`checkpoint_input`: a file or a dataset sample; the number of points,
the normals and the up axis default to the run's settings; a segmenter's input carries its object
category, and a part dataset's sample its true part labels), naming what each model predicts
(:func:`predictions`, :func:`segment`), :func:`checkpoint_picture`, which draws the attention with
:func:`~pcattn.viz.figures.attention_picture` under a title naming the input and the predictions,
and :func:`checkpoint_parts_picture`, which draws a segmenter's predicted parts with
:func:`~pcattn.viz.parts.parts_picture`. Checkpoints are read by :mod:`pcattn.models.checkpoint`;
the part metrics (:mod:`pcattn.engine.metrics`) and the datasets are imported when a function runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..deprecation import renamed_attributes
from .figures import AttentionPicture, attention_picture
from .parts import PartsPicture, parts_picture

__all__ = ["TrainedModel", "CheckpointInput", "CheckpointPicture", "Segmentation", "CheckpointPartsPicture",
           "load_trained_models", "checkpoint_input", "predictions", "segment", "checkpoint_picture",
           "checkpoint_parts_picture"]


class TrainedModel(NamedTuple):
    """A trained model loaded from a checkpoint (:func:`load_trained_models`): a classifier, or a part
    segmenter (:class:`~pcattn.models.PointTransformerSegmenter`) when ``categories`` is set."""

    name: str                  # "run/best.pt": the checkpoint's folder and file, for captions
    model: nn.Module           # in eval mode, on the CPU
    classes: List[str]         # class names, index = label; a segmenter's global part names ("chair/legs")
    train_config: Dict         # the run's training settings ({} for a checkpoint without them)
    categories: Optional[List[str]] = None              # a segmenter's object categories (index = category id)
    category_parts: Optional[List[List[int]]] = None    # a segmenter's global part ids of each category

    @property
    def is_segmenter(self) -> bool:
        return self.categories is not None

    @property
    def kind(self) -> str:
        """``"part segmenter"`` or ``"classifier"``, for messages."""
        return "part segmenter" if self.is_segmenter else "classifier"


class CheckpointInput(NamedTuple):
    """The cloud a checkpoint is shown (:func:`checkpoint_input`)."""

    pos: Tensor                # (P, 3) float32, centred in the unit sphere
    x: Optional[Tensor]        # (P, 6) positions and normals for a model trained with normals, else None
    source: str                # "chair.ply" or "builtin test #3", for titles
    truth: Optional[str]       # the sample's true class (a part dataset's: its category), else None
    up_axis: int               # 0, 1 or 2
    seg: Optional[Tensor] = None     # (P,) int64 true global part ids (part dataset samples), else None
    category: Optional[int] = None  # object category id (part dataset samples; given for a segmenter's file)


class CheckpointPicture(NamedTuple):
    """Output of :func:`checkpoint_picture`."""

    picture: AttentionPicture
    predictions: List[str]     # one per checkpoint: "chair (p = 0.912)"; a segmenter's: Segmentation.describe()
    title: str


class Segmentation(NamedTuple):
    """What a part segmenter predicts for one cloud (:func:`segment`)."""

    category: str              # the object category; only its parts are predicted
    parts: List[int]           # the category's global part ids
    part_names: List[str]      # their names within the category ("legs" for "chair/legs")
    labels: np.ndarray         # (P,) int64 predicted global part ids, each one of ``parts``
    accuracy: Optional[float]  # fraction of the points labelled right when the truth is known, else None
    miou: Optional[float]      # the shape's mIoU over ``parts`` (a part absent from both counts 1), else None

    def describe(self) -> str:
        """``"chair: 91.2% of points right, mIoU 0.85"``, or ``"chair"`` when the truth is unknown."""
        if self.accuracy is None:
            return self.category
        return f"{self.category}: {100 * self.accuracy:.1f}% of points right, mIoU {self.miou:.2f}"


class CheckpointPartsPicture(NamedTuple):
    """Output of :func:`checkpoint_parts_picture`."""

    picture: PartsPicture
    segmentations: List[Segmentation]   # one per segmenter
    title: str


def _short(path) -> str:
    """``run/best.pt`` rather than a long absolute path, for captions."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def load_trained_models(checkpoints: Sequence) -> List[TrainedModel]:
    """Load the classifiers or part segmenters of ``checkpoints`` (paths) for inference.

    Raises:
        ValueError: no checkpoint; two that take different input channels (they could not see the
            same input); a classifier with a segmenter, or segmenters of different categories or
            parts (they could not be given the same category, or scored on the same labels).
        FileNotFoundError, :class:`~pcattn.engine.CheckpointError`: a missing or unreadable file.
    """
    from ..models.checkpoint import SEGMENTER_KIND, load_model

    if not checkpoints:
        raise ValueError("checkpoints is empty: give at least one checkpoint path")
    models: List[TrainedModel] = []
    for path in checkpoints:
        model, classes, checkpoint = load_model(path)
        segmenter = checkpoint.get("kind") == SEGMENTER_KIND
        loaded = TrainedModel(
            _short(path), model, classes, checkpoint.get("train_config") or {},
            list(checkpoint["categories"]) if segmenter else None,
            [[int(p) for p in parts] for parts in checkpoint["category_parts"]] if segmenter else None)
        if models:
            first = models[0]
            if model.in_channels != first.model.in_channels:
                raise ValueError(f"{path} takes {model.in_channels} input channels but {checkpoints[0]} "
                                 f"takes {first.model.in_channels}: they cannot see the same input")
            if loaded.is_segmenter != first.is_segmenter:
                raise ValueError(f"{path} is a {loaded.kind} but {checkpoints[0]} is a {first.kind}: "
                                 f"compare checkpoints of one kind")
            if loaded.is_segmenter and (loaded.categories, loaded.category_parts, loaded.classes) != \
                    (first.categories, first.category_parts, first.classes):
                raise ValueError(f"{path} segments other categories or parts than {checkpoints[0]}: "
                                 f"they cannot be given the same category and scored on the same labels")
        models.append(loaded)
    return models


def _category_id(classifier: TrainedModel, given: Optional[str], sample_category: Optional[int],
                 source: str) -> Optional[int]:
    """The object category id ``classifier`` is given for ``source``: ``given`` (a name of its
    categories, in any case), else the sample's (``sample_category``); a classifier takes none."""
    if not classifier.is_segmenter:
        if given is not None:
            raise ValueError(f"a category ({given!r}) was given, but {classifier.name} is a classifier: "
                             f"only part segmenters take one")
        return sample_category
    names = classifier.categories
    if given is None:
        if sample_category is None:
            raise ValueError(f"{classifier.name} is a part segmenter: it needs the object category of {source}; "
                             f"give category (CLI --category), one of: {', '.join(names)}")
        return sample_category
    matches = [i for i, name in enumerate(names) if name.lower() == given.strip().lower()]
    if not matches:
        raise ValueError(f"unknown category {given!r}: {classifier.name} segments the categories "
                         f"{', '.join(names)}")
    if sample_category is not None and matches[0] != sample_category:
        raise ValueError(f"{source} is a {names[sample_category]}, not a {names[matches[0]]}: a part dataset's "
                         f"sample has its own category; leave out category (CLI --category)")
    return matches[0]


def checkpoint_input(
    classifier: TrainedModel,
    input_file=None,
    dataset: Optional[str] = None,
    index: int = 0,
    split: str = "test",
    data_root=None,
    format: Optional[str] = None,
    num_points: Optional[int] = None,
    sampling: str = "fps",
    up_axis: Optional[int] = None,
    category: Optional[str] = None,
) -> CheckpointInput:
    """The cloud to show ``classifier``: ``input_file`` or sample ``index`` of ``dataset``, as in its training.

    Args:
        classifier: from :func:`load_trained_models`; its ``train_config`` gives the defaults.
        input_file: a point cloud file (``.ply .pcd .xyz .txt .npy .off``, see
            :func:`pcattn.data.load_cloud`); subsampled to ``num_points`` with ``sampling``.
        dataset: ``"builtin"``, ``"modelnet10"``, ``"modelnet40"`` or a part dataset,
            ``"builtin-parts"`` or ``"shapenetpart"``, whose samples carry their category and true
            part labels (exactly one of ``input_file`` and ``dataset``). ``format`` and
            ``data_root`` default to the training run's when it used the same dataset.
        index, split: which sample.
        num_points: points per cloud (default: as in training, else 1024).
        up_axis: 0, 1 or 2 (default: the axis the run trained with; for a dataset sample of another
            dataset, that dataset's own; else 1).
        category: a part segmenter's input: the object category, one of its ``categories``
            (any case); required unless the sample is a part dataset's (which has its own).

    Raises:
        ValueError: both or neither source, ``index`` out of range, an unreadable file or one
            without the normals the model was trained with; for a segmenter a missing or unknown
            ``category``, or a part dataset of other categories or parts than it was trained on;
            a ``category`` for a classifier.
        FileNotFoundError: a missing file or dataset.
    """
    from ..data import PART_DATASETS

    if (input_file is None) == (dataset is None):
        raise ValueError("give exactly one of input_file and dataset")
    train = classifier.train_config
    use_normals = classifier.model.in_channels == 6
    num_points = num_points or train.get("num_points") or 1024
    if input_file is not None:
        from ..data.cloud import load_cloud

        source = Path(input_file).name
        category_id = _category_id(classifier, category, None, source)
        pos, x = load_cloud(input_file, num_points, use_normals, sampling)
        trained_axis = train.get("up_axis")
        default_axis = 1 if trained_axis is None else int(trained_axis)
        return CheckpointInput(pos, x, source, None, default_axis if up_axis is None else up_axis,
                               category=category_id)

    from ..data import build_dataset, build_part_dataset, test_transforms

    source = f"{dataset} {split} #{index}"
    same = dataset == train.get("dataset")
    part_dataset = dataset.lower() in PART_DATASETS
    if not part_dataset:  # the category is given or missing: say so before reading the dataset
        category_id = _category_id(classifier, category, None, source)
    build = build_part_dataset if part_dataset else build_dataset
    samples = build(dataset, format=format or (train.get("format") if same else None),
                    root=data_root or (train.get("data_root") if same else None),
                    split=split, num_points=num_points, use_normals=use_normals, transform=test_transforms())
    if not 0 <= index < len(samples):
        raise ValueError(f"index {index} out of range: the {dataset} {split} split has "
                         f"{len(samples)} samples (0..{len(samples) - 1})")
    if part_dataset and classifier.is_segmenter and (
            list(samples.categories), [list(parts) for parts in samples.category_parts]) != \
            (classifier.categories, classifier.category_parts):
        raise ValueError(f"{classifier.name} segments other categories or parts than {dataset}'s "
                         f"({', '.join(classifier.categories)} vs {', '.join(samples.categories)}): "
                         f"its part labels are not the dataset's")
    sample = samples[index]
    pos = sample["pos"]
    x = torch.cat([pos, sample["normals"]], -1) if use_normals else None
    # the axis the run trained with (it may have been set by hand), else the dataset's own
    trained_axis = train.get("up_axis") if same else None
    if trained_axis is None:
        trained_axis = getattr(samples, "up_axis", None)
    default_axis = 1 if trained_axis is None else int(trained_axis)
    up_axis = default_axis if up_axis is None else up_axis
    if not part_dataset:
        return CheckpointInput(pos, x, source, samples.classes[int(sample["label"])], up_axis,
                               category=category_id)
    sample_category = int(sample["category"])
    return CheckpointInput(pos, x, source, samples.categories[sample_category], up_axis, seg=sample["seg"],
                           category=_category_id(classifier, category, sample_category, source))


def segment(segmenter: TrainedModel, cloud: CheckpointInput) -> Segmentation:
    """The parts ``segmenter`` predicts for ``cloud`` (of category ``cloud.category``), scored
    against ``cloud.seg`` when known.

    The prediction is restricted to the category's parts, as evaluation does
    (:func:`~pcattn.engine.metrics.restrict_to_parts`); the mIoU is
    :func:`~pcattn.engine.metrics.shape_part_ious` averaged over those parts.

    Raises:
        ValueError: ``segmenter`` is a classifier, or ``cloud`` has no category.
    """
    from ..engine.metrics import restrict_to_parts, shape_part_ious

    if not segmenter.is_segmenter:
        raise ValueError(f"{segmenter.name} is a classifier, not a part segmenter: it predicts no parts")
    if cloud.category is None:
        raise ValueError(f"{cloud.source} has no object category: {segmenter.name} needs one "
                         f"(checkpoint_input's category, CLI --category): one of {', '.join(segmenter.categories)}")
    category = segmenter.categories[cloud.category]
    parts = segmenter.category_parts[cloud.category]
    x = None if cloud.x is None else cloud.x[None]
    with torch.no_grad():
        logits = segmenter.model(x, cloud.pos[None], category=torch.tensor([cloud.category]))[0]   # (P, num_parts)
    labels = restrict_to_parts(logits, parts)
    names = [segmenter.classes[part].split("/", 1)[-1] for part in parts]   # "chair/legs" -> "legs"
    if cloud.seg is None:
        return Segmentation(category, parts, names, labels, None, None)
    truth = cloud.seg.numpy()
    return Segmentation(category, parts, names, labels, float((labels == truth).mean()),
                        float(shape_part_ious(labels, truth, parts).mean()))


def predictions(classifiers: Sequence[TrainedModel], cloud: CheckpointInput) -> List[str]:
    """What each classifier predicts for ``cloud``: ``"chair (p = 0.912)"`` (class name and softmax
    probability); for a part segmenter its :meth:`Segmentation.describe`: ``"chair: 91.2% of points
    right, mIoU 0.85"`` when the true parts are known, else the category."""
    described = []
    x = None if cloud.x is None else cloud.x[None]
    for classifier in classifiers:
        if classifier.is_segmenter:
            described.append(segment(classifier, cloud).describe())
            continue
        with torch.no_grad():
            probabilities = torch.softmax(classifier.model(x, cloud.pos[None])[0], -1)
        p, c = probabilities.max(0)
        names = classifier.classes
        name = names[int(c)] if names and int(c) < len(names) else str(int(c))
        described.append(f"{name} (p = {float(p):.3f})")
    return described


def _title(cloud: CheckpointInput, predicted: Sequence[str]) -> str:
    """``"builtin-parts test #3 (true: chair) - predicted: ... | ..."``."""
    return f"{cloud.source}" + (f" (true: {cloud.truth})" if cloud.truth else "") + " - predicted: " + \
        " | ".join(predicted)


def checkpoint_picture(classifiers: Sequence[TrainedModel], cloud: CheckpointInput, title: Optional[str] = None,
                       **options) -> CheckpointPicture:
    """Draw the classifiers' (or part segmenters') attention on ``cloud``: one row per (checkpoint,
    layer), one column per view.

    ``options`` go to :func:`~pcattn.viz.figures.attention_picture` (``layers``, ``mode``,
    ``query``, ``reduce``, ``views``, ``size``, ``backend``, ``colorbar``, ``path``); the up axis is
    ``cloud.up_axis``, segmenters get ``cloud.category``. The default ``title`` names the input,
    its true class and each prediction (:func:`predictions`).

    Raises:
        ValueError: a ``query`` or layer out of range; segmenters and a cloud without a category.
        :class:`~pcattn.viz.render.RenderingUnavailable`: ``backend="open3d"`` cannot run here.
    """
    # Predictions first (cheap), so the title can say what the models predict.
    predicted = predictions(classifiers, cloud)
    if title is None:
        title = _title(cloud, predicted)
    category = cloud.category if classifiers[0].is_segmenter else None
    picture = attention_picture([(c.name, c.model) for c in classifiers], cloud.pos, cloud.x,
                                up_axis=cloud.up_axis, title=title, category=category, **options)
    return CheckpointPicture(picture, predicted, title)


def checkpoint_parts_picture(segmenters: Sequence[TrainedModel], cloud: CheckpointInput,
                             title: Optional[str] = None, **options) -> CheckpointPartsPicture:
    """Draw the parts each segmenter predicts for ``cloud`` and, when ``cloud.seg`` is known, the
    true parts and each segmenter's wrong points (:func:`~pcattn.viz.parts.parts_picture`).

    ``options`` go to :func:`~pcattn.viz.parts.parts_picture` (``views``, ``size``, ``backend``,
    ``path``); the up axis is ``cloud.up_axis``. The default ``title`` names the input, its true
    category and each segmenter's point accuracy and mIoU (:meth:`Segmentation.describe`).

    Raises:
        ValueError: a classifier among ``segmenters``, or a cloud without a category.
        :class:`~pcattn.viz.render.RenderingUnavailable`: ``backend="open3d"`` cannot run here.
    """
    classifiers = [c.name for c in segmenters if not c.is_segmenter]
    if classifiers:
        raise ValueError(f"{', '.join(classifiers)} is a classifier: part pictures need a part segmentation "
                         f"checkpoint (show a classifier's attention with mode 'query' or 'received')")
    segmentations = [segment(segmenter, cloud) for segmenter in segmenters]
    if title is None:
        title = _title(cloud, [s.describe() for s in segmentations])
    first = segmentations[0]
    # names only tell several segmenters apart
    predicted = [(c.name if len(segmenters) > 1 else "", s.labels) for c, s in zip(segmenters, segmentations)]
    picture = parts_picture(cloud.pos, predicted, first.parts, first.part_names, cloud.seg,
                            up_axis=cloud.up_axis, title=title, **options)
    return CheckpointPartsPicture(picture, segmentations, title)


# The names of 0.1: both load segmenters too, so they say "trained model" now.
__getattr__ = renamed_attributes(__name__, {"load_classifiers": "load_trained_models",
                                            "TrainedClassifier": "TrainedModel"}, globals())
