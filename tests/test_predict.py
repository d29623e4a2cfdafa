"""``pcattn predict`` and :func:`pcattn.predict`: every reader on files written in each exact format, the labelled
cloud written back with every point in the input's order and precision, all three tasks, a cloud moved far
from the origin labelled as at the origin, folders with unreadable files, missing features."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

import pcattn
from pcattn.cli import main
from pcattn.data.pointfile import read_points, write_labelled
from pcattn.data.scenes import read_labelled_scene
from pcattn.engine.prediction import Predictor, UnreadableFile, label_palette, predict_files, scene_palette
from pcattn.models import create_model
from pcattn.models.checkpoint import model_checkpoint, save_checkpoint
from pcattn.optional import MissingExtra

TINY = dict(widths=(16, 32), depths=(1, 1), head_channels=(16,))


@pytest.fixture(scope="module")
def cloud():
    """300 points of a bumpy surface, float64."""
    rng = np.random.default_rng(0)
    uv = rng.uniform(-1, 1, size=(300, 2))
    return np.column_stack([uv, 0.3 * np.sin(3 * uv[:, 0]) * np.cos(2 * uv[:, 1])])


def lively(model: nn.Module, seed: int) -> nn.Module:
    """Batch-norm statistics a fresh model lacks, so that untrained outputs differ from point to point."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) - 0.5)
                module.running_var.copy_(0.5 + 1.5 * torch.rand(module.running_var.shape, generator=generator))
    return model.eval()


def balanced(model: nn.Module, pos: np.ndarray, **inputs) -> nn.Module:
    """The head's last bias shifted so that every class scores the same on average over ``pos``: an untrained
    segmenter's labels then vary from point to point (not one label everywhere)."""
    unit = torch.from_numpy((pos - pos.mean(axis=0)).astype(np.float32))
    unit = unit / unit.norm(dim=1).max()
    with torch.no_grad():
        logits = model(None, unit[None], **inputs)[0]
        model.head[-1].bias -= logits.mean(dim=0)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, cloud):
    """Tiny classifier, part segmenter and scene segmenter checkpoints, as ``pcattn train`` writes them."""
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    classifier = lively(create_model("pt-tiny-vector", num_classes=3, **TINY), 1)
    save_checkpoint(folder / "classifier.pt", model_checkpoint(classifier, ["cup", "cone", "box"],
                                                               train_config={"num_points": 64, "up_axis": 2}))
    parts = lively(create_model("pt-seg-tiny-vector", num_classes=5, num_categories=2, **TINY), 2)
    balanced(parts, cloud[:64], category=torch.tensor([1]))
    save_checkpoint(folder / "parts.pt", model_checkpoint(parts, ["mug/body", "mug/handle", "mug/rim", "cap/top",
                                                                  "cap/peak"],
                                                          categories=["mug", "cap"], category_parts=[[0, 1, 2], [3, 4]],
                                                          train_config={"num_points": 64}))
    normals = lively(create_model("pt-tiny-vector", num_classes=3, in_channels=6, **TINY), 3)
    save_checkpoint(folder / "normals.pt", model_checkpoint(normals, ["a", "b", "c"], train_config={"num_points": 64}))
    return folder


# ------------------------------------------------------------------------- readers, in each exact format
def _ply_header(encoding: str, count: int, kind: str, extra=()) -> bytes:
    lines = ["ply", f"format {encoding} 1.0", f"element vertex {count}",
             *(f"property {kind} {axis}" for axis in "xyz"), *extra, "end_header"]
    return ("\n".join(lines) + "\n").encode("ascii")


def _pcd_header(fields, sizes, types, count: int, data: str) -> bytes:
    return ("\n".join(["# .PCD v0.7 - Point Cloud Data file format", "VERSION 0.7", f"FIELDS {' '.join(fields)}",
                       f"SIZE {' '.join(map(str, sizes))}", f"TYPE {' '.join(types)}",
                       f"COUNT {' '.join('1' for _ in fields)}", f"WIDTH {count}", "HEIGHT 1",
                       "VIEWPOINT 0 0 0 1 0 0 0", f"POINTS {count}", f"DATA {data}"]) + "\n").encode("ascii")


def write_format(path, pos: np.ndarray, rgb: np.ndarray, name: str):
    """``pos (N, 3)`` float64 far from the origin and ``rgb (N, 3)`` uint8 as ``name``; returns the
    positions as the file stores them."""
    count = len(pos)
    if name == "ply-ascii":
        body = "".join(f"{x!r} {y!r} {z!r} {r} {g} {b}\n" for (x, y, z), (r, g, b) in zip(pos.tolist(), rgb.tolist()))
        path.write_bytes(_ply_header("ascii", count, "double", ["property uchar red", "property uchar green",
                                                                "property uchar blue"]) + body.encode())
        return pos
    if name in ("ply-binary-little", "ply-binary-big"):
        order = "<" if name.endswith("little") else ">"
        table = np.zeros(count, dtype=[(a, order + "f8") for a in "xyz"] + [("red", "u1"), ("green", "u1"),
                                                                              ("blue", "u1")])
        for column, axis in enumerate("xyz"):
            table[axis] = pos[:, column]
        table["red"], table["green"], table["blue"] = rgb.T
        encoding = "binary_little_endian" if order == "<" else "binary_big_endian"
        path.write_bytes(_ply_header(encoding, count, "double", ["property uchar red", "property uchar green",
                                                                 "property uchar blue"]) + table.tobytes())
        return pos
    packed = ((rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2]).view(np.float32)
    if name == "pcd-ascii":
        body = "".join(f"{x!r} {y!r} {z!r} {float(c)!r}\n" for (x, y, z), c in zip(pos.tolist(), packed))
        path.write_bytes(_pcd_header("x y z rgb".split(), (8, 8, 8, 4), "FFFF", count, "ascii") + body.encode())
        return pos
    if name == "pcd-binary":
        table = np.zeros(count, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4")])
        for column, axis in enumerate("xyz"):
            table[axis] = pos[:, column]
        table["rgb"] = packed
        path.write_bytes(_pcd_header("x y z rgb".split(), (4, 4, 4, 4), "FFFF", count, "binary") + table.tobytes())
        return pos.astype(np.float32)
    if name == "npy":
        np.save(path, np.column_stack([pos, rgb]))
        return pos
    if name in ("txt", "xyz"):
        separator = ", " if name == "xyz" else " "
        path.write_text("".join(separator.join(map(repr, row)) + "\n" for row in np.column_stack([pos, rgb]).tolist()))
        return pos
    if name == "las":
        import laspy

        header = laspy.LasHeader(point_format=3, version="1.2")
        header.offsets, header.scales = pos.min(axis=0), [0.001] * 3
        las = laspy.LasData(header)
        las.x, las.y, las.z = pos.T
        las.red, las.green, las.blue = (rgb.astype(np.uint16) * 257).T  # 16-bit colours
        las.write(str(path))
        return np.round((pos - pos.min(axis=0)) / 0.001) * 0.001 + pos.min(axis=0)
    raise AssertionError(name)


FORMATS = {"ply-ascii": ".ply", "ply-binary-little": ".ply", "ply-binary-big": ".ply", "pcd-ascii": ".pcd",
           "pcd-binary": ".pcd", "npy": ".npy", "txt": ".txt", "xyz": ".xyz", "las": ".las"}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_reader_keeps_every_point_in_order_with_its_precision(tmp_path, cloud, name):
    """Positions 5e5 m away come back in the file's order and precision (doubles exactly; the LAS file's
    millimetre grid), colours as the file holds them."""
    pos = cloud + np.array([5e5, -3e5, 120.0])
    rgb = np.random.default_rng(1).integers(0, 256, size=(len(pos), 3)).astype(np.uint8)
    path = tmp_path / f"cloud{FORMATS[name]}"
    stored = write_format(path, pos, rgb, name)
    read = read_points(path)
    assert read.pos.dtype == stored.dtype
    if name == "las":
        np.testing.assert_allclose(read.pos, stored, rtol=0, atol=1e-9)
    else:
        assert np.array_equal(read.pos, stored)
    colors = read.color if read.color is not None else read.columns[:, :3] / 255
    np.testing.assert_allclose(colors, rgb / 255, atol=1e-6)


def test_laz_and_pcd_with_normals_and_an_unreadable_file(tmp_path, cloud):
    import laspy

    header = laspy.LasHeader(point_format=1, version="1.2")
    header.offsets, header.scales = [4e5, 5e5, 0], [0.001] * 3
    las = laspy.LasData(header)
    las.x, las.y, las.z = (cloud + [4e5, 5e5, 10]).T
    las.write(str(tmp_path / "scan.laz"))
    np.testing.assert_allclose(read_points(tmp_path / "scan.laz").pos, cloud + [4e5, 5e5, 10], atol=6e-4)

    normals = np.tile([0.0, 0.0, 1.0], (len(cloud), 1))
    table = np.column_stack([cloud, normals]).astype(np.float32)
    body = "".join(" ".join(map(str, row)) + "\n" for row in table.tolist())
    (tmp_path / "n.pcd").write_bytes(_pcd_header("x y z normal_x normal_y normal_z".split(), (4,) * 6, "FFFFFF",
                                                 len(cloud), "ascii") + body.encode())
    assert np.array_equal(read_points(tmp_path / "n.pcd").normals, normals.astype(np.float32))
    (tmp_path / "bad.txt").write_text("1 2 3\n4 5\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 2: expected 3 values"):
        read_points(tmp_path / "bad.txt")
    (tmp_path / "cut.pcd").write_bytes(_pcd_header("x y z".split(), (4, 4, 4), "FFF", 10, "binary") + bytes(60))
    with pytest.raises(ValueError, match="cut.pcd: truncated file, the header declares 10 points but the file holds 5"):
        read_points(tmp_path / "cut.pcd")


def test_las_without_laspy_names_the_extra(tmp_path, monkeypatch, cloud):
    write_format(tmp_path / "scan.las", cloud, np.zeros((len(cloud), 3), np.uint8), "las")
    monkeypatch.setitem(sys.modules, "laspy", None)  # as if it were not installed
    with pytest.raises(MissingExtra, match=r"laspy.*pip install 'pcattn\[las\]'"):
        read_points(tmp_path / "scan.las")


@pytest.mark.parametrize("suffix", [".ply", ".npy", ".txt"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_labelled_files_keep_every_point_order_and_precision(tmp_path, cloud, suffix, dtype):
    """What predict writes reads back bit for bit, in the input's precision; the .ply is a labelled scene."""
    pos = (cloud + [5e5, 5e5, 0]).astype(dtype)
    labels = np.arange(len(pos)) % 7
    path = write_labelled(tmp_path / f"out{suffix}", pos, labels, label_palette(7)[labels])
    back = read_points(path)
    assert back.pos.dtype == (np.float64 if suffix == ".txt" else dtype)      # text is read as doubles
    assert np.array_equal(back.pos, pos)
    stored_labels = back.columns[:, 0] if suffix != ".ply" else read_labelled_scene(path)["seg"]
    assert np.array_equal(stored_labels, labels)
    if suffix == ".ply":
        np.testing.assert_allclose(back.color, label_palette(7)[labels], atol=0.5 / 255)


# ------------------------------------------------------------------------- the three tasks
def test_classifier_far_from_the_origin_votes_and_json(tmp_path, checkpoints, cloud):
    """The same probabilities 1e5 m away (centred in float64); the CLI writes them as JSON."""
    near = pcattn.predict(checkpoints / "classifier.pt", cloud)
    far = pcattn.predict(checkpoints / "classifier.pt", cloud + 1e5)
    assert near.task == "classification" and near.class_name == near.classes[near.label]
    np.testing.assert_allclose(far.probabilities, near.probabilities, atol=1e-5)
    assert abs(near.probabilities.sum() - 1) < 1e-9
    voted = pcattn.predict(checkpoints / "classifier.pt", torch.from_numpy(cloud), votes=3)
    assert not np.allclose(voted.probabilities, near.probabilities)      # the extra votes saw turned copies
    np.save(tmp_path / "shape.npy", cloud)
    assert main(["predict", "--checkpoint", str(checkpoints / "classifier.pt"), "--input",
                 str(tmp_path / "shape.npy"), "--out", str(tmp_path / "shape.json"), "--no-progress"]) == 0
    written = json.loads((tmp_path / "shape.json").read_text())
    assert written["class"] == near.class_name
    np.testing.assert_allclose(list(written["probabilities"].values()), near.probabilities, atol=1e-9)


def test_part_segmenter_labels_every_point_in_order(tmp_path, checkpoints, cloud):
    """A cloud no larger than num_points is seen whole: the labels are the model's own, point for point; a
    larger one is sampled and every point gets its nearest seen point's part; 1e5 m away, the same labels."""
    model = Predictor.from_checkpoint(checkpoints / "parts.pt", category="cap").model
    small = cloud[:64]
    result = pcattn.predict(checkpoints / "parts.pt", small, category="CAP")
    centred = small - small.mean(axis=0)
    unit = torch.from_numpy((centred / np.linalg.norm(centred, axis=1).max()).astype(np.float32))
    with torch.no_grad():
        logits = model(None, unit[None], category=torch.tensor([1]))[0]
    assert np.array_equal(result.labels, 3 + logits[:, 3:].argmax(1).numpy())
    assert len(set(result.labels.tolist())) == 2                              # both of the cap's parts

    # 64 tight clusters of 5 points: the 64 points seen are one per cluster, and every point takes its
    # cluster's label, the label its centre has on its own
    clustered = np.repeat(small, 5, axis=0) + np.random.default_rng(2).normal(scale=1e-6, size=(320, 3))
    whole = pcattn.predict(checkpoints / "parts.pt", clustered, category="cap")
    assert whole.labels.shape == (320,) and set(whole.labels.tolist()) <= {3, 4}
    assert (whole.labels.reshape(64, 5) == whole.labels[::5, None]).all()
    assert (whole.labels[::5] == result.labels).mean() > 0.9
    # a 10 cm object 1e5 m away (float32 there is 8 mm coarse): the labels it has at the origin
    whole = pcattn.predict(checkpoints / "parts.pt", 0.05 * cloud, category="cap")
    far = pcattn.predict(checkpoints / "parts.pt", 0.05 * cloud + [1e5, -1e5, 1e5], category="cap")
    assert np.array_equal(far.labels, whole.labels) and len(set(whole.labels.tolist())) == 2
    np.save(tmp_path / "cap.npy", cloud)
    assert main(["predict", "--checkpoint", str(checkpoints / "parts.pt"), "--input", str(tmp_path / "cap.npy"),
                 "--category", "cap", "--out", str(tmp_path / "cap.ply"), "--no-progress"]) == 0
    written = read_labelled_scene(tmp_path / "cap.ply")
    assert np.array_equal(written["pos"], cloud)
    assert np.array_equal(written["seg"], pcattn.predict(checkpoints / "parts.pt", cloud, category="cap").labels)


def test_part_segmenter_needs_a_known_category(tmp_path, checkpoints, cloud, capsys):
    np.save(tmp_path / "cap.npy", cloud)
    arguments = ["predict", "--checkpoint", str(checkpoints / "parts.pt"), "--input", str(tmp_path / "cap.npy")]
    assert main(arguments) == 2
    assert "needs the object category of the cloud; give category (CLI --category), one of: mug, cap" in \
        capsys.readouterr().err
    assert main(arguments + ["--category", "car"]) == 2
    assert "unknown category 'car'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="without a category input"):
        pcattn.predict(checkpoints / "classifier.pt", cloud, category="mug")


def test_missing_normals_or_colours_are_named(tmp_path, checkpoints, cloud):
    np.save(tmp_path / "bare.npy", cloud)
    with pytest.raises(UnreadableFile, match=r"bare.npy: checkpoints0/normals.pt was trained with normals \(nx ny nz\) as input, "
                                             r"but the file has none \(it holds x y z\)"):
        pcattn.predict(checkpoints / "normals.pt", tmp_path / "bare.npy")
    normals = np.tile([0.0, 0.0, 1.0], (len(cloud), 1))
    with_normals = pcattn.predict(checkpoints / "normals.pt", np.column_stack([cloud, normals]))
    assert with_normals.label == pcattn.predict(checkpoints / "normals.pt", cloud, normals=normals).label
    scene = create_model("pt-scene-tiny-vector", num_classes=4, in_channels=6, grid_sizes=(0.1,), **TINY)
    with pytest.raises(UnreadableFile, match=r"colours \(r g b\) as input, but the file has none"):
        pcattn.predict(scene, tmp_path / "bare.npy")


# ------------------------------------------------------------------------- folders
def test_a_folder_stops_at_an_unreadable_file_or_skips_it(tmp_path, checkpoints, cloud, capsys):
    folder = tmp_path / "clouds"
    folder.mkdir()
    np.save(folder / "a.npy", cloud)
    (folder / "b.ply").write_text("ply\nformat ascii 1.0\nelement vertex 5\nproperty float x\nend_header\n1\n")
    np.save(folder / "c.npy", cloud[:100])
    arguments = ["predict", "--checkpoint", str(checkpoints / "parts.pt"), "--input", str(folder),
                 "--category", "mug", "--no-progress", "--format", "npy"]
    assert main(arguments) == 2
    assert f"error: {folder / 'b.ply'}: truncated file" in capsys.readouterr().err
    assert main(arguments + ["--skip-bad"]) == 0
    table = capsys.readouterr().out
    assert "b.ply" in table and "skipped:" in table and "2 of 3 file(s) labelled, 400 points" in table
    written = np.load(tmp_path / "clouds-labels" / "c.npy")
    assert written.shape == (100, 4) and np.array_equal(written[:, :3], cloud[:100])
    results = predict_files(Predictor.from_checkpoint(checkpoints / "parts.pt", category="mug"), folder,
                            tmp_path / "again", skip_bad=True)
    assert [result.ok for result in results] == [True, False, True]
    with pytest.raises(ValueError, match="would overwrite the input"):
        predict_files(Predictor.from_checkpoint(checkpoints / "parts.pt", category="mug"), folder / "a.npy",
                      folder / "a.npy")


# ------------------------------------------------------------------------- scenes
@pytest.fixture(scope="module")
def room():
    """A 1.2 m box of 3,000 points on its floor and walls (metres) with colours: a tiny room."""
    rng = np.random.default_rng(3)
    side = rng.integers(0, 3, size=3000)
    uv = rng.uniform(0, 1.2, size=(3000, 2))
    pos = np.where(side[:, None] == 0, np.column_stack([uv, np.zeros(3000)]),
                   np.where(side[:, None] == 1, np.column_stack([uv[:, 0], np.zeros(3000), uv[:, 1]]),
                            np.column_stack([np.zeros(3000), uv])))
    rgb = rng.integers(0, 256, size=(3000, 3))
    return np.column_stack([pos, rgb])


@pytest.fixture(scope="module")
def scene_checkpoint(tmp_path_factory, room):
    """A tiny scene segmenter (xyz + rgb in, grid pooling), its classes balanced on the room."""
    torch.manual_seed(4)
    model = lively(create_model("pt-scene-tiny-vector", num_classes=4, in_channels=6, grid_sizes=(0.1,), **TINY), 4)
    pos = torch.from_numpy((room[:, :3] - room[:, :3].min(axis=0)).astype(np.float32))
    with torch.no_grad():
        x = torch.cat([pos, torch.from_numpy(room[:, 3:] / 255).float()], dim=1)
        model.head[-1].bias -= model(x, pos, torch.zeros(len(pos), dtype=torch.long)).mean(dim=0)
    path = tmp_path_factory.mktemp("scene") / "scene.pt"
    save_checkpoint(path, model_checkpoint(model, ["floor", "wall", "chair", "table"], task="semseg",
                                           categories=None, category_parts=None, train_config={"voxel_size": 0.04}))
    return path


def test_scene_segmenter_labels_every_point_and_far_from_the_origin_the_same(tmp_path, scene_checkpoint, room):
    """Every point of the room gets a label, written in its order with its float64 coordinates; the room
    5e5 m from the origin (float32 there is 3 cm coarse, near the 4 cm voxels) gets the same labels."""
    near = pcattn.predict(scene_checkpoint, room)
    assert near.task == "semseg" and near.labels.shape == (3000,) and len(set(near.labels.tolist())) >= 2
    np.testing.assert_allclose(near.colors, label_palette(4)[near.labels])
    moved = room.copy()
    moved[:, :3] += [5e5, -5e5, 50.0]
    far_file = tmp_path / "far.npy"
    np.save(far_file, moved)
    assert main(["predict", "--checkpoint", str(scene_checkpoint), "--input", str(far_file), "--out",
                 str(tmp_path / "far.ply"), "--no-progress"]) == 0
    written = read_labelled_scene(tmp_path / "far.ply")
    assert np.array_equal(written["pos"], moved[:, :3]) and np.array_equal(written["seg"], near.labels)
    # a scan of more than tile_points points goes tile by tile: every point labelled from one tile, mostly as
    # the whole room labels it, and the same far from the origin
    tiled = pcattn.predict(scene_checkpoint, room, tile_points=800)
    assert tiled.labels.shape == (3000,) and set(tiled.labels.tolist()) <= {0, 1, 2, 3}
    assert (tiled.labels == near.labels).mean() > 0.8
    assert np.array_equal(pcattn.predict(scene_checkpoint, moved, tile_points=800).labels, tiled.labels)
    with pytest.raises(ValueError, match="num_points is for classifiers and part segmenters"):
        pcattn.predict(scene_checkpoint, room, num_points=100)


def test_scene_files_take_the_room_pictures_colours_beyond_ten_classes(tmp_path, room):
    """A 13-class (S3DIS-sized) scene segmenter's labelled points have the colours of the room pictures
    (tab10, then tab20's light shades), not the part palette's tab20."""
    from pcattn import viz

    torch.manual_seed(5)
    model = create_model("pt-scene-tiny-vector", num_classes=13, in_channels=6, grid_sizes=(0.1,), **TINY).eval()
    with torch.no_grad():
        model.head[-1].bias[12] += 100.0  # every point: class 12
    path = tmp_path / "s3dis.pt"
    classes = [f"class{i}" for i in range(13)]
    save_checkpoint(path, model_checkpoint(model, classes, task="semseg", categories=None, category_parts=None,
                                           train_config={"voxel_size": 0.04}))
    result = pcattn.predict(path, room)
    assert (result.labels == 12).all()
    np.testing.assert_array_equal(result.colors, np.broadcast_to(viz.class_palette(13)[12], (len(room), 3)))
    np.testing.assert_allclose(result.colors[0] * 255, [0x98, 0xdf, 0x8a])  # tab20's light green


def test_scene_palette_is_matplotlibs_tab10_then_light_tab20_then_tab20b_and_c():
    colormaps = pytest.importorskip("matplotlib").colormaps
    expected = np.array(list(colormaps["tab10"].colors) + list(colormaps["tab20"].colors[1::2])
                        + list(colormaps["tab20b"].colors) + list(colormaps["tab20c"].colors))
    palette = scene_palette(61)
    np.testing.assert_allclose(palette[:60], expected, atol=0.5 / 255)
    assert len(np.unique(palette[:60], axis=0)) == 60 and np.array_equal(palette[60], palette[0])
    with pytest.raises(ValueError, match="at least one class"):
        scene_palette(0)


def test_scene_segmenter_with_capped_fragments_labels_every_point_by_its_voxel(tmp_path, scene_checkpoint, room):
    """max_fragments=1: every point labelled, each with its voxel's label (one fragment scores each voxel once);
    the command line takes --max-fragments, refused for a classifier."""
    from pcattn.data.grid import voxel_groups

    capped = pcattn.predict(scene_checkpoint, room, max_fragments=1)
    assert capped.labels.shape == (3000,)
    order, starts, counts = voxel_groups(torch.from_numpy(room[:, :3]), 0.04)
    per_voxel = torch.from_numpy(capped.labels)[order].split(counts.tolist())
    assert all(bool((labels == labels[0]).all()) for labels in per_voxel)
    assert (capped.labels == pcattn.predict(scene_checkpoint, room).labels).mean() > 0.8
    source = tmp_path / "room.npy"
    np.save(source, room)
    assert main(["predict", "--checkpoint", str(scene_checkpoint), "--input", str(source), "--out",
                 str(tmp_path / "room.npy.labels.npy"), "--max-fragments", "1", "--no-progress"]) == 0
    assert np.array_equal(np.load(tmp_path / "room.npy.labels.npy")[:, 3], capped.labels)
    with pytest.raises(ValueError, match="max_fragments"):
        pcattn.predict(scene_checkpoint, room, max_fragments=0)
