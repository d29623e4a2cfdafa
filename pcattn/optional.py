"""Optional packages: Open3D (PLY/PCD reading, rendering, the fast CPU kNN), h5py (HDF5 datasets),
matplotlib (colours, plots, the fallback renderer) and laspy (LiDAR files) are extras, not requirements:
``pip install pcattn`` gives the layers and models with torch and PyG alone. Each is imported where it is used, through
:func:`require`, whose error names the extra that installs it.
"""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtra", "require", "EXTRAS"]

#: the pip extras, by what they are for (``pcattn[all]`` holds every one)
EXTRAS = {"io": "reading PLY/PCD files (open3d) and HDF5 datasets (h5py)",
          "viz": "attention and part pictures, training plots (open3d, matplotlib)",
          "las": "reading LiDAR .las/.laz files in pcattn predict (laspy, with the lazrs LAZ backend)"}

_DISTRIBUTIONS = {"open3d": "open3d", "h5py": "h5py", "matplotlib": "matplotlib", "mpl_toolkits": "matplotlib", "laspy": "laspy"}


class MissingExtra(ImportError):
    """An optional package that the asked-for feature needs is not installed (the message names the extra)."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``"h5py"``, ``"open3d"``, ``"matplotlib.figure"``) for ``purpose``.

    Raises:
        MissingExtra: it is not installed (or does not import); the message says what needs it and
            ``pip install 'pcattn[<extra>]'``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = _DISTRIBUTIONS.get(module.split(".")[0], module.split(".")[0])
        raise MissingExtra(f"{purpose} needs {package}, which is not installed here ({error}); install it with "
                           f"pip install 'pcattn[{extra}]' (or 'pcattn[all]')") from None
