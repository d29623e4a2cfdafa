"""pcattn.nn.pyg: the drop-in PointTransformerConv against PyG's, and knn_graph / radius_graph / knn / fps
against brute force; PyG's classification example with only its imports changed trains."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import MLP
from torch_geometric.nn import PointTransformerConv as PyGConv

from pcattn.bench.reference import brute_fps
from pcattn.nn import PointTransformerConv, fps, knn_graph, radius_graph
from pcattn.nn import pyg as dropin


def _random_graph(n_src, n_dst, generator, max_degree=9, isolated=3, self_loops=True):
    """Edges with in-degrees 0..max_degree (the first ``isolated`` targets get none), duplicates and
    (when ``self_loops``) some self loops."""
    degree = torch.randint(0, max_degree + 1, (n_dst,), generator=generator)
    degree[:isolated] = 0
    target = torch.arange(n_dst).repeat_interleave(degree)
    source = torch.randint(0, n_src, (target.numel(),), generator=generator)
    if self_loops:
        loops = torch.arange(isolated, min(n_src, n_dst), 4)
        source, target = torch.cat([source, loops, loops]), torch.cat([target, loops, loops])  # doubled loops too
    order = torch.randperm(target.numel(), generator=generator)
    return torch.stack([source[order], target[order]])


def _pair(in_channels, out_channels, pos_nn, attn_nn, add_self_loops):
    torch.manual_seed(0)
    reference = PyGConv(in_channels, out_channels, pos_nn=pos_nn, attn_nn=attn_nn, add_self_loops=add_self_loops)
    ours = PointTransformerConv(in_channels, out_channels, pos_nn=pos_nn, attn_nn=attn_nn,
                                add_self_loops=add_self_loops)
    ours.load_state_dict(reference.state_dict())     # PyG's parameter names
    return reference, ours


@pytest.mark.parametrize("add_self_loops", [True, False])
@pytest.mark.parametrize("maths", ["default", "mlps", "scalar-weight"])
def test_conv_equals_pyg_on_random_graphs(add_self_loops, maths):
    g = torch.Generator().manual_seed(1)
    C = 16
    pos_nn = MLP([3, 8, C], norm=None, plain_last=False) if maths == "mlps" else None
    attn_nn = {"default": None, "mlps": MLP([C, 8, C], norm=None, plain_last=False),
               "scalar-weight": torch.nn.Linear(C, 1)}[maths]
    reference, ours = _pair(8, C, pos_nn, attn_nn, add_self_loops)
    x = torch.randn(60, 8, generator=g, requires_grad=True)
    pos = torch.randn(60, 3, generator=g, requires_grad=True)
    edge_index = _random_graph(60, 60, g)
    expected, got = reference(x, pos, edge_index), ours(x, pos, edge_index)
    assert (got - expected).abs().max() < 1e-5
    if not add_self_loops:
        assert got[:3].abs().max() == 0                        # isolated nodes get zeros, as in PyG
    weights = torch.randn_like(expected)
    grads_expected = torch.autograd.grad((expected * weights).sum(), [x, pos, *reference.parameters()])
    grads_got = torch.autograd.grad((got * weights).sum(), [x, pos, *ours.parameters()])
    for a, b in zip(grads_expected, grads_got):
        assert (a - b).abs().max() < 1e-4


def test_conv_bipartite_lazy_edge_index_types_and_repr():
    g = torch.Generator().manual_seed(2)
    reference, ours = _pair((8, 5), 16, None, None, True)
    x = (torch.randn(30, 8, generator=g), torch.randn(20, 5, generator=g))
    pos = (torch.randn(30, 3, generator=g), torch.randn(20, 3, generator=g))
    edge_index = _random_graph(30, 20, g)
    assert (ours(x, pos, edge_index) - reference(x, pos, edge_index)).abs().max() < 1e-5

    reference = PyGConv(8, 16)
    lazy = PointTransformerConv(-1, 16)
    x, pos = torch.randn(40, 8, generator=g), torch.randn(40, 3, generator=g)
    edge_index = knn_graph(pos, 6)
    lazy(x, pos, edge_index)                                   # the first call fixes in_channels
    assert lazy.lin.weight.shape == (16, 8)
    lazy.load_state_dict(reference.state_dict())
    expected = reference(x, pos, edge_index)
    assert (lazy(x, pos, edge_index) - expected).abs().max() < 1e-5
    adj_t = torch.sparse_coo_tensor(edge_index.flip(0), torch.ones(edge_index.shape[1]), (40, 40),
                                    check_invariants=True)
    assert (lazy(x, pos, adj_t) - expected).abs().max() < 1e-5             # torch sparse adj_t
    from torch_geometric import EdgeIndex
    assert (lazy(x, pos, EdgeIndex(edge_index, sparse_size=(40, 40))) - expected).abs().max() < 1e-5
    assert repr(lazy) == "PointTransformerConv(-1, 16)"
    with pytest.raises(ValueError, match="edge_index source nodes must lie in"):
        lazy(x, pos, torch.tensor([[40], [0]]))


def test_conv_is_built_by_the_layers_constructor_lazy_and_bipartite():
    """The conv goes through VectorSelfAttention's constructor: its checks name bad channels, and lazy
    channels on both sides of a bipartite graph size at the first call and give PyG's output."""
    for bad in ((0, 16), (8, 0), ((8, -2), 16)):
        with pytest.raises(ValueError, match="in_channels|out_channels"):
            PointTransformerConv(*bad)
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    reference = PyGConv((-1, -1), 16)
    lazy = PointTransformerConv((-1, -1), 16)
    x = (torch.randn(30, 8, generator=g), torch.randn(20, 5, generator=g))
    pos = (torch.randn(30, 3, generator=g), torch.randn(20, 3, generator=g))
    edge_index = _random_graph(30, 20, g)
    reference(x, pos, edge_index)
    lazy(x, pos, edge_index)                                   # the first call fixes each side's width
    assert (lazy.lin_src.in_features, lazy.lin.in_features, lazy.lin_dst.in_features) == (8, 8, 5)
    lazy.load_state_dict(reference.state_dict())
    assert (lazy(x, pos, edge_index) - reference(x, pos, edge_index)).abs().max() < 1e-5
    assert list(lazy.state_dict()) == list(reference.state_dict())     # PyG's names, in PyG's order


def test_conv_equals_pyg_on_knn_and_radius_graphs():
    g = torch.Generator().manual_seed(3)
    pos = torch.rand(300, 3, generator=g)
    batch = torch.tensor([0] * 120 + [1] * 180)
    x = torch.randn(300, 8, generator=g)
    reference, ours = _pair(8, 32, MLP([3, 16, 32], norm=None, plain_last=False), None, True)
    for edge_index in (knn_graph(pos, 16, batch), radius_graph(pos, 0.15, batch, max_num_neighbors=24)):
        assert (ours(x, pos, edge_index) - reference(x, pos, edge_index)).abs().max() < 1e-5


def _brute_pairs(x, y, batch_x, batch_y):
    distance = torch.cdist(y.double(), x.double())
    return distance.masked_fill(batch_y[:, None] != batch_x[None, :], float("inf"))


def test_graph_builders_match_brute_force():
    g = torch.Generator().manual_seed(4)
    pos = torch.rand(250, 3, generator=g)
    batch = torch.tensor([0] * 100 + [1] * 7 + [2] * 143)      # cloud 1 is smaller than k + 1
    distance = _brute_pairs(pos, pos, batch, batch)
    k = 10
    for loop in (False, True):
        source, target = knn_graph(pos, k, batch, loop=loop)
        d = distance.clone()
        if not loop:
            d.fill_diagonal_(float("inf"))
        for i in range(250):
            got = set(source[target == i].tolist())
            count = min(k, int(torch.isfinite(d[i]).sum()))
            assert got == set(d[i].topk(count, largest=False).indices.tolist())
            assert loop == (i in got)
    target, source = knn_graph(pos, k, batch, flow="target_to_source")
    assert torch.equal(torch.stack([source, target]), knn_graph(pos, k, batch))

    r, cap = 0.2, 12
    source, target = radius_graph(pos, r, batch, max_num_neighbors=cap)
    d = distance.clone().fill_diagonal_(float("inf"))
    for i in range(250):
        within = (d[i] < r).nonzero().flatten()
        got = set(source[target == i].tolist())
        if within.numel() <= cap:
            assert got == set(within.tolist())
        else:                                                    # the nearest ones are kept
            assert got == set(d[i].topk(cap, largest=False).indices.tolist())

    query, query_batch = torch.rand(30, 3, generator=g), torch.tensor([0] * 10 + [2] * 20)
    y_index, x_index = dropin.knn(pos, query, 5, batch, query_batch)
    d = _brute_pairs(pos, query, batch, query_batch)
    for i in range(30):
        assert set(x_index[y_index == i].tolist()) == set(d[i].topk(5, largest=False).indices.tolist())

    kept = fps(pos, batch, ratio=0.3, random_start=False)
    counts = torch.ceil(torch.tensor([100.0, 7.0, 143.0]) * 0.3).long().tolist()     # float32, as torch_cluster
    expected = [brute_fps(pos[a:b], m) + a for (a, b), m in zip(((0, 100), (100, 107), (107, 250)), counts)]
    assert torch.equal(kept, torch.cat(expected))
    torch.manual_seed(0)
    assert fps(pos, batch, ratio=0.3).shape == kept.shape



def test_fps_takes_one_ratio_per_cloud_or_ptr_as_torch_cluster_does():
    g = torch.Generator().manual_seed(5)
    pos, batch = torch.rand(40, 3, generator=g), torch.tensor([0] * 12 + [1] * 20 + [2] * 8)
    ratios = torch.tensor([0.5, 0.25, 1.0])
    expected = [brute_fps(pos[a:b], m) + a for (a, b), m in zip(((0, 12), (12, 32), (32, 40)), (6, 5, 8))]
    assert torch.equal(fps(pos, batch, ratio=ratios, random_start=False), torch.cat(expected))
    by_ptr = fps(pos, ratio=0.5, random_start=False, ptr=torch.tensor([0, 12, 32, 40]))
    assert torch.equal(by_ptr, fps(pos, batch, ratio=0.5, random_start=False))   # ptr is not ignored
    with pytest.raises(ValueError, match=r"one ratio per cloud \(3 clouds\), got 2"):
        fps(pos, batch, ratio=torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
        fps(pos, batch, ratio=torch.tensor([0.5, 0.0, 0.5]))


@pytest.mark.parametrize("call, message", [
    (lambda pos: knn_graph(pos, 0), "k must be a positive integer, got 0"),
    (lambda pos: knn_graph(pos, -1), "k must be a positive integer, got -1$"),
    (lambda pos: knn_graph(pos, 2.5), "k must be a positive integer, got 2.5$"),
    (lambda pos: radius_graph(pos, -1.0), "r must be a finite positive number, got -1.0"),
    (lambda pos: radius_graph(pos, float("nan")), "r must be a finite positive number, got nan"),
    (lambda pos: radius_graph(pos, 0.5, max_num_neighbors=0), "max_num_neighbors must be a positive integer"),
])
def test_graph_builders_name_bad_sizes_and_radii(call, message):
    with pytest.raises(ValueError, match=message):
        call(torch.rand(20, 3))


def test_conv_names_features_of_the_wrong_width():
    pos = torch.rand(10, 3)
    conv = PointTransformerConv((8, 5), 16)
    with pytest.raises(ValueError, match=r"x_dst must have 5 channels \(in_channels\[1\]\), got 4"):
        conv((torch.randn(10, 8), torch.randn(10, 4)), (pos, pos), knn_graph(pos, 3))
    with pytest.raises(ValueError, match=r"x_src must have 8 channels \(in_channels\[0\]\), got 5"):
        conv((torch.randn(10, 5), torch.randn(10, 5)), (pos, pos), knn_graph(pos, 3))
    with pytest.raises(ValueError, match=r"x must have 8 channels \(in_channels\), got 6"):
        PointTransformerConv(8, 16)(torch.randn(10, 6), pos, knn_graph(pos, 3))

# ----------------------------------------------------------------------------- PyG's example, imports changed
# torch_geometric/examples/point_transformer_classification.py, model part, as published, except the
# import line (was: `from torch_cluster import fps, knn_graph` and PyG's PointTransformerConv and knn).
from torch.nn import Linear as Lin  # noqa: E402
from torch_geometric.nn import global_mean_pool  # noqa: E402
from torch_geometric.utils import scatter  # noqa: E402

from pcattn.nn.pyg import PointTransformerConv as ExampleConv, fps as example_fps  # noqa: E402
from pcattn.nn.pyg import knn as example_knn, knn_graph as example_knn_graph  # noqa: E402


class TransformerBlock(torch.nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.lin_in = Lin(in_channels, in_channels)
        self.lin_out = Lin(out_channels, out_channels)

        self.pos_nn = MLP([3, 64, out_channels], norm=None, plain_last=False)

        self.attn_nn = MLP([out_channels, 64, out_channels], norm=None, plain_last=False)

        self.transformer = ExampleConv(in_channels, out_channels, pos_nn=self.pos_nn, attn_nn=self.attn_nn)

    def forward(self, x, pos, edge_index):
        x = self.lin_in(x).relu()
        x = self.transformer(x, pos, edge_index)
        x = self.lin_out(x).relu()
        return x


class TransitionDown(torch.nn.Module):
    def __init__(self, in_channels, out_channels, ratio=0.25, k=16):
        super().__init__()
        self.k = k
        self.ratio = ratio
        self.mlp = MLP([in_channels, out_channels], plain_last=False)

    def forward(self, x, pos, batch):
        id_clusters = example_fps(pos, ratio=self.ratio, batch=batch)
        sub_batch = batch[id_clusters] if batch is not None else None
        id_k_neighbor = example_knn(pos, pos[id_clusters], k=self.k, batch_x=batch, batch_y=sub_batch)
        x = self.mlp(x)
        x_out = scatter(x[id_k_neighbor[1]], id_k_neighbor[0], dim=0, dim_size=id_clusters.size(0), reduce='max')
        sub_pos, out = pos[id_clusters], x_out
        return out, sub_pos, sub_batch


class Net(torch.nn.Module):
    def __init__(self, in_channels, out_channels, dim_model, k=16):
        super().__init__()
        self.k = k
        in_channels = max(in_channels, 1)
        self.mlp_input = MLP([in_channels, dim_model[0]], plain_last=False)
        self.transformer_input = TransformerBlock(in_channels=dim_model[0], out_channels=dim_model[0])
        self.transformers_down = torch.nn.ModuleList()
        self.transition_down = torch.nn.ModuleList()
        for i in range(len(dim_model) - 1):
            self.transition_down.append(
                TransitionDown(in_channels=dim_model[i], out_channels=dim_model[i + 1], k=self.k))
            self.transformers_down.append(
                TransformerBlock(in_channels=dim_model[i + 1], out_channels=dim_model[i + 1]))
        self.mlp_output = MLP([dim_model[-1], 64, out_channels], norm=None)

    def forward(self, x, pos, batch=None):
        if x is None:
            x = torch.ones((pos.shape[0], 1), device=pos.get_device())
        out = self.mlp_input(x)
        edge_index = example_knn_graph(pos, k=self.k, batch=batch)
        out = self.transformer_input(out, pos, edge_index)
        for i in range(len(self.transformers_down)):
            out, pos, batch = self.transition_down[i](out, pos, batch=batch)
            edge_index = example_knn_graph(pos, k=self.k, batch=batch)
            out = self.transformers_down[i](out, pos, edge_index)
        out = global_mean_pool(out, batch)
        out = self.mlp_output(out)
        return F.log_softmax(out, dim=-1)


def test_pyg_example_network_with_pcattn_imports_learns(tiny_builtin_root):
    from conftest import TINY_BUILTIN

    from pcattn.data import BuiltinShapes

    data = BuiltinShapes(tiny_builtin_root, "train", num_points=128, **TINY_BUILTIN)
    samples = [data[i] for i in range(len(data)) if int(data[i]["label"]) < 4]      # 4 classes, 16 shapes
    pos = torch.cat([s["pos"] for s in samples])
    labels = torch.stack([s["label"] for s in samples])
    batch = torch.arange(len(samples)).repeat_interleave(128)
    torch.manual_seed(0)
    model = Net(3, 4, dim_model=[32, 64, 128], k=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = F.nll_loss(model(pos, pos, batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    with torch.no_grad():      # batch statistics: 15 steps are too few for BatchNorm's running averages
        accuracy = (model(pos, pos, batch).argmax(1) == labels).float().mean()
    assert losses[-1] < 0.5 * losses[0]
    assert accuracy >= 0.75                                     # chance is 0.25


def _batchnorms(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("add_self_loops", [True, False])
def test_conv_in_training_with_pygs_default_mlp_equals_pyg(add_self_loops):
    """PyG's ``MLP`` has BatchNorm by default: in training its statistics must come from the real edges
    only (not from padding slots), so outputs, gradients and running statistics equal PyG's conv."""
    import copy

    g = torch.Generator().manual_seed(5)
    C = 16
    torch.manual_seed(0)
    pos_nn, attn_nn = MLP([3, 8, C]), MLP([C, 8, C])            # norm="batch_norm" (PyG's default)
    reference = PyGConv(8, C, pos_nn=pos_nn, attn_nn=attn_nn, add_self_loops=add_self_loops).train()
    ours = PointTransformerConv(8, C, pos_nn=copy.deepcopy(pos_nn), attn_nn=copy.deepcopy(attn_nn),
                                add_self_loops=add_self_loops).train()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(50, 8, generator=g, requires_grad=True)
    pos = torch.randn(50, 3, generator=g, requires_grad=True)
    edge_index = _random_graph(50, 50, g, max_degree=12)        # in-degrees 0..12: padding in a (N, K) index
    expected, got = reference(x, pos, edge_index), ours(x, pos, edge_index)
    assert (got - expected).abs().max() < 1e-5
    weights = torch.randn_like(expected)
    grads_expected = torch.autograd.grad((expected * weights).sum(), [x, pos, *reference.parameters()])
    grads_got = torch.autograd.grad((got * weights).sum(), [x, pos, *ours.parameters()])
    for a, b in zip(grads_expected, grads_got):
        assert (a - b).abs().max() < 1e-4
    for a, b in zip(_batchnorms(reference), _batchnorms(ours)):
        assert a.num_batches_tracked == b.num_batches_tracked == 1
        assert (a.running_mean - b.running_mean).abs().max() < 1e-6
        assert (a.running_var - b.running_var).abs().max() < 1e-5


def test_conv_with_one_node_of_high_degree_pads_by_degree_not_to_the_largest(monkeypatch):
    """One node of in-degree 1,000 among nodes of degree 16: the kernel gets neighbour indices grouped
    by degree, fewer than twice the edges in padded pairs (not N x 1,000), and the output is PyG's."""
    g = torch.Generator().manual_seed(6)
    n = 400
    pos, x = torch.randn(n, 3, generator=g), torch.randn(n, 8, generator=g)
    target = torch.cat([torch.arange(1, n).repeat_interleave(16), torch.zeros(1000, dtype=torch.long)])
    source = torch.randint(0, n, (target.numel(),), generator=g)
    edge_index = torch.stack([source, target])
    reference, ours = _pair(8, 16, None, None, False)
    seen = []
    attention = PointTransformerConv.attend_in_chunks

    def spy(self, *args, **kwargs):
        neighbors = next(a for a in args if isinstance(a, torch.Tensor) and a.dtype == torch.long)
        seen.append(tuple(neighbors.shape))
        return attention(self, *args, **kwargs)

    monkeypatch.setattr(PointTransformerConv, "attend_in_chunks", spy)
    assert (ours(x, pos, edge_index) - reference(x, pos, edge_index)).abs().max() < 1e-5
    assert sorted(seen) == [(1, 1000), (n - 1, 16)]
    assert sum(m * k for m, k in seen) < 2 * edge_index.shape[1]
