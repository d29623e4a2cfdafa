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

    from ..data import build_dataset, seed_worker, test_transforms, train_transforms

    common = dict(format=config.format, root=config.data_root, num_points=config.num_points,
                  use_normals=config.use_normals)
    if config.download:
        from ..data import default_data_dir

        common.update(root=config.data_root or str(default_data_dir()), download=True)
    test_set = build_dataset(config.dataset, split="test", transform=test_transforms(), **common)
    if config.up_axis is not None:
        test_set.up_axis = config.up_axis
    loader_options = dict(num_workers=config.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=False)
    if distributed.enabled:
        batches = ShardedBatches(len(test_set), config.batch_size, distributed.rank, distributed.world_size)
        test_loader = DataLoader(test_set, batch_sampler=batches, **loader_options)
    else:
        test_loader = DataLoader(test_set, batch_size=config.batch_size, shuffle=False, drop_last=False,
                                 **loader_options)
    if not with_train:
        return None, test_loader
    train_set = build_dataset(config.dataset, split="train", **common)
    if config.up_axis is not None:
        train_set.up_axis = config.up_axis
    train_set.transform = (train_transforms(up_axis=train_set.up_axis) if config.augment
                           else test_transforms())
    if train_set.classes != test_set.classes:
        raise ValueError(f"train and test splits disagree on the classes: {train_set.classes} vs {test_set.classes}")
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


def batch_inputs(batch: Dict[str, Tensor], device: torch.device, use_normals: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """``(pos, x)`` of a batch on ``device``: ``pos (B, P, 3)``; ``x (B, P, 6)`` (positions and normals)
    with ``use_normals``, else ``None``."""
    pos = batch["pos"].to(device, non_blocking=True)
    x = torch.cat([pos, batch["normals"].to(device, non_blocking=True)], -1) if use_normals else None
    return pos, x
