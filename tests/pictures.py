"""What a rendered picture shows, for the visualisation tests: viridis colours, the magenta query, drawn pixels."""
from __future__ import annotations

import numpy as np

MAGENTA = np.array([255, 0, 255])   # pcattn.viz.QUERY_COLOR in 8-bit RGB


def read_png(path) -> np.ndarray:
    """``(H, W, 3)`` int RGB of an image file."""
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def viridis_lut() -> np.ndarray:
    from matplotlib import colormaps

    return np.round(colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).astype(int)


def viridis_entries(image, min_pixels=3, tolerance=2) -> np.ndarray:
    """The viridis entries (indices of 256) that at least ``min_pixels`` pixels show (within ``tolerance``)."""
    pixels = image.reshape(-1, 3).astype(int)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    colours = colours[counts >= min_pixels]
    lut = viridis_lut()
    distance = np.abs(colours[:, None, :] - lut[None]).max(-1)          # (colours, 256)
    matched = distance.min(1) <= tolerance
    return np.unique(distance[matched].argmin(1))


def count_viridis_colours(image, min_pixels=3, tolerance=2) -> int:
    """How many distinct viridis entries the image shows (:func:`viridis_entries`)."""
    return len(viridis_entries(image, min_pixels, tolerance))


def viridis_span(image, min_pixels=3, tolerance=2) -> int:
    """How much of the colour map the image spans: last minus first entry shown (0 to 255).

    Anti-aliased edges of one colour match its close neighbours in the map, so several distinct
    entries alone do not prove a spread of values; a span does."""
    entries = viridis_entries(image, min_pixels, tolerance)
    return int(entries.max() - entries.min()) if len(entries) else 0


def pixels_of(image, rgb, tolerance=2) -> int:
    """Pixels in colour ``rgb`` (8-bit, within ``tolerance``)."""
    return int((np.abs(image.reshape(-1, 3).astype(int) - np.asarray(rgb)).max(1) <= tolerance).sum())


def magenta_pixels(image) -> int:
    """Pixels in the query's colour."""
    return pixels_of(image, MAGENTA)


def not_background(image) -> float:
    """Fraction of pixels that are not (nearly) white."""
    return float((np.abs(image.astype(int) - 255).max(-1) > 10).mean())


def viridis_pixels(image, tolerance=2) -> int:
    """Pixels in a colour of the viridis map (within ``tolerance`` of one of its 256 entries)."""
    pixels = image.reshape(-1, 3).astype(int)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    matched = np.abs(colours[:, None, :] - viridis_lut()[None]).max(-1).min(1) <= tolerance
    return int(counts[matched].sum())
