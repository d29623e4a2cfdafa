"""Data for a run: the train and test loaders of a resolved :class:`~pcattn.engine.TrainConfig`, and the
model inputs of one batch."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .config import TrainConfig

__all__ = ["build_loaders", "batch_inputs"]


def build_loaders(config: TrainConfig, generator: torch.Generator, with_train: bool = True):
    """Train and test datasets and loaders for a resolved config: ``(train_loader, test_loader)``."""
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
    loader_options = dict(batch_size=config.batch_size, num_workers=config.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=False)
    test_loader = DataLoader(test_set, shuffle=False, drop_last=False, **loader_options)
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
    train_loader = DataLoader(train_set, shuffle=True, drop_last=True, generator=generator,
                              worker_init_fn=seed_worker, **loader_options)
    return train_loader, test_loader


def batch_inputs(batch: Dict[str, Tensor], device: torch.device, use_normals: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """``(pos, x)`` of a batch on ``device``: ``pos (B, P, 3)``; ``x (B, P, 6)`` (positions and normals)
    with ``use_normals``, else ``None``."""
    pos = batch["pos"].to(device, non_blocking=True)
    x = torch.cat([pos, batch["normals"].to(device, non_blocking=True)], -1) if use_normals else None
    return pos, x
