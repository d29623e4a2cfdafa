"""Shared pytest fixtures.

* ``shared_fixtures``: the real ModelNet sample files in ``<clone>/../shared/fixtures`` (skips when absent).
* ``tiny_builtin_root``: a very small built-in dataset (12 classes, 4 train + 2 test shapes each,
  256 points) generated once per session in a temporary folder, for tests that need real samples fast.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


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
