"""Scene semantic segmentation as a training task: the model inputs of a crop, flat batches of crops,
labelling every point of a whole room (fragments, votes, far from the origin), the evaluation's metrics
checked by hand, the loss and hits with the ignore label, and training through the engine and the CLI."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pcattn.data.grid import CentreCrop, collate_scenes, scene_model_inputs, scene_test_fragments
from pcattn.data.rooms import BuiltinRooms
from pcattn.engine.scene_inference import evaluate_scenes, segment_room
from pcattn.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_room():
    """One built-in test room of about 700 points (float64, hundreds of metres from the origin)."""
    return BuiltinRooms("test", rooms=1, num_points=(600, 800))[0]


@pytest.fixture(scope="module")
def scene_model():
    torch.manual_seed(0)
    return create_model("pt-scene-tiny-vector", num_classes=10, in_channels=6).eval()


def crop(points, seed, **extra):
    generator = torch.Generator().manual_seed(seed)
    sample = {"pos": torch.rand(points, 3, generator=generator, dtype=torch.float64) + 500.0,
              "color": torch.rand(points, 3, generator=generator),
              "normals": torch.rand(points, 3, generator=generator),
              "seg": torch.randint(0, 4, (points,), generator=generator)}
    return CentreCrop()({**sample, **extra})


# ------------------------------------------------------------------------------------------ model inputs
def test_scene_model_inputs_are_centred_xyz_colour_and_normals():
    sample = crop(7, 0)
    x, pos, batch = scene_model_inputs(sample)
    assert x.dtype == pos.dtype == torch.float32 and x.shape == (7, 6)
    assert torch.equal(x[:, :3], sample["pos"]) and torch.equal(x[:, 3:], sample["color"])
    assert torch.equal(batch, torch.zeros(7, dtype=torch.long))
    x9, _, _ = scene_model_inputs(sample, in_channels=9)
    assert torch.equal(x9[:, 6:], sample["normals"])
    assert torch.equal(scene_model_inputs(sample, in_channels=3)[0], sample["pos"])
    with pytest.raises(ValueError, match="float64"):
        scene_model_inputs({**sample, "pos": sample["pos"].double()})
    with pytest.raises(ValueError, match="no colours"):
        scene_model_inputs({"pos": sample["pos"]})
    with pytest.raises(ValueError, match="in_channels must be 3"):
        scene_model_inputs(sample, in_channels=4)


def test_collate_scenes_concatenates_crops_of_different_sizes_with_a_sorted_batch_vector():
    crops = [crop(5, 1), crop(3, 2), crop(4, 3)]
    batch = collate_scenes(crops)
    assert batch["pos"].shape == (12, 3) and batch["seg"].shape == (12,)
    assert batch["batch"].tolist() == [0] * 5 + [1] * 3 + [2] * 4
    assert torch.equal(batch["color"][5:8], crops[1]["color"])
    x, _, clouds = scene_model_inputs(batch)
    assert torch.equal(clouds, batch["batch"]) and x.shape == (12, 6)
    with pytest.raises(ValueError, match="same ones"):
        collate_scenes([crops[0], {key: value for key, value in crops[1].items() if key != "normals"}])


# ------------------------------------------------------------------------------------------ whole rooms
def test_segment_room_with_one_fragment_is_the_model_on_the_centred_room(tiny_room, scene_model):
    """A voxel far smaller than the points' spacing holds one point each: one fragment, the whole room,
    centred; the scores are the model's softmax on it, in the room's row order."""
    fragments = scene_test_fragments({"pos": tiny_room["pos"], "color": tiny_room["color"]}, 1e-4)
    assert len(fragments) == 1
    x, pos, batch = scene_model_inputs(fragments[0])
    with torch.no_grad():
        expected = torch.empty(len(pos), 10)
        expected[fragments[0]["index"]] = scene_model(x, pos, batch).softmax(-1)
    scores = segment_room(scene_model, tiny_room, voxel_size=1e-4)
    assert scores.shape == (tiny_room["pos"].shape[0], 10)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)


def test_segment_room_scores_every_point_in_every_vote_and_batches_do_not_change_them(tiny_room, scene_model):
    fragments = scene_test_fragments({"pos": tiny_room["pos"], "color": tiny_room["color"]}, 0.04)
    holding = torch.zeros(tiny_room["pos"].shape[0])
    for fragment in fragments:
        holding.index_add_(0, fragment["index"], torch.ones(len(fragment["index"])))
    assert len(fragments) > 1 and bool((holding >= 1).all())
    scores = segment_room(scene_model, tiny_room, 0.04, votes=2, batch_points=10 ** 6)
    torch.testing.assert_close(scores.sum(1), 2 * holding)          # each holding fragment adds 1 per vote
    one_by_one = segment_room(scene_model, tiny_room, 0.04, votes=2, batch_points=1)
    torch.testing.assert_close(one_by_one, scores, rtol=1e-4, atol=1e-5)
    plain = segment_room(scene_model, tiny_room, 0.04, votes=1)
    assert not torch.allclose(scores - plain, plain, atol=1e-3)     # the second vote saw turned copies
    with pytest.raises(ValueError, match="votes"):
        segment_room(scene_model, tiny_room, votes=0)


def test_a_room_moved_1e5_m_away_evaluates_the_same(tiny_room, scene_model):
    far = {**tiny_room, "pos": tiny_room["pos"] - tiny_room["pos"].min(0).values + 1e5}
    near = {**tiny_room, "pos": tiny_room["pos"] - tiny_room["pos"].min(0).values}
    torch.testing.assert_close(segment_room(scene_model, far, votes=2), segment_room(scene_model, near, votes=2),
                               rtol=1e-4, atol=1e-5)
    classes = [str(c) for c in range(10)]
    results = [evaluate_scenes(scene_model, [room], classes=classes) for room in (far, near)]
    assert results[0]["intersection"] == results[1]["intersection"]
    assert results[0]["miou"] == results[1]["miou"] and results[0]["oa"] == results[1]["oa"]


# ------------------------------------------------------------------------------------------ evaluation
class Constant(torch.nn.Module):
    """Predicts, for each point, the class written in its red channel (``round(10 r)``)."""

    in_channels = 6

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, pos, batch):
        return torch.nn.functional.one_hot((x[:, 3] * 10).round().long(), 3).float() * 50 + self.weight


def test_evaluation_metrics_checked_by_hand_with_ignored_points():
    """Two rooms, 3 classes; the prediction is planted in the colour. By hand: room A true [0 0 1 1 -1],
    predicted [0 1 1 1 2]; room B true [2 2 0], predicted [2 0 0]. Class 0: I 2, U 3 (pred 0 at A0, B1, B2;
    true at A0, A1, B2 -> pred or true: A0, A1, B1, B2 = 4)..."""
    def room(true, predicted, x0):
        count = len(true)
        pos = torch.tensor([[x0 + 0.5 * i, 0.0, 0.0] for i in range(count)], dtype=torch.float64)
        color = torch.zeros(count, 3)
        color[:, 0] = torch.tensor(predicted, dtype=torch.float32) / 10
        return {"pos": pos, "color": color, "seg": torch.tensor(true)}

    rooms = [room([0, 0, 1, 1, -1], [0, 1, 1, 1, 2], 0.0), room([2, 2, 0], [2, 0, 0], 300.0)]
    result = evaluate_scenes(Constant(), rooms, classes=["a", "b", "c"], voxel_size=0.04)
    # labelled points: A0..A3, B0..B2 (A4 is ignored: its prediction 2 counts nowhere)
    # class 0: true {A0, A1, B2}, pred {A0, B1, B2}: I = 2 (A0, B2), U = 4, target 3
    # class 1: true {A2, A3}, pred {A1, A2, A3}: I = 2, U = 3, target 2
    # class 2: true {B0, B1}, pred {B0}: I = 1, U = 2, target 2
    assert result["intersection"] == [2, 2, 1] and result["union"] == [4, 3, 2] and result["target"] == [3, 2, 2]
    assert result["miou"] == pytest.approx((2 / 4 + 2 / 3 + 1 / 2) / 3)
    assert result["macc"] == pytest.approx((2 / 3 + 2 / 2 + 1 / 2) / 3)
    assert result["oa"] == pytest.approx(5 / 7)
    assert result["iou"] == pytest.approx({"a": 0.5, "b": 2 / 3, "c": 0.5})
    assert result["samples"] == 2 and result["points"] == 7
