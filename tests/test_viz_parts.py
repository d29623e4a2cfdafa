"""``pcattn visualize`` on part segmentation checkpoints: ``--mode parts`` pictures, attention, categories, errors."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from pcattn import viz
from pcattn.cli import main
from pcattn.data import build_part_dataset
from pcattn.data import test_transforms as evaluation_transforms
from pcattn.data.parts import CATEGORIES, CATEGORY_PARTS, PART_NAMES
from pcattn.engine.metrics import restrict_to_parts, shape_part_ious
from pcattn.models import create_model
from pictures import magenta_pixels, pixels_of, read_png, viridis_pixels

SMALL = dict(widths=(16, 32), depths=(1, 1), head_channels=(16,), k=8)
NUM_POINTS = 256
SIZE = 160                      # pixels per view
INDEX = 48                      # builtin-parts test #48: a chair (seat, back, legs)
RED = np.array([255, 0, 0])     # viz.WRONG_COLOR
GREY = np.round(np.multiply(viz.RIGHT_COLOR, 255))

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: threads only add overhead


def write_segmenter(path, seed=0, attention="vector"):
    """An untrained tiny part segmenter of the built-in parts, saved by the engine's own writer."""
    from pcattn.engine.checkpoint import model_checkpoint, save_checkpoint

    torch.manual_seed(seed)
    model = create_model(f"pt-seg-tiny-{attention}", num_classes=len(PART_NAMES), num_categories=len(CATEGORIES),
                         **SMALL).eval()
    train_config = dict(task="partseg", dataset="builtin-parts", format=None, data_root=None, num_points=NUM_POINTS,
                        use_normals=False, up_axis=1)
    save_checkpoint(path, model_checkpoint(model, classes=list(PART_NAMES), categories=list(CATEGORIES),
                                           category_parts=[list(parts) for parts in CATEGORY_PARTS],
                                           train_config=train_config))
    return path


def write_classifier(path):
    from pcattn.engine.checkpoint import model_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = create_model("pt-tiny-vector", num_classes=3, **SMALL).eval()
    save_checkpoint(path, model_checkpoint(model, classes=["a", "b", "c"],
                                           train_config=dict(dataset="builtin", num_points=NUM_POINTS, up_axis=1)))
    return path


@pytest.fixture(scope="module")
def segmenters(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg")
    return write_segmenter(folder / "vector.pt"), write_segmenter(folder / "scalar.pt", seed=1, attention="scalar")


@pytest.fixture(scope="module")
def chair():
    """Sample ``INDEX`` of the built-in parts' test split as the checkpoints see it:
    ``(pos (P, 3), seg (P,), category)``."""
    samples = build_part_dataset("builtin-parts", split="test", num_points=NUM_POINTS,
                                 transform=evaluation_transforms())
    sample = samples[INDEX]
    assert CATEGORIES[int(sample["category"])] == "chair"
    return sample["pos"], sample["seg"].numpy(), int(sample["category"])


def visualize(*argv):
    return main(["visualize", *map(str, argv)])


def row_of(image, row, views=1, size=SIZE):
    """The rendered views of row ``row`` of a titled picture without colour bars (``compose_figure``'s layout)."""
    top = 44 + row * (30 + size + 8) + 30
    return image[top:top + size, :8 + views * (size + 8)]


def palette_rgb(parts):
    """8-bit RGB of each part of a category, in order (``viz.part_palette``)."""
    return [np.round(rgb * 255) for _, rgb in viz.part_palette(len(parts))]


def predicted_labels(path, pos, category):
    """What the checkpoint at ``path`` predicts, computed here as evaluation does."""
    from pcattn.engine import load_model

    model, _, _ = load_model(path)
    with torch.no_grad():
        logits = model(None, pos[None], category=torch.tensor([category]))[0]
    return restrict_to_parts(logits, CATEGORY_PARTS[category])


def test_parts_mode_draws_predicted_true_and_wrong_points(segmenters, chair, tmp_path, capsys):
    pos, seg, category = chair
    out, ply = tmp_path / "parts.png", tmp_path / "parts.ply"
    code = visualize("--checkpoint", segmenters[0], "--dataset", "builtin-parts", "--index", INDEX, "--mode", "parts",
                     "--views", 1, "--size", SIZE, "--renderer", "matplotlib", "--out", out, "--ply", ply)
    printed = capsys.readouterr().out
    assert code == 0, printed
    parts = CATEGORY_PARTS[category]
    labels = predicted_labels(segmenters[0], pos, category)
    accuracy, miou = (labels == seg).mean(), shape_part_ious(labels, seg, parts).mean()
    assert 0 < accuracy < 1                                           # untrained: some points right, some wrong
    assert f"category chair, {100 * accuracy:.1f}% of points right, mIoU {miou:.3f}" in printed
    assert "seat: blue, back: orange, legs: green" in printed and "3 row(s) x 1 view(s)" in printed

    image = read_png(out)
    colours = palette_rgb(parts)
    predicted, true, wrong = (row_of(image, r) for r in range(3))
    for slot, part in enumerate(parts):
        assert pixels_of(true, colours[slot]) >= 20, f"true part {PART_NAMES[part]} not drawn in its colour"
        drawn = pixels_of(predicted, colours[slot])
        assert drawn >= 20 if (labels == part).any() else drawn == 0, f"predicted part {PART_NAMES[part]}"
    assert pixels_of(wrong, RED) >= 20 and pixels_of(wrong, GREY) >= 20      # wrong red, right light grey
    assert pixels_of(predicted, RED) == pixels_of(true, RED) == 0
    assert magenta_pixels(image) == 0 and viridis_pixels(predicted) < 20    # no attention colours

    import open3d as o3d

    back = o3d.io.read_point_cloud(str(ply))
    expected = np.stack([colours[list(parts).index(label)] for label in labels])
    assert np.array_equal(np.round(np.asarray(back.colors) * 255), expected)   # the predicted parts' colours


def test_parts_title_names_accuracy_and_file_input_needs_no_truth(segmenters, chair, tmp_path):
    pos, seg, category = chair
    segmenter = viz.load_trained_models([segmenters[0]])
    assert segmenter[0].is_segmenter and isinstance(segmenter[0], viz.TrainedModel)
    with pytest.warns(FutureWarning, match="load_trained_models"):   # the name of 0.1, which loads segmenters too
        assert viz.load_classifiers is viz.load_trained_models
    with pytest.warns(FutureWarning, match="TrainedModel"):
        from pcattn.viz.checkpoint import TrainedClassifier
    assert TrainedClassifier is viz.TrainedModel
    cloud = viz.checkpoint_input(segmenter[0], dataset="builtin-parts", index=INDEX)
    assert cloud.category == category and np.array_equal(cloud.seg.numpy(), seg) and cloud.truth == "chair"
    result = viz.checkpoint_parts_picture(segmenter, cloud, views=1, size=(64, 64), backend="matplotlib")
    accuracy = (predicted_labels(segmenters[0], pos, category) == seg).mean()
    assert f"(true: chair) - predicted: chair: {100 * accuracy:.1f}% of points right, mIoU" in result.title
    assert [c.split(" - ")[0].split(" (")[0] for c in result.picture.captions] == \
        ["predicted parts", "true parts", "wrong points"]

    path = tmp_path / "chair.npy"
    np.save(path, pos.numpy() * 3 + 1)                                  # not normalised: checkpoint_input does it
    cloud = viz.checkpoint_input(segmenter[0], input_file=path, category="CHAIR")   # any case
    assert cloud.category == category and cloud.seg is None and cloud.truth is None
    result = viz.checkpoint_parts_picture(segmenter, cloud, views=1, size=(64, 64), backend="matplotlib")
    assert result.title == "chair.npy - predicted: chair" and len(result.picture.captions) == 1
    assert result.segmentations[0].accuracy is None


def test_attention_on_a_segmenter(segmenters, tmp_path, capsys):
    out = tmp_path / "query.png"
    code = visualize("--checkpoint", segmenters[0], "--dataset", "builtin-parts", "--index", INDEX, "--query", 5,
                     "--views", 1, "--size", SIZE, "--renderer", "matplotlib", "--out", out)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert re.search(r"predicted chair: \d+\.\d% of points right, mIoU \d\.\d\d, true category chair", printed)
    views = read_png(out)[:, :8 + SIZE + 8]
    assert viridis_pixels(views) >= 10 and magenta_pixels(views) >= 10     # the neighbours' weights, the query
    assert pixels_of(views, GREY) >= 100                                   # the points outside its neighbourhood


def test_compare_two_segmenters(segmenters, tmp_path, capsys):
    out = tmp_path / "both.png"
    code = visualize("--checkpoint", segmenters[0], "--compare", segmenters[1], "--dataset", "builtin-parts",
                     "--index", INDEX, "--mode", "parts", "--views", 1, "--size", 64, "--renderer", "matplotlib",
                     "--out", out)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert printed.count("of points right") == 2 and "5 row(s) x 1 view(s)" in printed  # 2 predicted, true, 2 wrong
    code = visualize("--checkpoint", segmenters[0], "--compare", segmenters[1], "--dataset", "builtin-parts",
                     "--index", INDEX, "--mode", "received", "--views", 1, "--size", 64, "--renderer", "matplotlib",
                     "--out", out)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert printed.count("of points right") == 2 and "2 row(s) x 1 view(s)" in printed


def test_part_segmentation_errors(segmenters, chair, tmp_path, capsys):
    classifier = write_classifier(tmp_path / "classifier.pt")
    path = tmp_path / "chair.npy"
    np.save(path, chair[0].numpy())
    out = tmp_path / "x.png"
    assert visualize("--checkpoint", classifier, "--input", path, "--mode", "parts", "--out", out) == 2
    assert "--mode parts needs a part segmentation checkpoint" in capsys.readouterr().err
    assert visualize("--checkpoint", segmenters[0], "--input", path, "--out", out) == 2
    assert f"give category (CLI --category), one of: {', '.join(CATEGORIES)}" in capsys.readouterr().err
    assert visualize("--checkpoint", segmenters[0], "--input", path, "--category", "sofa", "--out", out) == 2
    assert f"unknown category 'sofa': {segmenters[0].parent.name}/vector.pt segments the categories " \
           f"{', '.join(CATEGORIES)}" in capsys.readouterr().err
    assert visualize("--checkpoint", segmenters[0], "--dataset", "builtin-parts", "--index", INDEX,
                     "--category", "table", "--out", out) == 2
    assert "builtin-parts test #48 is a chair, not a table" in capsys.readouterr().err
    assert visualize("--checkpoint", segmenters[0], "--compare", classifier, "--input", path, "--out", out) == 2
    error = capsys.readouterr().err
    assert "classifier.pt is a classifier but" in error and "compare checkpoints of one kind" in error
    assert visualize("--checkpoint", classifier, "--input", path, "--category", "chair", "--out", out) == 2
    assert "only part segmenters take one" in capsys.readouterr().err
    assert not out.exists()


def test_parts_mode_with_open3d(segmenters, tmp_path, capsys):
    pytest.importorskip("open3d")
    ok, reason = viz.open3d_rendering_available()
    assert ok, f"headless Open3D rendering is broken here: {reason} ({viz.RENDER_HELP})"
    out = tmp_path / "parts.png"
    code = visualize("--checkpoint", segmenters[0], "--dataset", "builtin-parts", "--index", INDEX, "--mode", "parts",
                     "--views", 1, "--size", SIZE, "--renderer", "open3d", "--out", out)
    assert code == 0, capsys.readouterr().out
    image = read_png(out)
    true = row_of(image, 1)
    for colour in palette_rgb(CATEGORY_PARTS[CATEGORIES.index("chair")]):
        assert pixels_of(true, colour) >= 20
    assert pixels_of(row_of(image, 2), RED) >= 20
