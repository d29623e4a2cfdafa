"""Datasets, file formats and transforms for point-cloud classification and part segmentation.

Every dataset is ``Cls(root, split="train" | "test", num_points=1024, use_normals=False,
transform=None, ...)`` and yields the same sample dict::

    {"pos": FloatTensor (P, 3), "label": LongTensor (), ["normals": FloatTensor (P, 3)]}

with ``dataset.classes`` (index = label) and ``dataset.up_axis``. Every sample of a dataset has
the same ``P``, so torch's default collate gives ``pos (B, P, 3)``, ``label (B,)``.

Sources: :class:`BuiltinShapes` (generated, no download), :class:`ModelNetOFF` (Princeton OFF
meshes), :class:`ModelNetNormalResampled` (PointNet++ text files), :class:`ModelNetHDF5`
(PointNet HDF5), :class:`PointFolder` (``<class>/{train,test}/<name>.<ext>``).
:func:`build_dataset` picks one by name and guesses the format from the files.

Part segmentation: :class:`BuiltinParts` (generated, no download) and :class:`ShapeNetPart` (three
layouts), picked by :func:`build_part_dataset`; samples ``{"pos": (P, 3), "category": (),
"seg": (P,), ["normals": (P, 3)]}`` with ``dataset.categories``, ``dataset.part_names`` and
``dataset.category_parts`` (the global part ids of each category).

Scenes (semantic segmentation of rooms): :class:`BuiltinRooms` (generated, no download), :class:`S3DIS`,
:class:`ScanNet`, :class:`SceneFolder` (your own labelled rooms), all :class:`SceneDataset`: one whole
room per item, ``{"pos": float64 (N, 3), "seg": (N,), ["color": (N, 3)], ["normals": (N, 3)]}`` with
``dataset.classes`` (``-1``, :data:`IGNORE_INDEX`, marks unlabelled points). Training crops come from
:func:`scene_train_transforms` and are batched flat by :func:`collate_scenes`; :func:`scene_model_inputs`
turns a centred crop into the networks' input; :func:`scene_test_fragments` covers a whole room.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from torch import Tensor

from . import transforms
from .base import PointCloudDataset
from .builtin import BUILTIN_CLASSES, BuiltinShapes, default_data_dir, generate_builtin_shapes
from .cloud import load_cloud, prepare_cloud
from .folder import PointFolder
from .grid import (GridSample, CentreCrop, SphereCrop, collate_rooms, collate_scenes, grid_fragments,
                   scene_model_inputs, scene_test_fragments, scene_train_transforms)
from .io import read_off, read_point_cloud
from .modelnet import ModelNetHDF5, ModelNetNormalResampled, ModelNetOFF
from .parts import BuiltinParts
from .rooms import ROOM_CLASSES, BuiltinRooms, generate_room
from .s3dis import S3DIS, S3DIS_CLASSES
from .scenes import IGNORE_INDEX, SCANNET20_CLASSES, RepeatedRooms, ScanNet, SceneDataset, SceneFolder
from .shapenetpart import ShapeNetPart
from .transforms import seed_worker, test_transforms, train_transforms

__all__ = [
    "BUILTIN_CLASSES",
    "BuiltinShapes",
    "BuiltinParts",
    "ShapeNetPart",
    "PART_DATASETS",
    "build_part_dataset",
    "check_generated_options",
    "ModelNetHDF5",
    "ModelNetNormalResampled",
    "ModelNetOFF",
    "PointCloudDataset",
    "PointFolder",
    "FORMATS",
    "DATASETS",
    "build_dataset",
    "guess_format",
    "default_data_dir",
    "generate_builtin_shapes",
    "load_cloud",
    "prepare_cloud",
    "read_off",
    "read_point_cloud",
    "seed_worker",
    "test_transforms",
    "train_transforms",
    "transforms",
    # scenes (semantic segmentation of rooms)
    "SceneDataset",
    "BuiltinRooms",
    "ROOM_CLASSES",
    "generate_room",
    "S3DIS",
    "S3DIS_CLASSES",
    "ScanNet",
    "SCANNET20_CLASSES",
    "SceneFolder",
    "IGNORE_INDEX",
    "GridSample",
    "SphereCrop",
    "CentreCrop",
    "grid_fragments",
    "scene_train_transforms",
    "scene_test_fragments",
    "collate_scenes",
    "collate_rooms",
    "scene_model_inputs",
    "SCENE_DATASETS",
    "build_scene_dataset",
    "RepeatedRooms",
]

FORMATS = ("off", "normal_resampled", "hdf5", "folder")
DATASETS = ("builtin", "modelnet10", "modelnet40")
PART_DATASETS = ("builtin-parts", "shapenetpart")
SCENE_DATASETS = ("builtin-rooms", "s3dis", "scannet", "folder")
_FORMAT_CLASSES = {
    "off": ModelNetOFF,
    "normal_resampled": ModelNetNormalResampled,
    "hdf5": ModelNetHDF5,
    "folder": PointFolder,
}
# Folder names of the usual downloads, tried under the data directory when no root is given.
_DEFAULT_FOLDERS = {
    "modelnet40": ("modelnet40_normal_resampled", "modelnet40_ply_hdf5_2048", "ModelNet40", "."),
    "modelnet10": ("modelnet40_normal_resampled", "ModelNet10", "modelnet10_normal_resampled", "."),
}


def _class_dirs(root: Path):
    return [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith((".", "__"))]


def _detect(root: Path) -> Optional[Tuple[str, Path]]:
    """The format of the files directly in ``root`` (or in one well-known subfolder), else None."""
    if not root.is_dir():
        return None
    if any(root.glob("*_shape_names.txt")) and any(root.glob("*_train.txt")):
        return "normal_resampled", root
    if any(root.glob("ply_data_*.h5")):
        return "hdf5", root
    if any(root.glob("ModelNet*.zip")):
        return "off", root
    for child in _class_dirs(root):
        if child.name.startswith("ModelNet") or child.name == "raw":
            found = _detect(child)
            if found is not None and found[0] == "off":
                return "off", root
        split = next((child / s for s in ("train", "test") if (child / s).is_dir()), None)
        if split is None:
            continue
        files = [p for p in split.iterdir() if p.is_file() and not p.name.startswith(".")]
        if files:
            return ("off" if all(p.suffix.lower() == ".off" for p in files) else "folder"), root
    for name in ("modelnet40_normal_resampled", "modelnet40_ply_hdf5_2048"):
        if (root / name).is_dir():
            return _detect(root / name)
    return None


def guess_format(root) -> Tuple[str, Path]:
    """Guess a dataset's format from the files under ``root``.

    Returns:
        ``(format, folder)``: one of :data:`FORMATS` and the folder to pass as ``root``
        (``root`` itself, or ``modelnet40_normal_resampled`` / ``modelnet40_ply_hdf5_2048`` inside it).

    Raises:
        FileNotFoundError: nothing recognisable under ``root``.
    """
    root = Path(root).expanduser()
    found = _detect(root)
    if found is None:
        raise FileNotFoundError(
            f"{root}: cannot tell the dataset format: expected *_shape_names.txt + *_train.txt "
            f"(normal_resampled), ply_data_*.h5 (hdf5), ModelNet*.zip or <class>/train/*.off (off), "
            f"or <class>/train/<name>.<npy|txt|xyz|ply|pcd> (folder); see datasets/README.md"
        )
    return found


def check_generated_options(dataset: str, root=None, format: Optional[str] = None, skip_missing: bool = False) -> None:
    """Refuse the options a generated dataset would ignore (an option must act or be refused): a
    ``format`` for ``"builtin"`` or ``"builtin-parts"``, a ``root`` or ``skip_missing`` for
    ``"builtin-parts"`` (generated in memory; ``"builtin"`` keeps its generated copy in ``root``).

    Raises:
        ValueError: naming the option and the dataset."""
    if dataset not in ("builtin", "builtin-parts", "builtin-rooms"):
        return
    if format is not None:
        raise ValueError(f"format {format!r} (--format) is for datasets read from files; the {dataset} dataset is "
                         f"generated")
    if dataset == "builtin-parts" and root is not None:
        raise ValueError(f"the built-in parts are generated in memory and read no folder: root (--data-root) {root} "
                         f"is not used; a model trained on them is evaluated on them (train on "
                         f"--dataset shapenetpart for a folder of part-labelled shapes)")
    if dataset == "builtin-rooms" and root is not None:
        raise ValueError(f"the built-in rooms are generated in memory and read no folder: root (--data-root) {root} "
                         f"is not used (train on --dataset folder for a folder of your own labelled rooms)")
    if dataset == "builtin-parts" and skip_missing:
        raise ValueError("skip_missing (--skip-missing) is for ShapeNetPart's split lists; the built-in parts "
                         "list no files")


def build_dataset(
    dataset: str = "builtin",
    format: Optional[str] = None,
    root=None,
    split: str = "train",
    num_points: int = 1024,
    use_normals: bool = False,
    transform: Optional[Callable[[Dict[str, Tensor]], Dict[str, Tensor]]] = None,
    **kwargs,
) -> PointCloudDataset:
    """Build a dataset by name.

    Args:
        dataset: ``"builtin"``, ``"modelnet10"`` or ``"modelnet40"``.
        format: ``"off"``, ``"normal_resampled"``, ``"hdf5"``, ``"folder"``, or ``None`` to guess it
            from the files (:func:`guess_format`); must be ``None`` for ``"builtin"``.
        root: dataset folder; ``None`` uses ``<data dir>/builtin_shapes`` for the built-in dataset, and
            for ModelNet the first of ``modelnet40_normal_resampled``, ``modelnet40_ply_hdf5_2048``,
            ``ModelNet40``/``ModelNet10`` found under :func:`default_data_dir` (``<repo>/datasets``).
        split, num_points, use_normals, transform: passed to the dataset.
        **kwargs: extra dataset options (``sampling``, ``cache_dir``, ``seed`` for builtin, ...).

    Returns:
        The dataset; samples ``{"pos": (P, 3), "label": (), ["normals": (P, 3)]}``.
    """
    dataset = dataset.lower()
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS} or None, got {format!r}")
    common = dict(split=split, num_points=num_points, use_normals=use_normals, transform=transform)
    if dataset == "builtin":
        check_generated_options(dataset, format=format)
        return BuiltinShapes(root, **common, **kwargs)

    classes = 10 if dataset == "modelnet10" else 40
    if root is None:
        base = default_data_dir()
        candidates = [base / name for name in _DEFAULT_FOLDERS[dataset]]
        root = next((c for c in candidates if _detect(c) is not None and (format is None or _detect(c)[0] == format)),
                    None)
        if root is None:
            raise FileNotFoundError(
                f"no {dataset} data found under {base} (looked in {[c.name for c in candidates]}); "
                f"pass root= or see datasets/README.md for where to put the files"
            )
    root = Path(root).expanduser()
    if format is None:
        format, root = guess_format(root)
    if format == "off":
        kwargs.setdefault("name", str(classes))
    elif format == "normal_resampled" and "prefix" not in kwargs:
        kwargs.setdefault("num_classes", classes)
    result = _FORMAT_CLASSES[format](root, **common, **kwargs)
    if format in ("hdf5", "folder") and len(result.classes) != classes:
        import warnings

        warnings.warn(f"{dataset} requested but {root} holds {len(result.classes)} classes")
    return result


def build_part_dataset(
    dataset: str = "builtin-parts",
    format: Optional[str] = None,
    root=None,
    split: str = "train",
    num_points: Optional[int] = 2048,
    use_normals: bool = False,
    transform: Optional[Callable[[Dict[str, Tensor]], Dict[str, Tensor]]] = None,
    download: bool = False,
    skip_missing: bool = False,
    seed: int = 0,
    **kwargs,
):
    """Build a part-segmentation dataset by name.

    Args:
        dataset: ``"builtin-parts"`` (generated in memory, no download) or ``"shapenetpart"``.
        format: ShapeNetPart layout, ``"normal"``, ``"v0"`` or ``"hdf5"``; ``None`` guesses it from the
            files (see :func:`~pcattn.data.shapenetpart.locate_shapenetpart`). Ignored for the built-in parts.
        root: ShapeNetPart's folder, or a folder holding it under its usual name; ``None`` looks in
            :func:`default_data_dir`.
        split: ``"train"`` or ``"test"``. ShapeNetPart's ``"train"`` is its train and val lists together
            (as PointNet++ and Point Transformer train); ``"val"`` and ``"trainval"`` are also accepted.
        num_points: points per sample ``P``; ShapeNetPart shapes with fewer points repeat random ones.
            ShapeNetPart only: ``None`` keeps every point of each shape (samples of different sizes).
        use_normals: also return ``normals (P, 3)`` (the built-in parts and the ``"normal"`` layout).
        transform: callable on the sample dict.
        download: ShapeNetPart: fetch the archive of ``format`` when it is not found locally.
        skip_missing: ShapeNetPart: leave out listed shapes whose files are absent (with a warning)
            instead of raising ``FileNotFoundError`` naming the file.
        seed: the built-in generator's seed; ShapeNetPart's point subsets.
        **kwargs: further options of :class:`BuiltinParts` / :class:`ShapeNetPart`.

    Returns:
        The dataset; samples ``{"pos": (P, 3), "category": (), "seg": (P,), ["normals": (P, 3)]}``.
    """
    dataset = dataset.lower()
    if dataset not in PART_DATASETS:
        raise ValueError(f"dataset must be one of {PART_DATASETS}, got {dataset!r}")
    if dataset == "builtin-parts":
        check_generated_options(dataset, root=root, format=format, skip_missing=skip_missing)
        if split not in ("train", "test"):
            raise ValueError(f"the built-in parts have the splits 'train' and 'test', got {split!r}")
        if num_points is None:
            raise ValueError("num_points=None (every point of each shape) is for ShapeNetPart; the built-in parts "
                             "are sampled: give a number of points")
        kwargs.setdefault("points_per_shape", max(2048, num_points))
        return BuiltinParts(split, num_points, use_normals, transform, seed=seed, **kwargs)
    from .shapenetpart import locate_shapenetpart

    format, folder = locate_shapenetpart(root, format, download=download)
    return ShapeNetPart(folder, "trainval" if split == "train" else split, format, num_points,
                        use_normals=use_normals, missing="skip" if skip_missing else "error", transform=transform,
                        seed=seed, **kwargs)


def build_scene_dataset(
    dataset: str = "builtin-rooms",
    split: str = "train",
    root=None,
    format: Optional[str] = None,
    test_area: int = 5,
    rooms: Optional[Tuple[int, int]] = None,
    room_points: Optional[Tuple[int, int]] = None,
    transform: Optional[Callable[[Dict[str, Tensor]], Dict[str, Tensor]]] = None,
    progress: Optional[bool] = None,
):
    """Build one split of a scene dataset by name: whole rooms, one per item (the room format of
    :mod:`pcattn.data.scenes` as tensors, passed through ``transform``).

    Args:
        dataset: ``"builtin-rooms"`` (generated in memory), ``"s3dis"`` (:class:`S3DIS`, any of its layouts;
            ``format`` picks one), ``"scannet"`` (:class:`ScanNet`; its ``val`` scenes are the test split) or
            ``"folder"`` (:class:`SceneFolder`: ``<root>/classes.txt``, ``<root>/train/``, ``<root>/test/``,
            else ``<root>/val/``).
        split: ``"train"`` or ``"test"``.
        root: the data's folder; ``None`` looks in :func:`default_data_dir` (``s3dis``: its usual folder
            names; ``scannet``: ``<data dir>/scannet``); required for ``"folder"``.
        test_area: S3DIS's held-out area.
        rooms: built-in rooms: ``(train, test)`` counts (default ``(16, 4)``).
        room_points: built-in rooms: the range of points per room.
        progress: S3DIS: the raw layout's conversion bar.
    """
    dataset = dataset.lower()
    if dataset not in SCENE_DATASETS:
        raise ValueError(f"dataset must be one of {SCENE_DATASETS}, got {dataset!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if dataset == "builtin-rooms":
        check_generated_options(dataset, root, format)
        counts = rooms if rooms is not None else (16, 4)
        options = {} if room_points is None else {"num_points": tuple(room_points)}
        return BuiltinRooms(split, rooms=int(counts[split == "test"]), transform=transform, **options)
    if dataset == "s3dis":
        return S3DIS(root, split, test_area=test_area, layout=format, progress=progress, transform=transform)
    if dataset == "scannet":
        folder = Path(root).expanduser() if root is not None else default_data_dir() / "scannet"
        return ScanNet(folder, "train" if split == "train" else "val", transform=transform)
    if root is None:
        raise ValueError("the folder dataset reads your own labelled rooms: give its folder (--data-root) holding "
                         "classes.txt, train/ and test/")
    folder = Path(root).expanduser()
    test_split = "test" if (folder / "test").is_dir() or not (folder / "val").is_dir() else "val"
    return SceneFolder(folder, "train" if split == "train" else test_split, transform=transform)
