"""Named model configurations (timm-style): one place to see every variant, and ``create_model``."""
from __future__ import annotations

from typing import Any, Dict

from .classifier import PointTransformerClassifier

__all__ = ["MODEL_CONFIGS", "create_model", "list_models"]


_TINY = dict(widths=(32, 64, 128, 256), depths=(1, 1, 1, 1), head_channels=(128,))

MODEL_CONFIGS: Dict[str, Dict[str, Any]] = {
    # The paper's classification widths, one block per stage as in PyG's example; vector
    # attention with one weight per 8 channels, as the official code (share_planes = 8).
    "pt-vector": dict(attention="vector"),
    "pt-scalar": dict(attention="scalar"),
    # Pure vector attention (one weight per channel), as the paper's equations.
    "pt-vector-pure": dict(attention="vector", group_size=1),
    # Small networks for CPU work: 4 stages.
    "pt-tiny-vector": dict(attention="vector", **_TINY),
    "pt-tiny-scalar": dict(attention="scalar", **_TINY),
}


def list_models() -> list:
    """Names accepted by :func:`create_model`."""
    return sorted(MODEL_CONFIGS)


def create_model(name: str, num_classes: int = 40, in_channels: int = 3, **overrides: Any) -> PointTransformerClassifier:
    """Build a named configuration, with any constructor argument overridden.

    ``model.config`` records the name and every argument, so ``create_model(**model.config)``
    rebuilds the same architecture (checkpoints store it).
    """
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    kwargs: Dict[str, Any] = {**MODEL_CONFIGS[name], **overrides}
    model = PointTransformerClassifier(num_classes=num_classes, in_channels=in_channels, **kwargs)
    config = {"name": name, "num_classes": num_classes, "in_channels": in_channels}
    for key, value in kwargs.items():
        config[key] = list(value) if isinstance(value, tuple) else value
    model.config = config
    return model
