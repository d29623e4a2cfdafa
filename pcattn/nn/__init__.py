"""Layers on point clouds: geometry (kNN, FPS, batch layouts), vector and scalar self-attention,
Point Transformer blocks. Imports point one way: geometry <- chunked <- vector/scalar <- blocks.
"""
from .blocks import Downsampled, PointTransformerBlock, TransitionDown, TransitionUp, make_attention
from .chunked import AttentionMap, RecordedAttention
from .geometry import farthest_point_sampling, knn, to_dense, to_flat
from .scalar import ScalarSelfAttention
from .vector import VectorSelfAttention

#: The attention layer classes (what :mod:`pcattn.viz` records and extracts).
ATTENTION_LAYERS = (VectorSelfAttention, ScalarSelfAttention)

__all__ = [
    "VectorSelfAttention",
    "ScalarSelfAttention",
    "AttentionMap",
    "RecordedAttention",
    "ATTENTION_LAYERS",
    "PointTransformerBlock",
    "TransitionDown",
    "TransitionUp",
    "Downsampled",
    "make_attention",
    "knn",
    "farthest_point_sampling",
    "to_flat",
    "to_dense",
]
