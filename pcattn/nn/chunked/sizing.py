"""How many query rows one chunk holds: cache-sized on the CPU, sized from the free memory on a GPU.

A chunk of ``M`` query rows with ``K`` neighbours builds ``(M, K, C)`` pair tensors; :func:`chunk_rows`
picks ``M`` so that these hold about :func:`chunk_elements` elements.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from ..geometry import tracing

__all__ = ["chunk_elements", "chunk_rows"]

# Rows of a chunk hold about this many (pair, channel) elements: 1 MiB in float32, small
# enough to stay in cache and below glibc's mmap threshold, so no fresh zeroed pages per op.
_CHUNK_ELEMENTS = 1 << 18


def chunk_elements(device: torch.device) -> int:
    """(pair, channel) elements per chunk on ``device``: cache-sized on the CPU, memory-budget-sized on a GPU.

    On the CPU a chunk's pair tensors stay in cache (1 MiB in float32). On a GPU a chunk is sized
    from the memory free when the device is first used (about 1/64 of it in elements of 4 bytes,
    between 1M and 64M), so a ModelNet batch runs in one or a few launches per layer. The
    environment variable ``PCATTN_CHUNK_ELEMENTS`` overrides both; a layer's ``chunk_size``
    (rows) overrides this. While ``torch.compile``/export records, nothing asks the device (a
    query such as ``torch.cuda.mem_get_info`` cannot be recorded): the recorded layer runs one
    chunk anyway, and the size returned is a fixed default.
    """
    override = os.environ.get("PCATTN_CHUNK_ELEMENTS")
    if override:
        return max(1, int(override))
    if tracing():
        return _CHUNK_ELEMENTS
    key = str(device)
    if key not in _DEVICE_CHUNK_ELEMENTS:
        _DEVICE_CHUNK_ELEMENTS[key] = _measure_chunk_elements(device)
    return _DEVICE_CHUNK_ELEMENTS[key]


def _measure_chunk_elements(device: torch.device) -> int:
    """Ask ``device`` how large a chunk may be (eager calls only: see :func:`chunk_elements`)."""
    if device.type == "cpu":
        return _CHUNK_ELEMENTS
    budget = 1 << 24
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 64
    return int(min(max(budget, 1 << 20), 1 << 26))


_DEVICE_CHUNK_ELEMENTS: dict = {}


def chunk_rows(k: int, channels: int, chunk_size: Optional[int], device: torch.device) -> int:
    """Query rows per chunk: the layer's ``chunk_size``, else :func:`chunk_elements` over ``k * channels``."""
    return chunk_size or max(1, chunk_elements(device) // max(1, k * channels))
