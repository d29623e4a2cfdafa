"""pcattn: vector and scalar self-attention for 3D point clouds.

>>> from pcattn import VectorSelfAttention, ScalarSelfAttention
"""

from .nn import AttentionMap, ScalarSelfAttention, VectorSelfAttention, farthest_point_sampling, knn

__version__ = "0.1.0"

__all__ = [
    "VectorSelfAttention",
    "ScalarSelfAttention",
    "AttentionMap",
    "knn",
    "farthest_point_sampling",
    "__version__",
]
