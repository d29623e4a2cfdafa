"""Finding ShapeNetPart on disk: guessing the layout, the usual folder names, extracting a zip and
downloading one (``download_url`` replaced by a copy of a local zip: no network)."""
import shutil
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pcattn.data.shapenetpart import (SHAPENET_CATEGORY_PARTS, SHAPENET_FOLDERS, SHAPENET_URLS, ShapeNetPart,
                                      guess_shapenetpart_format, locate_shapenetpart)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "shapenetpart"
NORMAL = FIXTURES / SHAPENET_FOLDERS["normal"]
V0 = FIXTURES / SHAPENET_FOLDERS["v0"]
needs_fixtures = pytest.mark.skipif(not (NORMAL.is_dir() and V0.is_dir()), reason="shared fixtures absent")


def write_hdf5_layout(folder: Path) -> Path:
    """PointNet's HDF5 layout: one ``ply_data_train0.h5`` (two tables) and the train list naming it."""
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with h5py.File(folder / "ply_data_train0.h5", "w") as handle:
        handle.create_dataset("data", data=rng.normal(size=(2, 2048, 3)).astype(np.float32))
        handle.create_dataset("label", data=np.full((2, 1), 15, dtype=np.uint8))
        handle.create_dataset("pid", data=rng.choice(SHAPENET_CATEGORY_PARTS[15], (2, 2048)).astype(np.uint8))
    (folder / "train_hdf5_file_list.txt").write_text("ply_data_train0.h5\n")
    return folder


def files_under(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def make_zip(archive: Path, source: Path, top: str) -> Path:
    """``source``'s files under ``top/`` in a zip, with the ``__MACOSX/`` entries macOS adds."""
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr(f"{top}/", "")
        for name in files_under(source):
            handle.write(source / name, f"{top}/{name}")
        handle.writestr(f"__MACOSX/{top}/._synsetoffset2category.txt", b"\x00\x05\x16\x07 resource fork")
        handle.writestr(f"__MACOSX/._{top}", b"\x00\x05\x16\x07")
    return archive


def no_download(*args, **kwargs):
    raise AssertionError(f"download_url called with {args} {kwargs}")


@needs_fixtures
def test_guess_each_layout(tmp_path):
    assert guess_shapenetpart_format(NORMAL) == "normal"
    assert guess_shapenetpart_format(V0) == "v0"
    hdf5 = write_hdf5_layout(tmp_path / "h5")
    assert guess_shapenetpart_format(hdf5) == "hdf5"
    assert len(ShapeNetPart(hdf5, "train", format="hdf5")) == 2  # the written layout is a real one
    assert guess_shapenetpart_format(FIXTURES) is None  # the parent of the layouts is none itself
    assert guess_shapenetpart_format(tmp_path / "absent") is None
    (tmp_path / "empty" / "04379243" / "points").mkdir(parents=True)
    (tmp_path / "empty" / "Table").mkdir()
    (tmp_path / "empty" / "Table" / "a.txt").write_text("1 2 3\n")  # not a synset name
    assert guess_shapenetpart_format(tmp_path / "empty") is None


@needs_fixtures
def test_locate_by_the_usual_folder_names(tmp_path, monkeypatch):
    import torch_geometric.data

    monkeypatch.setattr(torch_geometric.data, "download_url", no_download)
    parent = tmp_path / "datasets"
    parent.mkdir()
    (parent / SHAPENET_FOLDERS["normal"]).symlink_to(NORMAL, target_is_directory=True)
    (parent / SHAPENET_FOLDERS["v0"]).symlink_to(V0, target_is_directory=True)
    hdf5 = write_hdf5_layout(parent / SHAPENET_FOLDERS["hdf5"])
    assert locate_shapenetpart(parent) == ("normal", parent / SHAPENET_FOLDERS["normal"])
    assert locate_shapenetpart(parent, "v0") == ("v0", parent / SHAPENET_FOLDERS["v0"])
    assert locate_shapenetpart(parent, "hdf5", download=True) == ("hdf5", hdf5)
    assert locate_shapenetpart(V0) == ("v0", V0)  # a layout folder itself
    assert locate_shapenetpart(V0, "v0") == ("v0", V0)
    (parent / SHAPENET_FOLDERS["normal"]).unlink()
    monkeypatch.setenv("PCATTN_DATA", str(parent))  # root=None: the data directory
    assert locate_shapenetpart() == ("hdf5", hdf5)  # order: normal, hdf5, v0
    shutil.move(hdf5, parent / "hdf5_data")  # unzipped by hand: PointNet's archive's own top folder
    assert locate_shapenetpart(None, "hdf5") == ("hdf5", parent / "hdf5_data")
    format, folder = locate_shapenetpart(None, "v0")
    data = ShapeNetPart(folder, "train", format=format, num_points=256)
    assert data.shape_categories.tolist() == list(range(16))


@needs_fixtures
def test_zip_is_extracted_without_macos_entries(tmp_path, monkeypatch):
    import torch_geometric.data

    monkeypatch.setattr(torch_geometric.data, "download_url", no_download)
    name = SHAPENET_FOLDERS["normal"]
    make_zip(tmp_path / f"{name}.zip", NORMAL, name)
    assert locate_shapenetpart(tmp_path) == ("normal", tmp_path / name)
    assert files_under(tmp_path / name) == files_under(NORMAL)
    table = "04379243/1a00aa6b75362cc5b324368d54a7416f.txt"
    assert (tmp_path / name / table).read_bytes() == (NORMAL / table).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name, f"{name}.zip"]  # no __MACOSX/, no staging folder
    (tmp_path / f"{name}.zip").unlink()
    assert locate_shapenetpart(tmp_path, "normal") == ("normal", tmp_path / name)  # found, not extracted again

    # PointNet's HDF5 zip holds hdf5_data/: extracted under the usual name
    make_zip(tmp_path / "shapenet_part_seg_hdf5_data.zip", write_hdf5_layout(tmp_path / "src" / "x"), "hdf5_data")
    shutil.rmtree(tmp_path / "src")
    assert locate_shapenetpart(tmp_path, "hdf5") == ("hdf5", tmp_path / SHAPENET_FOLDERS["hdf5"])
    assert not (tmp_path / "hdf5_data").exists() and not (tmp_path / "__MACOSX").exists()
    assert len(ShapeNetPart(tmp_path / SHAPENET_FOLDERS["hdf5"], "train", format="hdf5")) == 2


def test_zip_errors(tmp_path):
    (tmp_path / "shapenet_part_seg_hdf5_data.zip").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ValueError, match="shapenet_part_seg_hdf5_data.zip: not a readable zip"):
        locate_shapenetpart(tmp_path, "hdf5")
    make_zip(tmp_path / "shapenet_part_seg_hdf5_data.zip", write_hdf5_layout(tmp_path / "src"), "elsewhere")
    with pytest.raises(ValueError, match=r"expected a top folder hdf5_data or shapenet_part_seg_hdf5_data/.*'elsewhere'"):
        locate_shapenetpart(tmp_path, "hdf5")
    make_zip(tmp_path / "shapenet_part_seg_hdf5_data.zip", tmp_path / "src", "hdf5_data")
    (tmp_path / "hdf5_data").mkdir()
    (tmp_path / "hdf5_data" / "half.h5").write_bytes(b"")  # a cut extraction
    with pytest.raises(FileExistsError, match="hdf5_data: exists but holds no ShapeNetPart 'hdf5' files"):
        locate_shapenetpart(tmp_path, "hdf5")


@needs_fixtures
def test_download_fetches_the_documented_archive(tmp_path, monkeypatch):
    import torch_geometric.data

    zips = tmp_path / "zips"
    zips.mkdir()
    make_zip(zips / f"{SHAPENET_FOLDERS['v0']}.zip", V0, SHAPENET_FOLDERS["v0"])
    make_zip(zips / "shapenet_part_seg_hdf5_data.zip", write_hdf5_layout(tmp_path / "h5"), "hdf5_data")
    asked = []

    def fake_download_url(url, folder, *args, **kwargs):
        asked.append(url)
        target = Path(folder) / url.rpartition("/")[2]
        shutil.copy(zips / target.name, target)
        return str(target)

    monkeypatch.setattr(torch_geometric.data, "download_url", fake_download_url)
    data = tmp_path / "data"
    format, folder = locate_shapenetpart(data, "v0", download=True)
    assert asked == ["https://shapenet.cs.stanford.edu/ericyi/shapenetcore_partanno_segmentation_benchmark_v0.zip"]
    assert (format, folder) == ("v0", data / SHAPENET_FOLDERS["v0"]) and files_under(folder) == files_under(V0)
    assert len(ShapeNetPart(folder, "train", format="v0", num_points=128)) == 16
    assert locate_shapenetpart(data, "hdf5", download=True) == ("hdf5", data / SHAPENET_FOLDERS["hdf5"])
    assert asked[1:] == ["https://shapenet.cs.stanford.edu/media/shapenet_part_seg_hdf5_data.zip"]
    assert locate_shapenetpart(data, "v0", download=True) == ("v0", folder) and len(asked) == 2  # no second fetch
    assert SHAPENET_URLS["normal"] == ("https://shapenet.cs.stanford.edu/media/"
                                       "shapenetcore_partanno_segmentation_benchmark_v0_normal.zip")

    def offline(url, folder, *args, **kwargs):
        asked.append(url)
        (Path(folder) / url.rpartition("/")[2]).write_bytes(b"PK\x03\x04 half")
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch_geometric.data, "download_url", offline)
    with pytest.raises(OSError, match="normal.zip failed .*offline: get .*from a mirror"):
        locate_shapenetpart(tmp_path / "empty", download=True)  # no format: the normal layout is fetched
    assert asked[-1] == SHAPENET_URLS["normal"]
    assert not (tmp_path / "empty" / f"{SHAPENET_FOLDERS['normal']}.zip").exists()  # the cut file is gone


@needs_fixtures
def test_requested_format_must_match_the_files(tmp_path):
    with pytest.raises(ValueError, match=r"benchmark_v0_normal: holds ShapeNetPart files of format 'normal', but "
                                         r"format 'v0' was requested"):
        locate_shapenetpart(NORMAL, "v0")
    (tmp_path / SHAPENET_FOLDERS["v0"]).symlink_to(NORMAL, target_is_directory=True)  # misnamed
    with pytest.raises(ValueError, match="format 'normal', but format 'v0' was requested"):
        locate_shapenetpart(tmp_path, "v0")
    assert locate_shapenetpart(tmp_path) == ("normal", tmp_path / SHAPENET_FOLDERS["v0"])  # no format: the files say
    with pytest.raises(ValueError, match="format must be one of"):
        locate_shapenetpart(tmp_path, "ply")


def test_nothing_found_says_what_was_looked_for(tmp_path, monkeypatch):
    import torch_geometric.data

    monkeypatch.setattr(torch_geometric.data, "download_url", no_download)
    with pytest.raises(FileNotFoundError) as error:
        locate_shapenetpart(tmp_path)
    message = str(error.value)
    for expected in [str(tmp_path), *SHAPENET_FOLDERS.values(), "hdf5_data/", "ply_data_*.h5",
                     *(f"{name}.zip" for name in SHAPENET_FOLDERS.values()), "download=True", "--download",
                     "datasets/README.md", SHAPENET_URLS["normal"]]:
        assert expected in message, expected
    write_hdf5_layout(tmp_path / SHAPENET_FOLDERS["hdf5"])
    with pytest.raises(FileNotFoundError, match=r"no ShapeNetPart v0 files found .*benchmark_v0/ and the archives "
                                                r"shapenetcore_partanno_segmentation_benchmark_v0.zip\); found other "
                                                r"layouts: shapenet_part_seg_hdf5_data \('hdf5'\)"):
        locate_shapenetpart(tmp_path, "v0")
