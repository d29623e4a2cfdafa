"""Positions far from the origin and under autocast: every layer and every named model given its features
sees positions only through ``p_i - p_j``, formed in float32 before any low-precision op.

The clouds lie on a grid of step 1/64, so every ``p_i - p_j`` is the same float32 number after a shift
by 10^3 or 10^5 (and in bf16 autocast at 10^2): a shifted cloud must give the centred cloud's output up
to float rounding. PyG's own ``PointTransformerConv`` gives exactly 0 difference on the same cloud.
Before the fix (``W p_i - W p_j`` from absolute positions), the relative output error at 10^5 was
0.017 (linear encoding), 0.018 (drop-in), 0.01 (TransitionDown), 1e-3 to 0.014 (named models); in
bf16 at 10^2, 0.3 to 1.1 (layers) and 0.015 to 0.2 (models).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.nn import PointTransformerConv as PyGConv

from pcattn import ScalarSelfAttention, VectorSelfAttention
from pcattn.models import create_model, list_models
from pcattn.nn import PointTransformerConv, TransitionDown, knn_graph

# (shift, autocast dtype or None, tolerance on the relative output error)
SHIFTS = {"float32-1e3": (1e3, None, 1e-6), "float32-1e5": (1e5, None, 1e-6),
          "bf16-1e2": (1e2, torch.bfloat16, 2 ** -9)}


def grid_cloud(n, seed):
    """``(n, 3)`` points on a 1/64 grid in [-1, 1): their differences stay exact after a shift."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-64, 64, (n, 3), generator=g).float() / 64


def relative_error(value, reference):
    value, reference = value.detach().float(), reference.detach().float()
    return float((value - reference).abs().max() / reference.abs().max())


def _conv(kind):
    torch.manual_seed(0)
    return PointTransformerConv(8, 16) if kind == "drop-in" else PyGConv(8, 16)


LAYERS = {
    "vector-mlp": lambda: VectorSelfAttention(8, 16, k=8, positional_encoding="mlp"),
    "vector-linear": lambda: VectorSelfAttention(8, 16, k=8, positional_encoding="linear"),
    "vector-linear-addition": lambda: VectorSelfAttention(8, 16, k=8, positional_encoding="linear",
                                                          relation="addition"),
    "vector-none": lambda: VectorSelfAttention(8, 16, k=8, positional_encoding="none"),
    "vector-module": lambda: VectorSelfAttention(8, 16, k=8, positional_encoding=nn.Sequential(
        nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 16))),
    "scalar": lambda: ScalarSelfAttention(8, 16, k=8, heads=2),
    "scalar-global": lambda: ScalarSelfAttention(8, 16, k=None, heads=2),
    "from_pyg": lambda: VectorSelfAttention.from_pyg(_conv("pyg"), k=8),
}


@pytest.mark.parametrize("case", list(SHIFTS))
@pytest.mark.parametrize("name", list(LAYERS) + ["TransitionDown", "drop-in", "pyg"])
def test_every_layer_far_from_the_origin_gives_the_centred_output(name, case):
    shift, dtype, tolerance = SHIFTS[case]
    sizes = (48, 32)                                           # two clouds of a flat batch
    pos = torch.cat([grid_cloud(s, seed) for seed, s in enumerate(sizes)])
    batch = torch.cat([torch.full((s,), b) for b, s in enumerate(sizes)])
    x = torch.randn(pos.shape[0], 8, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(0)
    if name in LAYERS:
        layer = LAYERS[name]().eval()
        run = lambda p: layer(x, p, batch)                                  # noqa: E731
    elif name == "TransitionDown":
        layer = TransitionDown(8, 16, k=8).eval()
        run = lambda p: layer(x, p, batch).x                                # noqa: E731
    else:                                                      # the drop-in conv, and PyG's own
        layer, edge_index = _conv(name), knn_graph(pos, 8, batch)
        run = lambda p: layer(x, p, edge_index)                             # noqa: E731
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        centred, shifted = run(pos), run(pos + shift)
    assert relative_error(shifted, centred) <= tolerance


def _model_cases():
    for name in list_models() + list_models("segmentation"):
        for case in SHIFTS:
            yield pytest.param(name, case, id=f"{name}-{case}")


@pytest.mark.parametrize("name, case", list(_model_cases()))
def test_every_named_model_given_features_far_from_the_origin_gives_the_centred_output(name, case):
    """Given its features (with ``x=None`` a model takes the positions themselves as features, so only
    a centred cloud can be invariant: the data pipeline centres every cloud)."""
    shift, dtype, tolerance = SHIFTS[case]
    torch.manual_seed(0)
    segmenter = name in list_models("segmentation")
    model = create_model(name, num_classes=4, in_channels=6, k=8,
                         **({"num_categories": 2} if segmenter else {})).eval()
    pos = torch.stack([grid_cloud(64, 2), grid_cloud(64, 3)])
    x = torch.randn(2, 64, 6, generator=torch.Generator().manual_seed(4))
    extra = {"category": torch.tensor([0, 1])} if segmenter else {}
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        centred, shifted = model(x, pos, **extra), model(x, pos + shift, **extra)
    assert relative_error(shifted, centred) <= tolerance


@pytest.mark.parametrize("name", ["vector-linear", "from_pyg", "drop-in"])
def test_linear_encoding_under_bf16_sees_relative_positions_in_float32(name):
    """A cloud whose first point lies 100 away from the rest: a linear encoding folded about that point
    under bf16 would round ``W (p - r)`` to the cloud's extent (a step of 0.5 at 100), losing the 1/64
    spacing of the neighbourhoods; the per-pair ``p_i - p_j`` in float32 keeps it (bf16 tolerance 3%)."""
    pos = grid_cloud(60, 7) / 4
    pos[0] = torch.tensor([100.0, 0.0, 0.0])
    x = torch.randn(60, 8, generator=torch.Generator().manual_seed(8))
    torch.manual_seed(0)
    if name == "drop-in":
        layer, edge_index = _conv(name), knn_graph(pos, 8)
        run = lambda: layer(x, pos, edge_index)                             # noqa: E731
    else:
        layer = LAYERS[name]().eval()
        run = lambda: layer(x, pos)                                         # noqa: E731
    with torch.no_grad():
        reference = run()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = run()
    assert relative_error(low[1:], reference[1:]) < 0.03
