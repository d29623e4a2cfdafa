"""Neighbourhoods on point clouds: exact k nearest neighbours, farthest point sampling, layouts.

Every function accepts the two layouts used across pcattn:

* **flat**: ``pos (N, 3)`` with an optional sorted ``batch (N,)`` vector giving each
  row's cloud (as in PyTorch Geometric). Indices returned are global rows.
* **dense**: ``pos (B, P, 3)``, ``B`` clouds of ``P`` points each. Indices returned
  are local to each cloud.

Neighbour indices use ``-1`` for an empty slot: a cloud with fewer than ``k`` points
gets all of its points and ``-1`` in the remaining slots, never a point of another cloud.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "knn",
    "farthest_point_sampling",
    "knn_equal_clouds",
    "fps_equal_clouds",
    "to_flat",
    "to_dense",
    "batch_ptr",
    "cloud_start_rows",
    "local_to_global",
    "global_to_local",
    "ragged_index",
    "neighbors_to_edge_index",
    "edge_index_to_neighbors",
    "check_positions",
    "check_batch",
    "checked_inputs",
    "inputs_checked",
    "tracing",
    "exporting",
    "cloud_ordinals",
    "OPEN3D_MIN_POINTS",
    "RECORDED_QUERY_CHUNK",
]

# Clouds at least this large are searched with Open3D's C++ kNN on the CPU (when installed):
# measured here: 1.5x faster than torch brute force at 128 points, 3x at 1k, ~25x at 4k, ~90x at 100k.
OPEN3D_MIN_POINTS = 128
# Largest number of pairwise distances held at once by the torch brute force (64 MiB in float32).
_MAX_PAIRS = 1 << 24
# Query rows per step of a kNN recorded by torch.export: each step holds a (B, 256, P) float32 distance
# block (100 MB for one cloud of 10^5 points), whatever the number of points.
RECORDED_QUERY_CHUNK = 256


# ----------------------------------------------------------------------------- validation
_CHECKED = threading.local()


@contextlib.contextmanager
def checked_inputs():
    """Inside this context pcattn's layers, kNN and FPS trust their inputs and skip their checks.

    A model checks its input once at its entry (shapes, dtypes, finite positions, a sorted batch)
    and runs its layers inside this context: the checks' host synchronisations (``bool(...)`` on
    device tensors) would otherwise stall a GPU at every block. Layers called directly still check.
    Thread-local, so models running in other threads are not affected.
    """
    previous = getattr(_CHECKED, "active", False)
    _CHECKED.active = True
    try:
        yield
    finally:
        _CHECKED.active = previous


def inputs_checked() -> bool:
    """Whether the caller runs inside :func:`checked_inputs` (inputs already validated)."""
    return getattr(_CHECKED, "active", False)


def tracing() -> bool:
    """Whether ``torch.compile``, ``torch.export`` or ``torch.jit.trace`` is recording the call.

    While recording, pcattn takes paths without host synchronisations or data-dependent Python
    branches: no ``bool(...)`` shortcuts or finiteness check, kNN of equal-sized clouds as one
    batched ``cdist`` + ``topk`` (never Open3D), one chunk per layer, plain autograd.
    """
    return torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()


def exporting() -> bool:
    """Whether ``torch.export`` (which the ONNX exporter runs) records the call.

    Recorded by ``torch.export``, pcattn keeps the number of points a dynamic size: farthest point
    sampling is a loop that stays a loop (``while_loop``, an ONNX ``Loop``), kNN runs over chunks of
    queries in a ``while_loop`` too, grid pooling numbers its voxels by sorting. ``torch.compile``
    and ``torch.jit.trace`` keep the static-shape paths of :func:`tracing`.
    """
    return torch.compiler.is_exporting()


def check_positions(pos: Tensor, name: str = "pos") -> None:
    """Raise a clear error unless ``pos`` is a finite floating ``(N, 3)`` or ``(B, P, 3)`` tensor."""
    if inputs_checked():
        return
    if not isinstance(pos, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(pos).__name__}")
    if pos.dim() not in (2, 3) or pos.shape[-1] != 3:
        raise ValueError(f"{name} must be (N, 3) or (B, P, 3), got {tuple(pos.shape)}")
    if not pos.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got {pos.dtype}")
    if pos.numel() > 0 and not tracing() and not bool(torch.isfinite(pos).all()):
        bad = int((~torch.isfinite(pos)).any(-1).sum())
        raise ValueError(f"{name} contains NaN or infinite values ({bad} points)")


def check_batch(batch: Tensor, num_points: int, device: torch.device, name: str = "batch") -> None:
    """Raise a clear error unless ``batch`` is a sorted integer ``(N,)`` vector on ``device``."""
    if inputs_checked():
        return
    if not isinstance(batch, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(batch).__name__}")
    if batch.dim() != 1 or batch.numel() != num_points:
        raise ValueError(f"{name} must be ({num_points},) to match the points, got {tuple(batch.shape)}")
    if batch.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an integer (int64) tensor, got {batch.dtype}")
    if batch.device != device:
        raise ValueError(f"{name} is on {batch.device} but the points are on {device}")
    if num_points > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError(f"{name} must be sorted (non-decreasing), as PyTorch Geometric batches are")
    if num_points > 0 and int(batch[0]) < 0:
        raise ValueError(f"{name} must hold non-negative cloud ids, got {int(batch[0])}")


# ----------------------------------------------------------------------------- layouts
def batch_ptr(batch: Optional[Tensor], num_points: int) -> Tensor:
    """Row offsets of each cloud: cloud ``b`` is rows ``ptr[b]:ptr[b + 1]``. Shape ``(B + 1,)``.

    Cloud ids that hold no points (gaps in ``batch``) give empty ranges.
    """
    if batch is None:
        return torch.tensor([0, num_points], dtype=torch.long)
    if num_points == 0:
        return torch.zeros(1, dtype=torch.long)
    counts = torch.bincount(batch.long().cpu())
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def cloud_start_rows(batch: Tensor) -> Tensor:
    """For each row of a sorted ``batch (N,)``, the first row of its cloud: ``(N,)`` long.

    ``pos[cloud_start_rows(batch)]`` is a point of each row's cloud that moves with the cloud: the
    layers subtract it (in float32) before projecting absolute positions, so a projection depends on
    where a cloud is only through the rounding of the cloud's own extent. No host synchronisation.
    """
    if exporting():  # (ONNX has no searchsorted): the smallest row of each cloud, scattered by cloud ordinal
        ordinal = cloud_ordinals(batch)
        rows = torch.arange(batch.shape[0], device=batch.device)
        first = torch.full_like(rows, batch.shape[0]).scatter_reduce(0, ordinal, rows, "amin")
        return first.index_select(0, ordinal)
    return torch.searchsorted(batch, batch)


def cloud_ordinals(batch: Tensor) -> Tensor:
    """For each row of a sorted ``batch (N,)``, the rank of its cloud among the clouds present: ``(N,)``
    long in ``[0, N)`` (cloud ids with gaps, ``[0, 0, 4, 4, 7]``, become ``[0, 0, 1, 1, 2]``). Static shapes:
    what a recorded graph uses to index per-cloud buffers of ``N`` rows without knowing the number of clouds.
    """
    new_cloud = torch.cat([torch.ones_like(batch[:1], dtype=torch.bool), batch[1:] != batch[:-1]])
    return new_cloud.long().cumsum(0) - 1


def to_flat(pos: Tensor, *features: Tensor) -> Tuple[Tensor, ...]:
    """Dense ``(B, P, C)`` tensors to flat ``(B*P, C)`` rows plus the ``batch`` vector.

    Returns ``(pos_flat, *features_flat, batch)``; ``batch`` is ``arange(B).repeat_interleave(P)``.
    """
    B, P = pos.shape[:2]
    # (an expand, not repeat_interleave: the ONNX exporter mistranslates a repeat_interleave of dynamic sizes)
    batch = torch.arange(B, device=pos.device)[:, None].expand(B, P).reshape(B * P)
    flat = [t.reshape(B * P, *t.shape[2:]) for t in (pos, *features)]
    return (*flat, batch)


def to_dense(x: Tensor, batch_size: int) -> Tensor:
    """Flat rows ``(B*P, ...)`` of equal-sized clouds back to ``(B, P, ...)``."""
    return x.reshape(batch_size, -1, *x.shape[1:])


def local_to_global(neighbors: Tensor) -> Tensor:
    """Dense neighbour indices ``(B, P, K)``, local to each cloud, to flat rows ``(B*P, K)``.

    Cloud ``b``'s index ``j`` becomes row ``b * P + j``; ``-1`` (an empty slot) stays ``-1``.
    """
    return _offset_rows(neighbors, neighbors.shape[1])


def global_to_local(neighbors: Tensor, batch_size: int) -> Tensor:
    """The inverse of :func:`local_to_global`: flat rows ``(B*P, K)`` to local indices ``(B, P, K)``."""
    local = neighbors.reshape(batch_size, -1, neighbors.shape[-1])
    P = local.shape[1]
    offset = (torch.arange(batch_size, device=neighbors.device) * P)[:, None, None]
    return torch.where(local >= 0, local - offset, local)


def _offset_rows(local: Tensor, points_per_cloud: int) -> Tensor:
    """Local indices ``(B, M, K)`` into clouds of ``P`` rows each -> global rows ``(B*M, K)`` (``-1`` kept)."""
    B = local.shape[0]
    offset = (torch.arange(B, device=local.device) * points_per_cloud)[:, None, None]
    return torch.where(local >= 0, local + offset, local).reshape(-1, local.shape[-1])


def ragged_index(sizes: Tensor, starts: Optional[Tensor] = None) -> Tensor:
    """Rows of ragged clouds padded to a ``(B, P_max)`` grid, ``-1`` in the padding.

    ``sizes (B,)`` are the clouds' point counts and ``starts (B,)`` their first rows (default:
    the clouds follow each other). Padding ``(N, C)`` rows to ``(B, P_max, C)`` is
    ``rows[index.clamp(min=0)]`` with ``index >= 0`` marking the real points. Same device as ``sizes``.
    """
    sizes = sizes.long()
    if starts is None:
        starts = torch.cumsum(sizes, 0) - sizes
    width = int(sizes.max()) if sizes.numel() else 0
    local = torch.arange(width, device=sizes.device)[None, :]
    return torch.where(local < sizes[:, None], starts[:, None] + local, torch.full_like(local, -1))


def neighbors_to_edge_index(neighbors: Tensor, flow: str = "source_to_target") -> Tensor:
    """``(N, K)`` neighbour rows -> PyG ``edge_index (2, E)``, ``-1`` slots dropped, grouped by centre.

    ``flow="source_to_target"`` (PyG's default): row 0 the neighbour ``j`` (source), row 1 the centre
    ``i`` (target), so a message passes from each neighbour to its centre; ``"target_to_source"``
    swaps the rows.
    """
    if flow not in ("source_to_target", "target_to_source"):
        raise ValueError(f"flow must be 'source_to_target' or 'target_to_source', got {flow!r}")
    n, k = neighbors.shape
    centre = torch.arange(n, device=neighbors.device).repeat_interleave(k)
    neighbour = neighbors.reshape(-1)
    keep = neighbour >= 0
    pair = (neighbour[keep], centre[keep])
    return torch.stack(pair if flow == "source_to_target" else pair[::-1])


def edge_index_to_neighbors(source: Tensor, target: Tensor, num_targets: int) -> Tensor:
    """Edges ``source[e] -> target[e]`` as a padded ``(num_targets, K)`` neighbour index.

    Row ``i`` lists the sources of the edges into ``i`` in edge order, then ``-1``; ``K`` is the
    largest in-degree (at least 1, so a graph without edges gives one ``-1`` column). Duplicate
    edges stay duplicates, as in message passing.
    """
    order = torch.argsort(target, stable=True)
    source, target = source[order], target[order]
    degree = torch.bincount(target, minlength=num_targets)
    width = max(1, int(degree.max())) if degree.numel() else 1
    first = torch.cumsum(degree, 0) - degree                        # first edge of each target
    slot = torch.arange(target.numel(), device=target.device) - first[target]
    neighbors = torch.full((num_targets, width), -1, dtype=torch.long, device=target.device)
    neighbors[target, slot] = source.long()
    return neighbors


# ----------------------------------------------------------------------------- kNN
def knn(
    pos: Tensor,
    k: int,
    batch: Optional[Tensor] = None,
    query: Optional[Tensor] = None,
    query_batch: Optional[Tensor] = None,
) -> Tensor:
    r"""Exact k nearest neighbours within each cloud.

    Args:
        pos: points to search, flat ``(N, 3)`` or dense ``(B, P, 3)``.
        k: neighbours per query point (``k >= 1``).
        batch: ``(N,)`` sorted cloud id of each row of a flat ``pos`` (``None``: one cloud).
        query: points to find neighbours for (default: ``pos`` itself), ``(M, 3)`` flat
            with ``query_batch (M,)``, or ``(B, M, 3)`` dense.
        query_batch: ``(M,)`` sorted cloud id of each query row (flat only).

    Returns:
        Long tensor of indices into ``pos``, nearest first: ``(M, k)`` global rows (flat)
        or ``(B, M, k)`` indices local to each cloud (dense). When ``query`` is omitted
        each point is its own first neighbour (even among duplicate points). Slots beyond
        the size of a cloud with fewer than ``k`` points are ``-1``.

    Memory stays bounded: torch brute force works on chunks of query rows. On the CPU,
    clouds of at least :data:`OPEN3D_MIN_POINTS` points use Open3D's C++ search
    (``open3d.core.nns``) when Open3D is installed.
    """
    check_positions(pos)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    self_query = query is None
    if not self_query:
        check_positions(query, "query")
        if query.dim() != pos.dim():
            raise ValueError(f"query {tuple(query.shape)} and pos {tuple(pos.shape)} must share a layout")
        if query.device != pos.device:
            raise ValueError(f"query is on {query.device} but pos is on {pos.device}")

    if pos.dim() == 3:
        if batch is not None or query_batch is not None:
            raise ValueError("batch/query_batch are only for flat (N, 3) positions, got dense (B, P, 3)")
        if not self_query and query.shape[0] != pos.shape[0]:
            raise ValueError(f"query has {query.shape[0]} clouds but pos has {pos.shape[0]}")
        if (pos.device.type != "cpu" or tracing()) and pos.shape[1] > 0:
            return _knn_batched(pos, k, None if self_query else query)
        out = []
        for b in range(pos.shape[0]):
            out.append(_knn_one_cloud(pos[b], k, None if self_query else query[b]))
        return torch.stack(out) if out else pos.new_zeros((0, 0, k), dtype=torch.long)

    if batch is not None:
        check_batch(batch, pos.shape[0], pos.device)
    if self_query:
        query, query_batch = pos, batch
    elif (batch is None) != (query_batch is None):
        raise ValueError("give both batch and query_batch, or neither")
    elif query_batch is not None:
        check_batch(query_batch, query.shape[0], query.device, "query_batch")

    if exporting():  # one masked search over the rows, in chunks of queries: no cloud sizes read
        clouds = None if batch is None else batch[None]
        query_clouds = None if query_batch is None else query_batch[None]
        return _knn_recorded(pos[None], k, None if self_query else query[None], clouds, query_clouds)[0]
    ptr = batch_ptr(batch, pos.shape[0]).tolist()
    qptr = ptr if self_query else batch_ptr(query_batch, query.shape[0]).tolist()
    if len(qptr) > len(ptr):
        ptr = ptr + [ptr[-1]] * (len(qptr) - len(ptr))
    sizes, qsizes = [b - a for a, b in zip(ptr, ptr[1:])], [b - a for a, b in zip(qptr, qptr[1:])]
    if (pos.device.type != "cpu" and len(set(sizes)) == 1 and len(set(qsizes)) == 1 and sizes[0] > 0
            and len(sizes) == len(qsizes)):
        # Equal-sized clouds on an accelerator: one batched search, global rows by offsets.
        B, P, M = len(sizes), sizes[0], qsizes[0]
        local = _knn_batched(pos.view(B, P, 3), k, None if self_query else query.view(B, M, 3))
        return local_to_global(local) if self_query else _offset_rows(local, P)
    result = torch.full((query.shape[0], k), -1, dtype=torch.long, device=pos.device)
    for b in range(len(qptr) - 1):
        q0, q1, p0, p1 = qptr[b], qptr[b + 1], ptr[b], ptr[b + 1]
        if q1 == q0:
            continue
        if p1 == p0:
            raise ValueError(f"cloud {b} has {q1 - q0} query points but no points to search")
        local = _knn_one_cloud(pos[p0:p1], k, None if self_query else query[q0:q1])
        result[q0:q1] = torch.where(local >= 0, local + p0, local)
    return result


def _knn_one_cloud(points: Tensor, k: int, query: Optional[Tensor]) -> Tensor:
    """kNN of ``query`` (default ``points``) in one cloud: ``(M, k)`` local indices, ``-1`` padded."""
    n = points.shape[0]
    queries = points if query is None else query
    kk = min(k, n)
    if points.device.type == "cpu" and n >= OPEN3D_MIN_POINTS and _open3d_core() is not None:
        index = _knn_open3d(points, queries, kk)
    else:
        index = _knn_torch(points, queries, kk)
    if query is None:
        index = _self_first(index)
    if kk < k:
        pad = index.new_full((index.shape[0], k - kk), -1)
        index = torch.cat([index, pad], dim=1)
    return index


def _knn_torch(points: Tensor, queries: Tensor, k: int) -> Tensor:
    if points.dtype in (torch.float16, torch.bfloat16):  # cdist has no half-precision kernel
        points, queries = points.float(), queries.float()
    n = points.shape[0]
    chunk = max(1, _MAX_PAIRS // max(n, 1))
    out = []
    for start in range(0, queries.shape[0], chunk):
        # Direct differences, not the matmul expansion: exact ordering for far-off-origin clouds.
        dist = torch.cdist(queries[start:start + chunk], points, compute_mode="donot_use_mm_for_euclid_dist")
        out.append(dist.topk(k, dim=1, largest=False, sorted=True).indices)
    return torch.cat(out) if out else queries.new_zeros((0, k), dtype=torch.long)


_O3C = None


def _open3d_core():
    """``open3d.core`` if it imports, else ``None`` (Open3D is optional for the core layers)."""
    global _O3C
    if _O3C is None:
        try:
            import open3d.core as o3c  # noqa: WPS433 (lazy: heavy and optional)

            _O3C = o3c
        except Exception:  # ImportError, or OSError for a missing libusb
            _O3C = False
    return _O3C or None


def _knn_open3d(points: Tensor, queries: Tensor, k: int) -> Tensor:
    o3c = _open3d_core()
    dtype = torch.float64 if points.dtype == torch.float64 else torch.float32
    ref = o3c.Tensor.from_numpy(points.detach().to(dtype).contiguous().numpy())
    qry = o3c.Tensor.from_numpy(queries.detach().to(dtype).contiguous().numpy())
    nns = o3c.nns.NearestNeighborSearch(ref)
    nns.knn_index()
    index, _ = nns.knn_search(qry, k)
    # Copy out of Open3D's buffer: a view would outlive it (and Open3D reports it as a leak at exit).
    return torch.from_numpy(index.numpy().astype("int64", copy=True)).reshape(queries.shape[0], k)


def _self_first(index: Tensor, rows: Optional[Tensor] = None) -> Tensor:
    """Put each query point first in its own neighbour list (ties among duplicates may hide it).

    ``index (M, k)`` local indices, ``rows (M,)`` each query's own index (default ``arange(M)``).
    A row where duplicates crowded the point out drops its farthest neighbour instead. No host
    synchronisation except the CPU's shortcut.
    """
    n, k = index.shape
    if rows is None:
        rows = torch.arange(n, device=index.device)
    if n == 0 or (index.device.type == "cpu" and not tracing() and bool((index[:, 0] == rows).all())):
        return index
    missing = ~(index == rows[:, None]).any(1)
    index = torch.cat([index[:, :-1], torch.where(missing, rows, index[:, -1])[:, None]], dim=1)
    # the neighbours of a row are distinct points, so exactly one slot is the point itself: move it
    # first, the others keep their order (a gather, not a stable sort: ONNX has no stable sort)
    own_slot = (index == rows[:, None]).to(torch.uint8).argmax(dim=1, keepdim=True)
    others = torch.arange(k - 1, device=index.device)[None, :]
    others = others + (others >= own_slot).to(others.dtype)
    return torch.cat([rows[:, None].to(index.dtype), index.gather(1, others)], dim=1)


def _knn_batched(points: Tensor, k: int, queries: Optional[Tensor] = None) -> Tensor:
    """kNN in ``B`` equal-sized clouds at once (accelerators: a few launches instead of one per cloud).

    ``points (B, P, 3)``, ``queries (B, M, 3)`` (default ``points``) -> ``(B, M, k)`` local indices,
    ``-1`` padded when ``P < k``.
    """
    if exporting():
        return _knn_recorded(points, k, queries)
    self_query = queries is None
    queries = points if self_query else queries
    B, P = points.shape[:2]
    M = queries.shape[1]
    kk = min(k, P)
    if points.dtype in (torch.float16, torch.bfloat16):
        points, queries = points.float(), queries.float()
    chunk = M if tracing() else max(1, _MAX_PAIRS // max(1, B * P))   # (recorded: one search, any batch size)
    parts = []
    for start in range(0, M, chunk):
        if tracing():  # squared differences axis by axis: what every exporter (ONNX too) has, no (B, M, P, 3)
            dist = sum((queries[:, start:start + chunk, None, axis] - points[:, None, :, axis]).square()
                       for axis in range(3))
        else:
            dist = torch.cdist(queries[:, start:start + chunk], points, compute_mode="donot_use_mm_for_euclid_dist")
        parts.append(dist.topk(kk, dim=2, largest=False, sorted=True).indices)
    index = torch.cat(parts, dim=1) if parts else queries.new_zeros((B, 0, kk), dtype=torch.long)
    if self_query:
        rows = torch.arange(M, device=index.device).repeat(B)
        index = _self_first(index.reshape(B * M, kk), rows).view(B, M, kk)
    if kk < k:
        index = torch.cat([index, index.new_full((B, M, k - kk), -1)], dim=2)
    return index


def _knn_recorded(points: Tensor, k: int, queries: Optional[Tensor] = None, clouds: Optional[Tensor] = None,
                  query_clouds: Optional[Tensor] = None) -> Tensor:
    """kNN as ``torch.export`` records it, the number of points a dynamic size (see :func:`exporting`).

    ``points (B, P, 3)``, ``queries (B, M, 3)`` (default ``points``, each point first) and, for flat rows
    holding several clouds, their cloud ids ``clouds (B, P)`` and ``query_clouds (B, M)`` (a query sees
    only its own cloud) -> ``(B, M, k)`` local indices, nearest first, ``-1`` where a cloud has fewer than
    ``k`` points. The queries go :data:`RECORDED_QUERY_CHUNK` rows at a time through a ``while_loop`` (an
    ONNX ``Loop``), so the memory is ``B x 256 x P`` distances, not ``B x M x P``; ``k`` columns at infinity after the cloud
    keep ``topk`` valid for a cloud smaller than ``k`` (a size the graph cannot know).
    """
    from torch._higher_order_ops.while_loop import while_loop_op

    self_query = queries is None
    if points.dtype in (torch.float16, torch.bfloat16):
        points, queries = points.float(), None if self_query else queries.float()
    # (a loop's body may not see one tensor under two names: the self-search copies its queries)
    queries = points.clone() if self_query else queries
    if clouds is None:   # (every point in one cloud: ids that all agree)
        clouds = torch.zeros_like(points[..., 0], dtype=torch.long)
        query_clouds = torch.zeros_like(queries[..., 0], dtype=torch.long)
    elif self_query or query_clouds is None:
        query_clouds = clouds.clone()
    B, M = points.shape[0], queries.shape[1]
    chunk = RECORDED_QUERY_CHUNK
    offsets = torch.arange(chunk, device=points.device)
    beyond = points.new_full((B, chunk, k), float("inf"))
    # the last query row as a tensor (the loop takes no size that grid pooling's data decides)
    last_row = torch.ones_like(queries[0, :, 0], dtype=torch.long).sum() - 1

    def more(start, index, points, queries, clouds, query_clouds, offsets, beyond, last_row):
        return start <= last_row

    def search(start, index, points, queries, clouds, query_clouds, offsets, beyond, last_row):
        rows = torch.minimum(start + offsets, last_row)    # (the last chunk repeats the last row)
        query = queries.index_select(1, rows)
        # squared differences axis by axis (no (B, chunk, P, 3) tensor), as the static path
        dist = sum((query[:, :, None, axis] - points[:, None, :, axis]).square() for axis in range(3))
        other_cloud = query_clouds.index_select(1, rows)[:, :, None] != clouds[:, None, :]
        dist = dist.masked_fill(other_cloud, float("inf"))
        values, found = torch.cat([dist, beyond], dim=2).topk(k, dim=2, largest=False, sorted=True)
        found = torch.where(torch.isinf(values), torch.full_like(found, -1), found)
        return start + chunk, index.index_copy(1, rows, found)

    start = torch.zeros((), dtype=torch.long, device=points.device)
    empty = torch.full((B, M, k), -1, dtype=torch.long, device=points.device)
    # the operator itself, every tensor passed in: traced once as a graph (the public while_loop would
    # run Dynamo over the body, seconds per call)
    index = while_loop_op(more, search, (start, empty),
                          (points, queries, clouds, query_clouds, offsets, beyond, last_row))[1]
    if self_query:
        rows = torch.arange(M, device=index.device).repeat(B)
        index = _self_first(index.reshape(B * M, k), rows).view(B, M, k)
    return index


def knn_equal_clouds(pos: Tensor, k: int, clouds: int, query: Optional[Tensor] = None) -> Tensor:
    """:func:`knn` of flat rows that hold ``clouds`` equal-sized clouds back to back, with static shapes:
    one batched ``cdist`` + ``topk``, no host synchronisation (what ``torch.compile`` and export record).

    ``pos (clouds * P, 3)``, ``query (clouds * M, 3)`` (default ``pos``, each point first) -> global
    rows ``(clouds * M, k)``, ``-1`` padded when ``P < k``.
    """
    points = pos.view(clouds, -1, 3)
    if query is None:
        return local_to_global(_knn_batched(points, k))
    return _offset_rows(_knn_batched(points, k, query.view(clouds, -1, 3)), points.shape[1])


# ----------------------------------------------------------------------------- FPS
def farthest_point_sampling(
    pos: Tensor,
    ratio: Optional[float] = None,
    count: Optional[int] = None,
    batch: Optional[Tensor] = None,
    random_start: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    r"""Farthest point sampling per cloud.

    Starting from one point, repeatedly keep the point farthest from all kept points.

    Args:
        pos: flat ``(N, 3)`` (with ``batch``) or dense ``(B, P, 3)``.
        ratio: fraction of each cloud to keep, in ``(0, 1]``: ``ceil(ratio * n)`` points.
        count: number of points to keep per cloud (clouds with fewer keep all of theirs).
            Give exactly one of ``ratio`` and ``count``.
        batch: ``(N,)`` sorted cloud ids of a flat ``pos``.
        random_start: start at a random point of each cloud instead of its first point
            (the default start is deterministic).
        generator: random generator for ``random_start``, on any device (the start is drawn on
            the generator's device and moved to ``pos``'s).

    Returns:
        Long indices of the kept points, in the order they were chosen: ``(M,)`` global
        rows grouped by cloud in cloud order (flat), or ``(B, M)`` local indices (dense).
    """
    check_positions(pos)
    if (ratio is None) == (count is None):
        raise ValueError("give exactly one of ratio and count")
    if ratio is not None and not (0.0 < float(ratio) <= 1.0):
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"count must be a positive integer, got {count!r}")

    if pos.dim() == 3:
        if batch is not None:
            raise ValueError("batch is only for flat (N, 3) positions, got dense (B, P, 3)")
        B, P = pos.shape[:2]
        m = min(count, P) if count is not None else _kept_points(P, ratio)
        sizes = torch.full((B,), P, dtype=torch.long, device=pos.device)
        return _fps_padded(pos, sizes, m, random_start, generator)

    n = pos.shape[0]
    if batch is not None:
        check_batch(batch, n, pos.device)
    ptr = batch_ptr(batch, n)
    sizes = (ptr[1:] - ptr[:-1])
    nonempty = (sizes > 0).nonzero().flatten()
    sizes_ne = sizes[nonempty]
    keep = sizes_ne.clamp(max=count) if count is not None else torch.ceil(sizes_ne * ratio).long()
    if sizes_ne.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=pos.device)
    starts = ptr[:-1][nonempty]
    # Pad ragged clouds to (B, P, 3); padded rows are never chosen.
    index = ragged_index(sizes_ne, starts)
    valid = index >= 0
    dense = pos[index.clamp(min=0).to(pos.device)]
    chosen = _fps_padded(dense, sizes_ne.to(pos.device), int(keep.max()), random_start, generator, valid.to(pos.device))
    take = (torch.arange(chosen.shape[1])[None, :] < keep[:, None]).to(pos.device)
    return (chosen + starts[:, None].to(pos.device))[take]      # (stays on the device)


def _kept_points(points: int, ratio: float) -> int:
    """``ceil(ratio * points)``; in integers when ``ratio`` is ``1 / stride`` (a recorded, symbolic
    number of points then stays an integer expression instead of a float rounded)."""
    stride = round(1.0 / ratio)
    if abs(stride * ratio - 1.0) < 1e-12:
        return (points + stride - 1) // stride
    return math.ceil(ratio * points)


def _fps_padded(pos: Tensor, sizes: Tensor, m: int, random_start: bool,
                generator: Optional[torch.Generator], valid: Optional[Tensor] = None) -> Tensor:
    B, P = pos.shape[:2]
    if exporting() and not random_start and valid is None:
        work = pos.detach()
        return _fps_loop(work.float() if work.dtype in (torch.float16, torch.bfloat16) else work, m)
    m = min(m, P)
    work = pos.detach()
    if work.dtype in (torch.float16, torch.bfloat16):
        work = work.float()
    if random_start:
        # Drawn on the generator's device (a CUDA generator cannot draw a CPU tensor), CPU by default.
        draw_device = generator.device if generator is not None else torch.device("cpu")
        start = torch.rand(B, generator=generator, device=draw_device) * sizes.to(draw_device)
        start = start.long().clamp(max=P - 1).to(pos.device)
    else:
        start = torch.zeros(B, dtype=torch.long, device=pos.device)
    # One contiguous (B, P) array per coordinate and preallocated buffers: the loop below runs
    # m times, so it allocates nothing and never builds a (B, P, 3) temporary (3-5x faster).
    coords = [work[..., axis].contiguous() for axis in range(3)]
    dist = torch.full((B, P), float("inf"), dtype=work.dtype, device=pos.device)
    if valid is not None:
        dist.masked_fill_(~valid, -1.0)
    step, diff = torch.empty_like(dist), torch.empty_like(dist)
    chosen = torch.empty((B, m), dtype=torch.long, device=pos.device)
    arange_b = torch.arange(B, device=pos.device)
    current = start
    for i in range(m):
        chosen[:, i] = current
        last = work[arange_b, current]  # (B, 3)
        torch.sub(coords[0], last[:, 0:1], out=step).square_()
        for axis in (1, 2):
            torch.sub(coords[axis], last[:, axis:axis + 1], out=diff)
            step.addcmul_(diff, diff)
        # Kept and padded points sit at -1 so that duplicates of a kept point are still
        # chosen before any point is chosen twice.
        torch.minimum(dist, step, out=dist).scatter_(1, current[:, None], -1.0)
        current = dist.argmax(dim=1)
    return chosen


def _fps_loop(points: Tensor, m: int) -> Tensor:
    """Farthest point sampling of ``points (B, P, 3)`` from each cloud's first point, ``m`` kept points as
    ``(B, m)`` local indices, written as a ``while_loop``: ``torch.export`` records one step (an ONNX
    ``Loop``), not ``m`` unrolled steps, and ``P`` and ``m`` stay dynamic. The same steps as the eager loop."""
    from torch._higher_order_ops.while_loop import while_loop_op

    B, P = points.shape[:2]
    columns = torch.arange(m, device=points.device)[None, :]
    last_step = torch.ones_like(columns).sum() - 1     # m - 1 as a tensor

    def keep_going(step, dist, chosen, current, points, columns, last_step):
        return step <= last_step

    def choose(step, dist, chosen, current, points, columns, last_step):
        chosen = torch.where(columns == step, current[:, None], chosen)
        last = points.gather(1, current[:, None, None].expand(-1, 1, 3))                  # (B, 1, 3)
        diff = points - last
        squared = diff[..., 0].square() + diff[..., 1].square() + diff[..., 2].square()   # (B, P)
        # kept points sit at -1 so that duplicates of a kept point are chosen before any point twice
        dist = torch.minimum(dist, squared).scatter(1, current[:, None], -1.0)
        return step + 1, dist, chosen, dist.argmax(dim=1)

    start = (torch.zeros((), dtype=torch.long, device=points.device),
             points.new_full((B, P), float("inf")),
             torch.zeros((B, m), dtype=torch.long, device=points.device),
             torch.zeros(B, dtype=torch.long, device=points.device))
    # the operator itself, every tensor passed in (see _knn_recorded)
    return while_loop_op(keep_going, choose, start, (points, columns, last_step))[2]


def fps_equal_clouds(pos: Tensor, ratio: float, clouds: int) -> Tensor:
    """:func:`farthest_point_sampling` of flat rows holding ``clouds`` equal-sized clouds back to back,
    with static shapes (see :func:`knn_equal_clouds`): ``(clouds * M,)`` global rows, cloud by cloud."""
    points = pos.view(clouds, -1, 3)
    local = farthest_point_sampling(points, ratio=ratio)                                     # (B, M)
    return (local + torch.arange(clouds, device=pos.device)[:, None] * points.shape[1]).reshape(-1)
