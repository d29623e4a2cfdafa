"""Issue 11 for the data layer: overflowing or degenerate coordinates, links and folders that used to be
dropped silently, misread HDF5 and point files, and a fuzz test of every file reader."""
from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest

from pcattn.data import PointFolder
from pcattn.data.io import read_off, read_point_cloud
from pcattn.data.modelnet import ModelNetHDF5


def cloud(rows=40, columns=3, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, columns)).astype(np.float32)


# ------------------------------------------------------------------------------- 4. coordinates
def test_an_overflowing_or_outlying_coordinate_is_an_error_naming_the_file(tmp_path):
    points = cloud()
    points[3] = [1e30, 0, 0]
    np.save(tmp_path / "huge.npy", points)
    with pytest.raises(ValueError, match=r"huge.npy: coordinate 1e\+30 of point 3 .* too large"):
        read_point_cloud(tmp_path / "huge.npy")
    points[3] = [1e12, 0, 0]                                         # fits float32, collapses the rest
    np.save(tmp_path / "outlier.npy", points)
    with pytest.raises(ValueError, match=r"outlier.npy: point 3 .* collapse the rest of the cloud"):
        read_point_cloud(tmp_path / "outlier.npy")
    np.save(tmp_path / "same.npy", np.ones((10, 3), np.float32))
    with pytest.raises(ValueError, match=r"same.npy: all 10 points are at the same position"):
        read_point_cloud(tmp_path / "same.npy")
    (tmp_path / "huge.off").write_text("OFF\n4 1 0\n1e20 0 0\n0 1 0\n0 0 1\n1 1 1\n3 0 1 2\n")
    with pytest.raises(ValueError, match=r"huge.off: coordinate 1e\+20 of vertex 0 .* too large"):
        read_point_cloud(tmp_path / "huge.off")


# ----------------------------------------------------------------------------- 7. silently dropped
def point_folder(root):
    for category in ("a", "b"):
        for split in ("train", "test"):
            (root / category / split).mkdir(parents=True)
            np.save(root / category / split / f"{category}_1.npy", cloud(seed=len(category)))
    return root


@pytest.mark.parametrize("make, error, message", [
    (lambda t: (os.symlink("y.npy", t / "x.npy"), os.symlink("x.npy", t / "y.npy")), ValueError,
     r"x.npy: symbolic link loop"),
    (lambda t: os.symlink("gone.npy", t / "x.npy"), FileNotFoundError, r"x.npy: broken symbolic link to 'gone.npy'"),
    (lambda t: (t / "nested").mkdir(), ValueError, r"nested: a folder inside .*sub-folders of a split folder"),
    (lambda t: (t / "fake.npy").mkdir(), ValueError, r"fake.npy: a folder inside"),
])
def test_links_and_folders_in_a_split_folder_are_named(tmp_path, make, error, message):
    root = point_folder(tmp_path / "data")
    make(root / "a" / "train")
    with pytest.raises(error, match=message):
        PointFolder(root, "train", num_points=8, cache=False)


def test_looping_class_folder_links_are_named(tmp_path):
    root = point_folder(tmp_path / "data")
    os.symlink("d", root / "c"), os.symlink("c", root / "d")
    with pytest.raises(ValueError, match=r"c: symbolic link loop"):
        PointFolder(root, "train", num_points=8, cache=False)


def write_h5(root, data, label):
    import h5py

    root.mkdir(exist_ok=True)
    (root / "shape_names.txt").write_text("a\nb\n")
    with h5py.File(root / "ply_data_train0.h5", "w") as handle:
        if isinstance(data, dict):
            group = handle.create_group("data")
            for key, value in data.items():
                group.create_dataset(key, data=value)
        else:
            handle.create_dataset("data", data=data)
        handle.create_dataset("label", data=label)
    return root


def test_hdf5_groups_and_float_labels_are_named(tmp_path):
    data = np.stack([cloud(16), cloud(16, seed=1)])
    root = write_h5(tmp_path / "group", {"x": data}, np.array([[0], [1]]))
    with pytest.raises(ValueError, match=r"ply_data_train0.h5: 'data' is an HDF5 group"):
        ModelNetHDF5(root, "train", num_points=8)
    root = write_h5(tmp_path / "float", data, np.array([[0.0], [1.7]]))
    with pytest.raises(ValueError, match=r"ply_data_train0.h5: label 1.7 of shape 1 is not a whole number"):
        ModelNetHDF5(root, "train", num_points=8)
    root = write_h5(tmp_path / "whole", data, np.array([[0.0], [1.0]]))      # whole-number floats are fine
    assert ModelNetHDF5(root, "train", num_points=8).labels.tolist() == [0, 1]


@pytest.mark.parametrize("name, write, message", [
    ("five.txt", lambda p: np.savetxt(p, cloud(10, 5)), r"five.txt: 5 values per point; expected 3"),
    ("four.npy", lambda p: np.save(p, cloud(10, 4)), r"four.npy: 4 values per point; expected 3"),
    ("complex.npy", lambda p: np.save(p, cloud(10, 3) + 1j), r"complex.npy: values of type complex"),
    ("text.npy", lambda p: np.save(p, np.full((10, 3), "x")), r"text.npy: values of type <U1"),
])
def test_point_files_with_a_wrong_layout_are_named(tmp_path, name, write, message):
    write(tmp_path / name)
    with pytest.raises(ValueError, match=message):
        read_point_cloud(tmp_path / name)


# ----------------------------------------------------------------------------------------- fuzz
def write_text(path, points, separator=" "):
    path.write_text("".join(separator.join(f"{v:.6g}" for v in row) + "\n" for row in points))


def parse_text(data: bytes):
    """The reference reading of a point text file: every line the same count, 3 or >= 6 numbers."""
    lines = data.decode("utf-8", errors="replace").replace(",", " ").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    rows = [[float(v) for v in line.split()] for line in lines]
    if not rows or len({len(r) for r in rows}) != 1 or len(rows[0]) in (0, 1, 2, 4, 5):
        raise ValueError
    return np.asarray(rows, dtype=np.float64).astype(np.float32)


def parse_npy(data: bytes):
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if array.dtype.kind not in "fiu" or array.ndim != 2 or array.shape[1] in (0, 1, 2, 4, 5) or not len(array):
        raise ValueError
    return array.astype(np.float32)


def parse_off(data: bytes):
    """Reference OFF vertices: header, counts, then exactly 3 numbers per vertex line."""
    lines = [line.split("#", 1)[0].strip() for line in data.decode("utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if line]
    match = re.match(r"^(C?N?OFF)\s*(.*)$", lines[0])
    counts, body = (match.group(2), lines[1:]) if match.group(2) else (lines[1], lines[2:])
    vertices = int(counts.split()[0])
    rows = [[float(v) for v in line.split()] for line in body[:vertices]]
    if len(rows) < vertices or any(len(r) != 3 for r in rows):
        raise ValueError
    return np.asarray(rows, dtype=np.float32)


def read_off_vertices(path):
    return read_off(path)[0]


def write_off(path, points):
    path.write_text("OFF\n" + f"{len(points)} {len(points) - 2} 0\n"
                    + "".join(" ".join(f"{v:.6g}" for v in row[:3]) + "\n" for row in points)
                    + "".join(f"3 0 {i} {i + 1}\n" for i in range(1, len(points) - 1)))


def write_open3d(path, points, binary):
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[:, :3].astype(np.float64)))
    assert o3d.io.write_point_cloud(str(path), cloud, write_ascii=not binary)


# format: (suffix, writer(path, points), reader(path) -> array, reference parse(bytes) -> array or None)
FORMATS = {
    "npy": (".npy", lambda p, x: np.save(p, x), lambda p: np.hstack([a for a in read_point_cloud(p) if a is not None]),
            parse_npy),
    "txt": (".txt", write_text, lambda p: np.hstack([a for a in read_point_cloud(p) if a is not None]), parse_text),
    "xyz-comma": (".xyz", lambda p, x: write_text(p, x, ","),
                  lambda p: np.hstack([a for a in read_point_cloud(p) if a is not None]), parse_text),
    "off": (".off", write_off, read_off_vertices, parse_off),
    "ply": (".ply", lambda p, x: write_open3d(p, x, True), lambda p: read_point_cloud(p)[0], None),
    "pcd-ascii": (".pcd", lambda p, x: write_open3d(p, x, False), lambda p: read_point_cloud(p)[0], None),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_fuzz_every_reader_gives_a_named_error_or_what_the_file_holds(tmp_path, fmt):
    """Random truncation, random bytes and random column counts: a ``ValueError``/``FileNotFoundError``
    naming the file, or a cloud equal to the file's content (the written cloud when unchanged)."""
    suffix, write, read, reference = FORMATS[fmt]
    rng = np.random.default_rng(sum(map(ord, fmt)))
    for trial in range(40):
        columns = int(rng.integers(1, 10)) if fmt in ("npy", "txt", "xyz-comma") and trial % 4 == 3 else 3
        written = np.round(cloud(int(rng.integers(3, 30)), max(columns, 1), seed=trial), 3)
        path = tmp_path / f"trial{trial}{suffix}"
        write(path, written)
        data = path.read_bytes()
        mutation = ("none", "truncate", "bytes", "columns")[trial % 4]
        if reference is None and mutation == "bytes":  # PLY/PCD carry no checksum: a changed value is undetectable
            mutation = "truncate"
        if mutation == "truncate":
            data = data[:int(rng.integers(0, len(data)))]
        elif mutation == "bytes":
            data = bytearray(data)
            for position in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
                data[position] = int(rng.integers(0, 256))
            data = bytes(data)
        path.write_bytes(data)
        try:
            result = read(path)
        except (ValueError, FileNotFoundError) as error:
            assert path.name in str(error), (mutation, error)
            assert mutation != "none" and not (mutation == "columns" and columns in (3, 6, 7, 8, 9)), (mutation, error)
            continue
        if mutation == "none" or (mutation == "columns" and reference is None):
            expected = written if fmt != "off" else written[:, :3]
        elif reference is None:     # Open3D formats: a damaged file is an error or reads whole
            expected = written[:, :3]
        else:
            try:
                expected = reference(data)
            except Exception:
                pytest.fail(f"{fmt} {mutation}: {path.name} read although it is malformed")
        expected = expected[:, :result.shape[1]] if result.shape[1] < expected.shape[1] else expected
        np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6, err_msg=f"{fmt} {mutation}")


def test_fuzz_hdf5_gives_a_named_error_or_what_the_file_holds(tmp_path):
    """HDF5 (PointNet's ModelNet40 layout): random truncation and random bytes. HDF5 keeps no checksum
    of its data, so a changed value can only be caught by comparing with what h5py itself reads."""
    import h5py

    from pcattn.data import ModelNetHDF5

    rng = np.random.default_rng(5)
    for trial in range(24):
        root = tmp_path / f"trial{trial}"
        root.mkdir()
        (root / "shape_names.txt").write_text("a\nb\n")
        written = np.round(rng.standard_normal((3, 16, 3)), 3).astype(np.float32)
        path = root / "ply_data_train0.h5"
        with h5py.File(path, "w") as handle:
            handle["data"] = written
            handle["label"] = np.array([[0], [1], [0]], dtype=np.uint8)
        data = bytearray(path.read_bytes())
        if trial % 2:
            data = data[:int(rng.integers(0, len(data)))]
        else:
            for position in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
                data[position] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))
        try:
            dataset = ModelNetHDF5(root, "train", num_points=16, sampling="first", cache=False)
        except (ValueError, FileNotFoundError) as error:
            assert path.name in str(error) or "shape_names" in str(error), error
            continue
        with h5py.File(path, "r") as handle:      # read, so h5py itself can read it: the same clouds
            expected = np.asarray(handle["data"], dtype=np.float32)
        got = np.stack([dataset[i]["pos"].numpy() for i in range(len(dataset))])
        assert got.shape == expected.shape
