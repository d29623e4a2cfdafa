"""Mixed precision and the exactness of the memory-saving backward (``recompute=True``).

Tolerances, stated once: bf16 keeps 8 significant bits (relative rounding 2^-8 = 0.4%), and a
layer chains a few roundings, so a bf16 layer output must be within 3% of the float32 output
(relative to its largest magnitude) and its input gradient within 6%; whole models, 10 layers
deep, within 15%. The checkpointed backward must equal plain autograd to float rounding
(1e-6 in float32, 1e-10 in float64): it recomputes the same arithmetic.
"""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pcattn import ScalarSelfAttention, VectorSelfAttention
from pcattn.models import create_model, list_models
from pcattn.nn.geometry import knn

LAYER_OPTIONS = {
    "vector": dict(),
    "vector-groups": dict(groups=4),
    "addition": dict(relation="addition"),
    "hadamard": dict(relation="hadamard"),
    "concat": dict(relation="concat"),
    "sigmoid": dict(normalization="sigmoid"),
    "l1relu": dict(normalization="l1relu"),
    "pe-linear": dict(positional_encoding="linear"),
    "pe-none": dict(positional_encoding="none"),
    "mapping-linear": dict(mapping="linear"),
    "mapping-none": dict(mapping="none"),
}


def make_layer(name, dtype=torch.float32, **extra):
    torch.manual_seed(0)
    if name == "scalar":
        return ScalarSelfAttention(8, 16, k=8, heads=2, **extra).to(dtype)
    if name == "scalar-global":
        return ScalarSelfAttention(8, 16, k=None, heads=2, **extra).to(dtype)
    return VectorSelfAttention(8, 16, k=8, **LAYER_OPTIONS[name], **extra).to(dtype)


def inputs(dtype=torch.float32, sizes=(40, 25), seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, 8, generator=g).to(dtype)
    pos = torch.randn(n, 3, generator=g).to(dtype)
    batch = torch.cat([torch.full((s,), b) for b, s in enumerate(sizes)])
    return x, pos, batch


def relative_error(value, reference):
    value, reference = value.detach().float(), reference.detach().float()
    return float((value - reference).abs().max() / reference.abs().max())


# ---------------------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("name", list(LAYER_OPTIONS) + ["scalar", "scalar-global"])
def test_bf16_autocast_layer_matches_float32(name):
    layer = make_layer(name)
    x, pos, batch = inputs()
    x32 = x.clone().requires_grad_(True)
    ref = layer(x32, pos, batch)
    ref.square().sum().backward()
    # positions stay float32 under autocast, as they come from the data; features are bf16, as a
    # Linear/BatchNorm stem under autocast gives them
    xbf = x.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(xbf, pos, batch)
    assert out.dtype == torch.bfloat16  # the output dtype follows autocast
    out.float().square().sum().backward()
    assert relative_error(out, ref) < 0.03
    assert relative_error(xbf.grad, x32.grad) < 0.06


@pytest.mark.parametrize("name", list_models())
def test_bf16_autocast_every_named_model_trains(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, k=8)
    pos = torch.randn(2, 96, 3, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([1, 3])
    model.eval()
    with torch.no_grad():
        ref = model(None, pos)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(None, pos)
    assert low.dtype == torch.bfloat16 and relative_error(low, ref) < 0.15
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(None, pos), labels)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_fp16_autocast_recomputation_equals_forward():
    """The recomputation runs under the forward's autocast dtype (fp16 here, not the CPU's bf16 default)."""
    x, pos, batch = inputs()
    grads = {}
    for checkpoint in (True, False):
        layer = make_layer("vector", recompute=checkpoint, chunk_size=13)
        xx = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.float16):
            out = layer(xx, pos, batch)
        assert out.dtype == torch.float16
        out.float().square().sum().backward()
        grads[checkpoint] = [xx.grad] + [p.grad for p in layer.parameters()]
    for a, b in zip(grads[True], grads[False]):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max()))


def test_model_under_autocast_mixes_dtypes_only_where_allowed():
    layer = make_layer("vector")
    x, pos, batch = inputs()
    with pytest.raises(TypeError, match="share a dtype"):
        layer(x.to(torch.bfloat16), pos, batch)  # outside autocast: a real mistake, named
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half_pos = layer(x, pos.to(torch.bfloat16), batch)   # bf16 positions are promoted to float32
    assert torch.isfinite(half_pos.float()).all()


# ---------------------------------------------------------------------------- exact recomputation
def _first_and_second_order(layer, x, pos, batch):
    xx = x.clone().requires_grad_(True)
    pp = pos.clone().requires_grad_(True)
    out = layer(xx, pp, batch)
    grad_x, = torch.autograd.grad(out.square().sum(), xx, create_graph=True)
    penalty = grad_x.square().sum()
    layer.zero_grad()
    penalty.backward()
    return [grad_x.detach(), xx.grad, pp.grad] + [p.grad for p in layer.parameters()]


@pytest.mark.parametrize("name", ["vector", "vector-groups", "concat", "l1relu", "pe-linear", "scalar"])
def test_double_backward_checkpointed_equals_plain(name):
    x, pos, batch = inputs(torch.float64)
    results = {}
    for checkpoint in (True, False):
        layer = make_layer(name, torch.float64, recompute=checkpoint, chunk_size=11)
        results[checkpoint] = _first_and_second_order(layer, x, pos, batch)
    for a, b in zip(results[True], results[False]):
        assert (a is None) == (b is None)
        if b is not None:
            assert torch.allclose(a, b, atol=1e-10)
    # every parameter gets a second-order gradient (the defect left 8 of them with none)
    assert all(g is not None for g in results[True][3:])


def _frozen_cases():
    modules = ("to_query", "to_key", "to_value", "pos_encoder", "mapping")
    yield ()
    yield modules
    for module in modules:
        yield (module,)


@pytest.mark.parametrize("layer_kind", ["mlp", "linear", "none", "from_pyg", "scalar"])
def test_any_subset_may_require_grad(layer_kind):
    """x, pos and every module frozen or not: the checkpointed backward equals plain autograd."""
    x, pos, batch = inputs(sizes=(30, 20))

    def build(checkpoint):
        torch.manual_seed(0)
        if layer_kind == "from_pyg":
            from torch_geometric.nn import PointTransformerConv

            layer = VectorSelfAttention.from_pyg(PointTransformerConv(8, 16), k=8)
        elif layer_kind == "scalar":
            layer = ScalarSelfAttention(8, 16, k=8, heads=2)
        else:
            layer = VectorSelfAttention(8, 16, k=8, positional_encoding=layer_kind)
        layer.recompute, layer.chunk_size = checkpoint, 9
        return layer

    for frozen, (x_grad, pos_grad) in itertools.product(_frozen_cases(), [(True, True), (True, False), (False, True)]):
        found = {}
        for checkpoint in (True, False):
            layer = build(checkpoint)
            for name in frozen:
                module = getattr(layer, name, None)
                if module is not None:
                    module.requires_grad_(False)
            xx, pp = x.clone().requires_grad_(x_grad), pos.clone().requires_grad_(pos_grad)
            out = layer(xx, pp, batch)
            if not out.requires_grad:
                found[checkpoint] = []
                continue
            out.square().sum().backward()
            found[checkpoint] = [xx.grad, pp.grad] + [p.grad for p in layer.parameters()]
        for a, b in zip(found[True], found[False]):
            assert (a is None) == (b is None), (frozen, x_grad, pos_grad)
            if b is not None:
                assert torch.allclose(a, b, atol=1e-5), (frozen, x_grad, pos_grad)


class FunctionalDropoutMapping(nn.Module):
    """A custom gamma calling ``F.dropout`` itself (no ``nn.Dropout`` module to detect)."""

    def __init__(self, channels):
        super().__init__()
        self.linear = nn.Linear(channels, channels)

    def forward(self, rel):
        return F.dropout(self.linear(rel), p=0.5, training=True)


@pytest.mark.parametrize("mapping", ["functional", "module"])
def test_dropout_inside_the_mapping_same_gradients_with_and_without_checkpoint(mapping):
    x, pos, batch = inputs()
    grads = {}
    for checkpoint in (True, False):
        torch.manual_seed(0)
        gamma = FunctionalDropoutMapping(16) if mapping == "functional" else nn.Sequential(
            nn.Linear(16, 16), nn.Dropout(0.5))
        layer = VectorSelfAttention(8, 16, k=8, mapping=gamma, recompute=checkpoint, chunk_size=13).train()
        xx = x.clone().requires_grad_(True)
        torch.manual_seed(1)
        out = layer(xx, pos, batch)
        out.square().sum().backward()
        after = torch.rand(1)   # the global random stream continues as it would without recomputation
        grads[checkpoint] = [out.detach(), xx.grad, after] + [p.grad for p in layer.parameters()]
    for a, b in zip(grads[True], grads[False]):
        assert torch.allclose(a, b, atol=1e-6)


class NumpyNoiseMapping(nn.Module):
    """Randomness torch cannot replay: the recomputation differs from the forward."""

    def __init__(self, channels):
        super().__init__()
        self.linear = nn.Linear(channels, channels)
        self.rng = np.random.default_rng(0)

    def forward(self, rel):
        noise = torch.from_numpy(self.rng.standard_normal(tuple(rel.shape))).to(rel.dtype)
        return self.linear(rel) + noise


def test_a_recomputation_that_cannot_replay_refuses_and_names_the_fix():
    x, pos, batch = inputs()
    layer = VectorSelfAttention(8, 16, k=8, mapping=NumpyNoiseMapping(16))
    out = layer(x.requires_grad_(True), pos, batch)
    with pytest.raises(RuntimeError, match="recompute=False"):
        out.sum().backward()
    layer.recompute = False
    layer(x, pos, batch).sum().backward()   # the named fix works


def test_bf16_autocast_blocks_match_float32():
    from pcattn.nn import PointTransformerBlock, TransitionDown, TransitionUp

    torch.manual_seed(0)
    x, pos, batch = inputs(sizes=(48, 32))
    block, down, up = PointTransformerBlock(8, k=8).eval(), TransitionDown(8, 16, k=8).eval(), TransitionUp(16, 8, 8)
    up.eval()

    def run(features):
        h = block(features, pos, batch)
        coarse = down(h, pos, batch)
        return h, coarse.x, up(coarse.x, coarse.pos, coarse.batch, h, pos, batch)

    x = x.bfloat16()   # as a stem under autocast gives them
    with torch.no_grad():
        reference = run(x.float())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = run(x)
    for out, ref in zip(low, reference):
        assert out.dtype == torch.bfloat16 and relative_error(out, ref) < 0.03
