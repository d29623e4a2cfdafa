"""The Point Transformer segmenter: shapes, ragged batches, gradients, the category input, learning."""
import math

import pytest
import torch
import torch.nn.functional as F

from pcattn.models import (PointTransformerClassifier, PointTransformerSegmenter, create_model, create_segmenter,
                           list_models)

SMALL = dict(widths=(16, 32, 64), depths=(1, 1, 1), k=8, head_channels=(16,))


@pytest.mark.parametrize("name", ["pt-seg-tiny-vector", "pt-seg-tiny-scalar"])
def test_dense_flat_ragged_and_rebuild(name):
    torch.manual_seed(0)
    model = create_segmenter(name, num_classes=5, num_categories=3, k=8).eval()
    pos = torch.randn(2, 96, 3)
    category = torch.tensor([2, 0])
    dense = model(None, pos, category=category)
    assert dense.shape == (2, 96, 5)
    flat = model(None, pos.reshape(-1, 3), torch.arange(2).repeat_interleave(96), category=category)
    assert flat.shape == (192, 5)
    assert torch.allclose(flat, dense.reshape(-1, 5), atol=1e-5)
    # a ragged batch gives each cloud what it gets alone
    sizes = [70, 41, 100]
    clouds = [torch.randn(n, 3) for n in sizes]
    categories = torch.tensor([1, 0, 2])
    batch = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    ragged = model(None, torch.cat(clouds), batch, category=categories)
    assert ragged.shape == (sum(sizes), 5)
    for rows, cloud, c in zip(ragged.split(sizes), clouds, categories):
        alone = model(None, cloud, category=c[None])
        assert torch.allclose(rows, alone, atol=1e-5)
    rebuilt = create_model(**model.config)
    assert isinstance(rebuilt, PointTransformerSegmenter)
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())
    assert torch.allclose(rebuilt.eval()(None, pos, category=category), dense)


def test_registry_keeps_classifiers_and_names_segmenters():
    assert all(not name.startswith("pt-seg") for name in list_models())
    assert set(list_models(task="segmentation")) == {"pt-seg-vector", "pt-seg-scalar", "pt-seg-tiny-vector",
                                                    "pt-seg-tiny-scalar", "pt-scene-vector", "pt-scene-tiny-vector",
                                                    "pt-scene-tiny-scalar", "pt-seg-vector-paper"}
    scene = create_segmenter("pt-scene-vector", 13, in_channels=6)
    assert [len(stage) for stage in scene.encoder.stages] == [1, 2, 3, 5, 2]  # the official S3DIS network
    assert scene.encoder.grid_sizes == (0.08, 0.16, 0.32, 0.64)
    assert isinstance(create_model("pt-tiny-vector", num_classes=3), PointTransformerClassifier)
    big = create_model("pt-seg-vector", num_classes=50, num_categories=16)
    assert isinstance(big, PointTransformerSegmenter) and len(big.encoder.stages) == 5 and len(big.decoder) == 4
    scalar = create_segmenter("pt-seg-scalar", 4)
    assert all(type(m.attention).__name__ == "ScalarSelfAttention" for m in scalar.modules() if hasattr(m, "norm2"))
    with pytest.raises(ValueError, match="unknown segmenter"):
        create_segmenter("pt-seg-huge", 4)
    with pytest.raises(ValueError, match="task"):
        list_models(task="detection")


@pytest.mark.parametrize("attention", ["vector", "scalar"])
def test_gradients_reach_every_parameter(attention):
    torch.manual_seed(0)
    model = PointTransformerSegmenter(4, in_channels=6, num_categories=2, attention=attention, **SMALL).train()
    pos = torch.randn(2, 64, 3)
    x = torch.cat([pos, F.normalize(torch.randn(2, 64, 3), dim=-1)], -1)
    model(x, pos, category=torch.tensor([0, 1])).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing


def test_category_changes_the_output():
    torch.manual_seed(0)
    model = PointTransformerSegmenter(4, num_categories=3, **SMALL).eval()
    pos = torch.randn(1, 64, 3)
    a, b = model(None, pos, category=torch.tensor([0])), model(None, pos, category=torch.tensor([2]))
    assert not torch.allclose(a, b)
    without = PointTransformerSegmenter(4, **SMALL).eval()
    assert without(None, pos).shape == (1, 64, 4)


def test_input_errors():
    model = PointTransformerSegmenter(4, num_categories=3, **SMALL).eval()
    pos = torch.randn(2, 32, 3)
    with pytest.raises(ValueError, match="pass category"):
        model(None, pos)
    with pytest.raises(ValueError, match=r"category must be an integer \(2,\)"):
        model(None, pos, category=torch.tensor([0]))
    with pytest.raises(ValueError, match=r"category ids must be in \[0, 3\)"):
        model(None, pos, category=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="pos must be"):
        model(None, torch.randn(32, 2), category=torch.tensor([0]))
    with pytest.raises(ValueError, match="x must be"):
        model(torch.randn(2, 31, 3), pos, category=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="batch is only for flat"):
        model(None, pos, torch.zeros(64, dtype=torch.long), category=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no category input"):
        PointTransformerSegmenter(4, **SMALL)(None, pos, category=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="in_channels=3"):
        PointTransformerSegmenter(4, in_channels=6, **SMALL)(None, pos)
    with pytest.raises(ValueError, match="decoder_depths"):
        PointTransformerSegmenter(4, decoder_depths=(1,), **SMALL)



@pytest.mark.parametrize("kind", ["segmenter", "classifier"])
def test_no_clouds_and_float64_inputs_are_named(kind):
    model = (PointTransformerSegmenter(4, **SMALL) if kind == "segmenter"
             else create_model("pt-tiny-vector", num_classes=3)).eval()
    with pytest.raises(ValueError, match=r"pos holds no point cloud \(B = 0\)"):
        model(None, torch.randn(0, 32, 3))
    with pytest.raises(TypeError, match=r"pos is torch.float64 but the model's parameters are torch.float32"):
        model(None, torch.randn(2, 32, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"x is torch.float64 but the model's parameters are torch.float32"):
        model(torch.randn(2, 32, 3, dtype=torch.float64), torch.randn(2, 32, 3))
    pos = torch.randn(2, 32, 3, dtype=torch.float64)           # a float64 model computes float64 input
    assert model.double()(None, pos).dtype == torch.float64

def two_part_shapes(count: int, points: int, generator: torch.Generator):
    """A flat disc (label 0) on a vertical stick (label 1), randomly sized and tilted."""
    clouds, labels = [], []
    for _ in range(count):
        disc = int(points * 0.6)
        radius = 0.5 + 0.3 * torch.rand(1, generator=generator)
        rho = radius * torch.rand(disc, generator=generator).sqrt()
        angle = torch.rand(disc, generator=generator) * 2 * math.pi
        top = torch.stack([rho * angle.cos(), torch.zeros(disc), rho * angle.sin()], -1)
        height = torch.rand(points - disc, generator=generator) * -(0.6 + 0.4 * torch.rand(1, generator=generator))
        stick = torch.stack([0.03 * torch.randn(points - disc, generator=generator), height,
                             0.03 * torch.randn(points - disc, generator=generator)], -1)
        cloud = torch.cat([top, stick])
        tilt = 0.4 * (torch.rand(1, generator=generator).item() - 0.5)
        rotation = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(tilt), -math.sin(tilt)],
                                 [0.0, math.sin(tilt), math.cos(tilt)]])
        clouds.append(cloud @ rotation.T + 0.01 * torch.randn(points, 3, generator=generator))
        labels.append(torch.cat([torch.zeros(disc, dtype=torch.long), torch.ones(points - disc, dtype=torch.long)]))
    return torch.stack(clouds), torch.stack(labels)


def test_tiny_run_learns_two_parts():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    pos, labels = two_part_shapes(16, 96, generator)
    test_pos, test_labels = two_part_shapes(8, 96, generator)
    model = PointTransformerSegmenter(2, widths=(16, 32), depths=(1, 1), k=8, head_channels=(16,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(40):
        index = torch.randperm(16)[:8]
        loss = F.cross_entropy(model(None, pos[index]).reshape(-1, 2), labels[index].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model.eval()(None, test_pos).argmax(-1) == test_labels).float().mean().item()
    assert accuracy > 0.9  # chance is 0.6 (always "disc")


def test_the_static_equal_clouds_path_gives_the_eager_result(monkeypatch):
    """GPUs (and torch.compile/export) take the batched kNN/FPS of equal-sized clouds through the whole U-Net,
    interpolation included: the same logits as the per-cloud path."""
    import pcattn.models.encoder as encoder_module
    import pcattn.models.inputs as inputs_module
    import pcattn.nn.blocks as blocks_module

    torch.manual_seed(0)
    model = create_model("pt-seg-tiny-vector", num_classes=6, num_categories=2).eval()
    pos, category = torch.randn(3, 150, 3), torch.tensor([1, 0, 1])
    calls = {"static": 0, "per_cloud": 0}

    def counted(kind, search):
        def call(*args, **kwargs):
            calls[kind] += 1
            return search(*args, **kwargs)
        return call

    for module in (blocks_module, encoder_module):  # transitions down and up; the encoder's stages
        monkeypatch.setattr(module, "knn_equal_clouds", counted("static", module.knn_equal_clouds))
        monkeypatch.setattr(module, "knn", counted("per_cloud", module.knn))
    with torch.no_grad():
        eager = model(None, pos, category=category)
        assert calls == {"static": 0, "per_cloud": 10}   # 4 encoder stages, 3 transitions down, 3 up
        monkeypatch.setattr(inputs_module, "tracing", lambda: True)
        static = model(None, pos, category=category)
    assert calls == {"static": 10, "per_cloud": 10}      # every search of the static run took the static path
    assert torch.allclose(static, eager, atol=1e-5)


def test_segmenter_compiles_fullgraph():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = create_model("pt-seg-tiny-vector", num_classes=6, num_categories=2).eval()
    pos, category = torch.randn(2, 64, 3), torch.tensor([1, 0])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert (compiled(None, pos, category=category) - model(None, pos, category=category)).abs().max() < 1e-5
