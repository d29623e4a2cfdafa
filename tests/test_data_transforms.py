"""pcattn.data.transforms: shapes kept, each transform does what it says, seeding works."""

from __future__ import annotations

import math

import pytest
import torch

from pcattn.data import transforms as T


def make_sample(seed=0, points=200, normals=True):
    generator = torch.Generator().manual_seed(seed)
    sample = {"pos": torch.randn(points, 3, generator=generator) * 2 + 1, "label": torch.tensor(3)}
    if normals:
        sample["normals"] = torch.nn.functional.normalize(torch.randn(points, 3, generator=generator), dim=1)
    return sample


ALL = [
    T.NormalizeUnitSphere(),
    T.RandomScale(),
    T.RandomShift(),
    T.RandomJitter(),
    T.RandomRotateUp(),
    T.RandomPointDropout(),
    T.train_transforms(),
    T.test_transforms(),
    T.Compose([]),
]


@pytest.mark.parametrize("transform", ALL, ids=lambda t: type(t).__name__)
@pytest.mark.parametrize("seed", range(3))
def test_shapes_kept_and_input_untouched(transform, seed):
    sample = make_sample(seed)
    before = {k: v.clone() for k, v in sample.items()}
    out = transform(sample)
    assert out["pos"].shape == (200, 3) and out["normals"].shape == (200, 3)
    assert out["pos"].dtype == torch.float32 and out["label"] == 3
    for key, value in before.items():
        assert torch.equal(sample[key], value), f"{transform!r} modified its input {key}"
    assert torch.isfinite(out["pos"]).all()


@pytest.mark.parametrize("seed", range(5))
def test_normalize_unit_sphere(seed):
    out = T.NormalizeUnitSphere()(make_sample(seed))
    assert torch.allclose(out["pos"].mean(0), torch.zeros(3), atol=1e-5)
    assert out["pos"].norm(dim=1).max().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("axis", [0, 1, 2, "y", "z"])
def test_rotate_up_keeps_norms_up_coordinate_and_normal_geometry(axis):
    torch.manual_seed(0)
    sample = make_sample()
    out = T.RandomRotateUp(axis=axis)(sample)
    index = {"y": 1, "z": 2}.get(axis, axis)
    assert torch.allclose(out["pos"].norm(dim=1), sample["pos"].norm(dim=1), atol=1e-5)
    assert torch.allclose(out["pos"][:, index], sample["pos"][:, index], atol=1e-6)
    assert not torch.allclose(out["pos"], sample["pos"])
    # a rigid rotation of both keeps every dot product between positions and normals
    assert torch.allclose((out["pos"] * out["normals"]).sum(1), (sample["pos"] * sample["normals"]).sum(1), atol=1e-5)
    assert torch.allclose(out["normals"].norm(dim=1), torch.ones(200), atol=1e-5)


def test_rotation_matrix_is_right_handed():
    quarter = T.rotation_about_axis(math.pi / 2, 2)  # about z: x -> y
    assert torch.allclose(quarter @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]), atol=1e-6)
    quarter_y = T.rotation_about_axis(math.pi / 2, 1)  # about y: z -> x
    assert torch.allclose(quarter_y @ torch.tensor([0.0, 0, 1]), torch.tensor([1.0, 0, 0]), atol=1e-6)


def test_random_scale_is_anisotropic_within_bounds_and_keeps_normals_perpendicular():
    torch.manual_seed(0)
    # points on the plane x + y + z = 0, normal (1, 1, 1)/sqrt(3)
    a, b = torch.randn(100, 1), torch.randn(100, 1)
    pos = a * torch.tensor([1.0, -1.0, 0.0]) + b * torch.tensor([0.0, 1.0, -1.0])
    normals = torch.full((100, 3), 1 / math.sqrt(3))
    out = T.RandomScale(0.5, 2.0, anisotropic=True)({"pos": pos, "normals": normals, "label": torch.tensor(0)})
    ratio = out["pos"] / pos
    scale = ratio[0]
    assert torch.allclose(ratio, scale.expand_as(ratio), atol=1e-4)  # one factor per axis
    assert ((scale >= 0.5) & (scale <= 2.0)).all() and scale.max() - scale.min() > 1e-3
    tangent = out["pos"][1:] - out["pos"][:1]
    assert (tangent @ out["normals"][0]).abs().max() < 1e-4
    assert torch.allclose(out["normals"].norm(dim=1), torch.ones(100), atol=1e-5)
    iso = T.RandomScale(0.5, 2.0, anisotropic=False)({"pos": pos, "label": torch.tensor(0)})["pos"] / pos
    assert torch.allclose(iso, iso[0, 0].expand_as(iso), atol=1e-4)


def test_random_shift_moves_all_points_by_one_bounded_vector():
    sample = make_sample()
    out = T.RandomShift(0.2)(sample)
    delta = out["pos"] - sample["pos"]
    assert torch.allclose(delta, delta[:1].expand_as(delta), atol=1e-6)
    assert delta.abs().max() <= 0.2 + 1e-6
    assert torch.equal(out["normals"], sample["normals"])


def test_random_jitter_is_clipped():
    sample = make_sample()
    out = T.RandomJitter(sigma=1.0, clip=0.05)(sample)
    delta = out["pos"] - sample["pos"]
    assert delta.abs().max() <= 0.05 + 1e-6
    assert (delta.abs() > 0).float().mean() > 0.9


def test_point_dropout_keeps_count_and_replaces_with_first_point():
    generator = torch.Generator().manual_seed(0)
    sample = make_sample()
    out = T.RandomPointDropout(max_ratio=0.875, generator=generator)(sample)
    assert out["pos"].shape == (200, 3)
    dropped = (out["pos"] != sample["pos"]).any(dim=1)
    assert dropped.any()
    assert torch.equal(out["pos"][dropped], sample["pos"][:1].expand(int(dropped.sum()), 3))
    assert torch.equal(out["normals"][dropped], sample["normals"][:1].expand(int(dropped.sum()), 3))
    kept = ~dropped
    assert torch.equal(out["pos"][kept], sample["pos"][kept])


def test_random_subsample_exact_count_subset_and_padding():
    sample = make_sample()
    out = T.RandomSubsample(64)(sample)
    assert out["pos"].shape == (64, 3) and out["normals"].shape == (64, 3)
    rows = {tuple(p.tolist()) for p in sample["pos"]}
    assert all(tuple(p.tolist()) in rows for p in out["pos"])
    assert len({tuple(p.tolist()) for p in out["pos"]}) == 64  # no repeats when there are enough points
    padded = T.RandomSubsample(300)(sample)
    assert padded["pos"].shape == (300, 3)
    assert len({tuple(p.tolist()) for p in padded["pos"]}) == 200  # every point kept, extras repeated
    # positions and normals stay paired
    index = [next(i for i, p in enumerate(sample["pos"]) if torch.equal(p, q)) for q in out["pos"][:5]]
    assert torch.equal(out["normals"][:5], sample["normals"][index])


def test_seeding_reproduces_augmentations():
    torch.manual_seed(123)
    first = T.train_transforms()(make_sample())
    torch.manual_seed(123)
    second = T.train_transforms()(make_sample())
    assert torch.equal(first["pos"], second["pos"])
    generator_a, generator_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = T.RandomRotateUp(generator=generator_a)(make_sample())
    b = T.RandomRotateUp(generator=generator_b)(make_sample())
    assert torch.equal(a["pos"], b["pos"])


class _Constant(torch.utils.data.Dataset):
    def __init__(self, transform):
        self.transform = transform

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return self.transform({"pos": torch.ones(8, 3), "label": torch.tensor(0)})


def _worker_outputs(transform, seed):
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(_Constant(transform), batch_size=2, num_workers=2,
                                         worker_init_fn=T.seed_worker)
    return torch.cat([batch["pos"] for batch in loader])


@pytest.mark.parametrize("own_generator", [False, True])
def test_dataloader_workers_get_distinct_but_reproducible_randomness(own_generator):
    generator = torch.Generator().manual_seed(0) if own_generator else None
    transform = T.Compose([T.RandomJitter(0.1, 1.0, generator=generator)])
    first = _worker_outputs(transform, seed=7)
    again = _worker_outputs(transform, seed=7)
    assert torch.equal(first, again)
    # batch 0 comes from worker 0, batch 1 from worker 1: their noise differs
    assert not torch.allclose(first[:2], first[2:])
    assert not torch.equal(first, _worker_outputs(transform, seed=8))


def test_bad_arguments():
    with pytest.raises(ValueError, match="axis"):
        T.RandomRotateUp(axis="w")
    with pytest.raises(ValueError, match="max_ratio"):
        T.RandomPointDropout(1.0)
    with pytest.raises(ValueError, match="low"):
        T.RandomScale(2.0, 1.0)
    with pytest.raises(ValueError, match="num_points"):
        T.RandomSubsample(0)


def test_part_labels_follow_their_points_through_the_training_augmentation():
    """Each point's x coordinate encodes its index, so its label must equal what its row shows."""
    torch.manual_seed(0)
    count = 300
    pos = torch.stack([torch.arange(count, dtype=torch.float32), torch.rand(count), torch.rand(count)], 1)
    sample = {"pos": pos, "normals": torch.nn.functional.normalize(torch.randn(count, 3), dim=1),
              "seg": torch.arange(count), "category": torch.tensor(2)}
    for transform in (T.RandomSubsample(120), T.RandomPointDropout(0.8), T.RandomSubsample(500)):
        out = transform(sample)
        assert torch.equal(out["seg"], out["pos"][:, 0].long()), transform
        assert int(out["category"]) == 2
    out = T.train_transforms(up_axis=1, num_points=100, dropout=0.5, rotate=False, scale=None, shift=0, jitter=0,
                             normalize=False)(sample)
    assert out["pos"].shape == (100, 3) and out["seg"].shape == (100,)
    assert torch.equal(out["seg"], out["pos"][:, 0].long())
