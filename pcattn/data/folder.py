"""A folder of per-shape point files in the ModelNet layout ``<class>/{train,test}/<name>.<ext>``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from torch import Tensor

from .base import Item, PointCloudDataset, normalize_unit_sphere, scan_class_folders, visible_dirs
from .io import POINT_EXTENSIONS, read_point_cloud

__all__ = ["PointFolder"]


class PointFolder(PointCloudDataset):
    """Per-shape point files: ``root/<class>/{train,test}/<name>.{npy,txt,xyz,ply,pcd,off}``.

    The layout people get when they convert or sample ModelNet themselves. Class names are the
    sorted class folders (index = label). Files are read by :func:`pcattn.data.io.read_point_cloud`
    (``.ply``/``.pcd`` through Open3D; ``.off`` meshes are surface-sampled), brought to
    ``cache_points`` points (``sampling``: farthest point sampling by default, since files may be
    stored in scan order) and, with ``normalize``, moved to the unit sphere. Clouds with fewer
    points than needed are padded with repeated points.

    Args:
        root: the folder.
        split: ``"train"`` or ``"test"``.
        num_points: points per sample ``P``.
        use_normals: also return ``normals (P, 3)`` (every file must carry normals).
        transform: callable on the sample dict.
        extensions: accepted extensions (default: all of ``.npy .txt .xyz .ply .pcd .off``);
            any other file in a split folder is an error, not a silent skip.
        sampling: ``"fps"`` (default), ``"first"`` or ``"random"``.
        normalize: centre and scale each cloud to the unit sphere when caching (default True).
        up_axis: the vertical axis of your files (default 2, z, as in ModelNet meshes).
        cache_points, cache, cache_dir: see :mod:`pcattn.data.base`.

    Samples: ``pos (P, 3)`` float32, ``label ()`` int64, ``normals (P, 3)`` when ``use_normals``.
    """

    tag = "folder"

    def __init__(self, root, split: str = "train", num_points: int = 1024, use_normals: bool = False,
                 transform: Optional[Callable[[Dict[str, Tensor]], Dict[str, Tensor]]] = None,
                 extensions: Optional[Sequence[str]] = None, sampling: str = "fps", normalize: bool = True,
                 up_axis: int = 2, cache_points: Optional[int] = None, cache: bool = True, cache_dir=None,
                 progress: Optional[bool] = None):
        super().__init__(root, split, num_points, use_normals, transform, cache_points, sampling, cache,
                         cache_dir, progress)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: dataset folder not found")
        self.extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}"
                                for e in (extensions or POINT_EXTENSIONS))
        self.normalize = bool(normalize)
        self.up_axis = int(up_axis)
        self.classes = [d.name for d in visible_dirs(self.root)]
        if not self.classes:
            raise FileNotFoundError(f"{self.root}: no class folders (expected <class>/{split}/<name>.<ext>)")
        self._build()

    def _options(self) -> Dict:
        return {**super()._options(), "normalize": self.normalize, "extensions": list(self.extensions)}

    def _list_items(self) -> List[Item]:
        return scan_class_folders(self.root, self.classes, self.split, self.extensions, files_name="point files",
                                  unknown="unknown extension")

    def _load_item(self, item: Item, index: int) -> np.ndarray:
        pos, normals = read_point_cloud(item.path, num_mesh_points=self.cache_points,
                                        rng=np.random.default_rng(index))
        if normals is not None and normals.shape != pos.shape:
            raise ValueError(f"{item.path}: {len(normals)} normals for {len(pos)} points")
        cloud = pos if normals is None else np.concatenate([pos, normals], axis=1)
        if self.use_normals and normals is None:
            raise ValueError(f"{item.path}: use_normals=True but this file has no normals")
        return normalize_unit_sphere(cloud) if self.normalize else cloud
