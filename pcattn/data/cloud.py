"""One point cloud from a file, brought to what a classifier was trained on (subsampled, unit sphere).

Owns :func:`load_cloud` (read any format of :func:`pcattn.data.io.read_point_cloud`, then prepare)
and :func:`prepare_cloud` (farthest-point or random subsampling, centring and scaling), as used
by ``pcattn visualize --input``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .base import farthest_point_indices, normalize_unit_sphere
from .io import read_point_cloud

__all__ = ["load_cloud", "prepare_cloud"]


# Farthest point sampling of m of n points computes n * m distances: above this, refuse (hours) rather than hang.
FPS_MAX_WORK = 2e10


def prepare_cloud(pos: np.ndarray, normals: Optional[np.ndarray] = None, num_points: Optional[int] = 1024,
                  sampling: str = "fps", seed: int = 0) -> Tuple[Tensor, Optional[Tensor]]:
    """Bring a raw cloud to what a classifier was trained on.

    ``num_points`` points are kept by farthest point sampling (``sampling="fps"``, deterministic,
    as the cached datasets) or at random (``"random"``, seeded); a smaller cloud is used whole
    (the models take any number of points). Then it is centred and scaled to the unit sphere, as
    :class:`~pcattn.data.transforms.NormalizeUnitSphere` does at evaluation.

    Returns:
        ``pos (P', 3)`` float32 tensor and ``normals (P', 3)`` or ``None``.
    """
    pos = np.asarray(pos, dtype=np.float32)
    if num_points is not None and len(pos) > num_points:
        if sampling == "fps" and len(pos) * num_points > FPS_MAX_WORK:
            raise ValueError(f"farthest point sampling of {num_points:,} of the {len(pos):,} points would compute "
                             f"{len(pos) * num_points:.1e} distances (minutes to hours); use random sampling "
                             f"(--sampling random) or fewer points (--num-points)")
        if sampling == "fps":
            index = farthest_point_indices(pos, num_points)
        elif sampling == "random":
            index = np.random.default_rng(seed).choice(len(pos), size=num_points, replace=False)
        else:
            raise ValueError(f"sampling must be 'fps' or 'random', got {sampling!r}")
        pos = pos[index]
        normals = None if normals is None else np.asarray(normals)[index]
    pos = normalize_unit_sphere(pos).astype(np.float32)
    return torch.from_numpy(pos), None if normals is None else torch.as_tensor(np.asarray(normals, np.float32))


def load_cloud(path, num_points: Optional[int] = 1024, use_normals: bool = False, sampling: str = "fps",
               seed: int = 0) -> Tuple[Tensor, Optional[Tensor]]:
    """Read ``.ply .pcd .xyz .txt .npy .off`` (:func:`pcattn.data.io.read_point_cloud`) and :func:`prepare_cloud` it.

    Returns ``pos (P, 3)`` and the model input ``x``: ``None`` (positions only), or
    ``cat([pos, normals], -1) (P, 6)`` when ``use_normals``.

    Raises:
        FileNotFoundError / ValueError: missing or unreadable file (named), or no normals in the
        file when ``use_normals``.
    """
    raw, normals = read_point_cloud(path)
    if use_normals and normals is None:
        raise ValueError(f"{path}: the model was trained with normals (6 input channels) but the file has none")
    pos, normals = prepare_cloud(raw, normals if use_normals else None, num_points, sampling, seed)
    return pos, (torch.cat([pos, normals], dim=-1) if use_normals else None)
