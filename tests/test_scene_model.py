"""Scene segmenters (grid-pooling U-Nets): each level holds one point per occupied voxel of the level
before, the decoder copies each voxel's features back to its points, a ragged batch equals each room on
its own, rooms far from the origin give the same logits, every parameter learns, the settings are
checked, and checkpoints of earlier versions (interpolating decoders) load as what they were."""
from __future__ import annotations

import pytest
import torch

from pcattn.models import PointTransformerSegmenter, create_segmenter
from pcattn.models.checkpoint import SEGMENTER_KIND, model_checkpoint, model_from_checkpoint, recorded_model_config
from pcattn.nn import TransitionUp
from pcattn.nn.grid import GridUnpool, voxel_clusters


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


def test_the_scene_decoder_copies_each_voxels_features_to_every_point_of_the_voxel():
    """With the skip branch silenced, the first transition up gives every point of a 0.08 m voxel the
    same row, the voxel's (its cluster is the grid pooling's, computed here on its own): a copy by index,
    where an interpolation would weigh the 3 nearest coarse points by distance, point by point."""
    torch.manual_seed(2)
    model = create_segmenter("pt-scene-tiny-vector", num_classes=3, in_channels=6).eval()
    assert model.config["unpool"] == "grid"
    assert all(isinstance(up, GridUnpool) for up in model.up)
    assert not any(isinstance(module, TransitionUp) for module in model.modules())
    first_up = model.up[0]
    torch.nn.init.zeros_(first_up.skip[0].weight)
    torch.nn.init.zeros_(first_up.skip[0].bias)
    seen = {}
    first_up.register_forward_hook(lambda module, args, out: seen.update(coarse=args[0], out=out))
    pos = room(600, 5)
    with torch.no_grad():
        model(features(pos, 5), pos)
    cluster, voxels = voxel_clusters(pos, torch.zeros(600, dtype=torch.long), model.encoder.grid_sizes[0])
    assert seen["coarse"].shape[0] == voxels < 600
    one_of_voxel = torch.zeros(voxels, dtype=torch.long).scatter_(0, cluster, torch.arange(600))  # any of its points
    out = seen["out"]
    assert torch.equal(out, out[one_of_voxel][cluster])                   # one row per voxel
    with torch.no_grad():
        assert torch.equal(out, first_up.coarse(seen["coarse"])[cluster])  # its voxel's coarse features
    assert out[one_of_voxel].unique(dim=0).shape[0] > voxels // 2       # not one row for all


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
    encoder first subtracts each room's first point, exactly. (The decoder unpools by voxel index.)"""
    assert all(isinstance(up, GridUnpool) for up in model.up)
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


def test_grid_unpooling_needs_grid_pooling():
    with pytest.raises(ValueError, match="unpool='grid'.*grid_sizes"):
        create_segmenter("pt-scene-tiny-vector", num_classes=3, in_channels=6, grid_sizes=None)
    with pytest.raises(ValueError, match="unpool='grid'.*grid_sizes"):
        PointTransformerSegmenter(3, widths=(16, 32), depths=(1, 1), unpool="grid")
    with pytest.raises(ValueError, match="unpool must be one of.*'nearest'"):
        PointTransformerSegmenter(3, widths=(16, 32), depths=(1, 1), grid_sizes=(0.1,), unpool="nearest")


def test_a_scene_checkpoint_of_an_earlier_version_loads_with_its_interpolating_decoder():
    """Earlier scene segmenters went back up by interpolation and recorded no ``unpool``: both kinds of
    transition up name their weights alike, so only the config default keeps them from loading silently
    into a grid decoder that would label the points otherwise."""
    torch.manual_seed(3)
    earlier = create_segmenter("pt-scene-tiny-vector", num_classes=3, in_channels=6, widths=(16, 32),
                               depths=(1, 1), grid_sizes=(0.16,), unpool="interpolate", k=16).eval()
    checkpoint = model_checkpoint(earlier, ["a", "b", "c"], categories=None, category_parts=None)
    # earlier versions recorded neither unpool nor k (pt-scene-tiny-* then took the constructor's 16 neighbours)
    checkpoint["model_config"] = {key: value for key, value in earlier.config.items() if key not in ("unpool", "k")}
    assert checkpoint["kind"] == SEGMENTER_KIND
    loaded = model_from_checkpoint(checkpoint).eval()
    assert loaded.unpool == "interpolate" and isinstance(loaded.up[0], TransitionUp)
    assert loaded.k == 16 and create_segmenter("pt-scene-tiny-vector", num_classes=3).k == 8
    pos = room(300, 6)
    with torch.no_grad():
        assert torch.equal(loaded(features(pos, 6), pos), earlier(features(pos, 6), pos))
    # a run resumes when its checkpoint's config, so completed, is the rebuilt model's: an earlier part
    # segmenter's (no unpool, no interpolation_power: 1 / d^2) is today's pt-seg-tiny-vector
    assert recorded_model_config(checkpoint) == loaded.config
    part_segmenter = create_segmenter("pt-seg-tiny-vector", num_classes=4, num_categories=2, widths=(16, 32),
                                      depths=(1, 1))
    legacy = {key: value for key, value in part_segmenter.config.items()
              if key not in ("unpool", "interpolation_power")}
    assert recorded_model_config({"kind": SEGMENTER_KIND, "model_config": legacy}) == part_segmenter.config


def test_grid_settings_are_checked():
    with pytest.raises(ValueError, match="grid_sizes needs len"):
        create_segmenter("pt-scene-tiny-vector", num_classes=3, in_channels=6, grid_sizes=(0.1, 0.2))
    with pytest.raises(ValueError, match="grid_size must be a positive number"):
        create_segmenter("pt-scene-tiny-vector", num_classes=3, in_channels=6, grid_sizes=(0.1, 0.0, 0.2))
    model = create_segmenter("pt-scene-tiny-vector", num_classes=3, in_channels=6)
    with pytest.raises(ValueError, match="clouds=None"):
        model.encoder(torch.zeros(8, 6), torch.rand(8, 3), torch.zeros(8, dtype=torch.long), clouds=1)
