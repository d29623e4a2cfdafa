"""Renamed public names keep their old name for one release: reading it warns (``FutureWarning``)
and gives the new object."""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Mapping

__all__ = ["renamed_attributes", "warn_renamed"]


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is now called ``new`` and that the old name goes in the next release."""
    warnings.warn(f"{old} is now {new}; the old name goes in the next release", FutureWarning, stacklevel=stacklevel)


def renamed_attributes(module: str, renamed: Mapping[str, str], namespace: Dict[str, Any]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` (PEP 562) for ``module``: each old name of ``renamed`` (old -> new)
    gives ``namespace[new]`` with a ``FutureWarning``; any other unknown name is an ``AttributeError``."""

    def __getattr__(name: str) -> Any:
        if name in renamed:
            warn_renamed(f"{module}.{name}", f"{module}.{renamed[name]}")
            return namespace[renamed[name]]
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
