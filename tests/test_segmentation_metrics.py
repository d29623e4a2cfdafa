"""Part-segmentation metrics against a hand-computed example."""
import numpy as np
import pytest
import torch

from pcattn.engine.metrics import PartSegmentationMetrics, restrict_to_parts, shape_part_ious

PARTS = [[0, 1], [2, 3, 4]]  # category 0 has parts 0-1, category 1 parts 2-4


def test_hand_computed_example():
    metrics = PartSegmentationMetrics(PARTS, ["mug", "lamp"])
    # shape A (mug): IoU part 0 = 1/2, part 1 = 2/3
    metrics.update(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]), 0)
    # shape B (mug): part 0 exact, part 1 absent from both (counts 1)
    metrics.update(np.array([0, 0, 0, 0]), np.array([0, 0, 0, 0]), 0)
    # shape C (lamp), logits: class 0 scores highest everywhere but is not a lamp part
    logits = torch.tensor([[9.0, 0, 5, 1, 0],
                           [9.0, 0, 1, 5, 0],
                           [9.0, 0, 1, 5, 0],
                           [9.0, 8, 1, 5, 0]])
    metrics.update(logits, torch.tensor([2, 2, 3, 3]), torch.tensor(1))
    # restricted prediction [2, 3, 3, 3]: IoU part 2 = 1/2, part 3 = 2/3, part 4 absent (1)
    result = metrics.compute()
    a, b, c = (1 / 2 + 2 / 3) / 2, 1.0, (1 / 2 + 2 / 3 + 1) / 3
    assert result["shapes"] == 3
    assert result["accuracy"] == pytest.approx(10 / 12)
    assert result["instance_miou"] == pytest.approx((a + b + c) / 3)
    assert result["class_miou"] == pytest.approx(((a + b) / 2 + c) / 2)
    assert result["per_category"] == pytest.approx({"mug": (a + b) / 2, "lamp": c})


def test_batched_update_equals_one_by_one_and_helpers():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 10, 5))
    target = np.array([rng.choice(PARTS[c], 10) for c in (0, 1, 1, 0)])
    batched, single = PartSegmentationMetrics(PARTS), PartSegmentationMetrics(PARTS)
    batched.update(torch.from_numpy(logits), torch.from_numpy(target), torch.tensor([0, 1, 1, 0]))
    for shape, labels, category in zip(logits, target, (0, 1, 1, 0)):
        single.update(shape, labels, category)
    assert batched.compute() == single.compute()
    assert set(restrict_to_parts(logits[1], PARTS[1])) <= {2, 3, 4}
    assert shape_part_ious([2, 2], [3, 3], [2, 3, 4]).tolist() == [0.0, 0.0, 1.0]


def test_errors():
    metrics = PartSegmentationMetrics(PARTS)
    with pytest.raises(ValueError, match="no shapes"):
        metrics.compute()
    with pytest.raises(ValueError, match="category 2 is not in"):
        metrics.update([0, 1], [0, 1], 2)
    with pytest.raises(ValueError, match="one id per shape"):
        metrics.update(np.zeros((2, 3)), np.zeros((2, 3)), [0])
