"""Grid sampling, crops, float64 centring and scene augmentations (pcattn.data.grid)."""
import numpy as np
import pytest
import torch

from pcattn.data.grid import (CentreCrop, GridSample, RandomFlip, RandomPointDrop, SphereCrop, grid_fragments,
                              scene_test_fragments, scene_train_transforms, voxel_groups)


def room(count=3000, seed=0, offset=0.0):
    """A random labelled box of points, 4 x 3 x 2.5 m; each point's label is a function of its row."""
    generator = np.random.default_rng(seed)
    pos = generator.uniform(0, 1, (count, 3)) * [4.0, 3.0, 2.5] + offset
    color = generator.uniform(0, 1, (count, 3)).astype(np.float32)
    normals = generator.normal(size=(count, 3)).astype(np.float32)
    return {"pos": torch.from_numpy(pos), "color": torch.from_numpy(color), "normals": torch.from_numpy(normals),
            "seg": torch.arange(count) % 7}


def cells(pos, size=0.25, rows=None):
    """The voxel of each point (of ``rows`` when given), on the grid starting at the cloud's lowest corner."""
    grid = np.floor((pos - pos.min(0)) / size).astype(np.int64)
    return [tuple(cell) for cell in (grid if rows is None else grid[rows]).tolist()]


def test_train_mode_one_random_point_per_voxel():
    sample = room()
    occupied = set(cells(sample["pos"].numpy()))
    first = GridSample(0.25, torch.Generator().manual_seed(0))(sample)
    kept = cells(sample["pos"].numpy(), rows=first["index"].numpy())
    assert len(kept) == len(set(kept)) == len(occupied) and set(kept) == occupied  # each voxel exactly once
    assert torch.equal(first["pos"], sample["pos"][first["index"]])
    assert torch.equal(first["seg"], sample["seg"][first["index"]])  # labels follow their points
    again = GridSample(0.25, torch.Generator().manual_seed(0))(sample)
    other = GridSample(0.25, torch.Generator().manual_seed(1))(sample)
    assert torch.equal(first["index"], again["index"])  # reproducible from the generator
    assert not torch.equal(first["index"], other["index"])  # a new point per voxel at each draw


def test_test_mode_fragments_cover_every_point():
    sample = room()
    order, starts, counts = voxel_groups(sample["pos"], 0.25)
    fragments = grid_fragments(sample, 0.25)
    assert len(fragments) == int(counts.max())
    occupied = set(cells(sample["pos"].numpy()))
    for fragment in fragments:
        kept = cells(sample["pos"].numpy(), rows=fragment["index"].numpy())
        assert len(kept) == len(set(kept)) == len(occupied)
    covered = torch.cat([fragment["index"] for fragment in fragments]).unique()
    assert torch.equal(covered, torch.arange(len(sample["pos"])))


def test_room_far_from_the_origin_gives_the_same_crops():
    """The same room at the origin and 1e5 m away: the same voxels, fragments and centred float32 crops.
    Rounding to float32 before centring would move points by up to ~4 mm there."""
    near, far = room(), room(offset=np.array([1e5, -2e5, 30.0]))
    near_fragments, far_fragments = scene_test_fragments(near, 0.1), scene_test_fragments(far, 0.1)
    assert len(near_fragments) == len(far_fragments)
    for a, b in zip(near_fragments, far_fragments):
        assert torch.equal(a["index"], b["index"]) and a["pos"].dtype == torch.float32
        assert torch.allclose(a["pos"], b["pos"], rtol=0, atol=1e-6)
    train_near = scene_train_transforms(0.1, 500, generator=torch.Generator().manual_seed(3))(near)
    train_far = scene_train_transforms(0.1, 500, generator=torch.Generator().manual_seed(3))(far)
    assert torch.equal(train_near["index"], train_far["index"])
    assert torch.allclose(train_near["pos"], train_far["pos"], rtol=0, atol=1e-6)
    low = train_near["pos"].min(0).values
    assert train_near["pos"].abs().max() < 5 and abs(float(low[2])) < 0.2  # centred, about the floor


def test_sphere_crop_keeps_the_nearest_points():
    sample = room()
    crop = SphereCrop(700, torch.Generator().manual_seed(0))(sample)
    assert len(crop["pos"]) == 700 and torch.equal(crop["seg"], sample["seg"][crop["index"]])
    dropped = torch.ones(len(sample["pos"]), dtype=torch.bool)
    dropped[crop["index"]] = False
    # some kept point is the centre; every kept point is nearer to it than every dropped one
    distances = torch.cdist(crop["pos"], sample["pos"])  # (kept, all)
    assert (distances[:, ~dropped].max(dim=1).values <= distances[:, dropped].min(dim=1).values).any()
    assert SphereCrop(5000)(sample) is sample


def test_weighted_sphere_crops_centre_on_the_weighted_classes():
    sample = room(2000)
    sample["seg"] = torch.zeros(2000, dtype=torch.long)
    sample["seg"][-30:] = 1                                          # a rare class: 30 points 10 m from the rest
    sample["pos"][-30:, 0] += 10.0
    sample["seg"][:100] = -1                                         # unlabelled points are never centres
    generator = torch.Generator().manual_seed(0)

    def rare_points(crop):  # of 20 crops of 50 points: a crop centred on the cluster holds all 30 of its points
        return [int((crop(sample)["seg"] == 1).sum()) for _ in range(20)]

    assert rare_points(SphereCrop(50, generator, centre_weights=[0.0, 1.0])) == [30] * 20
    assert rare_points(SphereCrop(50, generator, centre_weights=[1.0, 0.0])) == [0] * 20
    assert sum(rare_points(SphereCrop(50, generator))) < 30 * 10     # uniform centres: mostly elsewhere
    unlabelled = {**sample, "seg": torch.full((2000,), -1)}          # nothing weighted: any point, as without weights
    assert len(SphereCrop(50, generator, centre_weights=[0.0, 1.0])(unlabelled)["pos"]) == 50
    assert "centre_weights=[0.0, 1.0]" in repr(SphereCrop(50, centre_weights=[0.0, 1.0]))
    for bad in ([0.0, 0.0], [1.0, -1.0], [float("nan")], [[1.0]]):
        with pytest.raises(ValueError, match="centre_weights"):
            SphereCrop(50, centre_weights=bad)


def test_augmentations_keep_labels_with_their_points():
    sample = CentreCrop()(room())
    out = scene_train_transforms(0.2, 400, drop=1.0, auto_contrast=1.0, generator=torch.Generator().manual_seed(1))(
        room())
    assert torch.equal(out["seg"], room()["seg"][out["index"]])
    assert len(out["pos"]) == int(round(400 * 0.8))  # 400 cropped, then 20% dropped
    assert out["color"].min() >= 0 and out["color"].max() <= 1 and out["pos"].dtype == torch.float32
    dropped = RandomPointDrop(0.5, p=1.0, generator=torch.Generator().manual_seed(0))(sample)
    assert torch.equal(dropped["normals"], sample["normals"][dropped["index"]])
    flipped = RandomFlip(axes=(0,), p=1.0)(sample)
    assert torch.equal(flipped["pos"][:, 0], -sample["pos"][:, 0]) and torch.equal(flipped["pos"][:, 1:], sample["pos"][:, 1:])
    assert torch.equal(flipped["normals"][:, 0], -sample["normals"][:, 0])
    with pytest.raises(ValueError, match="voxel_size must be a positive number of metres, got 0"):
        GridSample(0)
