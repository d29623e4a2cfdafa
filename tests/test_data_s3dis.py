"""S3DIS readers: the real raw-release fixture, and files written in each exact layout (raw with the
release's damaged lines, Area_N_<room>.npy, Pointcept's per-room folders)."""
import os
from pathlib import Path

import numpy as np
import pytest

from pcattn.data.s3dis import S3DIS, S3DIS_CLASSES, guess_s3dis_layout, read_annotation_file

FIXTURE = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "s3dis"
RAW = "Stanford3dDataset_v1.2_Aligned_Version"


def label(name):
    return S3DIS_CLASSES.index(name)


@pytest.mark.skipif(not FIXTURE.is_dir(), reason="shared S3DIS fixture not present")
def test_real_fixture_rooms(tmp_path):
    """The real files: each point labelled by its file's class, nothing lost or added, metres kept."""
    dataset = S3DIS(FIXTURE, split="test", test_area=5, cache_dir=tmp_path, progress=False)
    assert dataset.layout == "raw" and dataset.room_names == ["Area_5/conferenceRoom_1", "Area_5/copyRoom_1"]
    conference = dataset.load_room(0)
    annotations = FIXTURE / RAW / "Area_5" / "conferenceRoom_1" / "Annotations"
    expected = np.zeros(13, dtype=np.int64)
    for path in annotations.glob("*.txt"):
        expected[label(path.stem.split("_")[0])] += sum(1 for _ in open(path))
    assert np.array_equal(np.bincount(conference["seg"], minlength=13), expected)
    assert len(conference["pos"]) == 113_014
    first_wall = np.loadtxt(annotations / "wall_1.txt", max_rows=1)
    wall_rows = np.flatnonzero(conference["seg"] == label("wall"))
    assert np.allclose(conference["pos"][wall_rows[0]], first_wall[:3], atol=1e-5)
    assert np.allclose(conference["color"][wall_rows[0]] * 255, first_wall[3:6])
    low, high = conference["pos"].min(0), conference["pos"].max(0)
    assert -11.5 < low[0] < -11.3 and -8.4 < high[0] < -8.2 and 6.8 < high[1] < 7.0  # metres, not centred
    copy_room = dataset[1]
    assert copy_room["pos"].dtype.is_floating_point and len(copy_room["seg"]) == 20_000
    assert set(copy_room["seg"].unique().tolist()) == {label("beam"), label("wall")}
    assert (tmp_path / "Area_5" / "copyRoom_1" / "coord.npy").exists()  # converted once, into the cache
    with pytest.raises(FileNotFoundError, match="no rooms in the train split"):
        S3DIS(FIXTURE, split="train", test_area=5, cache_dir=tmp_path)


def write_lines(path, rows, damaged=None):
    """Write ``x y z r g b`` lines; ``damaged`` maps a 0-based row to the raw bytes of that line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{x:.3f} {y:.3f} {z:.3f} {int(r)} {int(g)} {int(b)}".encode() for x, y, z, r, g, b in rows]
    for row, raw in (damaged or {}).items():
        lines[row] = raw
    path.write_bytes(b"\n".join(lines) + b"\n")


def points(count, seed, offset=0.0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(0, 5, (count, 3)) + offset, rng.integers(0, 256, (count, 3))], axis=1)


def write_raw_release(root):
    """Area_1/office_1 (ceiling, stairs, chair, and the whole-room file the reader must not add) and the two
    rooms of Area_5 the release damaged, each with its damaged line."""
    base = root / RAW
    office = base / "Area_1" / "office_1"
    write_lines(office / "Annotations" / "ceiling_1.txt", points(6, 0, 10.0))
    write_lines(office / "Annotations" / "stairs_1.txt", points(4, 1, 10.0))
    write_lines(office / "Annotations" / "chair_2.txt", points(5, 2, 10.0))
    write_lines(office / "office_1.txt", points(15, 3))  # the release's whole-room file: not read
    # hallway_6: a NUL where a separator belongs (the line reads as 5 values)
    write_lines(base / "Area_5" / "hallway_6" / "Annotations" / "ceiling_1.txt", points(5, 4),
                {2: b"1.250 2.500\x003.750 10 20 30"})
    # office_19: a \x10 inside a number, 103.0\x100000 for 103.000000
    write_lines(base / "Area_5" / "office_19" / "Annotations" / "ceiling_1.txt", points(5, 5),
                {3: b"1.000 2.000 3.000 103.0\x100000 104 105"})
    return base


def test_raw_layout_written_repairs_the_damaged_lines(tmp_path):
    write_raw_release(tmp_path)
    with pytest.warns(UserWarning) as caught:
        test = S3DIS(tmp_path, split="test", cache_dir=tmp_path / "cache", progress=False)
    messages = sorted(str(warning.message) for warning in caught)
    assert len(messages) == 2
    assert "hallway_6/Annotations/ceiling_1.txt, line 3: repaired" in messages[0]
    assert "office_19/Annotations/ceiling_1.txt, line 4: repaired" in messages[1]
    assert test.room_names == ["Area_5/hallway_6", "Area_5/office_19"]
    hallway, office = test.load_room(0), test.load_room(1)
    assert np.allclose(hallway["pos"][2], [1.25, 2.5, 3.75], atol=1e-6)
    assert np.allclose(hallway["color"][2] * 255, [10, 20, 30], atol=1e-4)
    assert np.allclose(office["color"][3] * 255, [103, 104, 105], atol=1e-4)
    assert len(hallway["seg"]) == 5 and len(office["seg"]) == 5

    train = S3DIS(tmp_path, split="train", cache_dir=tmp_path / "cache")
    room = train.load_room(0)
    assert train.room_names == ["Area_1/office_1"] and len(room["seg"]) == 15  # not the whole-room file's 15 more
    # files in name order: ceiling_1, chair_2, stairs_1 (stairs counts as clutter)
    assert room["seg"].tolist() == [label("ceiling")] * 6 + [label("chair")] * 5 + [label("clutter")] * 4
    assert np.allclose(room["pos"][:6], np.round(points(6, 0, 10.0)[:, :3], 3), atol=1e-5)
    assert S3DIS(tmp_path, split="test", test_area=1, cache_dir=tmp_path / "cache").room_names == ["Area_1/office_1"]


def test_raw_cache_is_rebuilt_when_a_file_changes(tmp_path):
    base = write_raw_release(tmp_path)
    S3DIS(tmp_path, split="train", cache_dir=tmp_path / "cache")
    chair = base / "Area_1" / "office_1" / "Annotations" / "chair_2.txt"
    write_lines(chair, points(7, 9, 10.0))
    os.utime(chair, ns=(1, 1))  # a different time as well as a different size
    room = S3DIS(tmp_path, split="train", cache_dir=tmp_path / "cache").load_room(0)
    assert np.count_nonzero(room["seg"] == label("chair")) == 7


def test_damaged_lines_are_named(tmp_path):
    base = write_raw_release(tmp_path)
    with pytest.raises(ValueError, match=r"hallway_6/Annotations/ceiling_1.txt, line 3: damaged line .*repair=True"):
        S3DIS(tmp_path, split="test", cache_dir=tmp_path / "cache", repair=False)
    bad = tmp_path / "bad"
    write_lines(bad / "wall_1.txt", points(4, 0), {1: b"1.0 2.0 3.0 4 5"})
    with pytest.raises(ValueError, match=r"wall_1.txt, line 2: expected 6 values \(x y z r g b\), got 5"):
        read_annotation_file(bad / "wall_1.txt")
    write_lines(bad / "wall_2.txt", points(4, 0), {3: b"1.0 2.0 3.0 4 5 six"})
    with pytest.raises(ValueError, match=r"wall_2.txt, line 4: a value that is not a number"):
        read_annotation_file(bad / "wall_2.txt")
    write_lines(base / "Area_1" / "office_1" / "Annotations" / "lamp_1.txt", points(3, 0))
    with pytest.raises(ValueError, match=r"lamp_1.txt: unknown class 'lamp'"):
        S3DIS(tmp_path, split="train", cache_dir=tmp_path / "cache")


def test_npy_layout(tmp_path):
    """The official Point Transformer code's trainval_fullarea/: Area_N_<room>.npy, (N, 7) x y z r g b label."""
    folder = tmp_path / "trainval_fullarea"
    folder.mkdir()
    rooms = {}
    for area, room, seed in ((1, "office_1", 0), (2, "hallway_3", 1), (5, "office_19", 2)):
        table = np.concatenate([points(20, seed, 1e3), np.arange(20)[:, None] % 13], axis=1)
        np.save(folder / f"Area_{area}_{room}.npy", table.astype(np.float32 if area == 1 else np.float64))
        rooms[f"Area_{area}/{room}"] = table
    assert guess_s3dis_layout(tmp_path) == ("npy", folder)
    train = S3DIS(tmp_path, split="train")
    assert train.layout == "npy" and train.room_names == ["Area_1/office_1", "Area_2/hallway_3"]
    test = S3DIS(tmp_path, split="test")
    room = test.load_room(0)
    table = rooms["Area_5/office_19"]
    assert np.array_equal(room["pos"], table[:, :3]) and room["pos"].dtype == np.float64
    assert np.array_equal(room["seg"], table[:, 6].astype(np.int64))
    assert np.allclose(room["color"] * 255, table[:, 3:6], atol=1e-4)
    np.save(folder / "Area_5_office_19.npy", table[:, :6])
    with pytest.raises(ValueError, match=r"Area_5_office_19.npy: expected an \(N, 7\) array"):
        test.load_room(0)
    with pytest.raises(ValueError, match="layout='raw' was asked for, but the files there are the 'npy' layout"):
        S3DIS(tmp_path, layout="raw")


def test_folders_layout(tmp_path):
    """Pointcept's preprocessed layout: Area_N/<room>/coord.npy, color.npy, segment.npy (N, 1), normal.npy."""
    rng = np.random.default_rng(0)
    for area, room in ((3, "lobby_1"), (5, "office_1")):
        folder = tmp_path / f"Area_{area}" / room
        folder.mkdir(parents=True)
        np.save(folder / "coord.npy", rng.uniform(0, 5, (30, 3)).astype(np.float32))
        np.save(folder / "color.npy", rng.integers(0, 256, (30, 3)).astype(np.uint8))
        np.save(folder / "segment.npy", (np.arange(30) % 13).astype(np.int16)[:, None])
        if area == 5:
            normals = rng.normal(size=(30, 3))
            np.save(folder / "normal.npy", (normals / np.linalg.norm(normals, axis=1, keepdims=True)).astype(np.float32))
    test = S3DIS(tmp_path, split="test")
    room = test.load_room(0)
    assert test.layout == "folders" and test.room_names == ["Area_5/office_1"]
    assert room["seg"].tolist() == [i % 13 for i in range(30)] and room["normals"].shape == (30, 3)
    assert "normals" not in S3DIS(tmp_path, split="train").load_room(0)
    np.save(tmp_path / "Area_5" / "office_1" / "segment.npy", np.full(30, 13))
    with pytest.raises(ValueError, match=r"office_1: label 13 of point 0 \(0-based\) is outside \[0, 13\)"):
        test.load_room(0)


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="buildingparser.stanford.edu"):
        S3DIS(tmp_path)
    with pytest.raises(ValueError, match="test_area must be one of the areas 1-6"):
        S3DIS(tmp_path, test_area=7)
