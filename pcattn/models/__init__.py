"""Networks built from :mod:`pcattn.nn` blocks, and the registry of named configurations.

>>> model = create_model("pt-vector", num_classes=40)
>>> logits = model(None, torch.randn(16, 1024, 3))          # (16, 40): x=None uses the positions
"""
from .classifier import PointTransformerClassifier
from .encoder import Encoder, EncoderLevel
from .registry import ENCODER_OF, MODEL_CONFIGS, SEGMENTER_CONFIGS, create_model, create_segmenter, list_models
from .segmenter import PointTransformerSegmenter

__all__ = ["Encoder", "EncoderLevel", "PointTransformerClassifier", "PointTransformerSegmenter", "create_model", "create_segmenter",
           "list_models", "MODEL_CONFIGS", "SEGMENTER_CONFIGS", "ENCODER_OF"]
