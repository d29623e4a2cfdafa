"""pcattn: vector and scalar self-attention for 3D point clouds.

>>> from pcattn import VectorSelfAttention, ScalarSelfAttention
>>> pcattn.predict("runs/builtin-vector/best.pt", "cloud.ply")     # label your own cloud
"""

from .nn import AttentionMap, ScalarSelfAttention, VectorSelfAttention, farthest_point_sampling, knn

__version__ = "0.1.0"

__all__ = [
    "VectorSelfAttention",
    "ScalarSelfAttention",
    "AttentionMap",
    "knn",
    "farthest_point_sampling",
    "predict",
    "__version__",
]


def __getattr__(name: str):
    """``pcattn.predict`` (:func:`pcattn.engine.prediction.predict`), imported when first used: ``import pcattn``
    loads the layers only, not the engine and the data readers."""
    if name == "predict":
        from .engine.prediction import predict

        return predict
    raise AttributeError(f"module 'pcattn' has no attribute {name!r}")
