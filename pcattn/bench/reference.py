"""Plain reference implementations that the benchmark (and tests) compare pcattn against.

Nothing here is meant to be fast: each function is the straightforward formula, written so a
reader can check it against the paper in one screen.

- :func:`vector_attention_reference`: Point Transformer vector attention over a given kNN index,
  every ``(N, K, C)`` intermediate materialised at once (what a dense PyTorch version does).
- :func:`scalar_attention_reference` / :func:`global_attention_reference`: the same for
  :class:`pcattn.ScalarSelfAttention` (kNN groups, and the whole cloud with its ``(P, P)``
  logits materialised).
- :func:`brute_knn` / :func:`brute_fps`: k nearest neighbours by all distances, and farthest
  point sampling as the textbook loop (the baselines of :func:`pcattn.nn.geometry.knn` and
  :func:`pcattn.nn.geometry.farthest_point_sampling`).
- :class:`PyGPointTransformerNet`: the classifier of torch_geometric's example
  ``examples/point_transformer_classification.py`` built from ``PointTransformerConv``. The
  example needs ``torch_cluster`` for ``fps``/``knn_graph`` and ``torch_scatter``; those are not
  installed here, so the sampling and the neighbour search come from :mod:`pcattn.nn.geometry`
  (same results: exact kNN, farthest point sampling) and the max-pooling from
  ``torch_geometric.utils.scatter``. Layer for layer it is the example's network; with
  ``layer="pcattn"`` its attention layers are pcattn's (the benchmark's classifier comparison).
"""
from __future__ import annotations

import copy
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.geometry import farthest_point_sampling, knn, neighbors_to_edge_index

__all__ = [
    "vector_attention_reference",
    "scalar_attention_reference",
    "global_attention_reference",
    "brute_knn",
    "brute_fps",
    "DenseVectorAttention",
    "pyg_mlp",
    "PyGTransformerBlock",
    "PyGPointTransformerNet",
    "pcattn_version",
    "dropin_version",
    "neighbors_to_edge_index",
]


def vector_attention_reference(x: Tensor, pos: Tensor, neighbors: Tensor, to_query: nn.Module,
                               to_key: nn.Module, to_value: nn.Module, pos_nn: Optional[nn.Module],
                               attn_nn: Optional[nn.Module]) -> Tensor:
    r"""Vector self-attention, straight from the formula.

    .. math::
        y_i = \sum_{j \in N(i)} \operatorname{softmax}_j\big(\gamma(\varphi(x_i) - \psi(x_j) + \delta_{ij})\big)
              \odot (\alpha(x_j) + \delta_{ij}), \qquad \delta_{ij} = \theta(p_i - p_j)

    Args:
        x: ``(N, C_in)`` features; pos: ``(N, 3)``; neighbors: ``(N, K)`` rows of ``x``
            (``-1`` = empty slot, left out of the softmax).
        to_query, to_key, to_value: :math:`\varphi, \psi, \alpha`, ``C_in -> C``.
        pos_nn: :math:`\theta` (``3 -> C``) or ``None`` (no positional encoding).
        attn_nn: :math:`\gamma` (``C -> G`` weights, ``G`` dividing ``C``: each weight is shared by
            ``C / G`` channels) or ``None`` (identity).

    Returns:
        ``(N, C)``. The softmax runs over the K neighbours (dim 1), per channel.
    """
    valid = neighbors >= 0
    index = neighbors.clamp(min=0)
    query, key, value = to_query(x), to_key(x), to_value(x)
    rel_pos = pos[:, None, :] - pos[index]                     # (N, K, 3)
    delta = pos_nn(rel_pos) if pos_nn is not None else torch.zeros_like(query)[:, None, :]
    logits = query[:, None, :] - key[index] + delta            # (N, K, C)
    if attn_nn is not None:
        logits = attn_nn(logits)
    logits = logits.masked_fill(~valid[..., None], float("-inf"))
    weights = torch.softmax(logits, dim=1)                     # (N, K, G): one weight per group of channels
    values = value[index] + delta                              # (N, K, C)
    n, k, c = values.shape
    groups = weights.shape[-1]
    return (weights[..., None] * values.view(n, k, groups, c // groups)).sum(dim=1).reshape(n, c)


class DenseVectorAttention(nn.Module):
    """:func:`vector_attention_reference` as a module holding the weights of a PyG conv.

    ``DenseVectorAttention.from_pyg(conv)`` computes what ``conv`` computes (the benchmark
    checks the outputs agree); ``forward(x, pos, neighbors)`` with ``neighbors (N, K)``.
    """

    def __init__(self, to_query: nn.Module, to_key: nn.Module, to_value: nn.Module,
                 pos_nn: Optional[nn.Module], attn_nn: Optional[nn.Module]):
        super().__init__()
        self.to_query, self.to_key, self.to_value = to_query, to_key, to_value
        self.pos_nn, self.attn_nn = pos_nn, attn_nn

    @classmethod
    def from_pyg(cls, conv: nn.Module) -> "DenseVectorAttention":
        import copy

        def clone(module):
            return copy.deepcopy(module) if module is not None else None

        return cls(clone(conv.lin_dst), clone(conv.lin_src), clone(conv.lin), clone(conv.pos_nn), clone(conv.attn_nn))

    def forward(self, x: Tensor, pos: Tensor, neighbors: Tensor) -> Tensor:
        return vector_attention_reference(x, pos, neighbors, self.to_query, self.to_key, self.to_value,
                                          self.pos_nn, self.attn_nn)


def scalar_attention_reference(layer: nn.Module, x: Tensor, pos: Tensor, neighbors: Tensor) -> Tensor:
    r"""What a kNN :class:`pcattn.ScalarSelfAttention` computes, from its weights, all pairs at once.

    ``y_i = W_o concat_h sum_j softmax_j(q_i . (k_j + d^k_ij) / sqrt(d)) (v_j + d^v_ij)``;
    x ``(N, C_in)``, pos ``(N, 3)``, neighbors ``(N, K)`` -> ``(N, C_out)``.
    """
    H, dq, dv = layer.heads, layer.qk_channels, layer.v_channels
    n, K = neighbors.shape
    valid = neighbors >= 0
    index = neighbors.clamp(min=0)
    q = layer.to_query(x).view(n, 1, H, dq)
    k = layer.to_key(x)[index].view(n, K, H, dq)
    v = layer.to_value(x)[index].view(n, K, H, dv)
    if layer.pos_encoder is not None:
        delta = layer.pos_encoder(pos[:, None, :] - pos[index])
        k = k + delta[..., :H * dq].view(n, K, H, dq)
        v = v + delta[..., H * dq:].view(n, K, H, dv)
    logits = (q * k).sum(-1) / math.sqrt(dq)                    # (N, K, H)
    weights = torch.softmax(logits.masked_fill(~valid[..., None], float("-inf")), dim=1)
    return layer.proj((weights[..., None] * v).sum(1).reshape(n, H * dv))


def global_attention_reference(layer: nn.Module, x: Tensor, pos: Tensor) -> Tensor:
    r"""What a whole-cloud (``k=None``) :class:`pcattn.ScalarSelfAttention` computes, dense batch.

    x ``(B, P, C_in)``, pos ``(B, P, 3)`` -> ``(B, P, C_out)``. The ``(B, H, P, P)`` logits are
    materialised. The linear relative encoding ``W_p (p_i - p_j)`` is expanded as in the layer's
    docstring (keys and values shifted by ``-W_p p_j``, the term in ``p_i`` added back), which is
    the same number as building every ``p_i - p_j`` but does not need ``(B, P, P, C)`` memory.
    """
    H, dq, dv = layer.heads, layer.qk_channels, layer.v_channels
    B, P, _ = x.shape

    def heads(t: Tensor, d: int) -> Tensor:
        return t.view(B, P, H, d).transpose(1, 2)               # (B, H, P, d)

    q, k, v = layer.to_query(x), layer.to_key(x), layer.to_value(x)
    enc = None
    if layer.pos_encoder is not None:
        enc = layer.pos_encoder(pos)
        k = k - enc[..., :H * dq]
        v = v - enc[..., H * dq:]
    logits = heads(q, dq) @ heads(k, dq).transpose(-1, -2) / math.sqrt(dq)   # (B, H, P, P)
    out = (torch.softmax(logits, dim=-1) @ heads(v, dv)).transpose(1, 2).reshape(B, P, H * dv)
    if enc is not None:
        out = out + enc[..., H * dq:]
    return layer.proj(out)


# ----------------------------------------------------------------------------- geometry
def brute_knn(pos: Tensor, k: int, queries: Optional[Tensor] = None, chunk: int = 2048) -> Tensor:
    """The ``k`` nearest rows of ``pos (N, 3)`` to each row of ``queries (M, 3)`` (default ``pos``),
    nearest first: every distance (``torch.cdist``) and a top-k, ``chunk`` query rows at a time.

    Returns ``(M, k)`` indices into ``pos``. Equidistant points may come in either order.
    """
    queries = pos if queries is None else queries
    out = []
    for start in range(0, queries.shape[0], chunk):
        dist = torch.cdist(queries[start:start + chunk], pos)
        out.append(dist.topk(k, dim=1, largest=False).indices)
    return torch.cat(out)


def brute_fps(pos: Tensor, count: int, iterations: Optional[int] = None, start: int = 0) -> Tensor:
    """Farthest point sampling of one cloud ``pos (N, 3)``, the textbook loop: start at row ``start``;
    keep each point's squared distance to the chosen set, take its argmax, ``count`` times.

    Returns ``(count,)`` row indices, in the order chosen. ``iterations`` stops the loop early
    (only that many entries are filled in; the benchmark times a slice of a long run).
    """
    n = pos.shape[0]
    chosen = torch.empty(count, dtype=torch.long, device=pos.device)
    nearest = torch.full((n,), float("inf"), dtype=pos.dtype, device=pos.device)
    last = start
    for i in range(iterations or count):
        chosen[i] = last
        nearest = torch.minimum(nearest, ((pos - pos[last]) ** 2).sum(dim=1))
        last = int(nearest.argmax())
    return chosen


# ----------------------------------------------------------------------------- PyG example network
def pyg_mlp(channels: Sequence[int]) -> nn.Module:
    """The example's ``MLP(channels, norm=None, plain_last=False)``: Linear+ReLU for every layer."""
    from torch_geometric.nn import MLP

    return MLP(list(channels), norm=None, plain_last=False)


class PyGTransformerBlock(nn.Module):
    """The example's ``TransformerBlock``: Linear+ReLU, ``PointTransformerConv``, Linear+ReLU
    (no residual), with ``pos_nn = MLP[3, 64, C]`` and ``attn_nn = MLP[C, 64, C]``.

    ``layer="pcattn"`` replaces the conv by :meth:`pcattn.VectorSelfAttention.from_pyg` of it:
    the same function and weights, computed by pcattn (the benchmark's "ours" side).
    """

    def __init__(self, in_channels: int, out_channels: int, layer: str = "pyg", k: int = 16):
        super().__init__()
        from torch_geometric.nn import PointTransformerConv

        from ..nn import VectorSelfAttention

        if layer not in ("pyg", "pcattn"):
            raise ValueError(f"layer must be 'pyg' or 'pcattn', got {layer!r}")
        self.layer = layer
        self.lin_in = nn.Linear(in_channels, in_channels)
        self.lin_out = nn.Linear(out_channels, out_channels)
        conv = PointTransformerConv(in_channels, out_channels, pos_nn=pyg_mlp([3, 64, out_channels]),
                                    attn_nn=pyg_mlp([out_channels, 64, out_channels]))
        self.transformer = conv if layer == "pyg" else VectorSelfAttention.from_pyg(conv, k=k + 1)

    def forward(self, x: Tensor, pos: Tensor, neighbors: Tensor) -> Tensor:
        """``neighbors (N, k + 1)``: each point first, then its k nearest others (kNN with self)."""
        x = self.lin_in(x).relu()
        if self.layer == "pyg":  # knn_graph(loop=False) edges; the conv adds the self loop itself
            x = self.transformer(x, pos, neighbors_to_edge_index(neighbors[:, 1:]))
        else:
            x = self.transformer(x, pos, neighbors=neighbors)
        return self.lin_out(x).relu()


class PyGPointTransformerNet(nn.Module):
    """PyG's example classifier: stem MLP, a transformer block, then per stage a transition down
    (FPS to 1/4, kNN max-pool of an MLP of the features) and a transformer block; global mean
    pool; MLP head ``[C_last, 64, num_classes]``; returns log-probabilities ``(B, num_classes)``.

    ``layer="pyg"`` builds it from ``PointTransformerConv`` as the example does; ``layer="pcattn"``
    is the same network with each conv replaced by ``VectorSelfAttention.from_pyg(conv)``, so the
    two differ only in the attention implementation.

    ``forward(x, pos, batch)`` with flat ``x (N, C_in)``, ``pos (N, 3)``, sorted ``batch (N,)``.
    """

    def __init__(self, in_channels: int, num_classes: int, dim_model: Sequence[int] = (32, 64, 128, 256, 512),
                 k: int = 16, layer: str = "pyg"):
        super().__init__()
        from torch_geometric.nn import MLP

        self.k = k
        in_channels = max(in_channels, 1)
        self.mlp_input = MLP([in_channels, dim_model[0]], plain_last=False)       # Linear, BatchNorm, ReLU
        self.transformer_input = PyGTransformerBlock(dim_model[0], dim_model[0], layer, k)
        self.transformers_down = nn.ModuleList()
        self.mlp_down = nn.ModuleList()
        for width_in, width_out in zip(dim_model[:-1], dim_model[1:]):
            self.mlp_down.append(MLP([width_in, width_out], plain_last=False))
            self.transformers_down.append(PyGTransformerBlock(width_out, width_out, layer, k))
        self.mlp_output = MLP([dim_model[-1], 64, num_classes], norm=None)

    def transition_down(self, x: Tensor, pos: Tensor, batch: Tensor, mlp: nn.Module):
        from torch_geometric.utils import scatter

        kept = farthest_point_sampling(pos, ratio=0.25, batch=batch)
        sub_batch = batch[kept]
        neighbors = knn(pos, self.k, batch, query=pos[kept], query_batch=sub_batch)    # (M, k)
        x = mlp(x)
        cluster = torch.arange(kept.numel(), device=x.device).repeat_interleave(self.k)
        pooled = scatter(x[neighbors.reshape(-1)], cluster, dim=0, dim_size=kept.numel(), reduce="max")
        return pooled, pos[kept], sub_batch

    def forward(self, x: Tensor, pos: Tensor, batch: Tensor) -> Tensor:
        from torch_geometric.nn import global_mean_pool

        x = self.mlp_input(x)
        x = self.transformer_input(x, pos, knn(pos, self.k + 1, batch))
        for mlp, block in zip(self.mlp_down, self.transformers_down):
            x, pos, batch = self.transition_down(x, pos, batch, mlp)
            x = block(x, pos, knn(pos, self.k + 1, batch))
        x = global_mean_pool(x, batch)
        return F.log_softmax(self.mlp_output(x), dim=-1)


def pcattn_version(net: PyGPointTransformerNet) -> PyGPointTransformerNet:
    """A copy of ``net`` (built with ``layer="pyg"``) whose convs are replaced by
    ``VectorSelfAttention.from_pyg`` of them: the same network, weights and outputs, pcattn's layer."""
    from ..nn import VectorSelfAttention

    copied = copy.deepcopy(net)
    for block in copied.modules():
        if isinstance(block, PyGTransformerBlock) and block.layer == "pyg":
            block.transformer = VectorSelfAttention.from_pyg(block.transformer, k=copied.k + 1)
            block.layer = "pcattn"
    return copied


def dropin_version(net: PyGPointTransformerNet) -> PyGPointTransformerNet:
    """A copy of ``net`` (built with ``layer="pyg"``) whose ``torch_geometric.nn.PointTransformerConv``
    modules are :class:`pcattn.nn.pyg.PointTransformerConv` with the same state dict: what a PyG user
    gets by changing the import (called with ``edge_index``, as PyG's conv is)."""
    from ..nn.pyg import PointTransformerConv

    copied = copy.deepcopy(net)
    for block in copied.modules():
        if isinstance(block, PyGTransformerBlock) and block.layer == "pyg":
            theirs = block.transformer
            ours = PointTransformerConv(theirs.in_channels, theirs.out_channels, pos_nn=copy.deepcopy(theirs.pos_nn),
                                        attn_nn=copy.deepcopy(theirs.attn_nn)).to(theirs.lin.weight.device)
            ours.load_state_dict(theirs.state_dict())
            block.transformer = ours
    return copied
