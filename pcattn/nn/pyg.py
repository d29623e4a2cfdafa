"""Drop-in replacements for PyTorch Geometric: ``PointTransformerConv`` and the graph builders.

Change the imports of a PyG model and nothing else::

    from pcattn.nn.pyg import PointTransformerConv, fps, knn, knn_graph, radius_graph

:class:`PointTransformerConv` takes PyG's constructor, call and parameter names (a PyG conv's
``state_dict`` loads as it is) and computes what PyG's computes, through pcattn's chunked kernel.
``knn_graph``, ``radius_graph``, ``knn`` and ``fps`` have torch_cluster's signatures and
semantics, built on pcattn's exact kNN and farthest point sampling (PyG 2.8 from PyPI raises
for them without pyg-lib or torch_cluster). Positions are ``(N, 3)``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from . import geometry
from .geometry import edge_index_to_neighbors, farthest_point_sampling, neighbors_to_edge_index
from .vector import VectorSelfAttention

__all__ = ["PointTransformerConv", "knn_graph", "radius_graph", "knn", "fps"]

_IDENTITY = nn.Identity()


class PointTransformerConv(VectorSelfAttention):
    r"""PyG's ``PointTransformerConv`` (same arguments, call and parameter names), computed by pcattn.

    .. math::
        \mathbf{x}^{\prime}_i = \sum_{j \in \mathcal{N}(i) \cup \{ i \}} \alpha_{i,j}
            \left(\mathbf{W}_3 \mathbf{x}_j + \delta_{ij} \right),\qquad
        \alpha_{i,j} = \operatorname{softmax}_j \left( \gamma_\mathbf{\Theta}
            (\mathbf{W}_1 \mathbf{x}_i - \mathbf{W}_2 \mathbf{x}_j + \delta_{i,j}) \right),\qquad
        \delta_{i,j} = h_{\mathbf{\Theta}}(\mathbf{p}_i - \mathbf{p}_j)

    The softmax runs over the sources ``j`` of the edges into ``i``, per channel. ``W_1`` is
    ``lin_dst``, ``W_2`` ``lin_src``, ``W_3`` ``lin``, :math:`h` ``pos_nn`` (default
    ``Linear(3, out_channels)``), :math:`\gamma` ``attn_nn`` (default none; its output has ``1``
    or ``out_channels`` channels). ``N(i)`` are the sources of the edges into ``i``; with
    ``add_self_loops`` self loops are removed and exactly one added per node, as PyG does. A node
    with no incoming edge gets zeros.

    The relative positions :math:`\mathbf{p}_i - \mathbf{p}_j` are formed per edge in float32 (or
    float64; also under autocast) before :math:`h` sees them, so a graph far from the origin gives
    the output of the centred graph, as PyG's conv does.

    Memory: the targets are grouped by in-degree (:func:`degree_buckets`: in-degrees in
    ``(K/2, K]`` share a padded ``(M, K)`` neighbour index), and each group runs pcattn's chunked
    kernel, so a few high-degree nodes cost their own edges, not ``N x K_max``: the padded pairs are
    fewer than twice the edges, and with ``recompute=True`` training stores ``O(N x C)``. With
    BatchNorm in ``pos_nn``/``attn_nn`` in training mode (PyG's ``MLP`` default) the conv computes
    edge by edge as PyG's does (those modules must see exactly the ``E`` edges at once for their
    statistics): ``E x C`` per pair tensor, as PyG's conv.

    Args:
        in_channels: input size, ``-1`` for lazy initialisation at the first call, or a tuple
            ``(source, target)`` for bipartite graphs.
        out_channels: output size.
        pos_nn: :math:`h`, maps ``(E, 3)`` relative positions ``p_i - p_j`` to ``(E, out_channels)``.
        attn_nn: :math:`\gamma`, maps ``(E, out_channels)`` to ``(E, out_channels)`` or ``(E, 1)``.
        add_self_loops: remove self loops and add one per node (default ``True``).
        recompute, chunk_size: as :class:`~pcattn.VectorSelfAttention` (``checkpoint``: deprecated).

    Shapes:
        - x: ``(N, C_in)``, or ``((N_s, C_s), (N_t, C_t))`` for a bipartite graph.
        - pos: ``(N, 3)``, or ``((N_s, 3), (N_t, 3))``.
        - edge_index: ``(2, E)`` (row 0 source ``j``, row 1 target ``i``), a PyG ``EdgeIndex``,
          a ``SparseTensor`` or a torch sparse ``adj_t`` (``adj_t[i, j]``: edge ``j -> i``).
        - returns ``(N, out_channels)`` or ``(N_t, out_channels)``.
    """

    def __init__(self, in_channels: Union[int, Tuple[int, int]], out_channels: int,
                 pos_nn: Optional[Callable] = None, attn_nn: Optional[Callable] = None,
                 add_self_loops: bool = True, chunk_size: Optional[int] = None, recompute: bool = True,
                 checkpoint: Optional[bool] = None):
        # VectorSelfAttention's constructor checks the arguments and builds the modules (lazy for -1, sized
        # per side for (source, target)): PyG's maths is subtraction, softmax, one Linear(3, C) by default,
        # projections without bias, no mapping unless attn_nn is given.
        super().__init__(in_channels, out_channels, positional_encoding=pos_nn if pos_nn is not None else "linear",
                         mapping=attn_nn if attn_nn is not None else "none", bias=False, chunk_size=chunk_size,
                         recompute=recompute, checkpoint=checkpoint)
        self.add_self_loops = add_self_loops
        # The same modules under PyG's names, in PyG's order (so a PyG conv's state_dict, and an optimizer's
        # state over its parameters, load as they are); VectorSelfAttention's names are properties below.
        built = {name: self._modules.pop(name) for name in ("to_query", "to_key", "to_value", "pos_encoder", "mapping")}
        self.pos_nn = built["pos_encoder"]
        self.attn_nn = attn_nn
        self.lin, self.lin_src, self.lin_dst = built["to_value"], built["to_key"], built["to_query"]

    # VectorSelfAttention's names for PyG's modules (properties, so the state_dict keeps PyG's keys)
    @property
    def to_query(self) -> nn.Module:
        return self.lin_dst

    @property
    def to_key(self) -> nn.Module:
        return self.lin_src

    @property
    def to_value(self) -> nn.Module:
        return self.lin

    @property
    def pos_encoder(self) -> nn.Module:
        return self.pos_nn

    @property
    def mapping(self) -> nn.Module:
        return self.attn_nn if self.attn_nn is not None else _IDENTITY

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_channels}, {self.out_channels})"

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], pos: Union[Tensor, Tuple[Tensor, Tensor]],
                edge_index) -> Tensor:
        """See the class docstring for shapes."""
        x_src, x_dst = (x, x) if isinstance(x, Tensor) else x
        pos_src, pos_dst = (pos, pos) if isinstance(pos, Tensor) else pos
        _check_features(x_src, pos_src, "source")
        _check_features(x_dst, pos_dst, "target")
        bipartite = not isinstance(x, Tensor)
        _check_width(x_src, self.lin_src, "x_src" if bipartite else "x", "in_channels[0]" if bipartite else "in_channels")
        _check_width(x_dst, self.lin_dst, "x_dst" if bipartite else "x", "in_channels[1]" if bipartite else "in_channels")
        n_src, n_dst = pos_src.shape[0], pos_dst.shape[0]
        source, target = _edges(edge_index, n_src, n_dst)
        if self.add_self_loops:
            loop = source == target
            nodes = torch.arange(min(n_src, n_dst), device=source.device)
            source, target = torch.cat([source[~loop], nodes]), torch.cat([target[~loop], nodes])
        query, key, value = self.lin_dst(x_dst), self.lin_src(x_src), self.lin(x_src)
        if n_src == 0 or n_dst == 0 or target.numel() == 0:
            return query.new_zeros(n_dst, self.out_channels)
        # Relative positions are formed per edge in float32 or float64 (half-precision positions are
        # promoted), before pos_nn sees them: a graph has no clouds to fold a linear pos_nn about.
        dtype = torch.promote_types(torch.promote_types(pos_src.dtype, pos_dst.dtype), torch.float32)
        pos_src, pos_dst = pos_src.to(dtype), pos_dst.to(dtype)
        if self._batchnorm and self.training:
            return self._edge_attention(query, pos_dst, key, value, pos_src, source, target)
        nodes, outs = [], []
        for bucket_nodes, neighbors in degree_buckets(source, target, n_dst):
            if bucket_nodes.numel() == n_dst:   # one bucket holds every node, in order: no copies
                return self.attend_in_chunks(self._attend_chunk, query, pos_dst, key, value, pos_src, neighbors,
                                             want_weights=False)[0]
            out, _ = self.attend_in_chunks(self._attend_chunk, query[bucket_nodes], pos_dst[bucket_nodes], key, value,
                                           pos_src, neighbors, want_weights=False)
            nodes.append(bucket_nodes)
            outs.append(out)
        out = torch.cat(outs)
        # nodes without incoming edges are in no bucket: they get zeros, as in PyG
        return out.new_zeros(n_dst, out.shape[1]).index_copy(0, torch.cat(nodes), out)

    def _edge_attention(self, query: Tensor, pos_dst: Tensor, key: Tensor, value: Tensor, pos_src: Tensor,
                        source: Tensor, target: Tensor) -> Tensor:
        """PyG's computation edge by edge, for BatchNorm in ``pos_nn``/``attn_nn`` in training: those
        modules see exactly the ``E`` edges in one call, so their batch statistics and running
        statistics are PyG's. Plain autograd; memory ``E x C`` per pair tensor, as PyG's conv.

        ``query (N_t, C)``, ``pos_dst (N_t, 3)``; ``key``/``value (N_s, C)``, ``pos_src (N_s, 3)``;
        edges ``source[e] -> target[e]`` ``(E,)``. Returns ``(N_t, C)``, zeros where no edge arrives.
        """
        n_dst, channels = query.shape[0], self.out_channels
        delta = self.pos_nn(pos_dst.index_select(0, target) - pos_src.index_select(0, source))      # (E, C)
        logits = self.mapping(query.index_select(0, target) - key.index_select(0, source) + delta)    # (E, G)
        groups = logits.shape[-1]
        weights = segment_softmax(logits, target, n_dst)                                            # (E, G)
        messages = weights[..., None] * (value.index_select(0, source) + delta).view(-1, groups, channels // groups)
        messages = messages.reshape(-1, channels)
        return messages.new_zeros(n_dst, channels).index_add_(0, target, messages)


def segment_softmax(logits: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Softmax of ``logits (E, G)`` over the rows sharing an ``index (E,)`` value, per column (PyG's
    ``softmax``). Half-precision logits are normalised in float32 and returned in their dtype."""
    work = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    rows = index[:, None].expand_as(work)
    # the shift cancels in the softmax, so it needs no gradient (as in PyG)
    maxima = work.detach().new_full((num_segments, work.shape[1]), float("-inf"))
    maxima = maxima.scatter_reduce(0, rows, work.detach(), reduce="amax", include_self=True)
    exp = (work - maxima.index_select(0, index)).exp()
    sums = exp.new_zeros(num_segments, work.shape[1]).index_add_(0, index, exp)
    return (exp / sums.index_select(0, index)).to(logits.dtype)


def degree_buckets(source: Tensor, target: Tensor, num_targets: int):
    """The edges ``source[e] -> target[e]`` as padded neighbour indices, targets grouped by in-degree.

    Yields ``(nodes (M,), neighbors (M, K))``: the targets whose in-degree ``d`` lies in ``(K/2, K]``
    for ``K`` a power of two (the bucket's ``K`` is then cut to its largest degree), each row listing
    the sources of the edges into that node in edge order and ``-1`` after. So a node of in-degree
    1,000 among nodes of degree 16 costs a ``(1, 1000)`` index beside ``(N, 16)``, not ``(N, 1000)``:
    the padded pairs are fewer than twice the edges. Targets without edges are in no bucket.
    """
    degree = torch.bincount(target, minlength=num_targets)
    bucket = torch.where(degree > 0, torch.ceil(torch.log2(degree.double())).long(), -1)   # K = 2**bucket
    for b in torch.unique(bucket[bucket >= 0]).tolist():
        in_bucket = bucket == b
        nodes = in_bucket.nonzero().flatten()
        row = torch.cumsum(in_bucket, 0) - 1                     # each bucket node's row in the bucket
        edges = in_bucket[target]
        yield nodes, edge_index_to_neighbors(source[edges], row[target[edges]], nodes.numel())


def _check_features(x: Tensor, pos: Tensor, side: str) -> None:
    geometry.check_positions(pos, f"pos ({side})")
    if pos.dim() != 2:
        raise ValueError(f"pos ({side}) must be (N, 3), got {tuple(pos.shape)}")
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] != pos.shape[0]:
        raise ValueError(f"x ({side}) must be (N, C) with N = {pos.shape[0]} as pos, "
                         f"got {tuple(getattr(x, 'shape', ())) or type(x).__name__}")


def _check_width(x: Tensor, linear: nn.Module, name: str, argument: str) -> None:
    """``x (N, C)`` must have the ``C`` the projection ``linear`` takes (a lazy one not yet built takes any)."""
    if isinstance(linear, nn.Linear) and not isinstance(linear, nn.LazyLinear) and x.shape[1] != linear.in_features:
        raise ValueError(f"{name} must have {linear.in_features} channels ({argument}), got {x.shape[1]}")


def _edges(edge_index, n_src: int, n_dst: int) -> Tuple[Tensor, Tensor]:
    """``(source, target)`` long vectors from a ``(2, E)`` tensor, an ``EdgeIndex``, a ``SparseTensor``
    or a torch sparse ``adj_t``; checked to lie in range."""
    if hasattr(edge_index, "coo") and not isinstance(edge_index, Tensor):   # torch_sparse.SparseTensor (adj_t)
        target, source, _ = edge_index.coo()
    elif isinstance(edge_index, Tensor) and edge_index.layout != torch.strided:   # torch sparse adj_t
        target, source = edge_index.to_sparse_coo().coalesce().indices()
    elif isinstance(edge_index, Tensor):
        if hasattr(edge_index, "as_tensor"):   # PyG's EdgeIndex
            edge_index = edge_index.as_tensor()
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must be (2, E), got {tuple(edge_index.shape)}")
        if edge_index.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"edge_index must be an integer tensor, got {edge_index.dtype}")
        source, target = edge_index.long()
    else:
        raise TypeError(f"edge_index must be a (2, E) tensor or a sparse adjacency, got {type(edge_index).__name__}")
    for name, index, size in (("source", source, n_src), ("target", target, n_dst)):
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= size):
            raise ValueError(f"edge_index {name} nodes must lie in [0, {size}), got "
                             f"[{int(index.min())}, {int(index.max())}]")
    return source, target


# ----------------------------------------------------------------------------- graph builders
def _clouds(batch_x: Optional[Tensor], batch_y: Optional[Tensor], x: Tensor, y: Tensor):
    """torch_cluster accepts one batch vector without the other: the missing one is all zeros."""
    if batch_x is None and batch_y is None:
        return None, None
    if batch_x is None:
        batch_x = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    if batch_y is None:
        batch_y = torch.zeros(y.shape[0], dtype=torch.long, device=y.device)
    return batch_x, batch_y


def _self_neighbors(x: Tensor, k: int, batch: Optional[Tensor], loop: bool, name: str = "k") -> Tensor:
    """pcattn's kNN, each point first: ``(N, k)`` without the point itself, or with it (``loop``).
    ``name`` is the argument ``k`` came from, for the error message."""
    _check_flat(x)
    _check_count(k, name)  # checked here: the search below takes k + 1, which would hide the value given
    neighbors = geometry.knn(x, k if loop else k + 1, batch)
    return neighbors if loop else neighbors[:, 1:]


def _check_count(k, name: str) -> None:
    """``k`` (or ``max_num_neighbors``) must be a positive integer, as :func:`pcattn.knn` requires."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")


def _check_radius(r) -> float:
    """``r`` as a float; it must be a finite positive number (a negative one would act as ``|r|``:
    the test below compares squared distances)."""
    if isinstance(r, Tensor) and r.numel() == 1:
        r = r.item()
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
        raise ValueError(f"r must be a finite positive number, got {r!r}")
    return float(r)


def _check_flat(x: Tensor) -> None:
    if isinstance(x, Tensor) and x.dim() != 2:
        raise ValueError(f"x must be (N, 3), got {tuple(x.shape)}")


def knn_graph(x: Tensor, k: int, batch: Optional[Tensor] = None, loop: bool = False,
              flow: str = "source_to_target", cosine: bool = False, num_workers: int = 1,
              batch_size: Optional[int] = None) -> Tensor:
    """The ``k``-nearest-neighbour graph of ``x (N, 3)``, as torch_cluster's ``knn_graph``.

    Each point receives edges from its ``k`` nearest points of its cloud (``batch``), itself
    excluded unless ``loop``. Returns ``edge_index (2, N * k)`` (fewer when a cloud has at most
    ``k`` points), grouped by centre, nearest first; ``flow`` as in PyG. Exact (pcattn's kNN).
    ``num_workers`` and ``batch_size`` are accepted and unused; ``cosine=True`` is not supported.
    """
    if cosine:
        raise ValueError("knn_graph(cosine=True) is not supported by pcattn (Euclidean distance only)")
    return neighbors_to_edge_index(_self_neighbors(x, k, batch, loop), flow)


def radius_graph(x: Tensor, r: float, batch: Optional[Tensor] = None, loop: bool = False,
                 max_num_neighbors: int = 32, flow: str = "source_to_target", num_workers: int = 1,
                 batch_size: Optional[int] = None) -> Tensor:
    """Edges between points of one cloud closer than ``r``, as torch_cluster's ``radius_graph``.

    Each point receives edges from at most ``max_num_neighbors`` points of its cloud at distance
    ``< r`` (itself only if ``loop``); where more are in range, the nearest are kept (torch_cluster
    keeps an arbitrary subset). Returns ``edge_index (2, E)`` grouped by centre, nearest first.
    """
    r = _check_radius(r)
    neighbors = _self_neighbors(x, max_num_neighbors, batch, loop, "max_num_neighbors")
    distance2 = (x[:, None, :] - x[neighbors.clamp(min=0)]).square().sum(-1)
    neighbors = torch.where(distance2 < r * r, neighbors, neighbors.new_full((), -1))
    return neighbors_to_edge_index(neighbors, flow)


def knn(x: Tensor, y: Tensor, k: int, batch_x: Optional[Tensor] = None, batch_y: Optional[Tensor] = None,
        cosine: bool = False, num_workers: int = 1, batch_size: Optional[int] = None) -> Tensor:
    """For each point of ``y (M, 3)`` its ``k`` nearest points of ``x (N, 3)`` in the same cloud, as
    torch_cluster's ``knn``: ``(2, M * k)`` with row 0 the index into ``y``, row 1 the index into ``x``.

    (:func:`pcattn.knn` is pcattn's own ``(M, k)`` form; this is PyG's.)
    """
    if cosine:
        raise ValueError("knn(cosine=True) is not supported by pcattn (Euclidean distance only)")
    _check_flat(x)
    _check_flat(y)
    batch_x, batch_y = _clouds(batch_x, batch_y, x, y)
    neighbors = geometry.knn(x, k, batch_x, query=y, query_batch=batch_y)
    return neighbors_to_edge_index(neighbors, "target_to_source")


def fps(x: Tensor, batch: Optional[Tensor] = None, ratio: Union[float, Tensor] = 0.5, random_start: bool = True,
        batch_size: Optional[int] = None, ptr: Optional[Tensor] = None) -> Tensor:
    """Farthest point sampling, as torch_cluster's ``fps``: ``ceil(ratio * n)`` points of each cloud of
    ``x (N, 3)``, returned as global row indices grouped by cloud in the order chosen. The first point of
    each cloud is random (``random_start``, torch's generator) or the cloud's first row.

    ``ratio`` is a number or a tensor: one element, or one ratio per cloud (``(B,)``, ``B`` the number of
    clouds, or ``batch_size``). ``ptr (B + 1,)`` row offsets may stand in for ``batch`` (it wins when both
    are given, as in torch_cluster)."""
    _check_flat(x)
    if ptr is not None:
        batch = _batch_from_ptr(ptr, x)
    if ratio is None:
        ratio = 0.5
    if not isinstance(ratio, Tensor) or ratio.numel() == 1:
        return farthest_point_sampling(x, ratio=float(ratio), batch=batch, random_start=random_start)
    return _fps_per_cloud_ratio(x, batch, ratio, random_start, batch_size)


def _batch_from_ptr(ptr: Tensor, x: Tensor) -> Tensor:
    """torch_cluster's ``ptr`` (row offsets, ``(B + 1,)``) as a ``batch`` vector ``(N,)``."""
    if not isinstance(ptr, Tensor) or ptr.dim() != 1 or ptr.numel() < 2 or ptr.is_floating_point():
        raise ValueError(f"ptr must be an integer (B + 1,) tensor of row offsets, got {ptr!r}")
    sizes = ptr.long().diff()
    if int(ptr[0]) != 0 or int(ptr[-1]) != x.shape[0] or bool((sizes < 0).any()):
        raise ValueError(f"ptr must rise from 0 to the {x.shape[0]} rows of x, got {ptr.tolist()}")
    return torch.repeat_interleave(torch.arange(sizes.numel(), device=x.device), sizes.to(x.device))


def _fps_per_cloud_ratio(x: Tensor, batch: Optional[Tensor], ratio: Tensor, random_start: bool,
                         batch_size: Optional[int]) -> Tensor:
    """:func:`fps` with ``ratio (B,)``, one per cloud. Farthest point sampling is greedy, so the first
    ``m`` points it keeps are the same whatever the total: sample every cloud at the largest ratio and
    keep each cloud's first ``ceil(ratio_b * n_b)`` points."""
    ratios = ratio.detach().flatten().float().cpu()
    if batch is not None:
        geometry.check_batch(batch, x.shape[0], x.device)
    sizes = geometry.batch_ptr(batch, x.shape[0]).diff()
    clouds = sizes.numel()
    if ratios.numel() not in (clouds, batch_size):
        raise ValueError(f"ratio must be a number or hold one ratio per cloud ({clouds} clouds), "
                         f"got {ratios.numel()} ratios")
    if not bool(((ratios > 0) & (ratios <= 1)).all()):
        raise ValueError(f"ratio must be in (0, 1], got {ratios.tolist()}")
    ratios = ratios[:clouds]  # (ratios of trailing empty clouds that batch_size counts keep no point)
    largest = float(ratios.max())
    chosen = farthest_point_sampling(x, ratio=largest, batch=batch, random_start=random_start)
    taken = torch.ceil(sizes * largest).long()      # as farthest_point_sampling counts them
    keep = torch.ceil(sizes * ratios).long()
    first_of_cloud = torch.repeat_interleave(taken.cumsum(0) - taken, taken)
    rank_in_cloud = torch.arange(int(taken.sum())) - first_of_cloud
    return chosen[(rank_in_cloud < torch.repeat_interleave(keep, taken)).to(chosen.device)]
