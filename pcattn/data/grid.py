"""Grid (voxel) sampling, crops, centring and augmentations of scenes, in plain torch.

They act on the room format of :mod:`pcattn.data.scenes` as tensors: ``{"pos": float64 (N, 3), "seg": int64
(N,), ["color": float32 (N, 3) in [0, 1]], ["normals": float32 (N, 3)], ["index": int64 (N,)]}``. Every
entry of :data:`SCENE_POINT_KEYS` follows its points wherever a transform picks, drops or reorders them;
``index`` is the row of each point in the original room, so predictions on a sampled or cropped part can
be written back to every original point (:func:`grid_fragments`).

The usual training pipeline (:func:`scene_train_transforms`): :class:`GridSample` (one point per occupied
voxel, a new random one every call) -> :class:`SphereCrop` (at most ``max_points`` points around a random
point) -> :class:`CentreCrop` (subtract the crop's centre **in float64**, then float32: a room 1e5 m from
the origin gives the crop it gives at the origin) -> augmentations (rotation about the up axis z, scale,
flips, jitter, colour auto-contrast and jitter, point dropout). Evaluation: :func:`grid_fragments` splits a
room into fragments that each hold one point per voxel and together hold every point.

Randomness: each random transform takes an optional :class:`torch.Generator` (default: torch's global
generator), as in :mod:`pcattn.data.transforms`.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..nn.grid import voxel_clusters
from .transforms import Compose, RandomJitter, RandomRotateUp, RandomScale

__all__ = ["SCENE_POINT_KEYS", "take_points", "voxel_groups", "GridSample", "grid_fragments", "SphereCrop",
           "CentreCrop", "RandomFlip", "ColorJitter", "ChromaticAutoContrast", "RandomPointDrop",
           "scene_train_transforms", "scene_test_fragments", "collate_scenes", "collate_rooms", "scene_model_inputs",
           "SCENE_IN_CHANNELS"]

Sample = Dict[str, Tensor]
#: the per-point entries of a scene sample: every transform takes the same rows of each
SCENE_POINT_KEYS = ("pos", "color", "normals", "seg", "index")


def take_points(sample: Sample, rows: Tensor) -> Sample:
    """The sample restricted to ``rows`` (int64 ``(M,)``): each entry of :data:`SCENE_POINT_KEYS` present
    is indexed, ``index`` is added (the original row of each point) when the sample had none."""
    out = dict(sample)
    if "index" not in sample:
        out["index"] = rows
    for key in SCENE_POINT_KEYS:
        if key in sample:
            out[key] = sample[key][rows]
    return out


def _check_voxel_size(voxel_size: float) -> float:
    if not (isinstance(voxel_size, (int, float)) and math.isfinite(voxel_size) and voxel_size > 0):
        raise ValueError(f"voxel_size must be a positive number of metres, got {voxel_size!r}")
    return float(voxel_size)


def voxel_groups(pos: Tensor, voxel_size: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Group points by the voxel they fall in.

    The grid starts at the cloud's lowest corner and the cell of each point is computed in float64, so the
    groups do not depend on where the cloud sits (1e5 m away gives the groups it gives at the origin). The
    voxels are those of the networks' grid pooling (:func:`pcattn.nn.grid.voxel_clusters`), in (x, y, z) order.

    Args:
        pos: ``(N, 3)`` positions.
        voxel_size: the cell's edge, in the units of ``pos``.

    Returns:
        ``order (N,)``: the rows sorted by voxel; ``starts (V,)`` and ``counts (V,)``: where each of the
        ``V`` occupied voxels begins in ``order`` and how many points it holds.
    """
    voxel_size = _check_voxel_size(voxel_size)
    if pos.ndim != 2 or pos.shape[1] != 3 or pos.shape[0] == 0:
        raise ValueError(f"pos must be (N, 3) with N > 0, got {tuple(pos.shape)}")
    one_cloud = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
    voxel, voxels = voxel_clusters(pos.to(torch.float64), one_cloud, voxel_size)
    order = torch.sort(voxel, stable=True)[1]
    counts = torch.bincount(voxel, minlength=voxels)
    starts = torch.cumsum(counts, dim=0) - counts
    return order, starts, counts


class GridSample:
    """Training-mode grid sampling: one point per occupied voxel, a random one at each call.

    ``(N, ...) -> (V, ...)`` with ``V`` the number of occupied voxels of edge ``voxel_size`` (0.04 m for the
    Point Transformer, 0.02 m for later networks); ``index`` gives each kept point's original row.
    """

    def __init__(self, voxel_size: float = 0.04, generator: Optional[torch.Generator] = None):
        self.voxel_size = _check_voxel_size(voxel_size)
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        order, starts, counts = voxel_groups(sample["pos"], self.voxel_size)
        offsets = (torch.rand(len(counts), generator=self.generator, dtype=torch.float64) * counts).long()
        offsets = torch.minimum(offsets, counts - 1)  # rand() < 1, but guard the float product
        return take_points(sample, order[starts + offsets])

    def __repr__(self) -> str:
        return f"GridSample(voxel_size={self.voxel_size})"


def grid_fragments(sample: Sample, voxel_size: float = 0.04) -> List[Sample]:
    """Test-mode grid sampling: fragments that each hold one point per occupied voxel and together hold every
    point of the room (the evaluation of the scene papers: predict each fragment, write the scores back to
    the original rows through ``index``).

    Fragment ``f`` takes, from a voxel of ``c`` points, its ``(f mod c)``-th point; there are as many
    fragments as the fullest voxel has points. Deterministic.

    Returns:
        a list of samples (``pos (V, 3)`` each, with ``index (V,)``).
    """
    order, starts, counts = voxel_groups(sample["pos"], voxel_size)
    fragments = []
    for fragment in range(int(counts.max())):
        fragments.append(take_points(sample, order[starts + fragment % counts]))
    return fragments


class SphereCrop:
    """Keep at most ``max_points`` points: the ones nearest to a random point of the cloud (distances in
    float64). A cloud with fewer points is returned as it is. Kept points stay in their original order.

    ``centre_weights`` (float ``(C,)``, optional): draw the centre point with a probability proportional to
    the weight of its class (``sample["seg"]``; unlabelled points and classes past ``C`` weigh 0), so crops
    land on rare classes more often (class-balanced crops); without it, or for a sample with no ``seg`` or
    no weighted point, every point is as likely.
    """

    def __init__(self, max_points: int = 80_000, generator: Optional[torch.Generator] = None,
                 centre_weights: Optional[Sequence[float]] = None):
        if not isinstance(max_points, int) or max_points < 1:
            raise ValueError(f"max_points must be a positive integer, got {max_points!r}")
        self.max_points = max_points
        self.generator = generator
        self.centre_weights = None
        if centre_weights is not None:
            weights = torch.as_tensor(centre_weights, dtype=torch.float64)
            if weights.ndim != 1 or not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) \
                    or not bool((weights > 0).any()):
                raise ValueError(f"centre_weights must be finite weights >= 0 per class, one positive at least, got "
                                 f"{centre_weights!r}")
            self.centre_weights = weights

    def _centre_row(self, sample: Sample) -> int:
        rows = sample["pos"].shape[0]
        if self.centre_weights is not None and "seg" in sample:
            seg = sample["seg"]
            known = (seg >= 0) & (seg < len(self.centre_weights))
            weight = torch.zeros(rows, dtype=torch.float64)
            weight[known] = self.centre_weights[seg[known]]
            if bool((weight > 0).any()):
                return int(torch.multinomial(weight, 1, generator=self.generator))
        return int(torch.randint(rows, (1,), generator=self.generator))

    def __call__(self, sample: Sample) -> Sample:
        pos = sample["pos"]
        if pos.shape[0] <= self.max_points:
            return sample
        centre = pos[self._centre_row(sample)]
        distance = (pos.to(torch.float64) - centre.to(torch.float64)).square().sum(dim=1)
        nearest = torch.topk(distance, self.max_points, largest=False).indices
        return take_points(sample, torch.sort(nearest).values)

    def __repr__(self) -> str:
        balanced = "" if self.centre_weights is None else f", centre_weights={self.centre_weights.tolist()}"
        return f"SphereCrop(max_points={self.max_points}{balanced})"


class CentreCrop:
    """Move the crop to the origin in float64, then make positions float32.

    ``pos' = float32(float64(pos) - c)`` with ``c`` the centre of the crop's bounding box in x and y and
    its lowest z (``floor_z=True``, the floor at 0 as the scene networks use it) or its middle z. Rounding
    to float32 before centring would move points 1e5 m away by up to 4 mm; after it, by 1e-7 of the crop.
    """

    def __init__(self, floor_z: bool = True):
        self.floor_z = bool(floor_z)

    def __call__(self, sample: Sample) -> Sample:
        pos = sample["pos"].to(torch.float64)
        low, high = pos.min(dim=0).values, pos.max(dim=0).values
        centre = (low + high) / 2
        if self.floor_z:
            centre[2] = low[2]
        return {**sample, "pos": (pos - centre).to(torch.float32)}

    def __repr__(self) -> str:
        return f"CentreCrop(floor_z={self.floor_z})"


class RandomFlip:
    """Mirror the cloud across each of ``axes`` with probability ``p`` (x and y: z stays up); normals
    follow."""

    def __init__(self, axes: Sequence[int] = (0, 1), p: float = 0.5, generator: Optional[torch.Generator] = None):
        self.axes, self.p, self.generator = tuple(axes), float(p), generator

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        for axis in self.axes:
            if float(torch.rand(1, generator=self.generator)) < self.p:
                for key in ("pos", "normals"):
                    if key in out:
                        values = out[key].clone()
                        values[:, axis] = -values[:, axis]
                        out[key] = values
        return out

    def __repr__(self) -> str:
        return f"RandomFlip(axes={self.axes}, p={self.p})"


class ColorJitter:
    """Add Gaussian noise ``std * N(0, 1)`` to every colour channel of every point, clipped to ``[0, 1]``."""

    def __init__(self, std: float = 0.05, generator: Optional[torch.Generator] = None):
        if std < 0:
            raise ValueError(f"std must be >= 0, got {std}")
        self.std, self.generator = float(std), generator

    def __call__(self, sample: Sample) -> Sample:
        if "color" not in sample:
            return sample
        color = sample["color"]
        noise = torch.randn(color.shape, generator=self.generator, dtype=color.dtype) * self.std
        return {**sample, "color": (color + noise).clamp(0, 1)}

    def __repr__(self) -> str:
        return f"ColorJitter(std={self.std})"


class ChromaticAutoContrast:
    """With probability ``p``, stretch each colour channel to span ``[0, 1]`` over the crop and blend it with
    the original colours by a random factor in ``[0, 1)`` (or ``blend``) (the scene networks' colour
    augmentation)."""

    def __init__(self, p: float = 0.2, blend: Optional[float] = None, generator: Optional[torch.Generator] = None):
        self.p, self.blend, self.generator = float(p), blend, generator

    def __call__(self, sample: Sample) -> Sample:
        if "color" not in sample or float(torch.rand(1, generator=self.generator)) >= self.p:
            return sample
        color = sample["color"]
        low, high = color.min(dim=0).values, color.max(dim=0).values
        stretched = (color - low) / (high - low).clamp_min(1e-6)
        blend = float(torch.rand(1, generator=self.generator)) if self.blend is None else float(self.blend)
        return {**sample, "color": ((1 - blend) * color + blend * stretched).clamp(0, 1)}

    def __repr__(self) -> str:
        return f"ChromaticAutoContrast(p={self.p}, blend={self.blend})"


class RandomPointDrop:
    """With probability ``p``, remove a random ``ratio`` of the points (every per-point entry follows)."""

    def __init__(self, ratio: float = 0.2, p: float = 0.2, generator: Optional[torch.Generator] = None):
        if not 0 <= ratio < 1:
            raise ValueError(f"ratio must be in [0, 1), got {ratio}")
        self.ratio, self.p, self.generator = float(ratio), float(p), generator

    def __call__(self, sample: Sample) -> Sample:
        if float(torch.rand(1, generator=self.generator)) >= self.p:
            return sample
        count = sample["pos"].shape[0]
        keep = max(1, int(round(count * (1 - self.ratio))))
        rows = torch.sort(torch.randperm(count, generator=self.generator)[:keep]).values
        return take_points(sample, rows)

    def __repr__(self) -> str:
        return f"RandomPointDrop(ratio={self.ratio}, p={self.p})"


def scene_train_transforms(voxel_size: float = 0.04, max_points: Optional[int] = 80_000,
                           scale: Tuple[float, float] = (0.9, 1.1), jitter: float = 0.005,
                           color_jitter: float = 0.05, auto_contrast: float = 0.2, drop: float = 0.2,
                           generator: Optional[torch.Generator] = None, rotate: bool = True,
                           flip: bool = True, centre_weights: Optional[Sequence[float]] = None) -> Compose:
    """Grid sampling, a sphere crop of at most ``max_points`` (``None``: no crop), float64 centring, then
    the augmentations: rotation about z, isotropic scale, flips of x and y, jitter (sigma ``jitter``,
    clipped at 4 sigma), colour auto-contrast (probability ``auto_contrast``), colour jitter, point dropout
    (20% of the points, with probability ``drop``). A zero (``rotate=False``, ``flip=False``, ``scale=None``)
    turns one off; labels follow their points. ``centre_weights``: the crop centre's class weights
    (:class:`SphereCrop`)."""
    steps: List[Callable[[Sample], Sample]] = [GridSample(voxel_size, generator)]
    if max_points is not None:
        steps.append(SphereCrop(max_points, generator, centre_weights))
    steps.append(CentreCrop())
    if rotate:
        steps.append(RandomRotateUp(axis=2, generator=generator))
    if scale is not None and tuple(scale) != (1.0, 1.0):
        steps.append(RandomScale(scale[0], scale[1], anisotropic=False, generator=generator))
    if flip:
        steps.append(RandomFlip(generator=generator))
    if jitter > 0:
        steps.append(RandomJitter(jitter, 4 * jitter, generator=generator))
    if auto_contrast > 0:
        steps.append(ChromaticAutoContrast(auto_contrast, generator=generator))
    if color_jitter > 0:
        steps.append(ColorJitter(color_jitter, generator=generator))
    if drop > 0:
        steps.append(RandomPointDrop(0.2, drop, generator=generator))
    return Compose(steps)


def scene_test_fragments(sample: Sample, voxel_size: float = 0.04) -> List[Sample]:
    """A whole room for evaluation: its :func:`grid_fragments`, each centred in float64 and made float32
    (:class:`CentreCrop`); ``index`` maps every fragment point to its row in the room."""
    centre = CentreCrop()
    return [centre(fragment) for fragment in grid_fragments(sample, voxel_size)]


def collate_scenes(samples: Sequence[Sample]) -> Sample:
    """Crops of different sizes as one flat batch (the scene networks' input: no padding).

    Every entry of :data:`SCENE_POINT_KEYS` is concatenated over the ``B`` crops (``N`` points in all) and
    ``batch`` int64 ``(N,)`` (sorted: crop ``b``'s points carry ``b``) is added, so a crop's rows are
    ``batch == b``. The DataLoader's ``collate_fn`` of scene training.

    Raises:
        ValueError: no samples, or an entry present in some crops and not in others.
    """
    if not samples:
        raise ValueError("collate_scenes got no samples")
    keys = [key for key in SCENE_POINT_KEYS if key in samples[0]]
    for number, sample in enumerate(samples):
        if [key for key in SCENE_POINT_KEYS if key in sample] != keys:
            raise ValueError(f"crop {number} holds the entries {[key for key in SCENE_POINT_KEYS if key in sample]}, "
                             f"crop 0 {keys}: every crop of a batch needs the same ones")
    out = {key: torch.cat([sample[key] for sample in samples]) for key in keys}
    counts = torch.tensor([sample["pos"].shape[0] for sample in samples])
    out["batch"] = torch.repeat_interleave(torch.arange(len(samples)), counts)
    return out


def collate_rooms(samples: Sequence[Sample]) -> List[Sample]:
    """The rooms of a batch as a list, untouched (whole rooms of evaluation differ in size and are
    segmented one by one)."""
    return list(samples)


#: the scene networks' input channels: centred xyz (3), + rgb (6), + normals (9)
SCENE_IN_CHANNELS = (3, 6, 9)


def scene_model_inputs(sample: Sample, in_channels: int = 6) -> Tuple[Tensor, Tensor, Tensor]:
    """A centred crop, fragment or collated batch of them as the scene networks' flat input.

    The one place that says what a scene network sees, used by training, evaluation
    (:func:`pcattn.engine.scene_inference.segment_room`), prediction and export.

    Args:
        sample: ``{"pos": float32 (N, 3)`` centred (:class:`CentreCrop`, :func:`scene_test_fragments`),
            ``"color": float32 (N, 3)`` in ``[0, 1]`` (for ``in_channels >= 6``), ``"normals": float32 (N, 3)``
            (for ``in_channels == 9``), optional ``"batch": int64 (N,)`` (:func:`collate_scenes`; absent:
            one crop)``}``.
        in_channels: the model's ``in_channels``: 3 (xyz), 6 (xyz + rgb, the scene models'), 9 (xyz + rgb +
            normals).

    Returns:
        ``(x, pos, batch)``: ``x`` float32 ``(N, in_channels)`` = ``[pos, color, normals][:in_channels]``,
        ``pos`` float32 ``(N, 3)``, ``batch`` int64 ``(N,)``; the model is called ``model(x, pos, batch)``.

    Raises:
        ValueError: ``in_channels`` not 3, 6 or 9; positions in float64 (an uncentred room: rounding metres
            far from the origin to float32 would move points by millimetres, so centre first); a needed
            entry missing (a room without colours or normals) or of the wrong shape.
    """
    if in_channels not in SCENE_IN_CHANNELS:
        raise ValueError(f"in_channels must be 3 (xyz), 6 (xyz + rgb) or 9 (xyz + rgb + normals), got {in_channels!r}")
    pos = sample["pos"]
    if pos.dtype == torch.float64:
        raise ValueError("pos is float64 (an uncentred room?): centre crops in float64 first (CentreCrop, "
                         "scene_test_fragments), which makes them float32")
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos must be (N, 3), got {tuple(pos.shape)}")
    features = [pos]
    for key, needed_from, what in (("color", 6, "colours (rgb)"), ("normals", 9, "normals")):
        if in_channels < needed_from:
            break
        if key not in sample:
            raise ValueError(f"the model takes {in_channels} input channels (xyz{' + rgb' if in_channels >= 6 else ''}"
                             f"{' + normals' if in_channels == 9 else ''}) but the points have no {what}")
        values = sample[key]
        if values.shape != pos.shape:
            raise ValueError(f"{key} must be {tuple(pos.shape)} like pos, got {tuple(values.shape)}")
        features.append(values.to(pos.dtype))
    batch = sample.get("batch")
    if batch is None:
        batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
    return torch.cat(features, dim=1), pos, batch
