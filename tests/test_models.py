from pathlib import Path

import pytest
import torch

from pcattn.nn.blocks import PointTransformerBlock, TransitionDown, TransitionUp
from pcattn.models import ENCODER_OF, SEGMENTER_CONFIGS, Encoder, PointTransformerClassifier, create_model, list_models
from pcattn.models.checkpoint import load_model


def ragged(sizes=(50, 20), channels=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    batch = torch.cat([torch.full((s,), b) for b, s in enumerate(sizes)])
    return torch.randn(n, channels, generator=g), torch.randn(n, 3, generator=g), batch


def batch_norm_by_hand(norm, values):
    """Eval-mode BatchNorm1d: ``(v - running_mean) / sqrt(running_var + eps) * weight + bias``."""
    return (values - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias


@pytest.mark.parametrize("attention", ["vector", "scalar"])
def test_block_formula_residual_and_ragged(attention):
    x, pos, batch = ragged()
    block = PointTransformerBlock(16, attention, k=8, groups=4, heads=2)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():   # statistics and affine parameters away from the identity, so each norm counts
        for norm in (block.norm1, block.norm2, block.norm3):
            norm.running_mean.copy_(torch.randn(16, generator=g) * 0.3)
            norm.running_var.copy_(torch.rand(16, generator=g) + 0.5)
            norm.weight.copy_(torch.rand(16, generator=g) + 0.5)
            norm.bias.copy_(torch.randn(16, generator=g) * 0.3)
    block.eval()
    out = block(x, pos, batch)
    assert out.shape == x.shape
    # y = relu(x + BN3(W3 relu(BN2(attn(relu(BN1(W1 x)))))))
    with torch.no_grad():
        h = torch.relu(batch_norm_by_hand(block.norm1, x @ block.linear1.weight.T))
        h = torch.relu(batch_norm_by_hand(block.norm2, block.attention(h, pos, batch)))
        expected = torch.relu(x + batch_norm_by_hand(block.norm3, h @ block.linear3.weight.T))
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(block(x[:50], pos[:50]), out[:50], atol=1e-5)


def test_transition_down_samples_and_pools_within_clouds():
    x, pos, batch = ragged()
    down = TransitionDown(16, 32, stride=4, k=8).eval()
    result = down(x, pos, batch)
    assert result.x.shape == (13 + 5, 32)
    assert torch.equal(result.pos, pos[result.index]) and torch.equal(result.batch, batch[result.index])
    assert torch.equal(result.batch.bincount(), torch.tensor([13, 5]))
    alone = down(x[:50], pos[:50], batch[:50])
    assert torch.allclose(alone.x, result.x[:13], atol=1e-5)
    # the linear-before-grouping shortcut equals the textbook MLP on [p_j - p_i, x_j]
    from pcattn.nn.geometry import knn
    nbr = knn(pos, 8, batch, query=result.pos, query_batch=result.batch)
    nbr = torch.where(nbr >= 0, nbr, nbr[:, :1])
    feats = torch.cat([pos[nbr] - result.pos[:, None], x[nbr]], dim=-1)
    h = down.linear(feats)
    h = torch.relu(down.norm(h.reshape(-1, 32))).reshape(h.shape)
    assert torch.allclose(h.max(1).values, result.x, atol=1e-5)


def test_transition_up_interpolates_exactly_at_coarse_points():
    x, pos, batch = ragged()
    down = TransitionDown(16, 32, stride=4, k=8).eval()
    coarse = down(x, pos, batch)
    up = TransitionUp(32, 16, 24).eval()
    out = up(coarse.x, coarse.pos, coarse.batch, x, pos, batch)
    assert out.shape == (70, 24)
    at_coarse = out[coarse.index] - up.skip(x[coarse.index])
    assert torch.allclose(at_coarse, up.coarse(coarse.x), atol=1e-4)


@pytest.mark.parametrize("name", ["pt-tiny-vector", "pt-tiny-scalar"])
def test_classifier_dense_flat_and_rebuild(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    pos = torch.randn(2, 128, 3)
    logits = model(None, pos)
    assert logits.shape == (2, 5)
    assert torch.equal(model(pos, pos), logits)  # x=None means "the positions are the features"
    flat = model(None, pos.reshape(-1, 3), torch.arange(2).repeat_interleave(128))
    assert torch.allclose(logits, flat, atol=1e-5)
    # a ragged batch gives each cloud what it gets alone
    mixed = model(None, torch.cat([pos[0], pos[1, :60]]), torch.tensor([0] * 128 + [1] * 60))
    assert torch.allclose(mixed[1], model(None, pos[1:, :60])[0], atol=1e-4)
    rebuilt = create_model(**model.config)
    rebuilt.load_state_dict(model.state_dict())
    assert torch.allclose(rebuilt.eval()(None, pos), logits)


def test_classifier_normals_change_the_output_and_tiny_clouds():
    torch.manual_seed(0)
    model = create_model("pt-tiny-vector", num_classes=3, in_channels=6).eval()
    pos = torch.randn(2, 5, 3)  # fewer points than k at every stage
    normals = torch.nn.functional.normalize(torch.randn(2, 5, 3), dim=-1)
    out = model(torch.cat([pos, normals], -1), pos)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    # the normals are read: flipping them changes the logits, the positions held fixed
    flipped = model(torch.cat([pos, -normals], -1), pos)
    assert (out - flipped).abs().max() > 1e-3
    with pytest.raises(ValueError, match="in_channels=3"):
        model(None, pos)
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(2, 0, 6), torch.zeros(2, 0, 3))
    with pytest.raises(ValueError, match="NaN"):
        model(torch.zeros(1, 8, 6), torch.full((1, 8, 3), float("nan")))


def test_classifier_old_call_order_warns_and_still_works():
    torch.manual_seed(0)
    model = create_model("pt-tiny-vector", num_classes=3, in_channels=6).eval()
    pos = torch.randn(2, 32, 3)
    features = torch.cat([pos, torch.nn.functional.normalize(torch.randn(2, 32, 3), dim=-1)], -1)
    expected = model(features, pos)
    with pytest.warns(FutureWarning, match="model\\(x, pos, batch\\)"):
        assert torch.equal(model(pos, features), expected)
    xyz = create_model("pt-tiny-vector", num_classes=3).eval()
    with pytest.warns(FutureWarning, match="call order of pcattn 0.1"):
        assert torch.equal(xyz(pos), xyz(None, pos))
    with pytest.raises(TypeError, match="needs pos"):
        xyz(None)


def test_registry():
    assert {"pt-vector", "pt-scalar", "pt-tiny-vector", "pt-tiny-scalar"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model"):
        create_model("pt-huge")
    model = create_model("pt-vector", num_classes=40, k=8)
    assert model.config["k"] == 8 and model.config["name"] == "pt-vector"
    groups = [m.attention.groups for m in model.modules() if isinstance(m, PointTransformerBlock)]
    assert groups == [4, 8, 16, 32, 64]  # one weight per 8 channels
    scalar = create_model("pt-vector", num_classes=40, attention="scalar")
    assert all(type(m.attention).__name__ == "ScalarSelfAttention"
               for m in scalar.modules() if isinstance(m, PointTransformerBlock))


@pytest.mark.parametrize("attention", ["vector", "scalar"])
def test_tiny_training_run_learns(attention):
    """Two separable shape classes (sphere vs. flat square): a few steps of Adam must fit them."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    sphere = torch.nn.functional.normalize(torch.randn(8, 64, 3, generator=g), dim=-1)
    square = torch.rand(8, 64, 3, generator=g) * 2 - 1
    square[..., 2] = 0
    pos = torch.cat([sphere, square])
    labels = torch.tensor([0] * 8 + [1] * 8)
    model = PointTransformerClassifier(2, attention=attention, widths=(16, 32), depths=(1, 1), k=8,
                                       head_channels=(16,), dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(None, pos), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    accuracy = (model(None, pos).argmax(1) == labels).float().mean()
    assert accuracy >= 0.9
    assert all(p.grad is not None for p in model.parameters())


def test_the_static_equal_clouds_path_gives_the_eager_result(monkeypatch):
    """GPUs (and torch.compile/export) take the batched kNN/FPS of equal-sized clouds: same logits."""
    import pcattn.models.inputs as inputs_module

    torch.manual_seed(0)
    model = create_model("pt-tiny-vector", num_classes=5).eval()
    pos = torch.randn(3, 200, 3)
    with torch.no_grad():
        eager = model(None, pos)
        monkeypatch.setattr(inputs_module, "tracing", lambda: True)
        static = model(None, pos)
    assert torch.allclose(static, eager, atol=1e-5)


DATA = Path(__file__).resolve().parent / "data"


def test_every_network_holds_one_encoder_and_each_segmenter_its_classifiers():
    """The classifier and the segmenter hold the same Encoder module under the same names; each named
    segmenter's encoder has its classifier's parameters, name for name and shape for shape."""
    # every segmenter but the grid-pooling scene networks (whose transitions no classifier has)
    assert set(ENCODER_OF) == {name for name in list_models(task="segmentation")
                               if SEGMENTER_CONFIGS[name].get("grid_sizes") is None}
    for segmenter_name, classifier_name in ENCODER_OF.items():
        segmenter = create_model(segmenter_name, num_classes=5, num_categories=2)
        classifier = create_model(classifier_name, num_classes=3)
        assert type(segmenter.encoder) is Encoder and type(classifier.encoder) is Encoder
        shapes = {name: tensor.shape for name, tensor in classifier.encoder.state_dict().items()}
        assert {name: tensor.shape for name, tensor in segmenter.encoder.state_dict().items()} == shapes
        assert not any(name.startswith(("stem.", "stages.", "transitions.", "down."))
                       for name in {**classifier.state_dict(), **segmenter.state_dict()})


@pytest.mark.parametrize("kind", ["classifier", "segmenter"])
def test_checkpoints_of_the_earlier_layout_load_and_give_their_outputs(kind):
    """tests/data/layout0.1_*.pt were written by pcattn before the shared Encoder (classifier keys
    stem/stages/transitions, segmenter keys stem/encoder.S/down), with an input and the logits of it."""
    path = DATA / f"layout0.1_{kind}.pt"
    stored = torch.load(path, weights_only=True)["model_state"]
    assert any(name.startswith("stem.") for name in stored)  # really the earlier layout
    model, _, checkpoint = load_model(path)
    category = {"category": checkpoint["test_category"]} if kind == "segmenter" else {}
    with torch.no_grad():
        logits = model(None, checkpoint["test_pos"], **category)
    assert torch.allclose(logits, checkpoint["test_logits"], atol=1e-5)
    assert torch.equal(model.encoder.stem[0].weight, stored["stem.0.weight"])
