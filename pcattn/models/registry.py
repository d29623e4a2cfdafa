"""Named model configurations (timm-style): one place to see every variant, and ``create_model``."""
from __future__ import annotations

from typing import Any, Dict, Optional, Union

from .classifier import PointTransformerClassifier
from .encoder import ENCODER_ARGUMENTS
from .segmenter import PointTransformerSegmenter

__all__ = ["MODEL_CONFIGS", "SEGMENTER_CONFIGS", "ENCODER_OF", "create_model", "create_segmenter", "list_models"]


_TINY = dict(widths=(32, 64, 128, 256), depths=(1, 1, 1, 1), head_channels=(128,))
#: Point Transformer blocks per encoder stage in the official code (after each transition down)
PAPER_DEPTHS = (1, 2, 3, 5, 2)

MODEL_CONFIGS: Dict[str, Dict[str, Any]] = {
    # The paper's classification widths, one block per stage as in PyG's example; vector
    # attention with one weight per 8 channels, as the official code (share_planes = 8).
    "pt-vector": dict(attention="vector"),
    "pt-scalar": dict(attention="scalar"),
    # Pure vector attention (one weight per channel), as the paper's equations.
    "pt-vector-pure": dict(attention="vector", group_size=1),
    # The depths of the official Point Transformer network (POSTECH-CVLab/point-transformer,
    # pointtransformer_seg_repro: blocks [2, 3, 4, 6, 3], each count holding the transition down and
    # then 1, 2, 3, 5, 2 Point Transformer blocks), widths 32-512, one attention weight per 8 channels.
    "pt-vector-paper": dict(attention="vector", depths=PAPER_DEPTHS),
    # Small networks for CPU work: 4 stages.
    "pt-tiny-vector": dict(attention="vector", **_TINY),
    "pt-tiny-scalar": dict(attention="scalar", **_TINY),
}


# Segmentation U-Nets (PointTransformerSegmenter): one block per encoder and decoder stage. Each one's
# encoder is its classifier's (the settings below are taken from it), so a trained classifier's
# checkpoint initialises the segmenter's encoder (pcattn train --task partseg --init-encoder ...).
ENCODER_OF: Dict[str, str] = {
    "pt-seg-vector": "pt-vector",
    "pt-seg-scalar": "pt-scalar",
    "pt-seg-tiny-vector": "pt-tiny-vector",
    "pt-seg-tiny-scalar": "pt-tiny-scalar",
    "pt-seg-vector-paper": "pt-vector-paper",
}


def _encoder_settings(classifier: str) -> Dict[str, Any]:
    return {key: value for key, value in MODEL_CONFIGS[classifier].items() if key in ENCODER_ARGUMENTS}


SEGMENTER_CONFIGS: Dict[str, Dict[str, Any]] = {
    "pt-seg-vector": _encoder_settings("pt-vector"),
    "pt-seg-scalar": _encoder_settings("pt-scalar"),
    # The official network: its encoder, one block per decoder stage after each transition up (its
    # decoder counts [2, 2, 2, 2]), the per-point head Linear-BN-ReLU-Linear of width 32.
    "pt-seg-vector-paper": dict(_encoder_settings("pt-vector-paper"), decoder_depths=(1, 1, 1, 1),
                                head_channels=(32,)),
    # The tiny segmenters keep the inverse squared distance of the transitions up (1 / d^2) that the
    # README's measured built-in-parts figures were trained with (1 / d, the official weights, scored
    # within run-to-run noise of it on 8-epoch runs: 0.39-0.46 instance mIoU against 0.42-0.47).
    "pt-seg-tiny-vector": dict(_encoder_settings("pt-tiny-vector"), head_channels=(32,), interpolation_power=2),
    "pt-seg-tiny-scalar": dict(_encoder_settings("pt-tiny-scalar"), head_channels=(32,), interpolation_power=2),
    # Scene segmenters: transition down by grid pooling (voxels of 0.08, 0.16, ... m: on surfaces sampled at
    # 0.04 m, each level keeps about a quarter of the points, as the paper's stride 4 does), features
    # xyz + rgb (in_channels=6); transition up by copying each voxel's features back to its points
    # (unpool="grid", as Point Transformer V2). pt-scene-vector has the block counts of the official S3DIS network
    # (its [2, 3, 4, 6, 3] count the transition down too: 1, 2, 3, 5, 2 Point Transformer blocks).
    "pt-scene-vector": dict(attention="vector", widths=(32, 64, 128, 256, 512), depths=(1, 2, 3, 5, 2),
                            grid_sizes=(0.08, 0.16, 0.32, 0.64), head_channels=(32,), unpool="grid"),
    # The tiny scene segmenters are CPU-sized, for rooms grid-sampled at 0.06-0.1 m (the built-in rooms' 0.08 m):
    # voxels of 0.32, 0.64, 1.28 m and 8 neighbours (1.6x the training steps per second of 16 on a 2-core CPU;
    # 16 is the scene networks' count). On the built-in rooms' 8 cm grid the first pool keeps about one point in
    # 16 (a wall voxel of 0.32 m holds 4 x 4 of the grid's): in 5.5-minute CPU runs this scored 3-5 points of
    # mIoU above pools at 0.16, 0.32, 0.64 m (wider context per level, ~45% more steps in the same time).
    "pt-scene-tiny-vector": dict(attention="vector", widths=(32, 64, 128, 256), depths=(1, 1, 1, 1), k=8,
                                 grid_sizes=(0.32, 0.64, 1.28), head_channels=(32,), unpool="grid"),
    "pt-scene-tiny-scalar": dict(attention="scalar", widths=(32, 64, 128, 256), depths=(1, 1, 1, 1), k=8,
                                 grid_sizes=(0.32, 0.64, 1.28), head_channels=(32,), unpool="grid"),
}


for _segmenter in SEGMENTER_CONFIGS.values():  # recorded in model.config (earlier checkpoints: see checkpoint.py)
    _segmenter.setdefault("interpolation_power", 1)
    _segmenter.setdefault("unpool", "interpolate")


def list_models(task: str = "classification") -> list:
    """Names accepted by :func:`create_model`: the classifiers (default) or, with
    ``task="segmentation"``, the segmenters (also accepted by :func:`create_segmenter`)."""
    if task == "classification":
        return sorted(MODEL_CONFIGS)
    if task == "segmentation":
        return sorted(SEGMENTER_CONFIGS)
    raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}")


def _recorded(name: str, fixed: Dict[str, Any], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """``model.config``: the name, the fixed arguments and every other argument (tuples as lists)."""
    config = {"name": name, **fixed}
    for key, value in kwargs.items():
        config[key] = list(value) if isinstance(value, tuple) else value
    return config


def create_segmenter(name: str, num_classes: int, num_categories: Optional[int] = None, in_channels: int = 3,
                     **overrides: Any) -> PointTransformerSegmenter:
    """Build a named segmenter (:data:`SEGMENTER_CONFIGS`), with any constructor argument overridden.

    ``model.config`` records the name and every argument: ``create_segmenter(**model.config)`` and
    ``create_model(**model.config)`` rebuild the same architecture.
    """
    if name not in SEGMENTER_CONFIGS:
        raise ValueError(f"unknown segmenter {name!r}; available: {', '.join(list_models('segmentation'))}")
    kwargs: Dict[str, Any] = {**SEGMENTER_CONFIGS[name], **overrides}
    model = PointTransformerSegmenter(num_classes=num_classes, in_channels=in_channels,
                                      num_categories=num_categories, **kwargs)
    fixed = {"num_classes": num_classes, "num_categories": num_categories, "in_channels": in_channels}
    model.config = _recorded(name, fixed, kwargs)
    return model


def create_model(name: str, num_classes: int = 40, in_channels: int = 3,
                 **overrides: Any) -> Union[PointTransformerClassifier, PointTransformerSegmenter]:
    """Build a named configuration, with any constructor argument overridden.

    ``model.config`` records the name and every argument, so ``create_model(**model.config)``
    rebuilds the same architecture (checkpoints store it). Segmenter names (``pt-seg-*``) build a
    :class:`PointTransformerSegmenter` through :func:`create_segmenter`.
    """
    if name in SEGMENTER_CONFIGS:
        return create_segmenter(name, num_classes, in_channels=in_channels, **overrides)
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    kwargs: Dict[str, Any] = {**MODEL_CONFIGS[name], **overrides}
    model = PointTransformerClassifier(num_classes=num_classes, in_channels=in_channels, **kwargs)
    model.config = _recorded(name, {"num_classes": num_classes, "in_channels": in_channels}, kwargs)
    return model
