import copy

import pytest
import torch
from torch import nn

from pcattn import ScalarSelfAttention, VectorSelfAttention
from pcattn.nn import AttentionMap
from pcattn.bench.reference import scalar_attention_reference, vector_attention_reference
from pcattn.nn.geometry import knn


def make_batch(sizes=(40, 25), channels=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, channels, generator=g, dtype=dtype)
    pos = torch.randn(n, 3, generator=g, dtype=dtype)
    batch = torch.cat([torch.full((s,), b) for b, s in enumerate(sizes)])
    return x, pos, batch


def reference_vector(layer, x, pos, neighbors):
    """The Point Transformer formula with all pairs at once (pcattn.bench.reference), from the layer's modules."""
    return vector_attention_reference(x, pos, neighbors, layer.to_query, layer.to_key, layer.to_value,
                                      layer.pos_encoder, layer.mapping)


@pytest.mark.parametrize("groups", [None, 4, 1])
def test_vector_attention_matches_formula(groups):
    x, pos, batch = make_batch(dtype=torch.float64)
    layer = VectorSelfAttention(8, 16, k=10, groups=groups).double()
    neighbors = knn(pos, 10, batch)
    out = layer(x, pos, batch, neighbors=neighbors)
    assert out.shape == (65, 16)
    assert torch.allclose(out, reference_vector(layer, x, pos, neighbors), atol=1e-10)


def test_scalar_attention_matches_formula():
    x, pos, batch = make_batch(dtype=torch.float64)
    layer = ScalarSelfAttention(8, 12, k=10, heads=3, qk_channels=5, v_channels=6).double()
    neighbors = knn(pos, 10, batch)
    out = layer(x, pos, batch, neighbors=neighbors)
    assert out.shape == (65, 12)
    assert torch.allclose(out, scalar_attention_reference(layer, x, pos, neighbors), atol=1e-10)


def test_softmax_runs_over_neighbours():
    x, pos, batch = make_batch()
    for layer in (VectorSelfAttention(8, k=12, groups=2), ScalarSelfAttention(8, k=12, heads=2)):
        _, attn = layer(x, pos, batch, return_attention=True)
        assert isinstance(attn, AttentionMap)
        assert attn.weights.shape == (65, 12, 2) and attn.neighbors.shape == (65, 12)
        assert torch.allclose(attn.weights.sum(dim=1), torch.ones(65, 2), atol=1e-5)
        assert not torch.allclose(attn.weights.sum(dim=2), torch.ones(65, 12))


@pytest.mark.parametrize("make", [
    lambda: VectorSelfAttention(8, 16, k=8, groups=4),
    lambda: ScalarSelfAttention(8, 16, k=8, heads=4),
    lambda: ScalarSelfAttention(8, 16, k=None, heads=4),
])
def test_permutation_equivariance_translation_invariance_and_ragged(make):
    torch.manual_seed(0)
    layer = make().eval()
    x, pos, batch = make_batch()
    out = layer(x, pos, batch)
    # permuting the points within each cloud permutes the output
    perm = torch.cat([torch.randperm(40), 40 + torch.randperm(25)])
    assert torch.allclose(layer(x[perm], pos[perm], batch), out[perm], atol=1e-5)
    # relative positional encoding: translating a cloud changes nothing
    assert torch.allclose(layer(x, pos + torch.tensor([5.0, -3.0, 2.0]), batch), out, atol=1e-4)
    # each cloud of a ragged batch gets what it gets alone
    assert torch.allclose(layer(x[:40], pos[:40]), out[:40], atol=1e-5)
    assert torch.allclose(layer(x[40:], pos[40:]), out[40:], atol=1e-5)


def test_dense_equals_flat_and_attention_layout():
    x, pos, _ = make_batch(sizes=(30, 30))
    for layer in (VectorSelfAttention(8, k=6), ScalarSelfAttention(8, k=6, heads=2)):
        dense, attn = layer(x.view(2, 30, 8), pos.view(2, 30, 3), return_attention=True)
        flat = layer(x, pos, torch.arange(2).repeat_interleave(30))
        assert dense.shape == (2, 30, 8)
        assert torch.allclose(dense.reshape(60, 8), flat, atol=1e-6)
        # the dense map is the flat map cut per cloud, with each cloud's row offset removed
        _, flat_attn = layer(x, pos, torch.arange(2).repeat_interleave(30), return_attention=True)
        offset = torch.tensor([0, 30])[:, None, None]
        assert torch.equal(attn.neighbors, flat_attn.neighbors.view(2, 30, 6) - offset)
        assert torch.allclose(attn.weights, flat_attn.weights.view(2, 30, 6, -1), atol=1e-6)


def test_precomputed_neighbours_are_used():
    x, pos, batch = make_batch()
    layer = VectorSelfAttention(8, k=8)
    own = knn(pos, 8, batch)
    assert torch.equal(layer(x, pos, batch), layer(x, pos, batch, neighbors=own))
    fewer = own[:, :3]
    assert not torch.allclose(layer(x, pos, batch), layer(x, pos, batch, neighbors=fewer))
    dense_nbr = knn(pos[:40].view(1, 40, 3), 5)
    y, attn = layer(x[:40].view(1, 40, 8), pos[:40].view(1, 40, 3), neighbors=dense_nbr, return_attention=True)
    assert torch.equal(attn.neighbors, dense_nbr)


def test_small_cloud_masks_missing_neighbours():
    x, pos, batch = make_batch(sizes=(3, 40))
    for layer in (VectorSelfAttention(8, k=16), ScalarSelfAttention(8, k=16, heads=2)):
        out, attn = layer(x, pos, batch, return_attention=True)
        assert torch.isfinite(out).all()
        assert (attn.neighbors[:3, 3:] == -1).all() and (attn.weights[:3, 3:] == 0).all()
        assert torch.allclose(out[:3], layer(x[:3], pos[:3]), atol=1e-6)


@pytest.mark.parametrize("options", [
    dict(relation="addition"), dict(relation="hadamard"), dict(relation="concat"),
    dict(relation="concat", positional_encoding="none"), dict(normalization="sigmoid"),
    dict(normalization="l1relu"), dict(positional_encoding="none"), dict(positional_encoding="linear"),
    dict(mapping="linear"), dict(mapping="none"),
])
def test_vector_design_space_runs_and_learns(options):
    x, pos, batch = make_batch()
    torch.manual_seed(0)
    layer = VectorSelfAttention(8, k=8, **options)
    out, attn = layer(x, pos, batch, return_attention=True)
    assert out.shape == (65, 8) and torch.isfinite(out).all()
    if options.get("normalization", "softmax") != "sigmoid":
        assert torch.allclose(attn.weights.sum(1), torch.ones(65, attn.weights.shape[2]), atol=1e-4)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    # it learns: 60 Adam steps towards a fixed target cut the error by at least 30%
    target = torch.tanh(x @ torch.randn(8, 8, generator=torch.Generator().manual_seed(1)))
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = (layer(x, pos, batch) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]


def test_positional_encoding_switch_changes_the_function():
    x, pos, batch = make_batch()
    torch.manual_seed(0)
    with_pe = VectorSelfAttention(8, k=8)
    torch.manual_seed(0)
    without = VectorSelfAttention(8, k=8, positional_encoding="none")
    assert without.pos_encoder is None
    # without positional encoding the output ignores where the neighbours are (given the neighbourhoods)
    nbr = knn(pos, 8, batch)
    assert torch.allclose(without(x, pos, batch, nbr), without(x, pos * 3, batch, nbr))
    assert not torch.allclose(with_pe(x, pos, batch, nbr), with_pe(x, pos * 3, batch, nbr))


@pytest.mark.parametrize("make", [
    lambda: VectorSelfAttention(4, 6, k=4, groups=3),
    lambda: VectorSelfAttention(4, 6, k=4, relation="concat", normalization="l1relu"),
    lambda: ScalarSelfAttention(4, 6, k=4, heads=2),
    lambda: ScalarSelfAttention(4, 6, k=None, heads=2),
])
def test_gradcheck_float64(make):
    torch.manual_seed(0)
    layer = make().double()
    x = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    batch = torch.tensor([0] * 7 + [1] * 5)
    nbr = knn(pos.detach(), 4, batch)
    assert torch.autograd.gradcheck(lambda a, p: layer(a, p, batch, nbr), (x, pos), fast_mode=True)
    layer(x, pos, batch, nbr).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_checkpointed_chunks_give_identical_gradients():
    """First order, x and positions both requiring grad (double backward, autocast, dropout and
    frozen parts: tests/test_exactness.py)."""
    x, pos, batch = make_batch(sizes=(60, 40))
    for layer in (VectorSelfAttention(8, 16, k=8, chunk_size=17), ScalarSelfAttention(8, 16, k=8, chunk_size=17)):
        grads = []
        for use_checkpoint in (True, False):
            layer.zero_grad()
            layer.recompute = use_checkpoint
            xx, pp = x.clone().requires_grad_(True), pos.clone().requires_grad_(True)
            layer(xx, pp, batch).square().sum().backward()
            assert pp.grad.abs().sum() > 0
            grads.append([xx.grad, pp.grad] + [p.grad.clone() for p in layer.parameters()])
        for a, b in zip(*grads):
            assert torch.allclose(a, b, atol=1e-5)


def test_training_without_recompute_runs_one_chunk_and_inference_stays_chunked(monkeypatch):
    """Plain autograd keeps every chunk's pairs for backward, so without ``recompute`` a training call runs
    all its rows as one chunk; inference keeps cache-sized chunks; a chunk_size the user set is kept."""
    x, pos, batch = make_batch(sizes=(60, 40))
    monkeypatch.setenv("PCATTN_CHUNK_ELEMENTS", "256")                   # 256 // (8 x 16) = 2 rows a chunk
    for make in (VectorSelfAttention, ScalarSelfAttention):
        calls = []
        for options, grad in ((dict(recompute=False), True), (dict(recompute=False), False),
                              (dict(recompute=False, chunk_size=30), True)):
            layer = make(16, 16, k=8, **options)
            attend = layer._attend_chunk
            monkeypatch.setattr(layer, "_attend_chunk",
                                lambda query, hood: calls.append(len(query)) or attend(query, hood))
            calls.clear()
            with torch.set_grad_enabled(grad):
                layer(x.repeat(1, 2), pos, batch)
            rows = list(calls)
            if grad and "chunk_size" not in options:
                assert rows == [100], (make.__name__, rows)                  # one chunk of every row
            elif grad:
                assert rows == [30, 30, 30, 10], (make.__name__, rows)
            else:
                assert len(rows) > 1 and sum(rows) == 100, (make.__name__, rows)


@pytest.mark.parametrize("options", [
    dict(),
    dict(relation="addition", groups=4),
    dict(normalization="l1relu", groups=1, mapping="linear"),
    dict(groups=16, mapping="none"),
])
def test_folded_linear_encoding_equals_pairwise_encoding(options):
    """A Linear(3, C) encoding is folded into the per-point projections: same values and gradients
    as computing delta for every pair, and as the formula (with masked slots of a small cloud)."""
    x, pos, batch = make_batch(sizes=(40, 6), dtype=torch.float64)
    torch.manual_seed(0)
    layer = VectorSelfAttention(8, 16, k=10, positional_encoding="linear", chunk_size=7, **options).double()
    assert layer._folds_encoding
    neighbors = knn(pos, 10, batch)                      # the 6-point cloud has 4 empty slots per row
    results = []
    for fold in (True, False):
        layer.fold_linear_encoding = fold
        layer.zero_grad()
        xx, pp = x.clone().requires_grad_(True), pos.clone().requires_grad_(True)
        out, attn = layer(xx, pp, batch, neighbors=neighbors, return_attention=True)
        (out * torch.linspace(-1, 1, 16, dtype=torch.float64)).sum().backward()
        results.append([out, attn.weights, xx.grad, pp.grad] + [p.grad.clone() for p in layer.parameters()])
    for folded, pairwise in zip(*results):
        assert torch.allclose(folded, pairwise, atol=1e-10)
    if options.get("relation", "subtraction") == "subtraction" and options.get("normalization") is None:
        with torch.no_grad():
            assert torch.allclose(results[0][0], reference_vector(layer, x, pos, neighbors), atol=1e-10)


def test_encodings_that_cannot_fold_are_computed_per_pair():
    for options in (dict(normalization="sigmoid"), dict(relation="hadamard"), dict(relation="concat"),
                    dict(positional_encoding="mlp"), dict(positional_encoding=nn.Sequential(nn.Linear(3, 16)))):
        options.setdefault("positional_encoding", "linear")
        assert not VectorSelfAttention(8, 16, **options)._folds_encoding, options


def test_from_pyg_equals_point_transformer_conv():
    pyg = pytest.importorskip("torch_geometric.nn")
    torch.manual_seed(0)
    x, pos, batch = make_batch(sizes=(120, 80), channels=16)
    nbr = knn(pos, 16, batch)
    edge_index = torch.stack([nbr.flatten(), torch.arange(200).repeat_interleave(16)])
    convs = [
        pyg.PointTransformerConv(16, 32),
        pyg.PointTransformerConv(16, 32, pos_nn=pyg.MLP([3, 64, 32], norm=None, plain_last=False),
                                 attn_nn=pyg.MLP([32, 64, 32], norm=None, plain_last=False)),
        pyg.PointTransformerConv(16, 32, attn_nn=nn.Sequential(nn.Linear(32, 1))),
    ]
    for conv in convs:
        for p in conv.parameters():
            nn.init.normal_(p, std=0.3)
        expected = conv(x, pos, edge_index)
        ours = VectorSelfAttention.from_pyg(conv, k=16)
        assert ours._folds_encoding == (conv is not convs[1])                # the default pos_nn is one Linear
        assert (ours(x, pos, batch, neighbors=nbr) - expected).abs().max() <= 1e-5
        assert (ours(x, pos, batch) - expected).abs().max() <= 1e-5  # its own kNN finds the same graph


def test_record_attention_keeps_output():
    x, pos, batch = make_batch()
    layer = VectorSelfAttention(8, k=8, groups=2)
    plain = layer(x, pos, batch)
    layer.record_attention = True
    recorded = layer(x, pos, batch)
    assert torch.equal(plain, recorded)
    rec = layer.last_attention
    _, attn = layer(x, pos, batch, return_attention=True)
    assert torch.equal(rec.weights, attn.weights) and torch.equal(rec.neighbors, attn.neighbors)
    assert torch.equal(rec.pos, pos) and torch.equal(rec.batch, batch)


def test_dtypes_against_float32():
    """float64 equals float32 to float32 rounding (1e-5); a bf16 layer (weights and inputs in bf16,
    8 significant bits) stays within 5% of float32, relative to the output's largest value."""
    x, pos, batch = make_batch()
    # inputs representable in bf16, so all dtypes see the same points (and the same neighbours)
    x, pos = x.bfloat16().float(), pos.bfloat16().float()
    for make in (lambda: VectorSelfAttention(8, k=8), lambda: ScalarSelfAttention(8, k=8, heads=2)):
        torch.manual_seed(0)
        reference_layer = make()
        with torch.no_grad():  # weights representable in bf16 too
            for parameter in reference_layer.parameters():
                parameter.copy_(parameter.bfloat16().float())
        reference = reference_layer(x, pos, batch)
        for dtype, tolerance in ((torch.float64, 1e-5), (torch.bfloat16, 0.05)):
            layer = copy.deepcopy(reference_layer).to(dtype)
            out = layer(x.to(dtype), pos.to(dtype), batch)
            assert out.dtype == dtype
            error = (out.double() - reference.double()).abs().max() / reference.abs().max()
            assert error < tolerance, (dtype, float(error))


def test_whole_cloud_scalar_attention_sees_every_point():
    x, pos, batch = make_batch(sizes=(30, 20))
    layer = ScalarSelfAttention(8, k=None, heads=2)
    out, attn = layer(x, pos, batch, return_attention=True)
    assert attn.weights.shape == (50, 30, 2)
    assert (attn.neighbors[30:, 20:] == -1).all() and (attn.weights[30:, 20:] == 0).all()
    assert torch.allclose(attn.weights.sum(1), torch.ones(50, 2), atol=1e-5)
    fast = layer(x, pos, batch)  # scaled_dot_product_attention path
    assert torch.allclose(out, fast, atol=1e-5)


def test_input_errors_name_the_problem():
    x, pos, batch = make_batch()
    layer = VectorSelfAttention(8, k=4)
    cases = [
        (dict(x=x, pos=pos[:, :2]), ValueError, r"pos must be \(N, 3\) or \(B, P, 3\), got \(65, 2\)"),
        (dict(x=x, pos=torch.where(torch.arange(65)[:, None] == 3, float("nan"), pos)), ValueError, "NaN"),
        (dict(x=x[:60], pos=pos), ValueError, "same points"),
        (dict(x=x[:, :5], pos=pos), ValueError, "8 channels"),
        (dict(x=x.double(), pos=pos.double()), TypeError, "call layer.to"),
        (dict(x=x, pos=pos.double()), TypeError, "share a dtype"),
        (dict(x=x, pos=pos, batch=batch.flip(0)), ValueError, "sorted"),
        (dict(x=x, pos=pos, batch=batch[:10]), ValueError, "batch must be"),
        (dict(x=x, pos=pos, neighbors=torch.zeros(65, 4)), TypeError, "integer"),
        (dict(x=x, pos=pos, neighbors=torch.full((65, 4), 99)), ValueError, "row indices"),
        (dict(x=x, pos=pos, batch=batch, neighbors=torch.full((65, 4), 50)), ValueError, "different clouds"),
        (dict(x=x[:0], pos=pos[:0]), ValueError, "empty"),
        (dict(x=x.view(5, 13, 8), pos=pos), ValueError, r"\(B, P, C\)"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            layer(**kwargs)
    with pytest.raises(ValueError, match="groups"):
        VectorSelfAttention(8, groups=3)
    with pytest.raises(ValueError, match="relation"):
        VectorSelfAttention(8, relation="division")
    with pytest.raises(ValueError, match="k must"):
        VectorSelfAttention(8, k=0)
    with pytest.raises(ValueError, match="k must"):
        ScalarSelfAttention(8, k=0)


def test_bad_library_input_names_the_argument():
    x, pos, _ = make_batch(sizes=(20,))
    layer = VectorSelfAttention(8, k=4)
    with pytest.raises(ValueError, match="batch is empty"):
        layer(torch.zeros(0, 10, 8), torch.zeros(0, 10, 3))
    bad_x = x.clone()
    bad_x[3, 2] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN"):
        layer(bad_x, pos)
    for value, error in ((2.5, TypeError), ("7", TypeError), (-1, ValueError), (0, ValueError)):
        with pytest.raises(error, match="chunk_size"):
            VectorSelfAttention(8, chunk_size=value)
        with pytest.raises(error, match="chunk_size"):
            ScalarSelfAttention(8, chunk_size=value)
    with pytest.raises(TypeError, match="k must be a positive integer"):
        VectorSelfAttention(8, k=None)
    for name in ("in_channels", "out_channels", "groups"):
        arguments = dict(in_channels=8, out_channels=8, groups=None)
        arguments[name] = 0
        with pytest.raises(ValueError, match=name):
            VectorSelfAttention(**arguments)
    with pytest.raises(ValueError, match="heads"):
        ScalarSelfAttention(8, heads=0)
    from pcattn.models import create_model

    model = create_model("pt-tiny-vector", num_classes=3, in_channels=6)
    features = torch.zeros(1, 16, 6)
    features[0, 4, 5] = float("inf")
    with pytest.raises(ValueError, match="x contains NaN or infinite"):
        model(features, torch.randn(1, 16, 3))


def test_recompute_is_the_switch_and_checkpoint_its_old_name():
    """recompute= switches the recomputing backward; checkpoint= (also the name of files and of
    --checkpoint) still works for one release, with a FutureWarning."""
    from pcattn.nn.pyg import PointTransformerConv

    for build in (lambda **kw: VectorSelfAttention(8, 8, k=4, **kw), lambda **kw: ScalarSelfAttention(8, 8, k=4, **kw),
                  lambda **kw: PointTransformerConv(8, 8, **kw)):
        assert build().recompute is True and build(recompute=False).recompute is False
        with pytest.warns(FutureWarning, match="recompute"):
            old = build(checkpoint=False)
        assert old.recompute is False
        with pytest.warns(FutureWarning, match="layer.recompute"):
            assert old.checkpoint is False
        with pytest.warns(FutureWarning, match="layer.recompute"):
            old.checkpoint = True
        assert old.recompute is True


def test_lazy_in_channels_sizes_the_projections_at_the_first_call():
    """``in_channels=-1``: the first call fixes the width; the output is the sized layer's with the same
    weights, and a later call with another width is named."""
    torch.manual_seed(0)
    lazy = VectorSelfAttention(-1, 16, k=8)
    x, pos = torch.randn(2, 40, 8), torch.randn(2, 40, 3)
    first = lazy(x, pos)
    assert lazy.to_query.in_features == lazy.to_key.in_features == lazy.to_value.in_features == 8
    sized = VectorSelfAttention(8, 16, k=8)
    sized.load_state_dict(lazy.state_dict())
    assert torch.equal(first, sized(x, pos))
    with pytest.raises(ValueError, match="x must have 8 channels"):
        lazy(torch.randn(2, 40, 5), pos)
    with pytest.raises(ValueError, match="out_channels must be given"):
        VectorSelfAttention(-1)


def test_bipartite_in_channels_size_each_side():
    """``in_channels=(source, target)``: psi and alpha take the source width, phi the target's; the
    layer's own (self-attention) call takes one x and says so."""
    layer = VectorSelfAttention((8, 5), 16, k=4)
    assert (layer.to_key.in_features, layer.to_value.in_features, layer.to_query.in_features) == (8, 8, 5)
    with pytest.raises(ValueError, match="bipartite"):
        layer(torch.randn(20, 8), torch.randn(20, 3))
    same = VectorSelfAttention((8, 8), 16, k=4)
    assert same(torch.randn(20, 8), torch.randn(20, 3)).shape == (20, 16)
    for bad, error in (((8, 5, 2), ValueError), ((8, 0), ValueError), ((8, 2.0), TypeError), (0, ValueError)):
        with pytest.raises(error, match="in_channels"):
            VectorSelfAttention(bad, 16)
