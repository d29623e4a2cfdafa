"""pcattn: vector and scalar self-attention for 3D point clouds."""

__version__ = "0.1.0"
