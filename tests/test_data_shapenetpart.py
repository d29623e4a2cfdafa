"""ShapeNetPart readers: the real fixture files (formats normal and v0) and written files (all three)."""
import json
from pathlib import Path

import numpy as np
import pytest

from pcattn.data.shapenetpart import (SHAPENET_CATEGORY_PARTS, SHAPENET_SYNSETS, ShapeNetPart, read_part_id_map,
                                      read_shape_list)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "shapenetpart"
NORMAL = FIXTURES / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
V0 = FIXTURES / "shapenetcore_partanno_segmentation_benchmark_v0"
PART_MAP = FIXTURES / "hdf5_metadata" / "shapenet_part_overallid_to_catid_partid.json"
MISSING = "212e0563473156e255483301a044235"
needs_fixtures = pytest.mark.skipif(not NORMAL.is_dir(), reason="shared fixtures absent")


@needs_fixtures
def test_real_normal_format_names_the_missing_shape_or_skips_it():
    with pytest.raises(FileNotFoundError, match=MISSING + r"\.txt: listed in the test split"):
        ShapeNetPart(NORMAL, "test")
    with pytest.warns(UserWarning, match="skipped"):
        test = ShapeNetPart(NORMAL, "test", missing="skip", use_normals=True, num_points=1024)
    assert test.names == ["04225987/1c8d5e05c3faa05861be5ced44bc18ac", "04379243/1a2abbc9712e2fffc3bd24f986301745"]
    skateboard, table = test[0], test[1]
    assert skateboard["pos"].shape == (1024, 3) and skateboard["normals"].shape == (1024, 3)
    assert int(skateboard["category"]) == 14 and set(skateboard["seg"].tolist()) == {45}
    assert int(table["category"]) == 15 and set(table["seg"].tolist()) == {47, 48, 49}
    with pytest.warns(UserWarning, match=r"2 of the 2 test shapes are also in the train/val split lists \(e\.g\. "
                                         r"04225987/1c8d5e05c3faa05861be5ced44bc18ac\)"):
        ShapeNetPart(NORMAL, "test", missing="skip")                 # the fixture's lists overlap
    with pytest.warns(UserWarning, match="listed more than once"):
        read_shape_list(NORMAL / "train_test_split" / "shuffled_train_file_list.json")
    with pytest.warns(UserWarning):
        with pytest.raises(ValueError, match="no val shapes"):
            ShapeNetPart(NORMAL, "val", missing="skip")


@needs_fixtures
def test_real_v0_format_maps_part_ids_like_the_json():
    assert read_part_id_map(PART_MAP)[("03001627", 1)] == 12
    data = ShapeNetPart(V0, "train", format="v0", part_map=PART_MAP, num_points=512)
    standard = ShapeNetPart(V0, "train", format="v0", num_points=512)
    assert np.array_equal(data.seg, standard.seg)  # the built-in table equals PointNet's file
    assert data.shape_categories.tolist() == list(range(16))
    for category, seg in zip(data.shape_categories, data.seg):
        assert set(seg.tolist()) <= set(SHAPENET_CATEGORY_PARTS[category])
    assert 15 not in set(data.seg[4].tolist()) and 26 not in set(data.seg[8].tolist())  # Chair part 4, Lamp part 3


def write_normal_and_v0(root: Path):
    """Two tables (one with a bad label later) in the normal and v0 layouts."""
    rng = np.random.default_rng(0)
    normal, v0 = root / "normal", root / "v0"
    shapes = []
    for name in ("a", "b"):
        pos = rng.normal(size=(50, 3))
        local = rng.integers(1, 4, size=50)
        shapes.append((name, pos, local))
        (normal / "04379243").mkdir(parents=True, exist_ok=True)
        rows = np.concatenate([pos, np.zeros((50, 3)), (46 + local)[:, None]], axis=1)
        np.savetxt(normal / "04379243" / f"{name}.txt", rows, fmt="%.6f")
        for sub in ("points", "points_label"):
            (v0 / "04379243" / sub).mkdir(parents=True, exist_ok=True)
        np.savetxt(v0 / "04379243" / "points" / f"{name}.pts", pos, fmt="%.5f")
        np.savetxt(v0 / "04379243" / "points_label" / f"{name}.seg", local, fmt="%d")
    for folder in (normal, v0):
        (folder / "train_test_split").mkdir()
        (folder / "synsetoffset2category.txt").write_text("Table\t04379243\n")
        for split in ("train", "val", "test"):
            entries = ["shape_data/04379243/a", "shape_data/04379243/b"] if split == "train" else ["shape_data/04379243/b"]
            (folder / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(entries))
    return normal, v0, shapes


def test_written_normal_and_v0_agree(tmp_path):
    normal, v0, shapes = write_normal_and_v0(tmp_path)
    a = ShapeNetPart(normal, "train", num_points=50)
    b = ShapeNetPart(v0, "train", format="v0", num_points=50)
    assert np.array_equal(a.seg, b.seg) and np.allclose(a.points, b.points, atol=1e-5)
    assert a.seg[0].tolist() == (46 + shapes[0][2]).tolist()
    assert len(ShapeNetPart(normal, "trainval", num_points=50)) == 2
    padded = ShapeNetPart(normal, "test", num_points=80, sampling="random")
    assert padded.points.shape == (1, 80, 3) and set(padded.seg[0].tolist()) <= {47, 48, 49}
    (v0 / "04379243" / "points_label" / "a.seg").write_text("1\n" * 49 + "7\n")
    with pytest.raises(ValueError, match=r"a\.seg, line 50: part id of 04379243 7"):
        ShapeNetPart(v0, "train", format="v0")
    rows = (normal / "04379243" / "b.txt").read_text().splitlines()
    rows[3] = rows[3].rsplit(" ", 1)[0] + " 12.000000"
    (normal / "04379243" / "b.txt").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"b\.txt, line 4: part label 12"):
        ShapeNetPart(normal, "test")


def write_h5(path: Path, data, label, pid):
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as handle:
        handle.create_dataset("data", data=data)
        handle.create_dataset("label", data=label)
        handle.create_dataset("pid", data=pid)


def test_hdf5_layout(tmp_path):
    rng = np.random.default_rng(0)
    category = np.array([[0], [15], [4]], dtype=np.uint8)
    pid = np.stack([rng.choice(SHAPENET_CATEGORY_PARTS[c], 2048) for c in category[:, 0]]).astype(np.uint8)
    data = rng.normal(size=(3, 2048, 3)).astype(np.float32)
    write_h5(tmp_path / "ply_data_train0.h5", data[:2], category[:2], pid[:2])
    write_h5(tmp_path / "ply_data_test0.h5", data[2:], category[2:], pid[2:])
    (tmp_path / "train_hdf5_file_list.txt").write_text("ply_data_train0.h5\n")
    (tmp_path / "test_hdf5_file_list.txt").write_text("data/shapenet_part_seg_hdf5_data/ply_data_test0.h5\n")
    train = ShapeNetPart(tmp_path, "train", format="hdf5")
    assert len(train) == 2 and train.shape_categories.tolist() == [0, 15]
    assert np.array_equal(train.points, data[:2]) and np.array_equal(train.seg, pid[:2])
    test = ShapeNetPart(tmp_path, "test", format="hdf5", num_points=1024, sampling="fps")
    assert test[0]["pos"].shape == (1024, 3) and int(test[0]["category"]) == 4
    bad = pid[:1].copy()
    bad[0, 7] = 47  # a table part in an airplane
    write_h5(tmp_path / "ply_data_val0.h5", data[:1], category[:1], bad)
    (tmp_path / "val_hdf5_file_list.txt").write_text("ply_data_val0.h5\nply_data_val1.h5\n")
    with pytest.raises(ValueError, match="shape 0 \\(Airplane\\) has part id 47"):
        ShapeNetPart(tmp_path, "val", format="hdf5")


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="format must be"):
        ShapeNetPart(tmp_path, format="ply")
    with pytest.raises(ValueError, match="use_normals needs"):
        ShapeNetPart(tmp_path, format="hdf5", use_normals=True)
    with pytest.raises(FileNotFoundError, match="split list not found"):
        ShapeNetPart(tmp_path, "train")
    assert len(SHAPENET_SYNSETS) == 16 and SHAPENET_CATEGORY_PARTS[-1] == (47, 48, 49)
