"""Grid (voxel) pooling: the voxels against a brute-force grouping, the pooled features and positions by
hand, ragged batches, clouds far from the origin, unpooling and the input errors."""
from __future__ import annotations

import math

import pytest
import torch

from pcattn.nn.grid import GridPool, GridUnpool, voxel_clusters


def grid_cloud(points: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    """Positions on a 1/64 grid, so shifts by multiples of 1/64 keep every difference exact."""
    generator = torch.Generator().manual_seed(seed)
    return torch.round(torch.rand(points, 3, generator=generator) * scale * 64) / 64


def brute_voxels(pos: torch.Tensor, batch: torch.Tensor, size: float):
    """Each point's voxel key (cloud, ix, iy, iz), cells counted from each cloud's minimum corner."""
    keys = []
    for i in range(pos.shape[0]):
        lowest = pos[batch == batch[i]].min(0).values
        keys.append((int(batch[i]), *(math.floor(float(v)) for v in (pos[i] - lowest) / size)))
    return keys


def test_voxels_match_a_brute_force_grouping_in_order():
    pos = torch.cat([grid_cloud(200, 0), grid_cloud(90, 1) - 5.0])
    batch = torch.cat([torch.zeros(200, dtype=torch.long), torch.ones(90, dtype=torch.long)])
    cluster, voxels = voxel_clusters(pos, batch, 0.25)
    keys = brute_voxels(pos, batch, 0.25)
    ordered = sorted(set(keys))
    assert voxels == len(ordered)
    assert cluster.tolist() == [ordered.index(key) for key in keys]


def test_pooled_features_are_the_voxel_max_and_positions_the_voxel_mean():
    torch.manual_seed(0)
    pos, x = grid_cloud(300, 2), torch.randn(300, 5)
    batch = torch.zeros(300, dtype=torch.long)
    pool = GridPool(5, 8, grid_size=0.5).eval()
    with torch.no_grad():
        pool.norm.running_mean.uniform_(-1, 1)
        pool.norm.running_var.uniform_(0.5, 2)
    out = pool(x, pos, batch)
    features = torch.relu(pool.norm(pool.linear(x)))
    assert out.x.shape == (int(out.cluster.max()) + 1, 8)
    for voxel in range(out.x.shape[0]):
        members = out.cluster == voxel
        assert members.any()
        assert torch.allclose(out.x[voxel], features[members].max(0).values)
        assert torch.allclose(out.pos[voxel], pos[members].mean(0))
    assert torch.equal(out.batch, torch.zeros_like(out.batch))


def test_a_ragged_batch_pools_each_cloud_as_on_its_own():
    torch.manual_seed(1)
    clouds = [grid_cloud(150, 3), grid_cloud(40, 4) + 100.0]
    features = [torch.randn(150, 4), torch.randn(40, 4)]
    pool = GridPool(4, 6, grid_size=0.3).eval()
    together = pool(torch.cat(features), torch.cat(clouds), torch.tensor([0] * 150 + [1] * 40))
    alone = [pool(x, pos, torch.zeros(len(pos), dtype=torch.long)) for x, pos in zip(features, clouds)]
    assert torch.allclose(together.x, torch.cat([a.x for a in alone]))
    assert torch.allclose(together.pos, torch.cat([a.pos for a in alone]))
    assert together.batch.tolist() == [0] * len(alone[0].x) + [1] * len(alone[1].x)


@pytest.mark.parametrize("shift", [1e3, 1e5])
def test_a_cloud_far_from_the_origin_is_pooled_as_at_the_origin(shift):
    torch.manual_seed(2)
    pos, x = grid_cloud(256, 5), torch.randn(256, 4)
    batch = torch.zeros(256, dtype=torch.long)
    pool = GridPool(4, 6, grid_size=0.25).eval()
    near, far = pool(x, pos, batch), pool(x, pos + shift, batch)
    assert torch.equal(near.cluster, far.cluster)
    assert torch.equal(near.x, far.x)
    assert torch.allclose(far.pos - shift, near.pos, atol=shift * 2 ** -23 * 4)


def test_unpool_copies_each_voxel_back_to_its_points_with_the_skip_branch():
    torch.manual_seed(3)
    pos, x = grid_cloud(120, 6), torch.randn(120, 4, requires_grad=True)
    pool, unpool = GridPool(4, 8, grid_size=0.5), GridUnpool(8, 4, 6)
    pooled = pool(x, pos, torch.zeros(120, dtype=torch.long))
    y = unpool(pooled.x, x, pooled.cluster)
    assert y.shape == (120, 6)
    unpool.eval()
    with torch.no_grad():
        expected = unpool.coarse(pooled.x)[pooled.cluster] + unpool.skip(x)
        assert torch.allclose(unpool(pooled.x, x, pooled.cluster), expected)
    y.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pool.linear.parameters())


@pytest.mark.parametrize("size", [0, -0.1, float("nan"), True, "0.1"])
def test_a_bad_grid_size_is_named(size):
    with pytest.raises(ValueError, match="grid_size must be a positive number"):
        GridPool(3, 4, grid_size=size)
    with pytest.raises(ValueError, match="grid_size must be a positive number"):
        voxel_clusters(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), size)


def test_a_grid_too_fine_for_one_key_still_groups_in_order():
    """3,031,677 cells along x: one int64 key per cell would overflow (the far voxel's key wraps to a negative
    number and sorts first); the voxels are then numbered by their (cloud, cell) rows."""
    pos = torch.tensor([[0.0, 0.0, 0.0], [3_031_676.5, 0.5, 0.5], [1.5, 0.5, 0.5], [0.2, 0.2, 0.2],
                        [2.5, 3.5, 0.5]], dtype=torch.float64)
    batch = torch.zeros(5, dtype=torch.long)
    cluster, voxels = voxel_clusters(pos, batch, 1.0)
    keys = brute_voxels(pos, batch, 1.0)
    ordered = sorted(set(keys))
    assert voxels == len(ordered) == 4 and cluster[0] == cluster[3]
    assert cluster.tolist() == [ordered.index(key) for key in keys]
