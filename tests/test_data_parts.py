"""Built-in part-labelled shapes: determinism, splits, label coverage."""
import numpy as np
import pytest
import torch

from pcattn.data.parts import CATEGORY_PARTS, PART_CATEGORIES, PART_NAMES, BuiltinParts, generate_part_shape


def test_categories_and_parts():
    assert len(PART_CATEGORIES) >= 8 and len(PART_NAMES) >= 20
    assert PART_CATEGORIES["airplane"] == ("fuselage", "wings", "tail", "engines")
    assert PART_CATEGORIES["chair"] == ("seat", "back", "legs")
    assert PART_CATEGORIES["lamp"] == ("base", "stem", "shade")
    assert sorted(i for parts in CATEGORY_PARTS for i in parts) == list(range(len(PART_NAMES)))


def test_deterministic_disjoint_splits_and_label_coverage():
    train = BuiltinParts("train", num_points=256, train_per_category=3, use_normals=True)
    again = BuiltinParts("train", num_points=256, train_per_category=3, use_normals=True)
    test = BuiltinParts("test", num_points=256, test_per_category=3)
    assert len(train) == len(test) == 3 * len(PART_CATEGORIES)
    assert np.array_equal(train.points, again.points) and np.array_equal(train.seg, again.seg)
    assert not np.allclose(train.points[:, :, :3], test.points[:, :, :3])
    assert not np.array_equal(BuiltinParts("train", 256, train_per_category=3, seed=1).points, train.points)
    for index in range(len(train)):
        sample = train[index]
        assert sample["pos"].shape == (256, 3) and sample["pos"].dtype == torch.float32
        assert sample["seg"].shape == (256,) and sample["seg"].dtype == torch.int64
        assert sample["category"].shape == () and sample["category"].dtype == torch.int64
        assert torch.allclose(sample["normals"].norm(dim=1), torch.ones(256), atol=1e-4)
        assert float(sample["pos"].norm(dim=1).max()) <= 1.05
        # every point carries a part of its own category, and every part of the category is present
        assert set(sample["seg"].tolist()) == set(CATEGORY_PARTS[int(sample["category"])])


def test_labels_follow_the_geometry():
    rng = np.random.default_rng(0)
    cloud, seg = generate_part_shape("lamp", rng, 2048, noise=0.0)
    height = cloud[:, 1]
    base, stem, shade = CATEGORY_PARTS[list(PART_CATEGORIES).index("lamp")]
    assert height[seg == base].mean() < height[seg == stem].mean() < height[seg == shade].mean()


def test_subset_and_errors():
    chairs = BuiltinParts("test", 128, test_per_category=2, categories=["chair"])
    assert len(chairs) == 2 and set(chairs.shape_categories.tolist()) == {list(PART_CATEGORIES).index("chair")}
    with pytest.raises(ValueError, match="split"):
        BuiltinParts("val")
    with pytest.raises(ValueError, match="num_points"):
        BuiltinParts("test", 4096)
    with pytest.raises(ValueError, match="unknown part categories"):
        BuiltinParts("test", categories=["sofa"])
