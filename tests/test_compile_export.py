"""torch.compile(fullgraph=True) of layers and a model, layers traced / exported in inference, and
``pcattn export`` round trips (ONNX through onnxruntime, TorchScript, torch.export) against eager."""
from __future__ import annotations

import os
import re

import pytest
import torch

from pcattn import ScalarSelfAttention, VectorSelfAttention
from pcattn.models import create_model

TINY = dict(widths=(16, 32), depths=(1, 1), head_channels=(16,), dropout=0.0, k=8)


def _tiny_model(num_classes=3):
    torch.manual_seed(0)
    return create_model("pt-tiny-vector", num_classes=num_classes, **TINY)


def _compare_training(module, compiled, *inputs):
    """Outputs and every parameter's gradient of a compiled module equal eager's."""
    grads = []
    for run in (compiled, module):
        module.zero_grad()
        out = run(*inputs)
        out.square().sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in module.parameters()]))
    (a, grads_a), (b, grads_b) = grads
    assert (a - b).abs().max() < 1e-5
    assert all((u - v).abs().max() < 1e-4 for u, v in zip(grads_a, grads_b))


@pytest.mark.parametrize("layer", [VectorSelfAttention(8, 16, k=8), ScalarSelfAttention(8, 16, k=8)],
                         ids=["vector", "scalar"])
def test_layer_compiles_fullgraph_inference_and_training(layer):
    """No graph break (fullgraph=True) in inference and training; aot_eager records forward and backward
    as inductor would, in a second instead of a minute (inductor: the slow test below)."""
    torch._dynamo.reset()
    x, pos = torch.randn(2, 40, 8), torch.randn(2, 40, 3)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert (compiled(x, pos) - layer(x, pos)).abs().max() < 1e-5
    _compare_training(layer, compiled, x, pos)


def test_model_compiles_fullgraph_inference_and_training():
    torch._dynamo.reset()
    model = _tiny_model()
    pos = torch.randn(2, 64, 3)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    model.eval()
    with torch.no_grad():
        assert (compiled(None, pos) - model(None, pos)).abs().max() < 1e-5
    model.train()
    _compare_training(model, compiled, None, pos)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PCATTN_SLOW_TESTS"), reason="inductor compiles take minutes on the CPU "
                    "(set PCATTN_SLOW_TESTS=1)")
def test_model_compiles_with_inductor():
    torch._dynamo.reset()
    model = _tiny_model().eval()
    pos = torch.randn(2, 64, 3)
    with torch.no_grad():
        assert (torch.compile(model, fullgraph=True)(None, pos) - model(None, pos)).abs().max() < 1e-5


def test_layers_trace_and_export_in_inference():
    """Parameters requiring grad, grad mode on: the trace still sees plain ops (no autograd function
    holding the module), with kNN inside; the traced and exported layers equal eager on new clouds."""
    torch.manual_seed(0)
    layer = VectorSelfAttention(8, 16, k=8).eval()
    x, pos = torch.randn(2, 40, 8), torch.randn(2, 40, 3)
    traced = torch.jit.trace(layer, (x, pos), check_trace=False)
    x2, pos2 = torch.randn(2, 40, 8), torch.randn(2, 40, 3)
    with torch.no_grad():
        expected = layer(x2, pos2)
    assert (traced(x2, pos2) - expected).abs().max() < 1e-5
    with torch.no_grad():
        program = torch.export.export(layer, (x, pos))
    assert (program.module()(x2, pos2) - expected).abs().max() < 1e-5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from pcattn.engine.checkpoint import model_checkpoint, save_checkpoint

    model = _tiny_model()
    model.train()
    with torch.no_grad():        # running statistics that are not the initial ones
        model(None, torch.randn(4, 32, 3))
    path = tmp_path_factory.mktemp("export") / "best.pt"
    save_checkpoint(path, model_checkpoint(model.eval(), ["a", "b", "c"]))
    return path


@pytest.mark.parametrize("fmt", ["torchscript", "torch-export", "onnx"])
def test_export_command_round_trips(checkpoint, fmt, tmp_path, capsys):
    """Exported at 32 points: TorchScript takes that shape only (its file refuses others); torch.export and
    ONNX take another batch size and another number of points (equal to eager there), and refuse, by
    name, a cloud smaller than the graph allows. (The file is loaded once for both: a torch.export file takes
    seconds to load.)"""
    from pcattn.cli import main
    from pcattn.engine import load_model
    from pcattn.export import example_clouds, load_exported

    out = tmp_path / f"model.{fmt}"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--num-points", "32",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "max abs difference from eager" in captured.out and out.exists()
    assert "pcattn export: exporting the classifier to" in captured.err and "pcattn export: checking" in captured.err
    model, _, _ = load_model(checkpoint)
    dynamic = fmt != "torchscript"
    clouds = example_clouds(5, 50, seed=7) if dynamic else example_clouds(2, 32, seed=7)
    with torch.no_grad():
        expected = model(None, clouds)
    run = load_exported(out, fmt)
    assert (run(clouds) - expected).abs().max() <= 1e-4
    if fmt == "torchscript":                                    # the file itself refuses (the bare trace did not)
        other = example_clouds(2, 20, seed=7)
        with pytest.raises(ValueError, match=r"exported for points of shape \(2, 32, 3\).*got \(2, 20, 3\)"):
            run(other)
        for wrong in (other, example_clouds(3, 32)):
            with pytest.raises(Exception, match=r"exported for points of shape \[2, 32, 3\]"):
                torch.jit.load(str(out))(wrong)
    else:                                                       # every level keeps 2 points: 5 at least
        assert "any B, P from 5" in captured.out
        with pytest.raises(ValueError, match=r"takes clouds of 5 to 16,777,216 points .*got \(2, 4, 3\)"):
            run(example_clouds(2, 4, seed=7))


# ----------------------------------------------------------------------------- the recorded (exported) paths
def test_recorded_knn_equals_eager_knn_across_chunks_clouds_and_small_clouds():
    """The kNN torch.export records (a loop over chunks of 256 queries, clouds told apart by id, k columns
    at infinity) gives eager's neighbours: 600 queries (three chunks, the last partial), three clouds of a
    flat batch (ids with a gap), one of them smaller than k (its missing slots -1)."""
    from pcattn.nn.geometry import _knn_recorded, knn

    torch.manual_seed(0)
    batch = torch.tensor([0] * 300 + [2] * 294 + [5] * 6)
    pos = torch.randn(600, 3)
    expected = knn(pos, 8, batch)
    got = _knn_recorded(pos[None], 8, None, batch[None], batch[None])[0]
    assert torch.equal(got, expected)
    assert (got[-6:, 6:] == -1).all() and (got[:-6] >= 0).all()
    query, query_batch = torch.randn(40, 3), torch.tensor([0] * 20 + [5] * 20)     # a search of other points
    expected = knn(pos, 3, batch, query=query, query_batch=query_batch)
    assert torch.equal(_knn_recorded(pos[None], 3, query[None], batch[None], query_batch[None])[0], expected)


def test_recorded_fps_and_cloud_starts_equal_eager(monkeypatch):
    """Farthest point sampling as a loop (one recorded step) keeps eager's points; the cloud starts by
    scatter (ONNX has no searchsorted) are eager's, cloud ids with gaps included."""
    from pcattn.nn import geometry

    torch.manual_seed(0)
    pos = torch.randn(3, 50, 3)
    assert torch.equal(geometry._fps_loop(pos, 13), geometry.farthest_point_sampling(pos, count=13))
    batch = torch.tensor([0, 0, 0, 3, 3, 4, 7, 7, 7, 7])
    expected = geometry.cloud_start_rows(batch)
    monkeypatch.setattr(geometry, "exporting", lambda: True)
    assert torch.equal(geometry.cloud_start_rows(batch), expected)


def test_recorded_voxel_numbering_equals_eager():
    """Grid pooling's voxels numbered by sorting, one axis at a time (no size read on the host, no key that
    overflows): eager's numbering in (cloud, x, y, z) order and eager's count, over a batch of three
    clouds (ids with a gap)."""
    from pcattn.nn.grid import _recorded_voxel_clusters, voxel_clusters

    torch.manual_seed(0)
    pos = torch.rand(500, 3) * torch.tensor([3.0, 2.0, 1.0])
    batch = torch.tensor([0] * 200 + [1] * 100 + [4] * 200)
    cluster, count = voxel_clusters(pos, batch, 0.25)
    got, got_count = _recorded_voxel_clusters(pos, batch, 0.25)
    assert torch.equal(got, cluster) and got_count == count


@pytest.fixture(scope="module")
def scene_export(tmp_path_factory):
    """A tiny scene segmenter (two levels, grid pooling), exported to ONNX at 2,000 points."""
    from pcattn.export import export_model

    torch.manual_seed(0)
    model = create_model("pt-scene-tiny-vector", num_classes=5, in_channels=6, widths=(16, 32), depths=(1, 1),
                         grid_sizes=(0.2,), k=8).eval()
    assert model.unpool == "grid"  # the decoder copies by voxel index along the recorded clusters
    path = tmp_path_factory.mktemp("scene") / "scene.onnx"
    # check=False: the tests below compare it with eager themselves, at two other sizes
    return model, export_model(model, path, "onnx", num_points=2000, check=False)


@pytest.mark.parametrize("num_points", [3000, 500])
def test_exported_scene_segmenter_labels_other_sizes_in_onnxruntime(scene_export, num_points):
    """Exported at 2,000 points, the ONNX file labels a crop of another size in onnxruntime as eager does
    (same argmax at every point, logits within 1e-4)."""
    from pcattn.export import example_scene, run_exported

    model, exported = scene_export
    assert exported.kind == "scene segmenter" and exported.min_points <= 500
    points = example_scene(num_points, 6, seed=num_points)
    with torch.no_grad():
        expected = model(points[None], points[None, :, :3])[0]
    got = run_exported(exported.path, "onnx", points)
    assert got.shape == (num_points, 5)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert (got - expected).abs().max() <= 1e-4


def test_part_segmenter_exports_with_its_category_input(tmp_path):
    """A part segmenter (category input) to torch.export: another batch and number of points, with the
    categories, equal eager; TorchScript refuses a scene segmenter by name, before anything is written."""
    from pcattn.export import example_clouds, export_model, run_exported

    torch.manual_seed(0)
    model = create_model("pt-seg-tiny-vector", num_classes=6, num_categories=2, widths=(16, 32), depths=(1, 1),
                         k=8).eval()
    exported = export_model(model, tmp_path / "parts.pt2", "torch-export", num_points=32, check=False)
    assert exported.kind == "part segmenter"
    clouds, category = example_clouds(3, 45, seed=3), torch.tensor([1, 0, 1])
    with torch.no_grad():
        expected = model(None, clouds, category=category)
    got = run_exported(exported.path, "torch-export", clouds, category)
    assert got.shape == (3, 45, 6) and (got - expected).abs().max() <= 1e-4
    scene = create_model("pt-scene-tiny-vector", num_classes=5, in_channels=6)
    with pytest.raises(ValueError, match="number of voxels depends on the cloud.*onnx or torch-export"):
        export_model(scene, tmp_path / "scene.pt", "torchscript")
    assert not (tmp_path / "scene.pt").exists()


def test_nothing_queries_the_device_while_compiling(monkeypatch):
    """Chunk sizing asks the device (``torch.cuda.mem_get_info`` on a GPU) in eager calls only: a query
    cannot be recorded. CPU stand-in: the query function raises; eager calls reach it, the fullgraph
    compile of a model (legacy call ``model(pos)`` included, which warns only in eager,
    once per model) never does."""
    from pcattn.nn.chunked import sizing as chunked

    def no_query(device):
        raise RuntimeError("the device was queried")

    monkeypatch.setattr(chunked, "_measure_chunk_elements", no_query)
    monkeypatch.setattr(chunked, "_DEVICE_CHUNK_ELEMENTS", {})
    monkeypatch.delenv("PCATTN_CHUNK_ELEMENTS", raising=False)
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = VectorSelfAttention(8, 16, k=8)
    x, pos = torch.randn(2, 40, 8), torch.randn(2, 40, 3)
    with pytest.raises(RuntimeError, match="queried"):
        layer(x, pos)                                   # eager: chunk sizing asks the device
    model = _tiny_model().eval()                        # compiling (its layers inside): never
    points = torch.randn(2, 64, 3)
    with torch.no_grad():
        legacy = torch.compile(model, fullgraph=True, backend="eager")(points)
    monkeypatch.setattr(chunked, "_DEVICE_CHUNK_ELEMENTS", {"cpu": 1 << 18})   # (eager reference)
    with torch.no_grad():
        assert (legacy - model(None, points)).abs().max() < 1e-5


def test_legacy_call_order_warns_once_per_model():
    model = _tiny_model().eval()
    pos = torch.randn(2, 32, 3)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            for _ in range(3):
                model(pos)
    assert [w.category for w in caught] == [FutureWarning]


@pytest.mark.parametrize("argv, message", [
    (["--format", "torchscript", "--out", "model.onnx"], r"the \.onnx extension is onnx's, but format 'torchscript'"),
    (["--format", "onnx", "--out", "model.pt2"], r"the \.pt2 extension is torch-export's"),
    (["--format", "torchscript", "--out", "afile/x.pt"], r"afile/x.pt: cannot write it, afile is not a folder"),
    (["--format", "torchscript", "--out", "."], "it is a folder"),
    (["--format", "torchscript", "--num-points", "100000000", "--out", "x.pt"],
     r"num_points 100,000,000: the TorchScript trace would unroll 25,000,000 farthest point sampling steps .*"
     r"\(2, 100,000,000, 100,000,000\) float32 distance matrix"),
])
def test_export_refuses_early_and_by_name(checkpoint, argv, message, tmp_path, capsys, monkeypatch):
    from pcattn.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a file, not a folder")
    assert main(["export", "--checkpoint", str(checkpoint), *argv]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["afile"]        # nothing written
