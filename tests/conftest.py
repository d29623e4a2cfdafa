"""Shared pytest fixtures.

* ``shared_fixtures``: the real ModelNet sample files in ``<clone>/../shared/fixtures`` (skips when absent).
* ``tiny_builtin_root``: a very small built-in dataset (12 classes, 4 train + 2 test shapes each,
  256 points) generated once per session in a temporary folder, for tests that need real samples fast.
* ``tiny_modelnet10_root``: ten classes in the ModelNet folder layout ``<class>/{train,test}/<name>.npy``
  (4 train + 2 test shapes each, 128 points), for training runs that take a second.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pcattn.data import BUILTIN_CLASSES

SHARED_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def pytest_configure(config):
    """Under pytest-xdist each worker's torch takes its share of the cores (``-n 2`` on 2 cores: one thread
    each). Two workers of two threads each on two cores slowed a 40-step tiny training test from 4 s to 38 s."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads() // workers))


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"real sample files not found at {SHARED_FIXTURES}")
    return SHARED_FIXTURES


TINY_BUILTIN = dict(train_per_class=4, test_per_class=2, points_per_shape=256, seed=0)


@pytest.fixture(scope="session")
def tiny_builtin_root(tmp_path_factory) -> Path:
    """Folder holding a tiny built-in dataset; open it with ``BuiltinShapes(root, **TINY_BUILTIN)``."""
    from pcattn.data.builtin import generate_builtin_shapes

    root = tmp_path_factory.mktemp("builtin") / "builtin_shapes"
    generate_builtin_shapes(root, **TINY_BUILTIN)
    return root


TINY_MODELNET10_CLASSES = list(BUILTIN_CLASSES[:10])


@pytest.fixture(scope="session")
def tiny_modelnet10_root(tmp_path_factory) -> Path:
    import numpy as np

    from pcattn.data.builtin import generate_shape

    root = tmp_path_factory.mktemp("tiny_modelnet10")
    for label, name in enumerate(TINY_MODELNET10_CLASSES):
        for split, count in (("train", 4), ("test", 2)):
            folder = root / name / split
            folder.mkdir(parents=True)
            for index in range(count):
                rng = np.random.default_rng([label, index, split == "test"])
                np.save(folder / f"{name}_{split}_{index:02d}.npy", generate_shape(name, rng, 128)[:, :3])
    return root


@pytest.fixture
def one_thread():
    """Run the test with ``torch.set_num_threads(1)`` (restored afterwards)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
