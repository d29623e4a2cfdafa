"""Data for a run: the train and test loaders of a resolved :class:`~pcattn.engine.TrainConfig`, and the
model inputs of one batch."""
from __future__ import annotations

import functools
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .config import TrainConfig
from .distributed import Distributed, GlobalBatchSampler, ShardedBatches, rank_worker_init

__all__ = ["build_loaders", "batch_inputs"]


def build_loaders(config: TrainConfig, generator: torch.Generator, with_train: bool = True,
                  distributed: Optional[Distributed] = None):
    """Train and test datasets and loaders for a resolved config: ``(train_loader, test_loader)``.

    With ``distributed`` (a job of several processes) rank 0 reads (or generates, or caches) the data
    first while the others wait; the train loader gives this rank its share of each global batch of
    ``config.batch_size`` (:class:`~pcattn.engine.distributed.GlobalBatchSampler`), the test loader its
    share of the one-process test batches (:class:`~pcattn.engine.distributed.ShardedBatches`).
    """
    distributed = distributed or Distributed()
    with distributed.main_first():
        return _build_loaders(config, generator, with_train, distributed)


def _build_loaders(config: TrainConfig, generator: torch.Generator, with_train: bool, distributed: Distributed):
    from torch.utils.data import DataLoader

    from ..data import seed_worker, test_transforms

    if config.task == "semseg":
        return _scene_loaders(config, generator, with_train, distributed)
    build, common, train_points, test_points = _dataset_builder(config)
    test_set = build(split="test", transform=test_transforms(), num_points=test_points, **common)
    if config.up_axis is not None:
        test_set.up_axis = config.up_axis
    loader_options = dict(num_workers=config.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=False)
    # Shapes of different sizes (ShapeNetPart's, every point kept: a list) are evaluated one per batch.
    test_batch = 1 if isinstance(getattr(test_set, "points", None), list) else config.batch_size
    if distributed.enabled:
        batches = ShardedBatches(len(test_set), test_batch, distributed.rank, distributed.world_size)
        test_loader = DataLoader(test_set, batch_sampler=batches, **loader_options)
    else:
        test_loader = DataLoader(test_set, batch_size=test_batch, shuffle=False, drop_last=False, **loader_options)
    if not with_train:
        return None, test_loader
    train_set = build(split="train", num_points=train_points, **common)
    if config.up_axis is not None:
        train_set.up_axis = config.up_axis
    train_set.transform = _train_transform(config, train_set, train_points)
    for name in ("classes", "part_names", "categories"):
        if list(getattr(train_set, name, [])) != list(getattr(test_set, name, [])):
            raise ValueError(f"train and test splits disagree on the {name.replace('_', ' ')}: "
                             f"{list(getattr(train_set, name))} vs {list(getattr(test_set, name))}")
    if len(train_set) < config.batch_size:
        raise ValueError(f"the training split has {len(train_set)} shapes, fewer than batch_size={config.batch_size}")
    # drop_last: BatchNorm cannot take a batch of one cloud.
    if distributed.enabled:
        sampler = GlobalBatchSampler(len(train_set), config.batch_size, distributed.rank, distributed.world_size,
                                     generator)
        train_loader = DataLoader(train_set, sampler=sampler, batch_size=config.batch_size // distributed.world_size,
                                  drop_last=True, generator=generator,
                                  worker_init_fn=functools.partial(rank_worker_init, distributed.rank),
                                  **loader_options)
    else:
        train_loader = DataLoader(train_set, shuffle=True, drop_last=True, generator=generator,
                                  batch_size=config.batch_size, worker_init_fn=seed_worker, **loader_options)
    return train_loader, test_loader


def _scene_loaders(config: TrainConfig, generator: torch.Generator, with_train: bool, distributed: Distributed):
    """Scene segmentation: the test loader yields whole rooms, one at a time (a list of one room:
    :func:`~pcattn.data.grid.collate_rooms`; under ``torchrun`` room ``j`` goes to rank ``j % world_size``);
    the train loader yields flat batches of ``batch_size`` random crops (:func:`~pcattn.data.grid.collate_scenes`),
    each training room cropped ``room_repeats`` times per epoch."""
    from torch.utils.data import DataLoader

    from ..data import (RepeatedRooms, build_scene_dataset, collate_rooms, collate_scenes, scene_train_transforms,
                        seed_worker)

    common = dict(root=config.data_root, format=config.format, test_area=config.test_area, rooms=config.rooms,
                  room_points=config.room_points, progress=config.progress)
    test_set = build_scene_dataset(config.dataset, "test", **common)
    loader_options = dict(num_workers=config.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=False)
    test_loader = DataLoader(test_set, batch_sampler=ShardedBatches(len(test_set), 1, distributed.rank,
                                                                    distributed.world_size),
                             collate_fn=collate_rooms, **loader_options)
    if not with_train:
        return None, test_loader
    rooms = build_scene_dataset(config.dataset, "train", **common)
    if rooms.classes != test_set.classes:
        raise ValueError(f"train and test rooms disagree on the classes: {rooms.classes} vs {test_set.classes}")
    # without augmentation: grid sampling, the crop and its centring only
    options = {} if config.augment else dict(rotate=False, flip=False, scale=None, jitter=0, color_jitter=0,
                                             auto_contrast=0, drop=0)
    if config.crop_centres not in (None, "none"):  # class-balanced crops: the rare classes' points as centres
        from .config import class_loss_weights

        options["centre_weights"] = class_loss_weights(rooms.label_counts(progress=config.progress),
                                                       config.crop_centres)
    rooms.transform = scene_train_transforms(config.voxel_size, config.num_points, **options)
    train_set = RepeatedRooms(rooms, config.room_repeats)
    if len(train_set) < config.batch_size:
        raise ValueError(f"the training split has {len(rooms)} rooms x {config.room_repeats} crops each = "
                         f"{len(train_set)} crops, fewer than batch_size={config.batch_size}")
    # drop_last: BatchNorm cannot take a batch of one crop
    if distributed.enabled:
        sampler = GlobalBatchSampler(len(train_set), config.batch_size, distributed.rank, distributed.world_size,
                                     generator)
        train_loader = DataLoader(train_set, sampler=sampler, batch_size=config.batch_size // distributed.world_size,
                                  drop_last=True, generator=generator, collate_fn=collate_scenes,
                                  worker_init_fn=functools.partial(rank_worker_init, distributed.rank),
                                  **loader_options)
    else:
        train_loader = DataLoader(train_set, shuffle=True, drop_last=True, generator=generator,
                                  batch_size=config.batch_size, collate_fn=collate_scenes, worker_init_fn=seed_worker,
                                  **loader_options)
    return train_loader, test_loader


def _dataset_builder(config: TrainConfig):
    """``(build, options, train_points, test_points)``: ``build(split=..., num_points=..., transform=...,
    **options)`` makes a split of the config's dataset; the training split holds ``train_points``
    points per shape (more than ``config.num_points`` for the built-in parts, every point of
    ShapeNetPart's shapes (``None``): the augmentation then draws a new subset of ``num_points`` of
    each shape every epoch), the test split ``test_points`` (``None`` for ShapeNetPart: every point
    is evaluated, as the papers report)."""
    from ..data import build_dataset, build_part_dataset, default_data_dir

    root = config.data_root
    if config.download and root is None:
        root = str(default_data_dir())
    common = dict(format=config.format, root=root, use_normals=config.use_normals)
    if config.download:
        common.update(download=True)
    if config.task == "partseg":
        common.update(skip_missing=config.skip_missing)
        if config.dataset == "shapenetpart":
            return functools.partial(build_part_dataset, config.dataset), common, None, None
        return functools.partial(build_part_dataset, config.dataset), common, max(2048, config.num_points), \
            config.num_points
    return functools.partial(build_dataset, config.dataset), common, config.num_points, config.num_points


def _train_transform(config: TrainConfig, train_set, train_points: Optional[int]):
    """The training augmentation of a config (see :func:`pcattn.data.train_transforms`)."""
    from ..data import test_transforms, train_transforms

    subsample = config.num_points if train_points is None or train_points > config.num_points else None
    if not config.augment:
        return test_transforms() if subsample is None else train_transforms(
            rotate=False, scale=None, shift=0, jitter=0, dropout=0, num_points=subsample)
    if config.task == "partseg":
        # No point dropout: it repeats the first point, which leaves fewer distinct points to label.
        # The built-in shapes stand at any angle about the up axis; ShapeNetPart's are aligned, so they
        # are not turned (as PointNet++ and Point Transformer train on them).
        return train_transforms(up_axis=train_set.up_axis, rotate=config.dataset == "builtin-parts", dropout=0,
                                num_points=subsample)
    return train_transforms(up_axis=train_set.up_axis)


def batch_inputs(batch: Dict[str, Tensor], device: torch.device, use_normals: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """``(pos, x)`` of a batch on ``device``: ``pos (B, P, 3)``; ``x (B, P, 6)`` (positions and normals)
    with ``use_normals``, else ``None``."""
    pos = batch["pos"].to(device, non_blocking=True)
    x = torch.cat([pos, batch["normals"].to(device, non_blocking=True)], -1) if use_normals else None
    return pos, x
