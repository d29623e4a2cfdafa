"""GPU checks (marked ``cuda``; ``bash scripts/gpu_check.sh`` runs them): skipped without a CUDA GPU.

* the recomputing backward over several chunks (small ``chunk_size`` / ``PCATTN_CHUNK_ELEMENTS``) with
  dropout inside the positional encoding equals plain autograd (the random state is replayed), and under
  autocast (fp16, bf16) matches float32 and plain autograd; these bodies also run on the CPU (bf16) as
  stand-ins in the ordinary suite;

* every layer option and every named model (classifiers and segmenters) on CUDA equals the CPU in
  float32 (forward and gradients);
* an AMP training step (fp16 with a GradScaler, and bf16) of every named model, over several chunks,
  matches float32 (logits within 15%) and stays finite;
* kNN and farthest point sampling on CUDA tensors equal the CPU and stay on the device;
* a checkpoint written by a run on the GPU loads on the CPU and back, with the same outputs.

Tolerance for CUDA against the CPU in float32: 1e-4 relative to the largest value (TF32 is off:
matmuls in full float32), whole models 1e-3 (ten layers deep, different reduction orders).
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pcattn import ScalarSelfAttention, VectorSelfAttention, farthest_point_sampling, knn
from pcattn.models import create_model, list_models

from test_exactness import LAYER_OPTIONS, inputs, make_layer, relative_error

_NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def cuda_only(test):
    """Mark a test ``cuda`` (``pytest -m cuda`` selects it) and skip it without a CUDA GPU."""
    return pytest.mark.cuda(_NO_CUDA(test))


# The tests of the recomputing multi-chunk path run the same body on the CPU (a stand-in, in the
# ordinary suite) and on CUDA (marked ``cuda``): the logic is checked here, the device on a GPU.
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, _NO_CUDA])]

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def full_float32():
    """Full float32 matmuls on the GPU for the equality checks (TF32 would round to 10 bits)."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


@cuda_only
@pytest.mark.parametrize("name", list(LAYER_OPTIONS) + ["scalar", "scalar-global"])
@pytest.mark.parametrize("checkpoint", [True, False])
def test_layer_on_cuda_equals_cpu(name, checkpoint):
    layer = make_layer(name, recompute=checkpoint, chunk_size=7)   # 12 chunks: the recomputing path
    x, pos, batch = inputs(sizes=(40, 40))   # equal sizes: the batched kNN path
    results = []
    for device in ("cpu", CUDA):
        moved = copy.deepcopy(layer).to(device)
        xx = x.to(device).requires_grad_(True)
        pp = pos.to(device).requires_grad_(True)
        out = moved(xx, pp, batch.to(device))
        assert out.device.type == torch.device(device).type
        out.square().sum().backward()
        results.append([out, xx.grad, pp.grad] + [p.grad for p in moved.parameters()])
    for cpu, gpu in zip(*results):
        assert (cpu is None) == (gpu is None)
        if cpu is not None and cpu.abs().max() > 0:
            assert relative_error(gpu.cpu(), cpu) < 1e-4


@cuda_only
@pytest.mark.parametrize("name", list_models())
def test_named_model_on_cuda_equals_cpu(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    pos = torch.randn(4, 256, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cpu = model(None, pos)
        gpu = copy.deepcopy(model).to(CUDA)(None, pos.to(CUDA))
    assert relative_error(gpu.cpu(), cpu) < 1e-3


@cuda_only
@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_amp_training_step_of_every_named_model(name, dtype, monkeypatch):
    monkeypatch.setenv("PCATTN_CHUNK_ELEMENTS", str(1 << 16))   # several chunks per layer
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).to(CUDA).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    pos = torch.randn(8, 512, 3, device=CUDA)
    labels = torch.randint(0, 5, (8,), device=CUDA)
    model.eval()
    with torch.no_grad():
        reference = model(None, pos)
        with torch.autocast("cuda", dtype=dtype):
            low = model(None, pos)
    assert low.dtype == dtype and relative_error(low, reference) < 0.15   # as the CPU's bf16 test
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        with torch.autocast("cuda", dtype=dtype):
            logits = model(None, pos)
            loss = F.cross_entropy(logits, labels)
        assert logits.dtype == dtype and torch.isfinite(loss)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@cuda_only
@pytest.mark.parametrize("name", list_models("segmentation"))
def test_named_segmenter_on_cuda_equals_cpu_and_takes_an_amp_step(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=6, num_categories=3).eval()
    pos = torch.randn(3, 400, 3, generator=torch.Generator().manual_seed(0))
    category = torch.tensor([0, 2, 1])
    with torch.no_grad():
        cpu = model(None, pos, category=category)
        gpu_model = copy.deepcopy(model).to(CUDA)
        gpu = gpu_model(None, pos.to(CUDA), category=category.to(CUDA))
    assert gpu.shape == (3, 400, 6) and relative_error(gpu.cpu(), cpu) < 1e-3
    gpu_model.train()
    optimizer = torch.optim.AdamW(gpu_model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    target = torch.randint(0, 6, (3, 400), device=CUDA)
    with torch.autocast("cuda", dtype=torch.float16):
        logits = gpu_model(None, pos.to(CUDA), category=category.to(CUDA))
        loss = F.cross_entropy(logits.float().reshape(-1, 6), target.reshape(-1))
    assert logits.dtype == torch.float16 and torch.isfinite(loss)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.isfinite(p).all() for p in gpu_model.parameters())


@cuda_only
def test_knn_and_fps_on_cuda_equal_cpu_and_stay_on_the_device():
    g = torch.Generator().manual_seed(0)
    equal = torch.randn(4 * 300, 3, generator=g)
    equal_batch = torch.arange(4).repeat_interleave(300)
    ragged = torch.randn(500, 3, generator=g)
    ragged_batch = torch.tensor([0] * 120 + [1] * 300 + [2] * 80)
    for pos, batch in ((equal, equal_batch), (ragged, ragged_batch)):
        for k in (16, 200):
            cpu = knn(pos, k, batch)
            gpu = knn(pos.to(CUDA), k, batch.to(CUDA))
            assert gpu.device.type == "cuda"
            # equal neighbour distances (the order of exact ties may differ), same -1 padding
            assert torch.equal(gpu.cpu() < 0, cpu < 0)
            dist = lambda index: (pos[index.clamp(min=0)] - pos[:, None]).norm(dim=-1)  # noqa: E731
            assert torch.allclose(dist(gpu.cpu()), dist(cpu), atol=1e-5)
            assert torch.equal(gpu.cpu()[:, 0], torch.arange(pos.shape[0]))   # self first
        cpu_fps = farthest_point_sampling(pos, ratio=0.25, batch=batch)
        gpu_fps = farthest_point_sampling(pos.to(CUDA), ratio=0.25, batch=batch.to(CUDA))
        assert gpu_fps.device.type == "cuda" and torch.equal(gpu_fps.cpu(), cpu_fps)
    dense = equal.view(4, 300, 3)
    assert torch.equal(knn(dense.to(CUDA), 8).cpu()[..., 0], knn(dense, 8)[..., 0])


@cuda_only
def test_checkpoint_written_on_the_gpu_loads_on_the_cpu_and_back(tiny_modelnet10_root, tmp_path):
    from pcattn.engine import TrainConfig, load_model, train

    config = TrainConfig(dataset="modelnet10", format="folder", data_root=str(tiny_modelnet10_root), num_points=64,
                         batch_size=8, epochs=1, out=str(tmp_path / "run"), progress=False, plots=False, seed=0,
                         device="cuda")
    train(config)
    pos = torch.randn(2, 64, 3)
    on_cpu, classes, _ = load_model(tmp_path / "run" / "last.pt", device="cpu")
    on_gpu, _, _ = load_model(tmp_path / "run" / "last.pt", device="cuda")
    assert next(on_cpu.parameters()).device.type == "cpu" and next(on_gpu.parameters()).device.type == "cuda"
    with torch.no_grad():
        assert relative_error(on_gpu(None, pos.to(CUDA)).cpu(), on_cpu(None, pos)) < 1e-3
    assert len(classes) == 10


@cuda_only
def test_fps_random_start_with_a_cuda_generator():
    """The start is drawn on the generator's device: a CUDA generator works for CUDA and CPU positions."""
    pos = torch.randn(3 * 50, 3, generator=torch.Generator().manual_seed(0))
    batch = torch.arange(3).repeat_interleave(50)
    runs = []
    for device in (CUDA, "cpu"):
        generator = torch.Generator(device=CUDA).manual_seed(4)
        runs.append(farthest_point_sampling(pos.to(device), ratio=0.25, batch=batch.to(device), random_start=True,
                                            generator=generator).cpu())
    assert torch.equal(runs[0], runs[1])   # the same draws, wherever the positions are
    assert torch.equal(batch[runs[0]].bincount(), torch.tensor([13, 13, 13]))



class DropoutEncoding(nn.Sequential):
    """A positional encoding with dropout inside: the recomputation must replay its masks."""

    def __init__(self, channels):
        super().__init__(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, channels))


def _multi_chunk_layer(kind, checkpoint):
    torch.manual_seed(0)
    if kind == "vector":
        layer = VectorSelfAttention(8, 16, k=8, positional_encoding=DropoutEncoding(16))
    else:
        layer = ScalarSelfAttention(8, 16, k=8, heads=2)
        layer.pos_encoder = DropoutEncoding(layer.pos_encoder[-1].out_features)
    layer.recompute, layer.chunk_size = checkpoint, 7              # 10 chunks of 7 query points
    return layer.train()


def _run(layer, device, dtype=None):
    """Output and gradients (x, pos, every parameter) of one training call, and the random stream after."""
    x, pos, batch = inputs(sizes=(40, 30))
    x, pos = x.to(device).requires_grad_(True), pos.to(device).requires_grad_(True)
    torch.manual_seed(1)
    with torch.autocast(torch.device(device).type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = layer(x, pos, batch.to(device))
    out.float().square().sum().backward()
    after = torch.rand(4, device=device)    # the random stream goes on as without recomputation
    return [out, x.grad, pos.grad, after] + [p.grad for p in layer.parameters()]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["vector", "scalar"])
def test_multi_chunk_recomputation_with_dropout_in_the_encoding_equals_plain_autograd(device, kind):
    """Several chunks, dropout inside the positional encoding: the recomputing backward replays the
    forward's random state (CPU and CUDA generators), so it equals plain autograd in float32."""
    results = [_run(_multi_chunk_layer(kind, checkpoint).to(device), device) for checkpoint in (True, False)]
    for recomputed, plain in zip(*results):
        assert (recomputed is None) == (plain is None)
        if plain is not None:   # (atol: gradients that are zero in exact arithmetic, e.g. a key bias)
            assert torch.allclose(recomputed, plain, rtol=1e-5, atol=1e-5 * max(1.0, float(plain.abs().max())))


@pytest.mark.parametrize("device, dtype", [
    pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
    pytest.param("cuda", torch.float16, id="cuda-fp16", marks=[pytest.mark.cuda, _NO_CUDA]),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=[pytest.mark.cuda, _NO_CUDA]),
])
def test_multi_chunk_autocast_matches_float32_and_plain_autograd(device, dtype):
    """Several chunks under autocast: the recomputing backward equals plain autograd under the same
    autocast (it replays the autocast dtype; the gradients differ by the rounding of their sums in the
    half dtype: 0.5% fp16, 3% bf16), and the output matches float32 within 3% (its x gradient 6%)."""
    low = {checkpoint: _run(_multi_chunk_layer("vector", checkpoint).to(device), device, dtype)
           for checkpoint in (True, False)}
    tolerance = 5e-3 if dtype == torch.float16 else 3e-2
    assert torch.equal(low[True][0], low[False][0])   # the same forward, dropout masks included
    for recomputed, plain in zip(low[True], low[False]):
        assert (recomputed is None) == (plain is None)
        if plain is not None:
            assert torch.allclose(recomputed.float(), plain.float(), rtol=tolerance,
                                  atol=tolerance * float(plain.float().abs().max()))
    # against float32, without dropout (eval): the same layer, the same inputs
    reference = _multi_chunk_layer("vector", True).to(device).eval()
    half = _multi_chunk_layer("vector", True).to(device).eval()
    float32, rounded = _run(reference, device), _run(half, device, dtype)
    assert rounded[0].dtype == dtype
    assert relative_error(rounded[0], float32[0]) < 0.03
    assert relative_error(rounded[1], float32[1]) < 0.06
