"""``pcattn visualize`` / ``pcattn plot`` on tiny checkpoints: pictures, .ply, printed prediction, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pcattn import viz
from pcattn.cli import main
from pcattn.data import BUILTIN_CLASSES
from pcattn.models import create_model
from pictures import magenta_pixels, not_background, pixels_of, read_png, viridis_pixels, viridis_span

SMALL = dict(widths=(16, 32), depths=(1, 1), head_channels=(16,), k=8)


pytestmark = pytest.mark.usefixtures("one_thread")  # small models: threads only add overhead


def write_checkpoint(path, attention, classes, seed=0, **train):
    """A checkpoint in the engine's format (saved by the engine's own writer)."""
    from pcattn.engine import save_checkpoint

    torch.manual_seed(seed)
    model = create_model(f"pt-tiny-{attention}", num_classes=len(classes), **SMALL).eval()
    train_config = dict(dataset="builtin", format=None, data_root=None, num_points=256, use_normals=False, up_axis=1)
    train_config.update(train)
    save_checkpoint(path, {
        "kind": "pcattn-classifier", "format_version": 1, "model_config": model.config,
        "model_state": model.state_dict(), "classes": list(classes), "optimizer": None, "scheduler": None,
        "epoch": 1, "rng_state": None, "best_acc": 0.0, "train_config": train_config,
    })
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    classes = list(BUILTIN_CLASSES)
    return (write_checkpoint(folder / "vector.pt", "vector", classes),
            write_checkpoint(folder / "scalar.pt", "scalar", classes, seed=1))


@pytest.fixture(scope="module")
def cloud_file(tmp_path_factory):
    """A raw, unnormalised 600-point .npy cloud (subsampled to 256 as in the checkpoint's training)."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("input") / "blob.npy"
    np.save(path, (rng.normal(size=(600, 3)) * [3.0, 1.0, 0.5] + 10).astype(np.float32))
    return path


def visualize(*argv):
    return main(["visualize", *map(str, argv)])


def views_of(image, size, views):
    """The rendered views of a picture's rows, without the colour bars (``compose_figure``'s layout)."""
    return image[:, :8 + views * (size + 8)]


def assert_shows_query(image, size, views):
    """Query mode: the query's neighbours in viridis colours, the magenta query and the other points grey."""
    points = views_of(image, size, views)
    assert viridis_pixels(points) >= 10 * views, "the neighbours' viridis colours are missing"
    assert magenta_pixels(points) >= 10 * views, "the magenta query is missing"
    assert pixels_of(points, np.round(np.multiply(viz.INACTIVE_COLOR, 255))) >= 100 * views, "no grey points"
    assert 0.02 < not_background(points) < 0.9                          # points drawn, not a filled frame


def assert_shows_received(image, size, views, rows=1):
    """Received mode: every point in a viridis colour, spread over the map, no query."""
    points = views_of(image, size, views)
    assert viridis_pixels(points) >= 50 * views * rows and viridis_span(points) >= 80
    assert magenta_pixels(image) == 0
    assert 0.02 < not_background(points) < 0.9


def test_visualize_file_writes_picture_and_ply_and_prints_prediction(checkpoints, cloud_file, tmp_path, capsys):
    import open3d as o3d

    out, ply = tmp_path / "pic.png", tmp_path / "pic.ply"
    code = visualize("--checkpoint", checkpoints[0], "--input", cloud_file, "--query", 10, "--views", 2,
                     "--size", 140, "--out", out, "--ply", ply)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "predicted" in printed and "p = " in printed and f"wrote {out}" in printed and f"wrote {ply}" in printed
    assert_shows_query(read_png(out), 140, 2)
    back = o3d.io.read_point_cloud(str(ply))
    assert len(back.points) == 256 and back.has_colors()                  # num_points from the checkpoint
    assert np.linalg.norm(np.asarray(back.points), axis=1).max() == pytest.approx(1.0, abs=1e-5)  # unit sphere


def test_visualize_compare_two_checkpoints_and_layers(checkpoints, cloud_file, tmp_path, capsys):
    out = tmp_path / "compare.png"
    code = visualize("--checkpoint", checkpoints[0], "--compare", checkpoints[1], "--input", cloud_file,
                     "--layer", 0, "stages.1.0.attention", "--mode", "received", "--reduce", "max",
                     "--view", 0, 90, "--size", 120, "--renderer", "matplotlib", "--out", out)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert printed.count("predicted") == 2 and "4 row(s) x 1 view(s)" in printed
    image = read_png(out)
    assert image.shape[0] > 4 * 120
    assert_shows_received(image, 120, 1, rows=4)


def test_visualize_dataset_sample(checkpoints, tmp_path, capsys):
    out = tmp_path / "sample.png"
    # --data-root under tmp_path: the default (<repo>/datasets) would generate the dataset into the checkout
    code = visualize("--checkpoint", checkpoints[0], "--dataset", "builtin", "--split", "test", "--index", 3,
                     "--data-root", tmp_path / "builtin_shapes", "--views", 1, "--size", 160, "--out", out)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "true class" in printed and "builtin test #3" in printed
    assert_shows_query(read_png(out), 160, 1)
    assert (tmp_path / "builtin_shapes" / "builtin_info.json").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--query", "600"], "query 600 out of range: the cloud has 256 points"),
    (["--layer", "nosuch"], "no attention layer named 'nosuch'; available: 0: encoder.stages.0.0.attention"),
    (["--layer", "7"], "layer 7 out of range"),
    (["--reduce", "9"], "reduce=9: this layer has 2 groups/heads"),
])
def test_visualize_errors_are_clear(checkpoints, cloud_file, tmp_path, capsys, argv, message):
    code = visualize("--checkpoint", checkpoints[0], "--input", cloud_file, "--out", tmp_path / "x.png", *argv)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_visualize_bad_inputs(checkpoints, tmp_path, capsys):
    bad = tmp_path / "broken.xyz"
    bad.write_text("0 0 0\n1 1\n")
    assert visualize("--checkpoint", checkpoints[0], "--input", bad, "--out", tmp_path / "x.png") == 2
    assert "broken.xyz" in capsys.readouterr().err
    assert visualize("--checkpoint", checkpoints[0], "--input", tmp_path / "none.ply") == 2
    assert "none.ply" in capsys.readouterr().err
    assert visualize("--checkpoint", tmp_path / "missing.pt", "--input", bad) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert visualize("--checkpoint", checkpoints[0], "--dataset", "builtin", "--index", 100000) == 2
    assert "index 100000 out of range" in capsys.readouterr().err


def test_show_without_display_still_writes_the_picture(checkpoints, cloud_file, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    out = tmp_path / "pic.png"
    code = visualize("--checkpoint", checkpoints[0], "--input", cloud_file, "--mode", "received", "--views", 1,
                     "--size", 96, "--renderer", "matplotlib", "--out", out, "--show")
    captured = capsys.readouterr()
    assert code == 0 and "no display" in captured.err
    assert_shows_received(read_png(out), 96, 1)


def test_pcattn_cli_visualize_and_plot(checkpoints, cloud_file, tmp_path, capsys):
    out = tmp_path / "cli.png"
    assert main(["visualize", "--checkpoint", str(checkpoints[0]), "--input", str(cloud_file), "--mode", "received",
                 "--views", "1", "--size", "96", "--out", str(out)]) == 0
    assert_shows_received(read_png(out), 96, 1)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(dict(epoch=e, train_loss=1.0 / e, train_acc=0.5,
                                                               test_loss=1.2 / e, test_oa=0.4, test_macc=0.4)) + "\n"
                                               for e in (1, 2)))
    assert main(["plot", str(run)]) == 0
    curves = read_png(run / "curves.png")
    assert ((curves.max(-1) - curves.min(-1)) > 60).mean() > 0.002          # coloured lines, not only grey text


def test_compare_names_each_prediction_with_its_own_classes(cloud_file, tmp_path, capsys):
    first = write_checkpoint(tmp_path / "a.pt", "vector", ["a0", "a1", "a2"])
    second = write_checkpoint(tmp_path / "b.pt", "scalar", ["B0", "B1", "B2", "B3", "B4"], seed=1)
    code = visualize("--checkpoint", first, "--compare", second, "--input", cloud_file, "--views", 1,
                     "--size", 96, "--renderer", "matplotlib", "--out", tmp_path / "pic.png")
    printed = capsys.readouterr().out
    assert code == 0, printed
    lines = {line.split(":")[0]: line for line in printed.splitlines() if "predicted" in line}
    assert any(f"a{i}" in lines[f"{tmp_path.name}/a.pt"] for i in range(3))
    assert any(f"B{i}" in lines[f"{tmp_path.name}/b.pt"] for i in range(5))


def test_plot_errors_are_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("[1, 2]\n")
    assert main(["plot", str(run)]) == 2
    assert "expected one JSON object per epoch" in capsys.readouterr().err
    (run / "metrics.jsonl").write_text("")
    assert main(["plot", str(run)]) == 1
    assert "nothing to plot" in capsys.readouterr().err
    (run / "eval.json").write_text(json.dumps({"confusion": [[1, 0], [0, 1]], "classes": ["a", "b", "c"]}))
    assert main(["plot", str(run)]) == 2
    assert "3 class names for a 2x2 confusion matrix" in capsys.readouterr().err


def test_default_up_axis_is_the_training_runs(tmp_path, cloud_file):
    z_up = viz.load_trained_models([write_checkpoint(tmp_path / "z.pt", "vector", BUILTIN_CLASSES, up_axis=2)])[0]
    unknown = viz.load_trained_models([write_checkpoint(tmp_path / "n.pt", "vector", BUILTIN_CLASSES, up_axis=None,
                                                     dataset="modelnet10")])[0]
    assert viz.checkpoint_input(z_up, input_file=cloud_file).up_axis == 2
    assert viz.checkpoint_input(z_up, input_file=cloud_file, up_axis=0).up_axis == 0    # given: it wins
    assert viz.checkpoint_input(unknown, input_file=cloud_file).up_axis == 1            # else y
    sample = viz.checkpoint_input(z_up, dataset="builtin", index=2)
    assert sample.up_axis == 2 and sample.source == "builtin test #2" and sample.truth in BUILTIN_CLASSES
    assert viz.checkpoint_input(unknown, dataset="builtin").up_axis == 1     # another dataset: its own axis
    with pytest.raises(ValueError, match="exactly one of input_file and dataset"):
        viz.checkpoint_input(z_up)


def test_large_clouds_draw_a_bounded_subset_say_what_runs_and_refuse_hours_of_sampling(checkpoints, cloud_file,
                                                                                       tmp_path, capsys, monkeypatch):
    from mpl_toolkits.mplot3d import Axes3D

    from pcattn import cli
    from pcattn.data import cloud as cloud_module
    from pcattn.viz import render

    drawn = []
    scatter = Axes3D.scatter

    def counting_scatter(self, xs, *args, **kwargs):
        drawn.append(np.size(xs))
        return scatter(self, xs, *args, **kwargs)

    monkeypatch.setattr(Axes3D, "scatter", counting_scatter)
    monkeypatch.setattr(render, "MATPLOTLIB_MAX_POINTS", 100)       # as a million points against 100,000
    monkeypatch.setattr(cli, "LARGE_CLOUD", 200)
    code = visualize("--checkpoint", checkpoints[0], "--input", cloud_file, "--views", 1, "--size", 100,
                     "--renderer", "matplotlib", "--out", tmp_path / "x.png")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "vector.pt on 256 points..." in captured.err                      # said before the long part
    assert drawn[0] == 100 and 1 < drawn[1] <= 8 and drawn[2] == 1            # subset, the neighbours, the query

    monkeypatch.setattr(cloud_module, "FPS_MAX_WORK", 1e5)                    # 600 x 256 distances: over it
    assert visualize("--checkpoint", checkpoints[0], "--input", cloud_file, "--out", tmp_path / "y.png") == 2
    assert "farthest point sampling of 256 of the 600 points would compute 1.5e+05 distances" in capsys.readouterr().err
