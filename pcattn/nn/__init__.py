"""Layers on point clouds: geometry (kNN, FPS, batch layouts), vector and scalar self-attention,
Point Transformer blocks, PyG drop-ins (:mod:`pcattn.nn.pyg`). Imports point one way: geometry <-
chunked <- vector/scalar <- blocks, vector <- pyg.
"""
from .blocks import Downsampled, PointTransformerBlock, TransitionDown, TransitionUp, make_attention
from .chunked import AttentionMap, RecordedAttention
from .geometry import farthest_point_sampling, knn, to_dense, to_flat
from .grid import GridPool, GridUnpool, voxel_clusters
from .pyg import PointTransformerConv, fps, knn_graph, radius_graph
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
    "GridPool",
    "GridUnpool",
    "voxel_clusters",
    "make_attention",
    "PointTransformerConv",
    "knn_graph",
    "radius_graph",
    "fps",
    "knn",
    "farthest_point_sampling",
    "to_flat",
    "to_dense",
]
