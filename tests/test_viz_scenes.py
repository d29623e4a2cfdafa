"""Pictures of rooms: ``pcattn visualize --mode semseg`` (classes, wrong points, legend, views from above and in
perspective) and ``--mode query`` on scene segmenters (attention in a room, zoomed around the query)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from pcattn import viz
from pcattn.cli import main
from pcattn.data.grid import scene_model_inputs, scene_test_fragments
from pcattn.data.rooms import CEILING, ROOM_CLASSES, generate_room
from pcattn.data.scenes import IGNORE_INDEX, room_to_sample
from pcattn.models import create_segmenter
from pictures import magenta_pixels, pixels_of, read_png, viridis_pixels

# a small scene segmenter: grid pooling at 0.08 and 0.16 m, as pt-scene-tiny-vector's first levels
SMALL_SCENE = dict(widths=(16, 32, 64), depths=(1, 1, 1), grid_sizes=(0.08, 0.16), head_channels=(16,), k=8)
SIZE = 120                              # pixels per view
RED = np.array([255, 0, 0])             # viz.WRONG_COLOR
GREY = np.round(np.multiply(viz.RIGHT_COLOR, 255))
BLACK = np.zeros(3)                     # viz.UNLABELLED_COLOR

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: threads only add overhead


def write_scene_segmenter(path, seed=0):
    """An untrained small scene segmenter of the built-in rooms, saved as scene runs save theirs."""
    from pcattn.engine.checkpoint import model_checkpoint, save_checkpoint

    torch.manual_seed(seed)
    model = create_segmenter("pt-scene-tiny-vector", num_classes=len(ROOM_CLASSES), in_channels=6,
                             **SMALL_SCENE).eval()
    train_config = dict(task="semseg", dataset="builtin-rooms", data_root=None, voxel_size=0.04, rooms=[3, 2],
                        room_points=[2000, 2000])
    save_checkpoint(path, model_checkpoint(model, classes=list(ROOM_CLASSES), categories=None, category_parts=None,
                                           task="semseg", train_config=train_config))
    return path


def write_classifier(path):
    from pcattn.engine.checkpoint import model_checkpoint, save_checkpoint
    from pcattn.models import create_model

    torch.manual_seed(0)
    model = create_model("pt-tiny-vector", num_classes=3, widths=(16, 32), depths=(1, 1), head_channels=(16,), k=8)
    save_checkpoint(path, model_checkpoint(model.eval(), classes=["a", "b", "c"],
                                           train_config=dict(dataset="builtin", num_points=256, up_axis=1)))
    return path


@pytest.fixture(scope="module")
def room():
    """A small generated room (about 2,500 points, hundreds of metres from the origin)."""
    return generate_room([5], (2500, 2500))


@pytest.fixture(scope="module")
def files(room, tmp_path_factory):
    """The room as a labelled ``.npy`` (x y z r g b label), without labels (x y z r g b) and without colours."""
    folder = tmp_path_factory.mktemp("rooms")
    columns = [room["pos"], room["color"] * 255]
    np.save(folder / "room.npy", np.concatenate(columns + [room["seg"][:, None]], 1))
    np.save(folder / "unlabelled.npy", np.concatenate(columns, 1))
    np.save(folder / "bare.npy", room["pos"])
    return folder


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    return write_scene_segmenter(tmp_path_factory.mktemp("scene") / "scene.pt")


def visualize(*argv):
    return main(["visualize", *map(str, argv)])


def row_of(image, row, views=2, size=SIZE):
    """The rendered views of row ``row`` of a titled picture (``compose_figure``'s layout)."""
    top = 44 + row * (30 + size + 8) + 30
    return image[top:top + size, :8 + views * (size + 8)]


def predicted_labels(path, room):
    """What the checkpoint at ``path`` predicts for every point of ``room``, as evaluation computes it."""
    from pcattn.engine import load_model
    from pcattn.engine.scene_inference import segment_room

    model, _, _ = load_model(path)
    return segment_room(model, room_to_sample(room), 0.04).argmax(1).numpy()


def test_semseg_picture_colours_legend_cut_and_wrong_points(room, tmp_path):
    truth = room["seg"].copy()
    truth[::40] = IGNORE_INDEX                                            # some unlabelled points
    predicted = room["seg"].copy()
    changed = np.random.default_rng(0).random(len(predicted)) < 0.3
    predicted[changed] = (predicted[changed] + 1) % len(ROOM_CLASSES)
    absent = ROOM_CLASSES.index("board")                                  # in the legend only
    predicted[predicted == absent] = 0
    truth[truth == absent] = 0
    out = tmp_path / "room.png"
    result = viz.semseg_picture(room["pos"], predicted, ROOM_CLASSES, truth, size=(SIZE, SIZE), max_points=1000,
                                backend="matplotlib", title="a room", path=out)

    rows = result.drawn.rows
    height = room["pos"][:, 2]
    assert len(rows) == 1000 and len(np.unique(rows)) == 1000           # at most max_points, each once
    assert height[rows].max() <= result.drawn.cut < height.max()        # the ceiling is cut away
    assert not (room["seg"][rows] == CEILING).any() and (room["seg"] == CEILING).any()
    assert np.array_equal(result.colors, viz.class_palette(len(ROOM_CLASSES))[predicted[rows]])

    errors = viz.scene_error_colors(predicted, truth)
    wrong = (predicted != truth) & (truth != IGNORE_INDEX)
    assert np.array_equal(np.all(errors == viz.WRONG_COLOR, 1), wrong)                        # red: the mismatches
    assert np.array_equal(np.all(errors == viz.UNLABELLED_COLOR, 1), truth == IGNORE_INDEX)   # black: not scored
    assert np.array_equal(np.all(errors == viz.RIGHT_COLOR, 1), ~wrong & (truth != IGNORE_INDEX))
    assert f"wrong points (red): {int(wrong.sum()):,} of {int((truth != IGNORE_INDEX).sum()):,}" in result.captions[2]
    assert result.view_titles == ["from above", "azimuth -60, elevation 50"]

    image = read_png(out)
    assert image.shape[:2] == result.image.shape[:2]
    predicted_row, true_row, wrong_row = (row_of(image, r) for r in range(3))
    assert pixels_of(wrong_row, RED) >= 20 and pixels_of(wrong_row, GREY) >= 20
    assert pixels_of(true_row, BLACK, tolerance=0) >= 1                 # the unlabelled points
    assert pixels_of(predicted_row, RED) == pixels_of(true_row, RED) == 0
    wall = np.round(viz.class_palette(len(ROOM_CLASSES))[ROOM_CLASSES.index("wall")] * 255)
    assert pixels_of(predicted_row, wall) >= 20 and pixels_of(true_row, wall) >= 20
    legend = image[:, 8 + 2 * (SIZE + 8):]                              # right of the views
    for name, rgb in viz.class_legend(ROOM_CLASSES):                    # every class's swatch, the absent one too
        assert pixels_of(legend, np.round(rgb * 255)) >= 80, name


@pytest.mark.parametrize("backend", ["matplotlib", "open3d"])
def test_the_view_from_above_is_a_plan_x_right_y_up(backend):
    if backend == "open3d":
        pytest.importorskip("open3d")
        ok, reason = viz.open3d_rendering_available()
        assert ok, f"headless Open3D rendering is broken here: {reason} ({viz.RENDER_HELP})"
    line = np.linspace(0, 1, 200)[:, None]
    pos = np.concatenate([line * [2.0, 0, 0], line * [0, 1.0, 0], line * [0, 0, 0.3]])   # x, y, and a bit of z
    colors = np.repeat(np.eye(3), 200, axis=0)                                            # x red, y green, z blue
    image, = viz.render_views(pos, colors, [viz.TOP_VIEW], (100, 100), up_axis=2, backend=backend, point_size=3,
                              orthographic=True)
    red_rows, red_columns = np.nonzero((image[..., 0] > 200) & (image[..., 1] < 80) & (image[..., 2] < 80))
    green_rows, green_columns = np.nonzero((image[..., 1] > 200) & (image[..., 0] < 80) & (image[..., 2] < 80))
    assert np.ptp(red_columns) > 50 and np.ptp(red_rows) < 10               # x runs across the picture...
    assert np.ptp(green_rows) > 25 and np.ptp(green_columns) < 10           # ...y up it
    assert red_columns.mean() > green_columns.mean() and green_rows.mean() < red_rows.mean()


def test_scene_attention_is_recorded_in_the_inputs_frame(segmenter, room):
    model = viz.load_trained_models([segmenter])[0].model
    fragment = scene_test_fragments({key: torch.from_numpy(room[key]) for key in ("pos", "color")}, 0.04)[0]
    x, pos, _ = scene_model_inputs(fragment)
    layers = viz.extract_attention(model, pos, x).layers
    query = 7
    first = viz.point_values(layers[0], pos, query=query)
    assert first.query_point == query                                     # the input's own points
    assert torch.linalg.vector_norm(layers[0].pos - pos[first.neighborhood[:1]], dim=1).min() < 1e-5
    coarsest = viz.point_values(layers[2], pos, query=query)              # the voxels of 0.16 m
    assert float(torch.linalg.vector_norm(pos[coarsest.query_point] - pos[query])) < 0.16 * 3 ** 0.5


def test_semseg_mode_of_a_labelled_room(segmenter, room, files, tmp_path, capsys):
    out, ply = tmp_path / "semseg.png", tmp_path / "semseg.ply"
    code = visualize("--checkpoint", segmenter, "--input", files / "room.npy", "--mode", "semseg", "--size", SIZE,
                     "--renderer", "matplotlib", "--out", out, "--ply", ply)
    printed = capsys.readouterr().out
    assert code == 0, printed
    labels = predicted_labels(segmenter, room)
    truth = room["seg"]
    present = [c for c in range(len(ROOM_CLASSES)) if ((labels == c) | (truth == c)).any()]
    miou = np.mean([((labels == c) & (truth == c)).sum() / ((labels == c) | (truth == c)).sum() for c in present])
    assert 0 < (labels == truth).mean() < 1                               # untrained: some points right, some wrong
    assert f"room.npy, {len(truth):,} points: mIoU {100 * miou:.1f}%" in printed
    assert f"OA {100 * (labels == truth).mean():.1f}%" in printed and "IoU per class: ceiling" in printed
    assert "3 row(s) x 2 view(s)" in printed
    image = read_png(out)
    assert image.shape[0] > 3 * SIZE and image.shape[1] > 2 * SIZE
    assert pixels_of(row_of(image, 2), RED) >= 20

    import open3d as o3d

    back = o3d.io.read_point_cloud(str(ply))
    assert len(back.points) == len(truth)                                 # every point of the room, not the drawn ones
    expected = np.round(viz.label_colors(labels, len(ROOM_CLASSES)) * 255)
    assert np.array_equal(np.round(np.asarray(back.colors) * 255), expected)


def test_semseg_mode_of_a_room_without_labels(segmenter, files, tmp_path, capsys):
    out = tmp_path / "unlabelled.png"
    code = visualize("--checkpoint", segmenter, "--input", files / "unlabelled.npy", "--mode", "semseg",
                     "--size", SIZE, "--renderer", "matplotlib", "--view", 30, 40, "--view", 210, 40, "--out", out)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "unlabelled.npy holds no true labels: only the predicted classes are drawn" in printed
    assert "1 row(s) x 3 view(s)" in printed                              # from above + the two chosen cameras
    assert pixels_of(read_png(out), RED) == 0


def test_query_mode_in_a_room_zooms_around_the_query(segmenter, room, files, tmp_path, capsys):
    out = tmp_path / "query.png"
    code = visualize("--checkpoint", segmenter, "--input", files / "room.npy", "--query", 11, "--layer", 0,
                     "--views", 1, "--size", SIZE, "--renderer", "matplotlib", "--out", out)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert re.search(r"room\.npy, [\d,]+ points: point 11; predicted: (" + "|".join(ROOM_CLASSES) + ")$",
                     printed.splitlines()[0])
    views = read_png(out)[:, :8 + SIZE + 8]
    assert magenta_pixels(views) >= 10 and viridis_pixels(views) >= 10    # the query and its neighbours' weights

    segmenters = viz.load_trained_models([segmenter])
    loaded = viz.checkpoint_room(segmenters[0], input_file=files / "room.npy")
    result = viz.checkpoint_room_attention(segmenters, loaded, query=11, zoom=2.0, size=(64, 64),
                                           backend="matplotlib")
    row = result.picture.rows[0]
    assert int(result.rows[row.values.query_point]) == 11                # the fragment's row of room point 11
    distance = torch.linalg.vector_norm(result.pos - result.pos[row.values.query_point], dim=1)
    reach = float(distance[row.values.neighborhood].max())
    assert set(row.values.neighborhood) <= set(row.drawn) and len(row.drawn) < len(result.pos) / 4
    assert np.array_equal(row.drawn, np.flatnonzero(distance <= 2 * reach))      # within twice its reach
    assert result.title.startswith(f"room.npy: point 11 (true: {ROOM_CLASSES[room['seg'][11]]}) - predicted: ")


def test_a_room_of_the_runs_dataset(segmenter):
    scene = viz.load_trained_models([segmenter])[0]
    assert scene.is_scene_segmenter and scene.kind == "scene segmenter" and not scene.is_segmenter
    room = viz.checkpoint_room(scene, dataset="builtin-rooms", index=1)     # the run's rooms: 2 test rooms of 2,000
    assert room.source == "builtin-rooms test #1 (test_room_01)" and room.labelled
    assert 1000 < room.num_points <= 2000 and room.sample["pos"].dtype == torch.float64
    with pytest.raises(ValueError, match=r"index 2 out of range: the builtin-rooms test split has 2 rooms"):
        viz.checkpoint_room(scene, dataset="builtin-rooms", index=2)
    with pytest.raises(ValueError, match="is a scene segmenter: it is shown a room"):
        viz.checkpoint_input(scene, dataset="builtin")


def test_room_errors(segmenter, files, tmp_path, capsys):
    classifier = write_classifier(tmp_path / "classifier.pt")
    out = tmp_path / "x.png"
    assert visualize("--checkpoint", classifier, "--input", files / "room.npy", "--mode", "semseg", "--out", out) == 2
    assert "--mode semseg needs a scene segmentation checkpoint" in capsys.readouterr().err
    assert visualize("--checkpoint", classifier, "--input", files / "room.npy", "--cut-height", 2, "--out", out) == 2
    assert "--cut-height is not used here" in capsys.readouterr().err
    for mode in ("parts", "received"):
        assert visualize("--checkpoint", segmenter, "--input", files / "room.npy", "--mode", mode, "--out", out) == 2
        assert f"--mode {mode} does not apply to" in capsys.readouterr().err
    assert visualize("--checkpoint", segmenter, "--input", files / "room.npy", "--mode", "semseg", "--views", 2,
                     "--out", out) == 2
    assert "--views is not used here" in capsys.readouterr().err
    assert visualize("--checkpoint", segmenter, "--input", files / "bare.npy", "--mode", "semseg", "--out", out) == 2
    assert "bare.npy: the room has no colours (r g b), but" in capsys.readouterr().err
    assert visualize("--checkpoint", segmenter, "--dataset", "builtin", "--mode", "semseg", "--out", out) == 2
    assert "unknown scene dataset 'builtin'" in capsys.readouterr().err
    assert visualize("--checkpoint", segmenter, "--input", files / "room.npy", "--query", 10 ** 6, "--out", out) == 2
    assert "query 1000000 out of range: the room has" in capsys.readouterr().err
    assert not out.exists()
