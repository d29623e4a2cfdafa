"""Scene readers: ScanNet v2's preprocessed per-scene layout and your own labelled scenes (.ply with a
per-vertex label, .npy / .txt columns), written here in their exact layouts."""
import numpy as np
import pytest

from pcattn.data.scenes import IGNORE_INDEX, SCANNET20_CLASSES, ScanNet, SceneFolder, read_labelled_scene


def write_scannet_scene(folder, count, seed, labelled=True):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    np.save(folder / "coord.npy", rng.uniform(0, 6, (count, 3)).astype(np.float32))
    np.save(folder / "color.npy", rng.integers(0, 256, (count, 3)).astype(np.uint8))
    normals = rng.normal(size=(count, 3))
    np.save(folder / "normal.npy", (normals / np.linalg.norm(normals, axis=1, keepdims=True)).astype(np.float32))
    segment = rng.integers(-1, 20, count).astype(np.int16)
    if labelled:
        np.save(folder / "segment20.npy", segment)
        np.save(folder / "segment200.npy", rng.integers(-1, 200, count).astype(np.int16))
    return segment


def test_scannet_layout(tmp_path):
    segments = {name: write_scannet_scene(tmp_path / "train" / name, 50, seed)
                for seed, name in enumerate(["scene0001_00", "scene0000_00"])}
    write_scannet_scene(tmp_path / "val" / "scene0011_00", 40, 5)
    write_scannet_scene(tmp_path / "test" / "scene0707_00", 30, 6, labelled=False)
    train = ScanNet(tmp_path, "train")
    assert train.room_names == ["scene0000_00", "scene0001_00"] and train.classes == list(SCANNET20_CLASSES)
    sample = train[0]
    assert sample["seg"].tolist() == segments["scene0000_00"].tolist()  # -1 kept: unlabelled, never a class
    assert (sample["seg"] == IGNORE_INDEX).any()
    colors = np.load(tmp_path / "train" / "scene0000_00" / "color.npy")
    assert np.allclose(sample["color"].numpy() * 255, colors, atol=1e-4)
    assert sample["normals"].shape == (50, 3) and sample["pos"].dtype.is_floating_point
    assert len(ScanNet(tmp_path, "val")) == 1
    assert (ScanNet(tmp_path, "test")[0]["seg"] == IGNORE_INDEX).all()  # test scenes have no labels
    np.save(tmp_path / "val" / "scene0011_00" / "segment20.npy", np.full(40, 20))
    with pytest.raises(ValueError, match=r"scene0011_00: label 20 of point 0 \(0-based\) is outside \[0, 20\)"):
        ScanNet(tmp_path, "val")[0]
    with pytest.raises(FileNotFoundError, match=r"train/train: folder not found \(expected .*/<room>/coord.npy"):
        ScanNet(tmp_path / "train", "train")
    (tmp_path / "empty" / "val").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no room folders"):
        ScanNet(tmp_path / "empty", "val")


def write_binary_ply(path, pos, colors, labels, label_name="label", label_type=("ushort", "<u2")):
    header = ("ply\nformat binary_little_endian 1.0\ncomment written by a test\n"
              f"element vertex {len(pos)}\nproperty double x\nproperty double y\nproperty double z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\n"
              f"property {label_type[0]} {label_name}\nelement face 0\nproperty list uchar int vertex_indices\n"
              "end_header\n")
    table = np.zeros(len(pos), dtype=[("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("red", "u1"), ("green", "u1"),
                                      ("blue", "u1"), (label_name, label_type[1])])
    for column, axis in enumerate("xyz"):
        table[axis] = pos[:, column]
    for column, name in enumerate(("red", "green", "blue")):
        table[name] = colors[:, column]
    table[label_name] = labels
    path.write_bytes(header.encode() + table.tobytes())


def test_own_labelled_scenes(tmp_path):
    """A folder of .ply (binary and ASCII), .npy and .txt scenes, placed 1e5 m from the origin: positions are
    read in float64, exactly."""
    rng = np.random.default_rng(0)
    (tmp_path / "classes.txt").write_text("floor\nwall\nchair\n\n")
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    pos = 1e5 + rng.uniform(0, 5, (40, 3))
    colors = rng.integers(0, 256, (40, 3))
    labels = rng.integers(0, 3, 40)
    write_binary_ply(tmp_path / "train" / "a_room.ply", pos, colors, labels)  # ushort: a type Open3D skips
    np.save(tmp_path / "train" / "b_room.npy", np.concatenate([pos, colors, labels[:, None]], axis=1))
    np.savetxt(tmp_path / "train" / "c_room.txt", np.concatenate([pos, labels[:, None]], axis=1), fmt="%.10f",
               delimiter=",")
    with open(tmp_path / "test" / "d_room.ply", "w") as handle:
        handle.write("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                     "property float z\nproperty float class\nend_header\n0 0 0 2\n1 0 0 -1\n0 1 1 0\n")
    train = SceneFolder(tmp_path, "train")
    assert train.classes == ["floor", "wall", "chair"] and train.room_names == ["a_room", "b_room", "c_room"]
    for index in range(3):
        room = train.load_room(index)
        assert room["pos"].dtype == np.float64
        assert np.allclose(room["pos"], pos, rtol=0, atol=1e-9)
        assert room["seg"].tolist() == labels.tolist()
    assert np.allclose(train.load_room(0)["color"] * 255, colors, atol=1e-4)
    assert "color" not in train.load_room(2)
    test_room = SceneFolder(tmp_path, "test").load_room(0)
    assert test_room["seg"].tolist() == [2, IGNORE_INDEX, 0] and test_room["pos"][2].tolist() == [0, 1, 1]


def test_own_scene_errors_are_named(tmp_path):
    (tmp_path / "classes.txt").write_text("floor\nwall\n")
    write_binary_ply(tmp_path / "no_label.ply", np.zeros((4, 3)) + np.arange(4)[:, None], np.zeros((4, 3)),
                     np.zeros(4), label_name="intensity", label_type=("float", "<f4"))
    with pytest.raises(ValueError, match="no_label.ply: no per-vertex label property; expected one named label"):
        read_labelled_scene(tmp_path / "no_label.ply")
    np.save(tmp_path / "five.npy", np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"five.npy: 5 columns; expected 4 \(x y z label\) or 7"):
        read_labelled_scene(tmp_path / "five.npy")
    np.save(tmp_path / "range.npy", np.array([[0, 0, 0, 0], [1, 0, 0, 1], [0, 1, 0, 2.0]]))
    with pytest.raises(ValueError, match=r"range.npy: label 2 of point 2 \(0-based\) is outside \[0, 2\)"):
        read_labelled_scene(tmp_path / "range.npy", num_classes=2)
    np.save(tmp_path / "half.npy", np.array([[0, 0, 0, 0], [1, 0, 0, 0.5], [0, 1, 0, 1]]))
    with pytest.raises(ValueError, match=r"half.npy: label 0.5 of point 1 \(0-based\) is not a whole number"):
        read_labelled_scene(tmp_path / "half.npy")
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "notes.md").write_text("x")
    with pytest.raises(ValueError, match=r"notes.md: not a scene file"):
        SceneFolder(tmp_path, "train")
    (tmp_path / "names.txt").write_text("floor\nwall\nfloor\n")
    with pytest.raises(ValueError, match="class name 'floor' appears more than once"):
        SceneFolder(tmp_path, "train", classes=tmp_path / "names.txt")
