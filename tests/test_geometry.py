import pytest
import torch

import pcattn.nn.geometry as geometry
from pcattn.bench.reference import brute_fps, brute_knn
from pcattn.nn.geometry import farthest_point_sampling, knn


def sorted_distances(pos, query, index):
    valid = index >= 0
    d = ((query[:, None, :] - pos[index.clamp(min=0)]) ** 2).sum(-1)
    return torch.where(valid, d, torch.full_like(d, float("inf"))).sort(dim=1).values


@pytest.mark.parametrize("n", [50, 300])
def test_knn_matches_brute_force_and_self_first(n):
    torch.manual_seed(0)
    pos = torch.randn(n, 3, dtype=torch.float64)
    index = knn(pos, 16)
    assert index.shape == (n, 16)
    assert torch.equal(index[:, 0], torch.arange(n))
    expected = brute_knn(pos, 16)
    assert torch.allclose(sorted_distances(pos, pos, index), sorted_distances(pos, pos, expected))
    # nearest first
    d = ((pos[:, None] - pos[index]) ** 2).sum(-1)
    assert bool((d[:, 1:] >= d[:, :-1]).all())


def test_knn_open3d_path_equals_torch(monkeypatch):
    pytest.importorskip("open3d")
    torch.manual_seed(1)
    pos = torch.randn(3000, 3)
    fast = knn(pos, 8)
    monkeypatch.setattr(geometry, "OPEN3D_MIN_POINTS", 10**9)
    slow = knn(pos, 8)
    assert torch.allclose(sorted_distances(pos, pos, fast), sorted_distances(pos, pos, slow), atol=1e-5)
    assert torch.equal(fast[:, 0], torch.arange(3000))


def test_knn_batches_never_cross_clouds():
    torch.manual_seed(2)
    sizes = [5, 40, 1, 30]
    batch = torch.cat([torch.full((s,), b) for b, s in enumerate(sizes)])
    pos = torch.randn(len(batch), 3) * 0.01  # clouds overlap in space
    index = knn(pos, 16, batch)
    valid = index >= 0
    assert bool((batch[index.clamp(min=0)][valid] == batch[:, None].expand_as(index)[valid]).all())
    # a cloud with fewer than k points uses all of them, the rest is -1
    assert (valid[:5].sum(1) == 5).all() and (valid[45:46].sum(1) == 1).all()
    assert (valid[5:45].sum(1) == 16).all()
    # each cloud alone gives the same neighbourhoods
    start = 0
    for s in sizes:
        alone = knn(pos[start:start + s], 16)
        assert torch.equal(torch.where(alone >= 0, alone + start, alone), index[start:start + s])
        start += s


def test_knn_dense_and_query():
    torch.manual_seed(3)
    pos = torch.randn(2, 64, 3)
    dense = knn(pos, 8)
    flat = knn(pos.reshape(-1, 3), 8, torch.arange(2).repeat_interleave(64))
    assert torch.equal(dense[1] + 64, flat[64:])
    query = pos[:, :10]
    cross = knn(pos, 4, query=query)
    assert cross.shape == (2, 10, 4) and torch.equal(cross[:, :, 0], torch.arange(10).expand(2, 10))


def test_knn_self_first_with_duplicates():
    pos = torch.zeros(20, 3)
    index = knn(pos, 4)
    assert torch.equal(index[:, 0], torch.arange(20))
    assert all(len(set(row.tolist())) == 4 for row in index)


@pytest.mark.parametrize("bad, error, match", [
    (torch.randn(10, 2), ValueError, r"\(N, 3\) or \(B, P, 3\), got \(10, 2\)"),
    (torch.tensor([[0.0, float("nan"), 0.0]] * 4), ValueError, "NaN"),
    (torch.tensor([[0.0, float("inf"), 0.0]] * 4), ValueError, "infinite"),
    (torch.zeros(4, 3, dtype=torch.long), TypeError, "floating"),
])
def test_knn_rejects_bad_positions(bad, error, match):
    with pytest.raises(error, match=match):
        knn(bad, 2)


def test_knn_rejects_bad_k_and_batch():
    pos = torch.randn(10, 3)
    with pytest.raises(ValueError, match="k must be"):
        knn(pos, 0)
    with pytest.raises(ValueError, match="sorted"):
        knn(pos, 2, torch.tensor([1, 0] * 5))
    with pytest.raises(ValueError, match=r"\(10,\)"):
        knn(pos, 2, torch.zeros(9, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        knn(pos, 2, torch.zeros(10))


def test_fps_spreads_points_and_is_deterministic():
    torch.manual_seed(4)
    pos = torch.randn(500, 3)
    index = farthest_point_sampling(pos, ratio=0.1)
    assert index.shape == (50,) and index[0] == 0 and len(set(index.tolist())) == 50
    assert torch.equal(index, farthest_point_sampling(pos, ratio=0.1))
    # each chosen point is the farthest from those chosen before it
    chosen = pos[index]
    for i in range(1, 10):
        d_prev = torch.cdist(pos, chosen[:i]).min(1).values
        assert torch.isclose(d_prev[index[i]], d_prev.max())
    # its coverage beats random sampling
    cover = torch.cdist(pos, pos[index]).min(1).values.max()
    rand = torch.cdist(pos, pos[torch.randperm(500)[:50]]).min(1).values.max()
    assert cover < rand


def test_fps_batches_and_count():
    torch.manual_seed(5)
    sizes = [10, 3, 25]
    batch = torch.cat([torch.full((s,), b) for b, s in enumerate(sizes)])
    pos = torch.randn(len(batch), 3)
    index = farthest_point_sampling(pos, ratio=0.5, batch=batch)
    assert torch.equal(batch[index].bincount(), torch.tensor([5, 2, 13]))
    assert bool((batch[index][1:] >= batch[index][:-1]).all())
    counted = farthest_point_sampling(pos, count=4, batch=batch)
    assert torch.equal(batch[counted].bincount(), torch.tensor([4, 3, 4]))
    dense = farthest_point_sampling(pos[:10].reshape(1, 10, 3), count=4)
    assert torch.equal(dense[0], counted[:4])
    with pytest.raises(ValueError, match="exactly one"):
        farthest_point_sampling(pos, ratio=0.5, count=3)
    with pytest.raises(ValueError, match="ratio"):
        farthest_point_sampling(pos, ratio=1.5)


def test_fps_random_start_starts_elsewhere_and_is_still_fps():
    torch.manual_seed(6)
    sizes = [40, 7, 25]
    batch = torch.cat([torch.full((s,), b) for b, s in enumerate(sizes)])
    pos = torch.randn(len(batch), 3, dtype=torch.float64)
    starts = [0, 40, 47]
    counts = [20, 4, 13]                                   # ceil(ratio * size)

    def sample(seed):
        generator = torch.Generator().manual_seed(seed)
        return farthest_point_sampling(pos, ratio=0.5, batch=batch, random_start=True, generator=generator)

    runs = [sample(seed) for seed in range(8)]
    assert torch.equal(sample(3), runs[3])                 # the same seed, the same result
    firsts = []                                            # per run: the first point of each cloud
    for index in runs:
        assert torch.equal(batch[index].bincount(), torch.tensor(counts))
        first_of_run = []
        for start, size, count in zip(starts, sizes, counts):
            chosen = index[(index >= start) & (index < start + size)]
            assert chosen.numel() == count and len(set(chosen.tolist())) == count
            local = chosen - start
            # Still farthest point sampling, only from another first point.
            assert torch.equal(local, brute_fps(pos[start:start + size], count, start=int(local[0])))
            first_of_run.append(int(local[0]))
        firsts.append(tuple(first_of_run))
    assert len(set(firsts)) > 1                            # other seeds start elsewhere
    for cloud in range(len(sizes)):                        # and not always at the cloud's first row
        assert any(first[cloud] != 0 for first in firsts)


def test_batched_knn_of_accelerators_equals_per_cloud_search():
    """The batched search that GPUs use (one launch for equal-sized clouds), run here on the CPU."""
    g = torch.Generator().manual_seed(3)
    pos = torch.randn(3, 50, 3, generator=g)
    pos[0, 6] = pos[0, 5]                      # a duplicate point: each still comes first in its own list
    per_cloud = torch.stack([geometry._knn_one_cloud(pos[b], 8, None) for b in range(3)])
    assert torch.equal(geometry._knn_batched(pos, 8), per_cloud)
    queries = torch.randn(3, 20, 3, generator=g)
    wide = torch.stack([geometry._knn_one_cloud(pos[b], 60, queries[b]) for b in range(3)])
    assert torch.equal(geometry._knn_batched(pos, 60, queries), wide)   # k > P: -1 padded
    # the synchronisation-free reordering puts self first, or replaces the farthest when crowded out
    index = torch.tensor([[1, 0, 2], [0, 2, 3], [5, 6, 7]])
    assert torch.equal(geometry._self_first(index, torch.tensor([0, 1, 2])),
                       torch.tensor([[0, 1, 2], [1, 0, 2], [2, 5, 6]]))


def test_fps_random_start_draws_on_the_generators_device(monkeypatch):
    """A CUDA generator cannot draw a CPU tensor: the start is drawn with ``device=generator.device``
    (checked here with a spy on the CPU; tests/test_cuda.py runs a real CUDA generator)."""
    pos = torch.randn(2, 30, 3, generator=torch.Generator().manual_seed(0))
    drawn_on = []
    real_rand = torch.rand

    def spy(*args, **kwargs):
        drawn_on.append(kwargs.get("device"))
        return real_rand(*args, **kwargs)

    monkeypatch.setattr(torch, "rand", spy)
    generator = torch.Generator(device="cpu").manual_seed(1)
    chosen = farthest_point_sampling(pos, ratio=0.25, random_start=True, generator=generator)
    assert drawn_on == [generator.device]
    assert chosen.shape == (2, 8) and chosen.device == pos.device
