"""Networks built from :mod:`pcattn.nn` blocks, and the registry of named configurations.

>>> model = create_model("pt-vector", num_classes=40)
>>> logits = model(None, torch.randn(16, 1024, 3))          # (16, 40): x=None uses the positions
"""
from .classifier import PointTransformerClassifier
from .registry import MODEL_CONFIGS, create_model, list_models

__all__ = ["PointTransformerClassifier", "create_model", "list_models", "MODEL_CONFIGS"]
