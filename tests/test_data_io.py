"""pcattn.data.io: OFF meshes (both header forms) and point files, with clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from pcattn.data.io import read_off, read_point_cloud, read_text_points, sample_mesh_surface

# A unit square in the z = 0 plane as two triangles, plus one quad (split into two triangles).
SQUARE_VERTICES = "0 0 0\n1 0 0\n1 1 0\n0 1 0\n"
SQUARE_FACES = "3 0 1 2\n3 0 2 3\n"


def write(path, text):
    path.write_text(text)
    return path


def test_read_off_both_header_forms_agree(tmp_path):
    separate = write(tmp_path / "a.off", "OFF\n4 2 0\n" + SQUARE_VERTICES + SQUARE_FACES)
    joined = write(tmp_path / "b.off", "OFF4 2 0\n" + SQUARE_VERTICES + SQUARE_FACES)  # ModelNet quirk
    crlf = write(tmp_path / "c.off", ("OFF\n4 2 0\n" + SQUARE_VERTICES + SQUARE_FACES).replace("\n", "\r\n"))
    reference = read_off(separate)
    for other in (joined, crlf):
        vertices, faces = read_off(other)
        np.testing.assert_array_equal(vertices, reference[0])
        np.testing.assert_array_equal(faces, reference[1])
    assert reference[0].shape == (4, 3) and reference[0].dtype == np.float32
    assert reference[1].tolist() == [[0, 1, 2], [0, 2, 3]]


def test_read_off_quirk_header_with_real_counts(tmp_path):
    """The exact quirk of the Princeton archive: ``OFF490 518 0`` on one line."""
    rng = np.random.default_rng(0)
    vertices = rng.normal(size=(490, 3))
    faces = np.stack([np.arange(518) % 488, np.arange(518) % 488 + 1, np.arange(518) % 488 + 2], axis=1)
    text = "OFF490 518 0\n" + "".join(f"{x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in vertices)
    text += "".join(f"3 {a} {b} {c}\n" for a, b, c in faces)
    read_vertices, read_faces = read_off(write(tmp_path / "chair_0001.off", text))
    assert read_vertices.shape == (490, 3) and read_faces.shape == (518, 3)
    np.testing.assert_allclose(read_vertices, vertices, atol=1e-5)
    np.testing.assert_array_equal(read_faces, faces)


def test_read_off_triangulates_polygons(tmp_path):
    path = write(tmp_path / "quad.off", "OFF\n# a comment\n\n4 1 0\n" + SQUARE_VERTICES + "4 0 1 2 3\n")
    _, faces = read_off(path)
    assert faces.tolist() == [[0, 1, 2], [0, 2, 3]]
    mixed = write(tmp_path / "mixed.off", "OFF\n5 2 0\n" + SQUARE_VERTICES + "0.5 0.5 1\n4 0 1 2 3\n3 0 1 4\n")
    assert read_off(mixed)[1].shape == (3, 3)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("OFF\n4 2 0\n0 0 0\n1 0 0\n", "truncated file, header promises 4 vertices"),
        ("OFF\n4 2 0\n" + SQUARE_VERTICES + "3 0 1 2\n", "truncated file, header promises 2 faces"),
        ("OFF\n", "truncated file"),
        ("", "empty file"),
        ("PLY\n4 2 0\n", "line 1: expected an 'OFF' header"),
        ("OFF\nfour two zero\n", "line 2: expected 'num_vertices num_faces"),
        ("OFF\n4 2 0\n0 0 0\n1 0\n1 1 0\n0 1 0\n" + SQUARE_FACES, "line 4: a vertex needs 3 coordinates, got 2"),
        ("OFF\n4 2 0\n0 0 0\n1 0 0 7 7\n1 1 0\n0 1 0\n" + SQUARE_FACES, "line 4: a vertex needs 3 coordinates, got 5"),
        ("OFF\n4 2 0\n0 0 0\nnan 0 0\n1 1 0\n0 1 0\n" + SQUARE_FACES, "line 4: non-finite"),
        ("OFF\n4 2 0\n" + SQUARE_VERTICES + "3 0 1 2\n3 0 2 9\n", "line 8: face index out of range"),
        ("OFF\n4 2 0\n" + SQUARE_VERTICES + "3 0 1 2\n4 0 2 3\n", "line 8: face declares 4 corners"),
        ("OFF\n0 0 0\n", "no vertices"),
    ],
)
def test_read_off_errors_name_file_and_problem(tmp_path, text, problem):
    path = write(tmp_path / "broken_0007.off", text)
    with pytest.raises(ValueError) as error:
        read_off(path)
    assert "broken_0007.off" in str(error.value)
    assert problem in str(error.value)


def test_missing_files_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.off"):
        read_off(tmp_path / "nothing.off")
    with pytest.raises(FileNotFoundError, match="nothing.txt"):
        read_point_cloud(tmp_path / "nothing.txt")


@pytest.mark.parametrize("seed", range(5))
def test_surface_sampling_is_area_weighted_and_on_the_mesh(seed):
    rng = np.random.default_rng(seed)
    # two triangles in the z=0 plane with areas 1/2 and 3/2 (ratio 1:3), far apart in x
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [10, 0, 0], [13, 0, 0], [10, 1, 0]], dtype=float)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    scale = rng.uniform(0.5, 2.0)
    pos, normals = sample_mesh_surface(vertices * scale, faces, 4000, rng)
    assert pos.shape == (4000, 3) and normals.shape == (4000, 3)
    np.testing.assert_allclose(pos[:, 2], 0, atol=1e-6)
    np.testing.assert_allclose(np.abs(normals[:, 2]), 1, atol=1e-6)
    on_second = pos[:, 0] > 5 * scale
    assert abs(on_second.mean() - 0.75) < 0.04
    first = pos[~on_second] / scale  # inside the first triangle: x, y >= 0 and x + y <= 1
    assert (first[:, :2] >= -1e-6).all() and (first.sum(axis=1) <= 1 + 1e-6).all()


def test_read_point_cloud_every_extension(tmp_path):
    rng = np.random.default_rng(1)
    pos = rng.normal(size=(50, 3)).astype(np.float32)
    normals = rng.normal(size=(50, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)

    np.save(tmp_path / "a.npy", pos)
    np.save(tmp_path / "b.npy", np.concatenate([pos, normals], axis=1))
    np.savetxt(tmp_path / "c.txt", pos)
    np.savetxt(tmp_path / "d.txt", np.concatenate([pos, normals], axis=1), delimiter=",")
    np.savetxt(tmp_path / "e.xyz", pos, fmt="%.7f")
    expectations = {"a.npy": False, "b.npy": True, "c.txt": False, "d.txt": True, "e.xyz": False}
    for name, has_normals in expectations.items():
        read_pos, read_normals = read_point_cloud(tmp_path / name)
        assert read_pos.dtype == np.float32 and read_pos.shape == (50, 3), name
        np.testing.assert_allclose(read_pos, pos, atol=1e-5, err_msg=name)
        assert (read_normals is not None) == has_normals, name
        if has_normals:
            np.testing.assert_allclose(read_normals, normals, atol=1e-5)

    write(tmp_path / "f.off", "OFF\n4 2 0\n" + SQUARE_VERTICES + SQUARE_FACES)
    mesh_pos, mesh_normals = read_point_cloud(tmp_path / "f.off", num_mesh_points=300)
    assert mesh_pos.shape == (300, 3) and mesh_normals.shape == (300, 3)
    assert (mesh_pos >= -1e-6).all() and (mesh_pos <= 1 + 1e-6).all()


def test_read_point_cloud_ply_and_pcd_through_open3d(tmp_path):
    o3d = pytest.importorskip("open3d")
    rng = np.random.default_rng(2)
    pos = rng.normal(size=(40, 3))
    normals = rng.normal(size=(40, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pos))
    cloud.normals = o3d.utility.Vector3dVector(normals)
    for suffix in (".ply", ".pcd"):
        path = tmp_path / f"cloud{suffix}"
        assert o3d.io.write_point_cloud(str(path), cloud)
        read_pos, read_normals = read_point_cloud(path)
        np.testing.assert_allclose(read_pos, pos, atol=1e-5)
        np.testing.assert_allclose(read_normals, normals, atol=1e-5)


@pytest.mark.parametrize(
    "name, content, error, problem",
    [
        ("shape.stl", "solid", ValueError, "unknown point-cloud extension '.stl'"),
        ("five.txt", "0,0,0,0,0,1\n1,0,0,0,0,1\n1,1,0,0,1\n", ValueError, "line 3: expected 6 values"),
        ("empty.txt", "", ValueError, "empty point cloud"),
        ("blank.xyz", "\n\n", ValueError, "empty point cloud"),
        ("twocols.xyz", "1 2\n3 4\n", ValueError, "line 1: expected at least 3 values"),
        ("nan.txt", "0 0 0\n1 nan 0\n", ValueError, "non-finite value (NaN or inf) in point 1"),
        ("words.txt", "0 0 0\n1 x 0\n", ValueError, "line 2: cannot parse numbers"),
    ],
)
def test_read_point_cloud_errors(tmp_path, name, content, error, problem):
    path = write(tmp_path / name, content)
    with pytest.raises(error) as raised:
        read_point_cloud(path)
    assert name in str(raised.value) and problem in str(raised.value)


def test_read_point_cloud_npy_errors(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(9, dtype=np.float32))
    np.save(tmp_path / "empty.npy", np.zeros((0, 3), dtype=np.float32))
    (tmp_path / "garbage.npy").write_bytes(b"not numpy at all")
    for name, problem in [("flat.npy", "expected an array of shape"), ("empty.npy", "empty point cloud"),
                          ("garbage.npy", "not a readable .npy")]:
        with pytest.raises(ValueError, match=problem) as raised:
            read_point_cloud(tmp_path / name)
        assert name in str(raised.value)


def test_text_reader_exact_columns(tmp_path):
    path = write(tmp_path / "airplane_0001.txt", "0,0,0\n1,1,1\n")
    with pytest.raises(ValueError, match=r"airplane_0001.txt, line 1: expected 6 values"):
        read_text_points(path, columns=6)
