"""Pictures of trained checkpoints: what ``pcattn visualize`` does, step by step::

    classifiers = load_trained_models(["vector/best.pt", "scalar/best.pt"])   # compared row by row
    cloud = checkpoint_input(classifiers[0], dataset="builtin", index=7)     # as the run was trained
    result = checkpoint_picture(classifiers, cloud, layers=[0], views=3, path="attention.png")

    segmenters = load_trained_models(["partseg/best.pt"])                      # part segmentation checkpoints
    cloud = checkpoint_input(segmenters[0], dataset="builtin-parts", index=3)   # with its category and parts
    result = checkpoint_parts_picture(segmenters, cloud, views=3, path="parts.png")

    scenes = load_trained_models(["semseg/best.pt"])                           # scene segmentation checkpoints
    room = checkpoint_room(scenes[0], dataset="builtin-rooms", index=0)         # a whole room, with its labels
    result = checkpoint_semseg_picture(scenes[0], room, path="room.png")        # every point labelled, the mIoU
    result = checkpoint_room_attention(scenes, room, query=1234, layers=[0, 2], path="room_attention.png")

Owns loading checkpoints of one kind that can see the same input (:func:`load_trained_models`:
classifiers, or part segmenters of the same categories and parts), choosing that input as the
training run saw it (:func:`checkpoint_input`: a file or a dataset sample; the number of points,
the normals and the up axis default to the run's settings; a segmenter's input carries its object
category, and a part dataset's sample its true part labels), naming what each model predicts
(:func:`predictions`, :func:`segment`), :func:`checkpoint_picture`, which draws the attention with
:func:`~pcattn.viz.figures.attention_picture` under a title naming the input and the predictions,
:func:`checkpoint_parts_picture`, which draws a segmenter's predicted parts with
:func:`~pcattn.viz.parts.parts_picture`, and for scene segmenters the room they are shown
(:func:`checkpoint_room`), its labels (:func:`segment_scene`, through
:func:`~pcattn.engine.scene_inference.segment_room` as evaluation labels rooms), the picture of its
classes (:func:`checkpoint_semseg_picture`, :func:`~pcattn.viz.scenes.semseg_picture`) and of a room
point's attention (:func:`checkpoint_room_attention`). Checkpoints are read by :mod:`pcattn.models.checkpoint`;
the part metrics (:mod:`pcattn.engine.metrics`) and the datasets are imported when a function runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..deprecation import renamed_attributes
from .figures import AttentionPicture, attention_picture
from .parts import PartsPicture, parts_picture
from .scenes import ScenePicture, semseg_picture

__all__ = ["TrainedModel", "CheckpointInput", "CheckpointPicture", "Segmentation", "CheckpointPartsPicture",
           "load_trained_models", "checkpoint_input", "predictions", "segment", "checkpoint_picture",
           "checkpoint_parts_picture", "SCENE_DATASETS", "RoomInput", "SceneSegmentation", "CheckpointScenePicture",
           "checkpoint_room", "segment_scene", "checkpoint_semseg_picture", "checkpoint_room_attention",
           "RoomAttentionPicture"]


class TrainedModel(NamedTuple):
    """A trained model loaded from a checkpoint (:func:`load_trained_models`): a classifier, or a part
    segmenter (:class:`~pcattn.models.PointTransformerSegmenter`) when ``categories`` is set."""

    name: str                  # "run/best.pt": the checkpoint's folder and file, for captions
    model: nn.Module           # in eval mode, on the CPU
    classes: List[str]         # class names, index = label; a segmenter's global part names ("chair/legs")
    train_config: Dict         # the run's training settings ({} for a checkpoint without them)
    categories: Optional[List[str]] = None              # a segmenter's object categories (index = category id)
    category_parts: Optional[List[List[int]]] = None    # a segmenter's global part ids of each category
    scene: bool = False        # a scene segmenter (semantic segmentation of rooms: no category input)

    @property
    def is_segmenter(self) -> bool:
        """A part segmenter (it takes the object category)."""
        return self.categories is not None

    @property
    def is_scene_segmenter(self) -> bool:
        """A scene segmenter: one class per point of a room, colours as input (``pcattn train --task semseg``)."""
        return self.scene

    @property
    def kind(self) -> str:
        """``"scene segmenter"``, ``"part segmenter"`` or ``"classifier"``, for messages."""
        return "scene segmenter" if self.scene else "part segmenter" if self.is_segmenter else "classifier"


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
        # a segmenter without object categories labels the points of scenes
        segmenter = checkpoint.get("kind") == SEGMENTER_KIND and checkpoint.get("categories") is not None
        scene = checkpoint.get("kind") == SEGMENTER_KIND and not segmenter
        loaded = TrainedModel(
            _short(path), model, classes, checkpoint.get("train_config") or {},
            list(checkpoint["categories"]) if segmenter else None,
            [[int(p) for p in parts] for parts in checkpoint["category_parts"]] if segmenter else None, scene)
        if models:
            first = models[0]
            if model.in_channels != first.model.in_channels:
                raise ValueError(f"{path} takes {model.in_channels} input channels but {checkpoints[0]} "
                                 f"takes {first.model.in_channels}: they cannot see the same input")
            if loaded.kind != first.kind:
                raise ValueError(f"{path} is a {loaded.kind} but {checkpoints[0]} is a {first.kind}: "
                                 f"compare checkpoints of one kind")
            if loaded.scene and loaded.classes != first.classes:
                raise ValueError(f"{path} labels other classes than {checkpoints[0]} ({', '.join(loaded.classes)} vs "
                                 f"{', '.join(first.classes)}): they cannot be scored on the same labels")
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
    if classifier.is_scene_segmenter:
        raise ValueError(f"{classifier.name} is a scene segmenter: it is shown a room (checkpoint_room: a dataset "
                         f"of {', '.join(SCENE_DATASETS)}, or a scene file), not an object's cloud")
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


# ============================================================================ scenes (rooms)
#: the datasets of rooms a scene segmenter is shown (:func:`checkpoint_room`)
SCENE_DATASETS = ("builtin-rooms", "s3dis", "scannet", "folder")


class RoomInput(NamedTuple):
    """The room a scene segmenter is shown (:func:`checkpoint_room`)."""

    sample: Dict[str, Tensor]  # the room format as tensors: pos float64 (N, 3), color float32 (N, 3), seg int64 (N,)
    source: str                # "builtin-rooms test #0 (test_room_00)" or "room.ply", for titles
    labelled: bool             # False: a file without labels (seg is the ignore label everywhere)

    @property
    def num_points(self) -> int:
        return int(self.sample["pos"].shape[0])


class SceneSegmentation(NamedTuple):
    """What a scene segmenter predicts for a whole room (:func:`segment_scene`)."""

    labels: np.ndarray                  # (N,) int64 predicted class of every point of the room
    metrics: Optional[Dict[str, Any]]   # SceneSegmentationMetrics.compute() of the room when labelled, else None

    def describe(self) -> str:
        """``"mIoU 41.2%, mAcc 50.3%, OA 80.1%"``, or ``"no true labels"``."""
        if self.metrics is None:
            return "no true labels"
        return (f"mIoU {100 * self.metrics['miou']:.1f}%, mAcc {100 * self.metrics['macc']:.1f}%, "
                f"OA {100 * self.metrics['oa']:.1f}%")


class RoomAttentionPicture(NamedTuple):
    """Output of :func:`checkpoint_room_attention`."""

    picture: AttentionPicture
    predictions: List[str]     # each model's class of the query point on the fragment it saw
    title: str
    pos: Tensor                # (P, 3) float32 the fragment the models saw (centred), the rows' colours' points
    rows: Tensor               # (P,) int64 the fragment's rows in the room


class CheckpointScenePicture(NamedTuple):
    """Output of :func:`checkpoint_semseg_picture`."""

    picture: ScenePicture
    segmentation: SceneSegmentation
    title: str


def _voxel_size(segmenter: TrainedModel) -> float:
    """The grid the scene segmenter was trained and is evaluated on (metres)."""
    return float(segmenter.train_config.get("voxel_size") or 0.04)


def _scene_dataset(name: str, split: str, root, train: Dict[str, Any]):
    """Split ``split`` of scene dataset ``name`` (:func:`~pcattn.data.build_scene_dataset`); the folder, the
    layout, the S3DIS test area and the built-in rooms' counts and sizes are the training run's when it
    used the same dataset."""
    from ..data import build_scene_dataset

    same = name == train.get("dataset")
    options: Dict[str, Any] = {"root": root or (train.get("data_root") if same else None)}
    if same:
        options.update(format=train.get("format"), test_area=int(train.get("test_area") or 5),
                       rooms=train.get("rooms"), room_points=train.get("room_points"))
    return build_scene_dataset(name, split, **options)


def _read_room_file(path, num_classes: int) -> Tuple[Dict[str, np.ndarray], bool]:
    """A scene file as the room format, and whether it holds labels: a labelled file as
    :func:`~pcattn.data.scenes.read_labelled_scene` reads it, or one without labels: a ``.ply`` without a
    label property, ``.npy`` / ``.txt`` columns ``x y z`` or ``x y z r g b`` (its labels the ignore label)."""
    from ..data.scenes import (IGNORE_INDEX, PLY_LABEL_NAMES, SCENE_EXTENSIONS, _load_npy, _read_text_table,
                               check_room, read_labelled_scene, read_ply_vertices)

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: scene file not found")
    suffix = path.suffix.lower()
    if suffix not in SCENE_EXTENSIONS:
        raise ValueError(f"{path}: a room is read from {', '.join(SCENE_EXTENSIONS)} files, got {suffix!r}")
    if suffix == ".ply":
        vertices = read_ply_vertices(path)
        if any(name in vertices for name in PLY_LABEL_NAMES):
            return read_labelled_scene(path, num_classes), True
        missing = [axis for axis in "xyz" if axis not in vertices]
        if missing:
            raise ValueError(f"{path}: no vertex property {', '.join(missing)} (found {', '.join(vertices)})")
        pos = np.stack([vertices[axis] for axis in "xyz"], axis=1)
        names = next((names for names in (("red", "green", "blue"), ("r", "g", "b"))
                      if all(name in vertices for name in names)), None)
        color = np.stack([vertices[name] for name in names], axis=1) if names else None
        return check_room(path, pos, np.full(len(pos), IGNORE_INDEX), color), False
    table = _load_npy(path) if suffix == ".npy" else _read_text_table(path)
    if table.ndim != 2 or table.shape[1] not in (3, 4, 6, 7):
        raise ValueError(f"{path}: expected columns x y z [r g b] [label] (3, 4, 6 or 7), got an array of shape "
                         f"{tuple(table.shape)}")
    if table.shape[1] in (4, 7):
        return read_labelled_scene(path, num_classes), True
    color = table[:, 3:6] if table.shape[1] == 6 else None
    return check_room(path, table[:, :3], np.full(len(table), IGNORE_INDEX), color), False


def checkpoint_room(segmenter: TrainedModel, input_file=None, dataset: Optional[str] = None, index: int = 0,
                    split: str = "test", data_root=None) -> RoomInput:
    """The room to show a scene segmenter: ``input_file`` or room ``index`` of ``dataset``.

    Args:
        segmenter: from :func:`load_trained_models`, a scene segmenter.
        input_file: a scene file: ``.ply`` (with or without a per-vertex label property), ``.npy`` / ``.txt``
            with columns ``x y z [r g b] [label]`` (see :func:`~pcattn.data.scenes.read_labelled_scene`).
        dataset: one of :data:`SCENE_DATASETS` (exactly one of ``input_file`` and ``dataset``);
            ``data_root`` defaults to the training run's when it used the same dataset.
        index, split: which room (``"train"`` or ``"test"``; ScanNet's test rooms are its labelled ``val``
            split).

    Raises:
        ValueError: not a scene segmenter, both or neither source, an unknown dataset, ``index`` out of
            range, a dataset of other classes than the model's, a room without the colours the model takes.
        FileNotFoundError: a missing file or dataset.
    """
    from ..data.scenes import room_to_sample

    if not segmenter.is_scene_segmenter:
        raise ValueError(f"{segmenter.name} is a {segmenter.kind}, not a scene segmenter: rooms are shown to "
                         f"checkpoints of pcattn train --task semseg")
    if (input_file is None) == (dataset is None):
        raise ValueError("give exactly one of input_file and dataset")
    classes = segmenter.classes
    if input_file is not None:
        room, labelled = _read_room_file(input_file, len(classes))
        source = Path(input_file).name
    else:
        if dataset not in SCENE_DATASETS:
            raise ValueError(f"unknown scene dataset {dataset!r}; a scene segmenter is shown a room of one of "
                             f"{', '.join(SCENE_DATASETS)} (or a scene file)")
        rooms = _scene_dataset(dataset, split, data_root, segmenter.train_config)
        if list(rooms.classes) != list(classes):
            raise ValueError(f"{segmenter.name} labels the classes {', '.join(classes)}, but {dataset}'s are "
                             f"{', '.join(rooms.classes)}: its labels are not the dataset's")
        if not 0 <= index < len(rooms):
            raise ValueError(f"index {index} out of range: the {dataset} {split} split has {len(rooms)} rooms "
                             f"(0..{len(rooms) - 1})")
        room, labelled = rooms.load_room(index), True
        source = f"{dataset} {split} #{index} ({rooms.room_names[index]})"
    channels = segmenter.model.in_channels
    for key, needed_from, what in (("color", 6, "colours (r g b)"), ("normals", 9, "normals")):
        if channels >= needed_from and key not in room:
            raise ValueError(f"{source}: the room has no {what}, but {segmenter.name} takes them as input "
                             f"({channels} channels)")
    return RoomInput(room_to_sample(room), source, labelled)


def segment_scene(segmenter: TrainedModel, room: RoomInput, votes: int = 1) -> SceneSegmentation:
    """The class of every point of ``room`` as ``segmenter`` predicts it, through grid fragments as evaluation
    does (:func:`~pcattn.engine.scene_inference.segment_room`, at the run's voxel size), scored against the
    room's labels when it has them (:class:`~pcattn.engine.scene_metrics.SceneSegmentationMetrics`)."""
    from ..engine.scene_inference import segment_room
    from ..engine.scene_metrics import SceneSegmentationMetrics

    if not segmenter.is_scene_segmenter:
        raise ValueError(f"{segmenter.name} is a {segmenter.kind}, not a scene segmenter: it labels no room")
    scores = segment_room(segmenter.model, room.sample, _voxel_size(segmenter), votes)
    labels = scores.argmax(1).numpy()
    if not room.labelled:
        return SceneSegmentation(labels, None)
    metrics = SceneSegmentationMetrics(len(segmenter.classes), segmenter.classes)
    metrics.update(labels, room.sample["seg"])
    return SceneSegmentation(labels, metrics.compute() if metrics.points else None)


def checkpoint_semseg_picture(segmenter: TrainedModel, room: RoomInput, title: Optional[str] = None, votes: int = 1,
                              **options) -> CheckpointScenePicture:
    """Draw the classes ``segmenter`` predicts for every point of ``room`` and, when the room is labelled,
    its true classes and the wrong points (:func:`~pcattn.viz.scenes.semseg_picture`).

    ``options`` go to :func:`~pcattn.viz.scenes.semseg_picture` (``perspective``, ``size``, ``cut_height``,
    ``max_points``, ``backend``, ``path``). The default ``title`` names the room, its size and the
    room's mIoU, mAcc and OA (:meth:`SceneSegmentation.describe`); the predictions' caption names the checkpoint.

    Raises:
        ValueError: not a scene segmenter.
        :class:`~pcattn.viz.render.RenderingUnavailable`: ``backend="open3d"`` cannot run here.
    """
    segmentation = segment_scene(segmenter, room, votes)
    if title is None:
        title = f"{room.source}, {room.num_points:,} points: {segmentation.describe()}"
    truth = room.sample["seg"] if segmentation.metrics is not None else None
    picture = semseg_picture(room.sample["pos"], segmentation.labels, segmenter.classes, truth, title=title,
                             name=segmenter.name, **options)
    return CheckpointScenePicture(picture, segmentation, title)


def checkpoint_room_attention(segmenters: Sequence[TrainedModel], room: RoomInput, query: int = 0,
                              title: Optional[str] = None, zoom: Optional[float] = 3.0,
                              **options) -> RoomAttentionPicture:
    """Draw the attention of point ``query`` of ``room`` (a row of the room) in scene segmenters' layers.

    The model sees the room as evaluation does: the grid fragment (at the run's voxel size) holding the
    query, centred (:func:`~pcattn.data.grid.scene_test_fragments`, :func:`~pcattn.data.grid.scene_model_inputs`).
    Each row draws the points within ``zoom`` times the radius of the query's neighbourhood in that layer
    (``None``: the whole fragment). ``options`` go to :func:`~pcattn.viz.figures.attention_picture`
    (``layers``, ``reduce``, ``views``, ``size``, ``backend``, ``colorbar``, ``path``); z is up.

    Returns:
        :class:`RoomAttentionPicture`; its ``predictions`` are each model's class of the query point on
        that fragment, its ``pos`` the fragment (what ``picture.rows[i].colors`` colour).

    Raises:
        ValueError: not scene segmenters, ``query`` out of range.
    """
    from ..data.grid import scene_model_inputs, scene_test_fragments

    for segmenter in segmenters:
        if not segmenter.is_scene_segmenter:
            raise ValueError(f"{segmenter.name} is a {segmenter.kind}, not a scene segmenter")
    if isinstance(query, bool) or not 0 <= int(query) < room.num_points:
        raise ValueError(f"query {query} out of range: the room has {room.num_points:,} points "
                         f"(0..{room.num_points - 1})")
    first = segmenters[0]
    inputs = {key: value for key, value in room.sample.items() if key in ("pos", "color", "normals")}
    for fragment in scene_test_fragments(inputs, _voxel_size(first)):
        rows = (fragment["index"] == int(query)).nonzero().flatten()
        if rows.numel():
            break
    row = int(rows[0])
    x, pos, _ = scene_model_inputs(fragment, first.model.in_channels)
    classes = first.classes
    truth = int(room.sample["seg"][int(query)])
    described: List[str] = []
    titles: List[str] = []

    def describe(results) -> str:
        """The title: the room, the point, its true class and each model's class for it on this fragment."""
        seen = set()
        for result in results:   # one row per (model, layer): each model's output once
            if result.name not in seen and result.probabilities is not None:
                seen.add(result.name)
                name = classes[int(result.probabilities[row].argmax())]
                described.append(f"{result.name}: {name}" if len(segmenters) > 1 else name)
        titles.append(f"{room.source}: point {query}" + (f" (true: {classes[truth]})" if truth >= 0 else "")
                      + " - predicted: " + " | ".join(described))
        return titles[-1]

    picture = attention_picture([(s.name, s.model) for s in segmenters], pos, x, mode="query", query=row,
                                up_axis=2, title=describe if title is None else title, zoom=zoom,
                                query_name=f"room point {query}", **options)
    if title is None:
        title = titles[-1]
    else:
        describe(picture.rows)
    return RoomAttentionPicture(picture, described, title, pos, fragment["index"])


# The names of 0.1: both load segmenters too, so they say "trained model" now.
__getattr__ = renamed_attributes(__name__, {"load_classifiers": "load_trained_models",
                                            "TrainedClassifier": "TrainedModel"}, globals())
