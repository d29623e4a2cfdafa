"""Scene metrics (pcattn.engine.scene_metrics) against counts worked out by hand."""
import numpy as np
import pytest
import torch

from pcattn.engine.scene_metrics import SceneSegmentationMetrics, intersection_union_target

# 8 points, 3 classes; the last two are unlabelled (-1) and must not count, whatever is predicted there.
TARGET = [0, 0, 0, 1, 1, 2, -1, -1]
PRED = [0, 0, 1, 1, 2, 2, 0, 2]
# By hand, over the 6 labelled points:
#   intersection: class 0 -> 2 (points 0, 1), class 1 -> 1 (point 3), class 2 -> 1 (point 5)
#   predicted: 2, 2, 2; true: 3, 2, 1; union = predicted + true - intersection = 3, 3, 2
#   IoU = 2/3, 1/3, 1/2 -> mIoU 1/2;  Acc = 2/3, 1/2, 1 -> mAcc 13/18;  OA = 4/6


def test_hand_example():
    metrics = SceneSegmentationMetrics(3, ["ceiling", "floor", "wall"])
    metrics.update(torch.tensor(PRED), torch.tensor(TARGET))
    result = metrics.compute()
    assert result["intersection"] == [2, 1, 1]
    assert result["union"] == [3, 3, 2]
    assert result["target"] == [3, 2, 1]
    assert result["miou"] == pytest.approx(0.5)
    assert result["macc"] == pytest.approx(13 / 18)
    assert result["oa"] == pytest.approx(4 / 6)
    assert result["iou"] == pytest.approx({"ceiling": 2 / 3, "floor": 1 / 3, "wall": 1 / 2})
    assert result["points"] == 6


def test_logits_take_the_argmax():
    logits = torch.nn.functional.one_hot(torch.tensor(PRED), 3).float() * 5 - 1
    by_logits, by_labels = SceneSegmentationMetrics(3), SceneSegmentationMetrics(3)
    by_logits.update(logits, torch.tensor(TARGET))
    by_labels.update(PRED, TARGET)
    assert by_logits.compute() == by_labels.compute()


def test_states_of_parts_sum_to_the_whole():
    """Two processes (or two fragments) each see part of the points: summing their states gives exactly
    the metrics of all points at once (sums over the split, not a mean of per-part scores)."""
    rng = np.random.default_rng(0)
    target = rng.integers(-1, 4, size=500)
    pred = rng.integers(0, 4, size=500)
    whole = SceneSegmentationMetrics(4)
    whole.update(pred, target)
    first, second = SceneSegmentationMetrics(4), SceneSegmentationMetrics(4)
    first.update(pred[:123], target[:123])
    second.update(pred[123:], target[123:])
    merged = SceneSegmentationMetrics(4)
    merged.load_state(first.state() + second.state())
    assert merged.compute() == whole.compute()
    # not the mean of the parts' mIoUs
    assert merged.compute()["miou"] != pytest.approx((first.compute()["miou"] + second.compute()["miou"]) / 2)


def test_class_absent_from_split_is_left_out_but_a_false_positive_counts():
    metrics = SceneSegmentationMetrics(4)  # class 3 appears nowhere
    metrics.update(PRED, TARGET)
    result = metrics.compute()
    assert result["iou"]["3"] is None and result["acc"]["3"] is None
    assert result["miou"] == pytest.approx(0.5)
    # class 3 predicted once where the truth is class 2: IoU 0 for class 3, counted in the mean
    metrics.update([3], [2])
    result = metrics.compute()
    assert result["iou"]["3"] == 0.0 and result["acc"]["3"] is None
    assert result["miou"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 3 + 0) / 4)


def test_bad_labels_are_named():
    with pytest.raises(ValueError, match="target holds label 5"):
        intersection_union_target([0, 1], [0, 5], 3)
    with pytest.raises(ValueError, match="pred holds label -1"):
        intersection_union_target([0, -1], [0, 1], 3)
    with pytest.raises(ValueError, match="same number of points"):
        intersection_union_target([0, 1, 2], [0, 1], 3)
    with pytest.raises(ValueError, match="call update"):
        SceneSegmentationMetrics(3).compute()
    with pytest.raises(ValueError, match="does not fit 3 classes"):
        SceneSegmentationMetrics(3).load_state(torch.zeros(12))
