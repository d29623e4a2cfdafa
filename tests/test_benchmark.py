"""The benchmark harness: its references compute what they claim, and ``--quick`` runs end to end."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pcattn import ScalarSelfAttention, VectorSelfAttention
from pcattn.bench import harness
from pcattn.bench.cases import CUDA_ALLOCATOR, _fails_on_device, autocast, build_cases, lucidrains_bytes
from pcattn.bench.harness import ALLOCATORS, _peak_bytes, _reset_peak, peak_call, time_call, worker, worker_spec
from pcattn.bench.reference import (DenseVectorAttention, PyGPointTransformerNet, brute_fps, brute_knn,
                                    global_attention_reference, neighbors_to_edge_index, pyg_mlp,
                                    scalar_attention_reference, vector_attention_reference)
from pcattn.nn.geometry import farthest_point_sampling, knn

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("paper", [False, True])
def test_dense_reference_equals_pyg_conv(paper):
    from torch_geometric.nn import PointTransformerConv

    torch.manual_seed(0)
    n, c, k = 300, 16, 8
    x, pos = torch.randn(n, c), torch.randn(n, 3)
    conv = PointTransformerConv(c, c, pos_nn=pyg_mlp([3, 32, c]) if paper else None,
                                attn_nn=pyg_mlp([c, 32, c]) if paper else None)
    neighbors = knn(pos, k)
    expected = conv(x, pos, neighbors_to_edge_index(neighbors))
    dense = DenseVectorAttention.from_pyg(conv)(x, pos, neighbors)
    assert (dense - expected).abs().max() < 1e-5
    assert (VectorSelfAttention.from_pyg(conv, k=k)(x, pos, neighbors=neighbors) - expected).abs().max() < 1e-5


def test_vector_reference_formula_by_hand():
    # One point, two neighbours, identity maps: y = sum_j softmax_j(x_i - x_j + d_ij) * (x_j + d_ij).
    x = torch.tensor([[0.0], [1.0], [3.0]])
    pos = torch.zeros(3, 3)
    ident = torch.nn.Identity()
    y = vector_attention_reference(x, pos, torch.tensor([[0, 1, -1]]), ident, ident, ident, None, None)
    w = torch.softmax(torch.tensor([0.0, -1.0]), 0)
    assert torch.allclose(y[0], (w * torch.tensor([0.0, 1.0])).sum(0, keepdim=True))


def test_scalar_references_equal_layer():
    torch.manual_seed(0)
    layer = ScalarSelfAttention(16, 16, k=8, heads=4)
    x, pos = torch.randn(200, 16), torch.randn(200, 3)
    nb = knn(pos, 8)
    assert (layer(x, pos, neighbors=nb) - scalar_attention_reference(layer, x, pos, nb)).abs().max() < 1e-5
    whole = ScalarSelfAttention(16, 16, k=None, heads=4)
    xb, pb = torch.randn(2, 100, 16), torch.randn(2, 100, 3)
    assert (whole(xb, pb) - global_attention_reference(whole, xb, pb)).abs().max() < 1e-5


def test_brute_force_baselines_agree_with_pcattn():
    torch.manual_seed(0)
    pos = torch.rand(500, 3)
    assert torch.equal(brute_knn(pos, 8), knn(pos, 8)) or torch.allclose(
        (pos[brute_knn(pos, 8)] - pos[:, None]).norm(dim=-1), (pos[knn(pos, 8)] - pos[:, None]).norm(dim=-1))
    assert torch.equal(brute_fps(pos, 50), farthest_point_sampling(pos, count=50))


def test_pyg_example_network_trains_a_step():
    torch.manual_seed(0)
    net = PyGPointTransformerNet(3, 5, dim_model=(32, 64, 128), k=16)
    B, P = 2, 256
    pos = torch.rand(B * P, 3)
    batch = torch.arange(B).repeat_interleave(P)
    out = net(pos, pos, batch)
    assert out.shape == (B, 5)
    assert torch.allclose(out.exp().sum(1), torch.ones(B), atol=1e-5)    # log-probabilities
    torch.nn.functional.nll_loss(out, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for p in net.transformer_input.parameters())


def test_lucidrains_estimate_grows_with_pairs():
    assert lucidrains_bytes(1, 2048, 64) == 4 * lucidrains_bytes(1, 1024, 64)
    assert lucidrains_bytes(8, 1024, 64) > 8 * 1024 ** 3          # the main case cannot fit a small budget


def test_peak_memory_probe_resets():
    if not _reset_peak():
        pytest.skip("this kernel does not allow resetting VmHWM (/proc/self/clear_refs)")
    big = torch.ones(64 * 1024 * 1024 // 4)      # 64 MiB resident
    high = _peak_bytes()
    del big
    assert _reset_peak()
    assert _peak_bytes() < high - 32 * 1024 * 1024


def _check_records(cases):
    """Every case ran without an error and its ratios are positive finite numbers; how many ratios there are."""
    n_ratios = 0
    for case in cases:
        assert not case["errors"], case["errors"]
        for ratio in case["ratios"].values():
            for value in ratio.values():
                assert isinstance(value, float) and math.isfinite(value) and value > 0
                n_ratios += 1
    return n_ratios


def test_quick_benchmark_smoke(tmp_path, monkeypatch, capsys):
    """``scripts/benchmark.py --quick`` end to end, in two parts (each worker subprocess costs seconds of
    start-up here). The main layer case as the command runs it: its worker subprocesses (the timing one and
    the memory-only one) under the tuned allocator column, whose settings must reach them. Then every case of
    ``--quick`` through :func:`harness.main` in this process, each worker's spec and result passed through
    JSON as between processes but run here: every builder, the summary, the ratios and the table."""
    out = tmp_path / "tmp.json"
    # one allocator column (the tuned one: its settings must reach the workers); a second column repeats
    # the same processes with another environment and doubles the test's time
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--quick", "--allocators", "tuned",
                           "--cases", "pyg-maths", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| case |" in proc.stdout and "speedup" in proc.stdout
    assert "target" not in proc.stdout.lower()     # measurements only: the goals are the README's
    data = json.loads(out.read_text())
    assert data["config"]["threads"] == 2
    vector = data["cases"]
    assert [c["kind"] for c in vector] == ["vector"]
    assert {c["allocator"] for c in vector} == {"tuned"} and ALLOCATORS["tuned"]
    for case in vector:   # the allocator setting really reached the worker process
        assert case["malloc_env"] == ALLOCATORS[case["allocator"]]
        assert case["threads"] == 2
    assert _check_records(vector) >= 2
    checks = {k: v for c in vector for k, v in c["checks"].items()}
    assert checks and all(v < 1e-4 for v in checks.values())    # ours == PyG == dense reference
    assert any(c["sides"]["pyg"].get("peak_mib") for c in vector)   # from the memory-only process

    threads = torch.get_num_threads()

    def worker_here(spec, allocator, timeout):
        try:
            return json.loads(json.dumps(worker(json.loads(json.dumps(spec)))))
        finally:
            torch.set_num_threads(threads)

    monkeypatch.setattr(harness, "_run_worker_process", worker_here)
    out = tmp_path / "all.json"
    assert harness.main(["--quick", "--allocators", "tuned", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| case |" in printed and "speedup" in printed and "target" not in printed.lower()
    cases = json.loads(out.read_text())["cases"]
    kinds = {c["kind"] for c in cases}
    assert {"vector", "scalar", "knn", "fps", "ceiling"} <= kinds
    assert _check_records(cases) >= 6
    checks = {k: v for c in cases if c["kind"] == "vector" for k, v in c["checks"].items()}
    assert checks and all(v < 1e-4 for v in checks.values())
    ceiling = next(c for c in cases if c["kind"] == "ceiling")
    assert ceiling["extra"]["matmul_gflops"] > 0 and ceiling["extra"]["copy_gbs"] > 0


def test_pcattn_version_of_the_example_network_computes_the_same():
    """The classifier comparison times one network with two attention implementations."""
    from pcattn import VectorSelfAttention
    from pcattn.bench.reference import pcattn_version

    torch.manual_seed(0)
    theirs = PyGPointTransformerNet(3, 5, dim_model=(32, 64, 128), k=16).eval()
    ours = pcattn_version(theirs).eval()
    assert sum(isinstance(m, VectorSelfAttention) for m in ours.modules()) == 3
    assert not any(isinstance(m, VectorSelfAttention) for m in theirs.modules())
    B, P = 2, 256
    pos = torch.rand(B * P, 3)
    batch = torch.arange(B).repeat_interleave(P)
    with torch.no_grad():
        assert (ours(pos, pos, batch) - theirs(pos, pos, batch)).abs().max() < 1e-4
    fresh = PyGPointTransformerNet(3, 5, dim_model=(32, 64), k=8, layer="pcattn")
    assert fresh(pos, pos, batch).shape == (B, 5)


# ----------------------------------------------------------------------------- --device / --precision
def _bench_args(*argv):
    import argparse

    return harness.add_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_device_cuda_without_cuda_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "b.json"
    assert harness.main(["--device", "cuda", "--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--device cuda" in err and "CUDA is not available" in err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_exits_2_from_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pcattn.bench", "--device", "cuda", "--quick"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "CUDA is not available" in proc.stderr
    assert not list(tmp_path.iterdir())          # nothing run, nothing written


def test_worker_spec_carries_device_and_precision():
    args = _bench_args("--quick", "--device", "cuda", "--precision", "bf16")
    cases = build_cases(args)
    assert {a for c in cases for a in c.allocators} == {CUDA_ALLOCATOR}    # one column, no glibc settings
    assert "classifier" in {c.kind for c in cases}                         # the AMP case is in the GPU smoke test
    for case in cases:
        spec = worker_spec(case, args, case.sides, 1, 2, check=True)
        assert spec["device"] == "cuda" and spec["precision"] == "bf16"
        assert json.loads(json.dumps(spec)) == spec
    cpu = _bench_args("--quick")
    cpu_cases = build_cases(cpu)
    vector = next(c for c in cpu_cases if c.kind == "vector")
    assert vector.allocators == ["default", "tuned"]
    spec = worker_spec(vector, cpu, vector.sides, 1, 2, check=False)
    assert spec["device"] == "cpu" and spec["precision"] == "32"
    assert "classifier" not in {c.kind for c in cpu_cases}                 # the CPU quick run is unchanged


def test_worker_builds_on_the_device_and_precision_of_its_spec():
    """In process on the CPU: the spec's precision reaches the builder (bf16 autocast changes the numbers)."""
    params = dict(B=1, P=64, C=8, k=4, maths="pyg", mode="fwdbwd", sides=["ours", "pyg", "dense"], check=True)
    found = {}
    threads = torch.get_num_threads()
    for precision in ("32", "bf16"):
        spec = {"kind": "vector", "params": params, "order": ["ours", "pyg", "dense"], "warmup": 1, "iters": 1,
                "threads": 1, "device": "cpu", "precision": precision}
        try:
            result = worker(spec)
        finally:
            torch.set_num_threads(threads)
        assert result["device"] == "cpu" and result["precision"] == precision
        assert all(side["status"] == "ok" and len(side["times"]) == 1 for side in result["sides"].values())
        found[precision] = max(result["checks"].values())
    assert found["32"] < 1e-5 < found["bf16"] < 0.5


def test_autocast_context():
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast("cpu", "32"):
        assert layer(x).dtype == torch.float32
    with autocast("cpu", "bf16"):
        assert layer(x).dtype == torch.bfloat16
    with pytest.raises(ValueError):
        autocast("cpu", "fp8")


def test_time_call_on_the_cpu():
    assert 0.02 <= time_call(lambda: __import__("time").sleep(0.02), "cpu") < 2.0


class _FakeCuda:
    """Records the torch.cuda calls the helpers make, in order, with fake memory counters."""

    def __init__(self, monkeypatch):
        self.events, self.allocated, self.peak = [], 100, 100
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: self.events.append(("sync", device)))
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", self.reset)
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: self.allocated)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", self.max_allocated)

    def reset(self, device=None):
        self.events.append(("reset", device))
        self.peak = self.allocated

    def max_allocated(self, device=None):
        self.events.append(("max", device))
        return self.peak

    def step(self):               # allocates 5 MiB transiently, keeps 1 MiB
        self.events.append(("step", None))
        self.peak = max(self.peak, self.allocated + 5 * 1024 ** 2)
        self.allocated += 1024 ** 2


def test_time_call_synchronises_cuda_around_the_call(monkeypatch):
    fake = _FakeCuda(monkeypatch)
    assert time_call(fake.step, "cuda") >= 0
    assert fake.events == [("sync", "cuda"), ("step", None), ("sync", "cuda")]


def test_peak_call_on_cuda_reads_the_allocator_peak_around_the_call(monkeypatch):
    fake = _FakeCuda(monkeypatch)
    fake.peak = 10 * 1024 ** 3            # an earlier, higher peak must not count
    peak, exact, seconds = peak_call(fake.step, "cuda")
    assert peak == 5 * 1024 ** 2 and exact and seconds >= 0
    names = [e[0] for e in fake.events]
    assert names.index("reset") < names.index("step") < names.index("max")
    assert names[names.index("step") + 1] == "sync"          # the peak is read after the kernels finished
    assert all(device == "cuda" for name, device in fake.events if name != "step")


def test_peak_call_on_the_cpu():
    if not _reset_peak():
        pytest.skip("this kernel does not allow resetting VmHWM (/proc/self/clear_refs)")
    peak, exact, _ = peak_call(lambda: torch.ones(64 * 1024 * 1024 // 4), "cpu")
    assert exact and peak >= 32 * 1024 * 1024
    small, _, _ = peak_call(lambda: None, "cpu")
    assert small < 16 * 1024 * 1024


def test_cpu_only_reference_is_detected_not_crashed():
    def mixes_devices():
        raise RuntimeError("Expected all tensors to be on the same device, but found cuda:0 and cpu!")

    assert "CPU-only" in _fails_on_device(mixes_devices, torch.device("cuda"))
    assert _fails_on_device(mixes_devices, torch.device("cpu")) == ""      # never tried on the CPU
    with pytest.raises(RuntimeError):
        _fails_on_device(lambda: (_ for _ in ()).throw(RuntimeError("shape mismatch")), torch.device("cuda"))


def test_report_names_the_device_and_precision():
    from pcattn.bench.report import markdown

    config = {"torch": "2.x", "device": "cuda (NVIDIA H100 80GB HBM3, 79 GiB)", "precision": "bf16",
              "allocators": CUDA_ALLOCATOR}
    table = markdown([], config)
    config_line = next(line for line in table.splitlines() if line.startswith("Configuration:"))
    assert "device=cuda (NVIDIA H100 80GB HBM3" in config_line and "precision=bf16" in config_line
    assert "max_memory_allocated" in table and "autocast" in table
    assert "resident size" in markdown([], {"device": "cpu", "precision": "32"})


def test_dropin_version_of_the_example_network_swaps_only_the_conv_class():
    """The benchmark's drop-in row: PyG's example with pcattn.nn.pyg.PointTransformerConv by import."""
    from pcattn.bench.reference import dropin_version
    from pcattn.nn.pyg import PointTransformerConv

    torch.manual_seed(0)
    theirs = PyGPointTransformerNet(3, 5, dim_model=(32, 64), k=8).eval()
    ours = dropin_version(theirs).eval()
    convs = [m.transformer for m in ours.modules() if hasattr(m, "transformer")]
    assert convs and all(type(conv) is PointTransformerConv for conv in convs)
    for conv in convs:   # PyG's parameter names: the state dict loaded as it is
        assert {"lin.weight", "lin_src.weight", "lin_dst.weight"} <= set(conv.state_dict())
    pos = torch.rand(2 * 64, 3)
    batch = torch.arange(2).repeat_interleave(64)
    x = torch.randn(2 * 64, 32)    # the first block's width
    with torch.no_grad():
        block_theirs, block_ours = theirs.transformer_input, ours.transformer_input
        nbr = knn(pos, 9, batch)
        assert torch.allclose(block_ours(x, pos, nbr), block_theirs(x, pos, nbr), atol=1e-5)


def test_scene_rows_selected_by_cases_scene():
    """The scene rows: a training step on 100,000 points and inference on 1,000,000, each model with grid
    pooling against FPS + kNN; ``--cases scene`` runs them alone; the smoke run (--quick) has them only when
    selected, at a tiny size."""
    full = [c for c in build_cases(_bench_args()) if c.kind == "scene"]
    assert {(c.params["mode"], c.params["N"], c.params["model"]) for c in full} == {
        (mode, N, model) for mode, N in (("train", 100_000), ("infer", 1_000_000))
        for model in ("pt-scene-tiny-vector", "pt-scene-vector")}
    assert all(c.sides == ["ours", "fps-knn"] for c in full)
    assert {c.kind for c in build_cases(_bench_args("--cases", "scene"))} == {"scene"}
    assert "scene" not in {c.kind for c in build_cases(_bench_args("--quick"))}
    quick = build_cases(_bench_args("--quick", "--cases", "scene"))
    assert [(c.kind, c.params["N"]) for c in quick] == [("scene", 1024)]


def test_scene_worker_grid_against_fps_in_process():
    """In process, tiny: a training step of both networks runs on exactly N points; an inference whose FPS
    side's sampling is estimated over the cap skips that side, saying so."""
    from pcattn.bench.cases import BUILDERS, scene_points

    scene = scene_points(0, 256)
    assert scene["pos"].shape == (256, 3) and scene["pos"].dtype == torch.float32
    assert float(scene["pos"][:, 2].min()) == 0.0 and float(scene["pos"].abs().max()) < 50   # centred, floor at 0
    threads = torch.get_num_threads()
    params = dict(model="pt-scene-tiny-vector", N=256, sides=["ours", "fps-knn"])
    try:
        train = worker({"kind": "scene", "params": dict(params, mode="train", fps_cap_s=1e9, check=True),
                        "order": ["ours", "fps-knn"], "warmup": 1, "iters": 1, "threads": 1})
    finally:
        torch.set_num_threads(threads)
    assert all(side["status"] == "ok" and side["times"][0] > 0 for side in train["sides"].values())
    assert "peak_bytes" in train["sides"]["ours"] and train["extra"]["points"] == 256
    infer = BUILDERS["scene"](dict(params, mode="infer", fps_cap_s=0.0))
    assert infer.sides["fps-knn"].step is None and infer.sides["fps-knn"].skip.startswith("skipped:")
    assert "over 0 s" in infer.sides["fps-knn"].skip and infer.extra["fps_estimate_s"] > 0
    infer.sides["ours"].step()
