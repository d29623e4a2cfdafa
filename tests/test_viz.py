"""Attention visualisation: extraction, per-point values, real headless pictures, .ply files, plots, CLI."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pcattn import viz
from pcattn.data import load_cloud
from pcattn.models import create_model
from pcattn.nn import ATTENTION_LAYERS, VectorSelfAttention
from pictures import count_viridis_colours, magenta_pixels, not_background

SMALL = dict(widths=(16, 32, 32), depths=(1, 1, 1), head_channels=(16,), k=8)


pytestmark = pytest.mark.usefixtures("one_thread")  # small models: threads only add overhead


def small_model(attention="vector", num_classes=5, seed=0):
    torch.manual_seed(seed)
    return create_model(f"pt-tiny-{attention}", num_classes=num_classes, **SMALL).eval()


def sharpened(model, factor=4.0):
    """Scale the attention layers' weights: a random model's attention is nearly uniform, a trained
    one's is not; sharper weights give the pictures a spread of colours to check."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ATTENTION_LAYERS):
                for parameter in module.parameters():
                    parameter.mul_(factor)
    return model


def cloud(points=200, seed=0):
    """An elongated, irregular cloud (so views differ and neighbourhoods are not symmetric)."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(points, 3, generator=g) * torch.tensor([1.0, 0.5, 0.3])
    return pos / pos.norm(dim=1).max()


# ---------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("attention", ["vector", "scalar"])
def test_extraction_equals_return_attention_and_keeps_output(attention):
    model = small_model(attention)
    pos = cloud()
    with torch.no_grad():
        expected = model(None, pos[None])
    inputs = {}
    hooks = [module.register_forward_hook(lambda m, args, out, name=name: inputs.__setitem__(name, args))
             for name, module in model.named_modules() if isinstance(module, ATTENTION_LAYERS)]
    extraction = viz.extract_attention(model, pos)
    for hook in hooks:
        hook.remove()

    assert torch.equal(extraction.output, expected)
    assert [layer.name for layer in extraction.layers] == viz.attention_layer_names(model) == sorted(inputs)
    assert [layer.pos.shape[0] for layer in extraction.layers] == [200, 50, 13]
    modules = dict(model.named_modules())
    for layer in extraction.layers:
        module = modules[layer.name]
        assert module.record_attention is False and module.last_attention is None   # restored
        with torch.no_grad():
            _, direct = module(*inputs[layer.name], return_attention=True)
        assert torch.equal(layer.neighbors, direct.neighbors)
        torch.testing.assert_close(layer.weights, direct.weights, rtol=0, atol=1e-6)
        # softmax over the neighbours, per group / head
        torch.testing.assert_close(layer.weights.sum(1), torch.ones(layer.pos.shape[0], layer.num_groups))
        assert layer.kind == attention


def test_extraction_restores_user_recording_flags_and_works_on_a_bare_layer():
    layer = VectorSelfAttention(3, 8, k=6, groups=2)
    layer.record_attention = True
    pos = cloud(40)
    layer(pos, pos)
    previous = layer.last_attention
    extraction = viz.extract_attention(layer, pos)
    assert layer.record_attention is True and layer.last_attention is previous
    assert extraction.layers[0].name == "" and extraction.layers[0].weights.shape == (40, 6, 2)


def test_extraction_errors():
    with pytest.raises(ValueError, match="no attention layers"):
        viz.extract_attention(nn.Sequential(nn.Linear(3, 3)), cloud())
    layers = viz.extract_attention(small_model(), cloud()).layers
    with pytest.raises(ValueError, match=r"no attention layer named 'stages.9'.*stages\.0\.0\.attention"):
        viz.select_layer(layers, "stages.9")
    with pytest.raises(ValueError, match="out of range.*3 attention layers"):
        viz.select_layer(layers, 3)
    assert viz.select_layer(layers, "-1") is layers[-1]
    assert viz.select_layer(layers, "stages.1.0.attention") is layers[1]
    assert viz.select_layer(layers, "1.0.attention") is layers[1]          # unique suffix
    with pytest.raises(ValueError, match="query 200 out of range.*200 points"):
        viz.point_values(layers[0], cloud(), query=200)
    with pytest.raises(ValueError, match="reduce=2: this layer has 2 groups/heads"):
        viz.reduce_groups(layers[0].weights, 2)
    with pytest.raises(ValueError, match="mode must be"):
        viz.point_values(layers[0], cloud(), mode="sideways")


# ---------------------------------------------------------------------------- per-point values
def test_query_values_are_the_query_rows_weights():
    pos = cloud()
    layer = viz.extract_attention(small_model(), pos).layers[0]      # first layer: the input points themselves
    query = 37
    for reduce, expected in (("mean", layer.weights[query].mean(-1)), ("max", layer.weights[query].amax(-1)),
                             ("1", layer.weights[query, :, 1])):
        values = viz.point_values(layer, pos, "query", query, reduce)
        neighbours = layer.neighbors[query].numpy()
        assert values.query_point == query and sorted(values.neighborhood) == sorted(neighbours)
        np.testing.assert_allclose(values.values[neighbours], expected.double().numpy(), atol=1e-7)
        others = np.setdiff1d(np.arange(len(pos)), neighbours)
        assert np.all(values.values[others] == 0) and not values.active[others].any() and values.active[neighbours].all()
        if reduce == "mean":
            assert values.values.sum() == pytest.approx(1.0, abs=1e-5)   # softmax over the neighbourhood
    colors = values.colors()
    assert np.allclose(colors[others], viz.INACTIVE_COLOR) and not np.allclose(colors[neighbours], viz.INACTIVE_COLOR)


def test_duplicated_points_keep_their_own_query():
    pos = cloud(100)
    pos = torch.cat([pos, pos[:20]])                                      # padded clouds repeat points
    layer = viz.extract_attention(small_model(), pos).layers[0]
    values = viz.point_values(layer, pos, "query", 105)
    assert values.query_point == 105
    np.testing.assert_allclose(values.values[layer.neighbors[105].numpy()],
                               layer.weights[105].mean(-1).double().numpy(), atol=1e-7)


def test_received_values_are_a_scatter_add_of_the_weights():
    pos = cloud()
    layer = viz.extract_attention(small_model("scalar"), pos).layers[0]
    weights, neighbors = layer.weights.mean(-1).double(), layer.neighbors
    expected = np.zeros(len(pos))
    self_total = 0.0
    for i in range(len(pos)):
        for k in range(neighbors.shape[1]):
            j = int(neighbors[i, k])
            if j == i:
                self_total += float(weights[i, k])
            else:
                expected[j] += float(weights[i, k])
    values = viz.point_values(layer, pos, "received")
    np.testing.assert_allclose(values.values, expected, atol=1e-9)
    assert values.values.sum() + self_total == pytest.approx(len(pos))       # every row gives away 1 in total
    with_self = viz.point_values(layer, pos, "received", include_self=True)
    assert with_self.values.sum() == pytest.approx(len(pos))
    assert values.query_point is None and values.active is None


def test_deep_layer_values_map_back_to_the_input_by_nearest_kept_point():
    pos = cloud()
    layer = viz.extract_attention(small_model(), pos).layers[2]       # 13 points after two FPS steps
    same = (layer.pos[:, None, :] == pos[None]).all(-1)                    # (13, 200)
    assert torch.all(same.sum(1) == 1)                                    # FPS keeps input positions exactly
    kept = same.float().argmax(1).numpy()
    nearest = torch.cdist(pos.double(), layer.pos.double()).argmin(1).numpy()

    received = viz.point_values(layer, pos, "received")
    np.testing.assert_allclose(received.values[kept], received.layer_values)
    np.testing.assert_allclose(received.values, received.layer_values[nearest])

    dropped = int(np.setdiff1d(np.arange(len(pos)), kept)[0])
    values = viz.point_values(layer, pos, "query", dropped)
    q = nearest[dropped]
    assert values.query_point == kept[q]                                  # the kept point nearest to the query
    assert sorted(values.neighborhood) == sorted(kept[layer.neighbors[q].numpy()])
    np.testing.assert_allclose(values.layer_values.sum(), 1.0, atol=1e-5)
    np.testing.assert_allclose(values.values, values.layer_values[nearest])
    assert viz.point_values(layer, pos, "query", int(kept[5])).query_point == kept[5]


# ---------------------------------------------------------------------------- pictures
def gradient_scene(points=300):
    pos = cloud(points)
    values = (pos[:, 0] - pos[:, 0].min()).numpy()
    return pos, viz.colorize(values)


@pytest.mark.parametrize("backend", ["open3d", "matplotlib"])
def test_render_views_draws_colour_map_and_highlight(backend):
    if backend == "open3d":
        ok, reason = viz.open3d_rendering_available()
        assert ok, f"headless Open3D rendering is broken here: {reason} ({viz.RENDER_HELP})"
    pos, colors = gradient_scene()
    images = viz.render_views(pos, colors, views=[(30, 20), (120, 20)], size=(200, 160), highlight=5,
                              neighborhood=[5, 6, 7, 8], backend=backend)
    assert len(images) == 2
    for image in images:
        assert image.shape == (160, 200, 3) and image.dtype == np.uint8
        assert 0.03 < not_background(image) < 0.9                         # points drawn, not a filled frame
        assert count_viridis_colours(image) >= 8, "expected many distinct viridis colours"
        assert magenta_pixels(image) >= 10, "the query's magenta highlight is missing"
    assert not np.array_equal(images[0], images[1])                         # another camera, another picture
    blank = viz.render_views(pos, colors, views=1, size=(64, 64), backend=backend)[0]
    assert magenta_pixels(blank) == 0                                       # no highlight unless asked


def test_auto_backend_falls_back_to_matplotlib_and_open3d_failure_names_packages(monkeypatch):
    pos, colors = gradient_scene(100)
    monkeypatch.setattr(viz.render, "_PROBE_RESULT", (False, "Open3D's offscreen renderer failed (exit code 134)"))
    with pytest.warns(RuntimeWarning, match="matplotlib renderer"):
        image = viz.render_views(pos, colors, size=(96, 96), highlight=0, backend="auto")[0]
    assert count_viridis_colours(image) >= 5 and magenta_pixels(image) > 0
    with pytest.raises(viz.RenderingUnavailable, match="mesa-vulkan-drivers libegl1 libgl1"):
        viz.render_views(pos, colors, backend="open3d")
    monkeypatch.setenv("PCATTN_RENDERER", "matplotlib")               # explicit choice: no probe, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        viz.render_views(pos, colors, size=(64, 64), backend="auto")


def test_probe_reports_a_missing_vulkan_driver_instead_of_crashing():
    ok, reason = viz.open3d_rendering_available(env={**os.environ, "VK_ICD_FILENAMES": "/nonexistent/icd.json"})
    assert not ok and "failed" in reason


def test_attention_picture_png_compares_two_models(tmp_path):
    from PIL import Image

    pos = cloud()
    models = [("vector", sharpened(small_model("vector"))), ("scalar", sharpened(small_model("scalar", seed=1)))]
    path = tmp_path / "compare.png"
    picture = viz.attention_picture(models, pos, layers=[0, "stages.1.0.attention"], query=11, views=2,
                                    size=(150, 150), title="two models", path=path, colorbar=False)
    assert [row.name for row in picture.rows] == ["vector", "vector", "scalar", "scalar"]
    assert [row.layer.index for row in picture.rows] == [0, 1, 0, 1]
    saved = np.asarray(Image.open(path).convert("RGB"))
    assert saved.shape == picture.image.shape and saved.shape[0] > 4 * 150 and saved.shape[1] > 2 * 150
    # No colour bar here: the viridis colours come from the rendered points themselves.
    assert count_viridis_colours(saved) >= 4 and magenta_pixels(saved) >= 8 * 10
    assert 0.02 < not_background(saved) < 0.9
    assert picture.rows[0].probabilities.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="query 500 out of range"):
        viz.attention_picture(models[0][1], pos, query=500)


def test_received_mode_picture_spans_the_colour_map(tmp_path):
    pos = cloud(300)
    picture = viz.attention_picture(small_model(), pos, mode="received", views=1, size=(200, 200),
                                    path=tmp_path / "received.png", colorbar=True)
    assert count_viridis_colours(picture.image[:, :230]) >= 8                # the points alone, without the bar
    assert magenta_pixels(picture.image) == 0


def test_ply_round_trips_with_colours(tmp_path):
    import open3d as o3d

    pos, colors = gradient_scene()
    path = viz.write_ply(tmp_path / "sub" / "cloud.ply", pos, colors)
    back = o3d.io.read_point_cloud(str(path))
    np.testing.assert_allclose(np.asarray(back.points), pos.numpy(), atol=1e-6)
    assert back.has_colors()
    np.testing.assert_allclose(np.asarray(back.colors), colors, atol=0.5 / 255 + 1e-9)
    with pytest.raises(ValueError, match=r"\.ply"):
        viz.write_ply(tmp_path / "cloud.png", pos, colors)


def test_show_without_display_says_so(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    pos, colors = gradient_scene(10)
    with pytest.raises(RuntimeError, match="no display"):
        viz.show_interactive(pos, colors)


# ---------------------------------------------------------------------------- input clouds
def test_load_cloud_normalises_and_subsamples(tmp_path):
    raw = np.random.default_rng(0).normal(size=(3000, 3)).astype(np.float32) * 7 + 40
    np.save(tmp_path / "big.npy", raw)
    assert viz.load_cloud is load_cloud                                     # the old name still works
    pos, x = load_cloud(tmp_path / "big.npy", num_points=512)
    assert pos.shape == (512, 3) and x is None
    assert torch.allclose(pos.mean(0), torch.zeros(3), atol=1e-5)
    assert pos.norm(dim=1).max() == pytest.approx(1.0)
    np.savetxt(tmp_path / "small.xyz", np.c_[raw[:100], np.tile([0, 0, 1.0], (100, 1))])
    pos, x = load_cloud(tmp_path / "small.xyz", num_points=512, use_normals=True)
    assert pos.shape == (100, 3) and x.shape == (100, 6) and torch.equal(x[:, :3], pos)
    with pytest.raises(ValueError, match="has none"):
        load_cloud(tmp_path / "big.npy", use_normals=True)
    (tmp_path / "bad.xyz").write_text("1 2 3\nnot a point\n")
    with pytest.raises(ValueError, match="bad.xyz"):
        load_cloud(tmp_path / "bad.xyz")
    with pytest.raises(FileNotFoundError, match="missing.ply"):
        load_cloud(tmp_path / "missing.ply")


# ---------------------------------------------------------------------------- training plots
def test_plot_run_writes_curves_and_confusion(tmp_path):
    from PIL import Image

    run = tmp_path / "run"
    run.mkdir()
    with open(run / "metrics.jsonl", "w") as f:
        for epoch in range(1, 6):
            f.write(json.dumps(dict(epoch=epoch, train_loss=2.0 / epoch, train_acc=0.2 * epoch - 0.1,
                                    test_loss=2.2 / epoch, test_oa=0.18 * epoch, test_macc=0.17 * epoch,
                                    lr=0.1, epoch_time=1.0, samples_per_s=100.0)) + "\n")
    written = viz.plot_run(run)
    assert written == [run / "curves.png"]
    (run / "eval.json").write_text(json.dumps(dict(oa=0.8, macc=0.75, per_class={"a": 1.0, "b": 0.5, "c": 0.75},
                                                   confusion=[[4, 0, 0], [1, 2, 1], [0, 1, 3]],
                                                   classes=["a", "b", "c"], checkpoint="best.pt", votes=1)))
    written = viz.plot_run(str(run))
    assert written == [run / "curves.png", run / "confusion.png"]
    for path in written:
        image = np.asarray(Image.open(path).convert("RGB")).astype(int)
        coloured = (image.max(-1) - image.min(-1)) > 60                       # lines and cells, not grey text
        assert coloured.mean() > 0.002, f"{path.name} looks empty"
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        viz.plot_run(tmp_path)
    (run / "eval.json").write_text(json.dumps(dict(confusion=[[1, 2]])))
    with pytest.raises(ValueError, match="square"):
        viz.plot_run(run)


def test_a_long_title_is_set_smaller_inside_the_picture_not_cut_at_its_edges():
    """A scene picture's title (room, points, mIoU, mAcc, OA) is wider than 13 pt bold allows: it is set
    smaller, whole, with a margin on both sides (it overflowed both edges)."""
    pytest.importorskip("matplotlib")
    from pcattn.viz.figures import FigureRow, compose_figure

    image = np.full((300, 400, 3), 255, np.uint8)
    title = "builtin-rooms test #0 (test_room_00), 30,142 points: mIoU 82.6%, mAcc 92.0%, OA 98.0%"
    picture = compose_figure([FigureRow([image, image], "predicted")], title, colorbar=False,
                             legend=[("ceiling", (0.0, 0.0, 1.0))])
    inked = np.where((picture[:40].mean(axis=2) < 128).any(axis=0))[0]
    assert inked.min() >= 8 and inked.max() <= picture.shape[1] - 8
    assert inked.max() - inked.min() > picture.shape[1] // 2  # set, not dropped
