"""pcattn.data datasets: every format from files written in its exact real layout, the real samples in
../shared/fixtures, clear errors for bad files, the cache, the built-in shapes and build_dataset."""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pcattn.data import (
    BuiltinShapes,
    ModelNetHDF5,
    ModelNetNormalResampled,
    ModelNetOFF,
    PointFolder,
    build_dataset,
    guess_format,
    train_transforms,
)
from pcattn.data import builtin as builtin_module
from pcattn.data import modelnet as modelnet_module
from pcattn.data.builtin import BUILTIN_CLASSES, default_data_dir, generate_builtin_shapes, generate_shape

from conftest import TINY_BUILTIN

CLASSES = ["airplane", "night_stand", "chair"]  # night_stand: a class name with an underscore


def check_samples(dataset, num_points, use_normals=False):
    assert len(dataset) > 0
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample["pos"].shape == (num_points, 3) and sample["pos"].dtype == torch.float32
        assert sample["label"].shape == () and sample["label"].dtype == torch.long
        assert 0 <= int(sample["label"]) < len(dataset.classes)
        assert ("normals" in sample) == use_normals
        if use_normals:
            assert sample["normals"].shape == (num_points, 3)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert batch["pos"].shape == (min(2, len(dataset)), num_points, 3)


# ---------------------------------------------------------------------------------------------
# Writers of the real layouts
# ---------------------------------------------------------------------------------------------

def cloud_for(label, count, rng):
    """A cloud whose centre encodes its label (so a wrong label is visible in the data)."""
    pos = rng.normal(scale=0.1, size=(count, 3))
    pos[:, 0] += label
    normals = rng.normal(size=(count, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return np.concatenate([pos, normals], axis=1)


def write_normal_resampled(root: Path, prefix="modelnet40", per_class=(2, 1), points=64, classes=CLASSES):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{prefix}_shape_names.txt").write_text("\n".join(classes) + "\n")
    lists = {"train": [], "test": []}
    for label, category in enumerate(classes):
        (root / category).mkdir(exist_ok=True)
        number = 0
        for split, count in zip(("train", "test"), per_class):
            for _ in range(count):
                number += 1
                name = f"{category}_{number:04d}"
                np.savetxt(root / category / f"{name}.txt", cloud_for(label, points, rng), fmt="%.6f", delimiter=",")
                lists[split].append(name)
    for split, names in lists.items():
        (root / f"{prefix}_{split}.txt").write_text("\n".join(names) + "\n")
    return root


def off_text(rng, quirk=False, offset=0.0):
    """A small closed box mesh as Princeton OFF, optionally with the 'OFF8 12 0' header quirk."""
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=float)
    corners = corners * rng.uniform(1, 30, size=3) + rng.uniform(-50, 50, size=3) + offset
    faces = [(0, 1, 3), (0, 3, 2), (4, 6, 7), (4, 7, 5), (0, 4, 5), (0, 5, 1),
             (2, 3, 7), (2, 7, 6), (0, 2, 6), (0, 6, 4), (1, 5, 7), (1, 7, 3)]
    header = "OFF8 12 0\n" if quirk else "OFF\n8 12 0\n"
    return header + "".join(f"{x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in corners) + \
        "".join(f"3 {a} {b} {c}\n" for a, b, c in faces)


def write_modelnet_off(root: Path, classes=("bathtub", "bed", "chair"), per_class=(2, 1)):
    rng = np.random.default_rng(1)
    for category in classes:
        number = 0
        for split, count in zip(("train", "test"), per_class):
            folder = root / category / split
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                number += 1
                (folder / f"{category}_{number:04d}.off").write_text(off_text(rng, quirk=number % 2 == 0))
    return root


def write_hdf5(root: Path, classes=40, normals=True):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"class{i}" for i in range(classes)]
    (root / "shape_names.txt").write_text("\n".join(names) + "\n")
    expected = {}
    for split, sizes in (("train", (5, 3)), ("test", (4,))):
        labels_all = []
        for number, size in enumerate(sizes):
            labels = rng.integers(0, classes, size=(size, 1)).astype(np.uint8)
            data = np.stack([cloud_for(int(label), 2048, rng)[:, :3] for label in labels[:, 0]]).astype(np.float32)
            with h5py.File(root / f"ply_data_{split}{number}.h5", "w") as handle:
                handle.create_dataset("data", data=data)
                handle.create_dataset("label", data=labels)
                handle.create_dataset("faceId", data=np.zeros((size, 2048), dtype=np.int32))
                if normals:
                    handle.create_dataset("normal", data=np.tile([0, 0, 1], (size, 2048, 1)).astype(np.float32))
            labels_all.append(labels[:, 0])
        expected[split] = np.concatenate(labels_all)
    (root / "train_files.txt").write_text("".join(f"data/{root.name}/ply_data_train{i}.h5\n" for i in range(2)))
    return expected


# ---------------------------------------------------------------------------------------------
# Formats from generated files
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampling", ["first", "fps"])
def test_normal_resampled_layout(tmp_path, sampling):
    root = write_normal_resampled(tmp_path / "modelnet40_normal_resampled")
    train = ModelNetNormalResampled(root, "train", num_points=32, use_normals=True, sampling=sampling)
    test = ModelNetNormalResampled(root, "test", num_points=32)
    assert train.classes == CLASSES and len(train) == 6 and len(test) == 3
    check_samples(train, 32, use_normals=True)
    check_samples(test, 32)
    for index in range(len(train)):  # labels follow the class of each file
        sample = train[index]
        assert train.names[index].startswith(train.classes[int(sample["label"])])
        assert abs(sample["pos"][:, 0].mean().item() - int(sample["label"])) < 0.2
    raw = np.loadtxt(root / "night_stand" / "night_stand_0001.txt", delimiter=",")
    if sampling == "first":
        np.testing.assert_allclose(train[2]["pos"].numpy(), raw[:32, :3], atol=1e-6)
        np.testing.assert_allclose(train[2]["normals"].numpy(), raw[:32, 3:], atol=1e-6)
    else:  # farthest point samples are distinct rows of the file
        picked = train[2]["pos"].numpy()
        distance = np.linalg.norm(picked[:, None, :] - raw[None, :, :3], axis=2).min(axis=1)
        assert distance.max() < 1e-5
        assert len({tuple(p) for p in train[2]["pos"].numpy()}) == 32


def test_normal_resampled_10_class_variant(tmp_path):
    root = tmp_path / "modelnet40_normal_resampled"
    write_normal_resampled(root)
    write_normal_resampled(root, prefix="modelnet10", classes=["chair", "night_stand"])
    ten = ModelNetNormalResampled(root, "train", num_points=16, num_classes=10)
    forty = ModelNetNormalResampled(root, "train", num_points=16)
    assert ten.classes == ["chair", "night_stand"] and len(ten) == 4
    assert forty.classes == CLASSES and len(forty) == 6
    assert ten.names[0].startswith("chair") and int(ten[0]["label"]) == 0


def test_hdf5_layout(tmp_path):
    root = tmp_path / "modelnet40_ply_hdf5_2048"
    expected = write_hdf5(root)
    train = ModelNetHDF5(root, "train", num_points=1024, use_normals=True)
    test = ModelNetHDF5(root, "test", num_points=512)
    assert len(train) == 8 and len(test) == 4 and len(train.classes) == 40
    np.testing.assert_array_equal(train.labels, expected["train"])
    check_samples(train, 1024, use_normals=True)
    check_samples(test, 512)
    for index in range(len(train)):
        assert abs(train[index]["pos"][:, 0].mean().item() - expected["train"][index]) < 0.2
    assert torch.allclose(train[0]["normals"], torch.tensor([0.0, 0.0, 1.0]).expand(1024, 3))


def test_hdf5_farthest_point_sampling_is_cached(tmp_path, monkeypatch):
    root = tmp_path / "modelnet40_ply_hdf5_2048"
    expected = write_hdf5(root)
    fps = ModelNetHDF5(root, "train", num_points=64, sampling="fps")
    np.testing.assert_array_equal(fps.labels, expected["train"])
    check_samples(fps, 64)
    assert fps.cache_path.is_file()
    first = ModelNetHDF5(root, "train", num_points=64, sampling="first")
    assert torch.equal(fps[3]["pos"][0], first[3]["pos"][0])  # FPS starts at the first point
    monkeypatch.setattr(modelnet_module, "_batched_fps", lambda *a: pytest.fail("FPS recomputed"))
    again = ModelNetHDF5(root, "train", num_points=64, sampling="fps")
    assert torch.equal(again[5]["pos"], fps[5]["pos"])


def test_hdf5_errors(tmp_path):
    h5py = pytest.importorskip("h5py")
    root = tmp_path / "h5"
    write_hdf5(root, normals=False)
    with pytest.raises(ValueError, match="no 'normal' dataset"):
        ModelNetHDF5(root, "train", num_points=64, use_normals=True)
    with h5py.File(root / "ply_data_test0.h5", "r+") as handle:
        handle["data"][1, 5, 0] = np.nan
    with pytest.raises(ValueError, match=r"ply_data_test0.h5: non-finite coordinates in shape 1"):
        ModelNetHDF5(root, "test", num_points=64)
    with h5py.File(root / "ply_data_test0.h5", "r+") as handle:
        handle["label"][0] = 77
    with pytest.raises(ValueError, match=r"ply_data_test0.h5: label 77 .* out of range"):
        ModelNetHDF5(root, "test", num_points=64)
    (root / "ply_data_test0.h5").write_bytes(b"truncated")
    with pytest.raises(ValueError, match=r"ply_data_test0.h5: not a readable HDF5"):
        ModelNetHDF5(root, "test", num_points=64)


def test_modelnet_off_from_extracted_folder(tmp_path):
    write_modelnet_off(tmp_path / "ModelNet10")
    train = ModelNetOFF(tmp_path, "train", num_points=128, use_normals=True)
    assert train.classes == ["bathtub", "bed", "chair"] and len(train) == 6
    check_samples(train, 128, use_normals=True)
    for index in range(len(train)):
        sample = train[index]
        assert train.names[index].startswith(train.classes[int(sample["label"])])
        radius = sample["pos"].norm(dim=1)
        assert radius.max().item() == pytest.approx(1.0, abs=1e-5)  # normalised to the unit sphere
        assert sample["pos"].mean(0).abs().max() < 1e-4
        assert torch.allclose(sample["normals"].norm(dim=1), torch.ones(128), atol=1e-5)
    assert train.up_axis == 2
    # a box surface: every point lies on one of the faces, whose normals are axis-aligned
    assert torch.allclose(train[0]["normals"].abs().max(dim=1).values, torch.ones(128), atol=1e-5)
    assert len(ModelNetOFF(tmp_path / "ModelNet10", "test", num_points=64)) == 3


def test_modelnet_off_from_zip_like_the_download(tmp_path):
    source = write_modelnet_off(tmp_path / "src" / "ModelNet10")
    root = tmp_path / "data"
    root.mkdir()
    with zipfile.ZipFile(root / "ModelNet10.zip", "w") as archive:
        for path in sorted(source.rglob("*")):
            archive.write(path, Path("ModelNet10") / path.relative_to(source))
        archive.writestr("__MACOSX/ModelNet10/._bathtub", "osx metadata")
    test = ModelNetOFF(root, "test", num_points=64, name="10")
    assert (root / "ModelNet10" / "chair" / "test" / "chair_0003.off").is_file()
    assert not (root / "__MACOSX").exists()
    assert test.classes == ["bathtub", "bed", "chair"] and len(test) == 3
    check_samples(test, 64)


def test_modelnet_off_missing_gives_helpful_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ModelNet10.zip"):
        ModelNetOFF(tmp_path, "train")


def test_point_folder_all_extensions(tmp_path):
    o3d = pytest.importorskip("open3d")
    rng = np.random.default_rng(3)
    root = tmp_path / "folder"
    writers = {
        ".npy": lambda path, cloud: np.save(path, cloud),
        ".txt": lambda path, cloud: np.savetxt(path, cloud),
        ".xyz": lambda path, cloud: np.savetxt(path, cloud[:, :3]),
    }

    def write_o3d(path, cloud):
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cloud[:, :3]))
        pcd.normals = o3d.utility.Vector3dVector(cloud[:, 3:])
        o3d.io.write_point_cloud(str(path), pcd)

    writers[".ply"] = writers[".pcd"] = write_o3d
    for label, category in enumerate(["cone", "cup", "mug"]):
        for split in ("train", "test"):
            folder = root / category / split
            folder.mkdir(parents=True)
            for number, suffix in enumerate(writers):
                writers[suffix](folder / f"{category}_{number:04d}{suffix}", cloud_for(label, 100, rng))
    train = PointFolder(root, "train", num_points=50, normalize=False)
    assert train.classes == ["cone", "cup", "mug"] and len(train) == 15
    check_samples(train, 50)
    for index in range(len(train)):
        assert abs(train[index]["pos"][:, 0].mean().item() - int(train[index]["label"])) < 0.25
    normalized = PointFolder(root, "test", num_points=200)  # fewer points in the files: padded by repeats
    check_samples(normalized, 200)
    assert normalized[0]["pos"].norm(dim=1).max() <= 1 + 1e-5
    with pytest.raises(ValueError, match=r"xyz.*no normals"):
        PointFolder(root, "train", num_points=50, use_normals=True, cache=False)


# ---------------------------------------------------------------------------------------------
# Real samples in ../shared/fixtures
# ---------------------------------------------------------------------------------------------

def test_real_normal_resampled_subset(shared_fixtures, tmp_path):
    root = shared_fixtures / "modelnet40_normal_resampled_subset"
    train = ModelNetNormalResampled(root, "train", num_points=1024, use_normals=True, cache_dir=tmp_path)
    test = ModelNetNormalResampled(root, "test", num_points=1024, cache_dir=tmp_path)
    assert len(train.classes) == 40 and train.classes[:2] == ["airplane", "bathtub"]
    assert len(train) == 3 and len(test) == 3
    check_samples(train, 1024, use_normals=True)
    for dataset in (train, test):
        for index in range(len(dataset)):
            assert dataset.classes[int(dataset[index]["label"])] == dataset.names[index].rsplit("_", 1)[0]
    sample = train[0]
    assert sample["pos"].norm(dim=1).max() <= 1.0 + 1e-3
    assert torch.allclose(sample["normals"].norm(dim=1), torch.ones(1024), atol=1e-3)
    assert build_dataset("modelnet40", root=root, split="test", num_points=256, cache_dir=tmp_path).classes == \
        train.classes


def test_real_off_meshes(shared_fixtures, tmp_path):
    root = shared_fixtures / "ModelNet10_off"
    dataset = ModelNetOFF(root, "train", num_points=512, use_normals=True, cache_dir=tmp_path)
    assert dataset.classes == ["bathtub"] and dataset.names == ["bathtub_0001", "bathtub_0002", "bathtub_0004"]
    check_samples(dataset, 512, use_normals=True)
    for index in range(3):
        assert dataset[index]["pos"].norm(dim=1).max().item() == pytest.approx(1.0, abs=1e-5)
    assert guess_format(root)[0] == "off"


def test_read_only_root_caches_elsewhere(shared_fixtures, tmp_path, monkeypatch):
    """Shared sample data stays untouched: a folder whose permission bits are read-only is not
    written to (even by root); the cache goes to $PCATTN_CACHE (default ~/.cache/pcattn)."""
    monkeypatch.setenv("PCATTN_CACHE", str(tmp_path / "cache"))
    root = write_normal_resampled(tmp_path / "readonly")
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            path.chmod(0o555)
    try:
        dataset = ModelNetNormalResampled(root, "train", num_points=16)
        assert dataset.cache_path.is_relative_to(tmp_path / "cache") and dataset.cache_path.is_file()
        assert not (root / ".pcattn_cache").exists()
    finally:
        for path in [root, *root.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
    before = sorted(p.name for p in shared_fixtures.rglob("*"))
    ModelNetOFF(shared_fixtures / "ModelNet10_off", "train", num_points=64)
    assert sorted(p.name for p in shared_fixtures.rglob("*")) == before


# ---------------------------------------------------------------------------------------------
# Bad files
# ---------------------------------------------------------------------------------------------

def test_normal_resampled_bad_files(tmp_path):
    root = write_normal_resampled(tmp_path / "nr")
    target = root / "chair" / "chair_0001.txt"
    lines = target.read_text().splitlines()

    def expect(error, *fragments, split="train"):
        with pytest.raises(error) as raised:
            ModelNetNormalResampled(root, split, num_points=16)
        for fragment in fragments:
            assert fragment in str(raised.value), str(raised.value)

    target.write_text("\n".join(lines[:3] + [",".join(lines[3].split(",")[:5])] + lines[4:]) + "\n")
    expect(ValueError, "chair_0001.txt", "line 4", "expected 6 values", "got 5")
    target.write_text("")
    expect(ValueError, "chair_0001.txt", "empty point cloud")
    target.write_text("\n".join(lines[:9] + ["nan,0,0,0,0,1"] + lines[10:]) + "\n")
    expect(ValueError, "chair_0001.txt", "non-finite", "point 9")
    target.unlink()
    expect(FileNotFoundError, "chair_0001.txt", "line 5 of", "modelnet40_train.txt")
    (root / "modelnet40_test.txt").write_text("airplane_0003\ntoaster_0001\n")
    expect(ValueError, "modelnet40_test.txt, line 2", "'toaster'", split="test")
    (root / "modelnet40_test.txt").write_text("\n")
    expect(ValueError, "modelnet40_test.txt", "empty", split="test")


def test_off_bad_files(tmp_path):
    root = write_modelnet_off(tmp_path / "ModelNet10")
    broken = root / "bed" / "train" / "bed_0002.off"
    broken.write_text(broken.read_text().splitlines()[0] + "\n0 0 0\n")  # 'OFF8 12 0' then one vertex
    with pytest.raises(ValueError, match=r"bed_0002.off: truncated file, header promises 8 vertices"):
        ModelNetOFF(root, "train", num_points=32)
    broken.write_text("OFF\n3 1 0\n0 0 0\n1 1 1\n2 2 2\n3 0 1 2\n")
    with pytest.raises(ValueError, match=r"bed_0002.off: mesh has zero surface area"):
        ModelNetOFF(root, "train", num_points=32)
    broken.unlink()
    (root / "bed" / "train" / "bed_0001.off").unlink()
    with pytest.raises(FileNotFoundError, match=r"bed[/\\]train: class folder has no .off files"):
        ModelNetOFF(root, "train", num_points=32)
    (root / "bed" / "train" / "notes.md").write_text("hi")
    with pytest.raises(ValueError, match=r"notes.md: unexpected file"):
        ModelNetOFF(root, "train", num_points=32)


def test_point_folder_bad_files(tmp_path):
    root = tmp_path / "folder"
    for category in ("a", "b"):
        (root / category / "train").mkdir(parents=True)
        np.save(root / category / "train" / f"{category}_1.npy",
                np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32))
    (root / "b" / "train" / "b_2.obj").write_text("v 0 0 0")
    with pytest.raises(ValueError, match=r"b_2.obj: unknown extension '.obj'"):
        PointFolder(root, "train", num_points=8)
    (root / "b" / "train" / "b_2.obj").unlink()
    (root / "c" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"c[/\\]train: class folder has no point files"):
        PointFolder(root, "train", num_points=8)
    np.save(root / "c" / "train" / "c_1.npy", np.full((10, 3), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match=r"c_1.npy: non-finite"):
        PointFolder(root, "train", num_points=8)
    with pytest.raises(FileNotFoundError, match=r"a[/\\]test: class folder 'a' has no 'test' folder"):
        PointFolder(root, "test", num_points=8)


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------

def test_cache_avoids_reparsing_and_is_invalidated_by_changes(tmp_path, monkeypatch):
    root = write_normal_resampled(tmp_path / "nr")
    first = ModelNetNormalResampled(root, "train", num_points=16, use_normals=True)
    assert first.cache_path.is_file() and first.cache_path.parent == root / ".pcattn_cache"
    assert not [p for p in first.cache_path.parent.iterdir() if p.suffix == ".tmp"]  # atomic write left no temp

    def fail(*args, **kwargs):
        raise AssertionError("parsed a text file although the cache is valid")

    monkeypatch.setattr(modelnet_module, "read_text_points", fail)
    second = ModelNetNormalResampled(root, "train", num_points=16, use_normals=True)
    for index in range(len(first)):
        assert torch.equal(first[index]["pos"], second[index]["pos"])
        assert torch.equal(first[index]["label"], second[index]["label"])
    # other options (different cache_points or split) have their own cache file
    with pytest.raises(AssertionError, match="parsed a text file"):
        ModelNetNormalResampled(root, "train", num_points=32)
    monkeypatch.undo()

    # a changed file (size and mtime) invalidates the cache
    target = root / "chair" / "chair_0001.txt"
    text = target.read_text().replace("\n", "\n", 1)
    lines = text.splitlines()
    lines[0] = "0.500000,0.500000,0.500000,0.000000,0.000000,1.000000"
    target.write_text("\n".join(lines) + "\n")
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    refreshed = ModelNetNormalResampled(root, "train", num_points=16)
    chair = refreshed.names.index("chair_0001")
    assert torch.allclose(refreshed[chair]["pos"][0], torch.tensor([0.5, 0.5, 0.5]))

    # a damaged cache is rebuilt, with a warning, never trusted
    refreshed.cache_path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable cache"):
        rebuilt = ModelNetNormalResampled(root, "train", num_points=16)
    assert torch.equal(rebuilt[chair]["pos"], refreshed[chair]["pos"])


def test_cache_disabled_and_getitem_returns_copies(tmp_path):
    root = write_normal_resampled(tmp_path / "nr")
    dataset = ModelNetNormalResampled(root, "train", num_points=16, cache=False)
    assert not (root / ".pcattn_cache").exists()
    sample = dataset[0]
    sample["pos"].add_(100.0)  # callers may modify samples in place without corrupting the dataset
    assert dataset[0]["pos"].abs().max() < 50


# ---------------------------------------------------------------------------------------------
# Built-in shapes
# ---------------------------------------------------------------------------------------------

def test_builtin_classes_layout_and_labels(tiny_builtin_root):
    assert len(BUILTIN_CLASSES) >= 10
    assert {"cup", "cup_handle", "table_3legs", "table_4legs"} <= set(BUILTIN_CLASSES)
    info = json.loads((tiny_builtin_root / "builtin_info.json").read_text())
    assert info["classes"] == list(BUILTIN_CLASSES)
    train = BuiltinShapes(tiny_builtin_root, "train", num_points=128, use_normals=True, **TINY_BUILTIN)
    test = BuiltinShapes(tiny_builtin_root, "test", num_points=128, **TINY_BUILTIN)
    assert train.classes == list(BUILTIN_CLASSES) and len(train) == 4 * len(BUILTIN_CLASSES)
    assert len(test) == 2 * len(BUILTIN_CLASSES)
    check_samples(train, 128, use_normals=True)
    for dataset in (train, test):
        for index in range(len(dataset)):
            label = int(dataset[index]["label"])
            assert (tiny_builtin_root / dataset.classes[label] / f"{dataset.names[index]}.txt").is_file()
    assert not set(train.names) & set(test.names)
    # the same files read as the PointNet++ layout they are written in
    plain = ModelNetNormalResampled(tiny_builtin_root, "train", num_points=128, prefix="builtin", cache=False)
    assert torch.equal(plain[5]["pos"], train[5]["pos"])


def test_builtin_generation_is_deterministic_by_seed(tmp_path):
    small = dict(train_per_class=1, test_per_class=1, points_per_shape=64)
    generate_builtin_shapes(tmp_path / "a", seed=3, **small)
    generate_builtin_shapes(tmp_path / "b", seed=3, **small)
    generate_builtin_shapes(tmp_path / "c", seed=4, **small)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.txt"))
    assert len(files) == 2 * len(BUILTIN_CLASSES) + 3
    for relative in files:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes()
    shape = Path("cup") / "cup_0001.txt"
    assert (tmp_path / "a" / shape).read_bytes() != (tmp_path / "c" / shape).read_bytes()


@pytest.mark.parametrize("category", BUILTIN_CLASSES)
def test_builtin_shapes_are_valid_clouds(category):
    cloud = generate_shape(category, np.random.default_rng(0), num_points=512)
    assert cloud.shape == (512, 6) and np.isfinite(cloud).all()
    assert np.linalg.norm(cloud[:, :3], axis=1).max() <= 1.0 + 0.05  # unit sphere (+ noise)
    np.testing.assert_allclose(np.linalg.norm(cloud[:, 3:], axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_builtin_local_pairs_differ_only_locally(seed):
    """cup vs cup_handle and table_3legs vs table_4legs: the same parts from the same draws, plus
    (or minus) a small part: the handle, one leg."""
    def areas(builder, *args):
        return [area for area, _ in builder(np.random.default_rng(seed), *args)]

    cup, handled = areas(builtin_module._cup, False), areas(builtin_module._cup, True)
    assert handled[: len(cup)] == cup and len(handled) == len(cup) + 1
    assert 0.05 < handled[-1] / sum(handled) < 0.25

    three, four = areas(builtin_module._table, 3), areas(builtin_module._table, 4)
    top = len(three) - 3
    assert three[:top] == four[:top]  # same top
    assert three[top:] == four[top:top + 3]  # same legs, one more on the 4-legged table
    assert sum(four[top:]) / sum(four) < 0.35


def test_builtin_refuses_foreign_folder_and_mismatched_settings(tmp_path, tiny_builtin_root):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not empty"):
        BuiltinShapes(tmp_path / "mine", num_points=64, **TINY_BUILTIN)
    other = {**TINY_BUILTIN, "seed": 1}
    with pytest.raises(ValueError, match="other settings"):
        BuiltinShapes(tiny_builtin_root, num_points=64, **other)


def test_default_data_dir_is_the_repo_datasets_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("PCATTN_DATA", raising=False)
    repo = Path(__file__).resolve().parents[1]
    assert default_data_dir() == repo / "datasets"
    monkeypatch.setenv("PCATTN_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path


# ---------------------------------------------------------------------------------------------
# build_dataset
# ---------------------------------------------------------------------------------------------

def test_build_dataset_guesses_every_format(tmp_path, tiny_builtin_root):
    write_normal_resampled(tmp_path / "nr")
    write_hdf5(tmp_path / "h5")
    write_modelnet_off(tmp_path / "off" / "ModelNet10")
    folder = tmp_path / "folder" / "a" / "train"
    folder.mkdir(parents=True)
    np.save(folder / "a_1.npy", np.random.default_rng(0).normal(size=(20, 3)))
    expected = {"nr": ModelNetNormalResampled, "h5": ModelNetHDF5, "off": ModelNetOFF, "folder": PointFolder}
    for name, cls in expected.items():
        if name == "folder":  # one class folder while 40 were asked for: built, with a warning
            with pytest.warns(UserWarning, match="holds 1 classes"):
                dataset = build_dataset("modelnet40", root=tmp_path / name, num_points=16)
        else:
            dataset = build_dataset("modelnet10" if name == "off" else "modelnet40", root=tmp_path / name,
                                    num_points=16)
        assert type(dataset) is cls, name
    with pytest.raises(FileNotFoundError, match="no ModelNet40 OFF meshes"):
        build_dataset("modelnet40", root=tmp_path / "off", num_points=16)
    with pytest.raises(FileNotFoundError, match="cannot tell the dataset format"):
        guess_format(tmp_path / "folder" / "a")
    builtin = build_dataset("builtin", root=tiny_builtin_root, split="test", num_points=64,
                            transform=train_transforms(), **TINY_BUILTIN)
    check_samples(builtin, 64)
    with pytest.raises(ValueError, match="dataset must be one of"):
        build_dataset("shapenet")
    with pytest.raises(ValueError, match="format must be one of"):
        build_dataset("modelnet40", format="las", root=tmp_path)
