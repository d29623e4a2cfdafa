"""Scene segmenters (grid-pooling U-Nets): each level holds one point per occupied voxel of the level
before, a ragged batch equals each room on its own, rooms far from the origin give the same logits,
every parameter learns, and the settings are checked."""
from __future__ import annotations

import pytest
import torch

from pcattn.models import create_segmenter
from pcattn.nn.grid import voxel_clusters


def room(points: int, seed: int) -> torch.Tensor:
    """A 4 m x 3 m x 2.5 m box of positions on a 1/64 m grid (exact differences after a shift)."""
    generator = torch.Generator().manual_seed(seed)
    pos = torch.rand(points, 3, generator=generator) * torch.tensor([4.0, 3.0, 2.5])
    return torch.round(pos * 64) / 64


def features(pos: torch.Tensor, seed: int) -> torch.Tensor:
    """xyz (the room's own frame) and a colour per point: the scene networks' 6 input channels."""
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([pos - pos.mean(0), torch.rand(pos.shape[0], 3, generator=generator)], 1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_segmenter("pt-scene-tiny-vector", num_classes=5, in_channels=6).eval()


def test_each_level_holds_one_point_per_occupied_voxel(model):
    pos = room(1500, 0)
    batch = torch.zeros(len(pos), dtype=torch.long)
    with torch.no_grad():
        levels = model.encoder(model.encoder.stem[0].weight.new_zeros(len(pos), 6), pos, batch)
    assert len(levels) == 4 and levels[0].x.shape[0] == 1500
    for fine, coarse, size in zip(levels[:-1], levels[1:], model.encoder.grid_sizes):
        assert coarse.x.shape[0] == voxel_clusters(fine.pos, fine.batch, size)[1] < fine.x.shape[0]


def test_a_ragged_batch_equals_each_room_on_its_own(model):
    rooms = [room(900, 1), room(500, 2)]
    inputs = [features(pos, seed) for seed, pos in enumerate(rooms)]
    batch = torch.tensor([0] * 900 + [1] * 500)
    with torch.no_grad():
        together = model(torch.cat(inputs), torch.cat(rooms), batch)
        alone = [model(x, pos) for x, pos in zip(inputs, rooms)]
    assert together.shape == (1400, 5)
    assert torch.allclose(together, torch.cat(alone), atol=1e-4)


@pytest.mark.parametrize("shift", [1e3, 1e5])
def test_a_room_far_from_the_origin_gives_the_same_logits(model, shift):
    """Grid pooling averages positions, which float32 cannot hold at 10^5 m (its step is 8 mm there): the
    encoder first subtracts each room's first point, exactly."""
    pos = room(800, 3)
    x = features(pos, 3)  # given features (the data pipeline centres each crop in float64)
    with torch.no_grad():
        near, far = model(x, pos), model(x, pos + shift)
    assert float((far - near).abs().max() / near.abs().max()) < 1e-6


def test_every_parameter_learns():
    torch.manual_seed(1)
    model = create_segmenter("pt-scene-tiny-scalar", num_classes=4, in_channels=6).train()
    pos = room(700, 4)
    logits = model(features(pos, 4), pos)
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 4, (700,))).backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    # mapping's last bias is cancelled by the softmax over neighbours; the rest must learn
    assert all("mapping" in name or "to_value.bias" in name for name in silent), silent


def test_grid_settings_are_checked():
    with pytest.raises(ValueError, match="grid_sizes needs len"):
        create_segmenter("pt-scene-tiny-vector", num_classes=3, in_channels=6, grid_sizes=(0.1, 0.2))
    with pytest.raises(ValueError, match="grid_size must be a positive number"):
        create_segmenter("pt-scene-tiny-vector", num_classes=3, in_channels=6, grid_sizes=(0.1, 0.0, 0.2))
    model = create_segmenter("pt-scene-tiny-vector", num_classes=3, in_channels=6)
    with pytest.raises(ValueError, match="clouds=None"):
        model.encoder(torch.zeros(8, 6), torch.rand(8, 3), torch.zeros(8, dtype=torch.long), clouds=1)
