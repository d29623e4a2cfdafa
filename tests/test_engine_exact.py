"""The engine's exactness on other machines than the training one: CUDA random states resumed on
another number of GPUs, a GPU-trained (fp16) checkpoint evaluated in float32 on a CPU, the
``--deterministic`` switch, and the step learning-rate schedule of the papers."""
from __future__ import annotations

import pytest
import torch

from pcattn.engine import checkpoint as checkpoint_module
from pcattn.engine.checkpoint import rng_state, set_rng_state

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------- CUDA random states
def _fake_cuda(monkeypatch, visible: int):
    """torch.cuda with ``visible`` devices whose ``set_rng_state`` records its calls and, as the real one,
    raises IndexError for a device that is not there."""
    restored = {}

    def set_state(state, device=0):
        if int(device) >= visible:
            raise IndexError(f"device {device} of {visible}")  # what torch.cuda.default_generators[device] raises
        restored[int(device)] = state.clone()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_state)  # what set_rng_state_all calls
    return restored


@pytest.mark.parametrize("visible", [1, 3, 8, 12])
def test_resume_restores_the_cuda_states_of_the_gpus_now_visible(monkeypatch, visible):
    saved = rng_state(torch.Generator().manual_seed(0))
    saved["cuda"] = [torch.full((16,), device, dtype=torch.uint8) for device in range(8)]  # a run on 8 GPUs
    restored = _fake_cuda(monkeypatch, visible)
    set_rng_state(saved, torch.Generator())
    assert sorted(restored) == list(range(min(8, visible)))
    assert all(torch.equal(state, saved["cuda"][device]) for device, state in restored.items())
    assert checkpoint_module.restore_cuda_rng_states(saved["cuda"]) == min(8, visible)


# ---------------------------------------------------------------------------------- evaluation precision
def test_a_checkpoint_trained_in_fp16_evaluates_in_float32_unless_asked(tiny_modelnet10_root, tmp_path, monkeypatch,
                                                                       capsys):
    from pcattn.cli import main
    from pcattn.engine import TrainConfig, evaluate_checkpoint, evaluation
    from pcattn.engine.checkpoint import model_checkpoint, save_checkpoint
    from pcattn.models import create_model

    from conftest import TINY_MODELNET10_CLASSES

    torch.manual_seed(0)
    model = create_model("pt-tiny-vector", num_classes=10)
    trained_on_gpu = TrainConfig(dataset="modelnet10", format="folder", data_root=str(tiny_modelnet10_root),
                                 num_points=64, batch_size=8, precision="fp16", device="cuda")
    path = save_checkpoint(tmp_path / "best.pt", model_checkpoint(model, TINY_MODELNET10_CLASSES, epoch=1,
                                                                  train_config=trained_on_gpu.to_dict()))
    used = []
    autocast = evaluation.autocast
    monkeypatch.setattr(evaluation, "autocast", lambda device, precision: used.append(precision) or
                        autocast(device, precision))
    default = evaluate_checkpoint(path, device="cpu", progress=False)
    assert default["precision"] == "32" and set(used) == {"32"}
    used.clear()
    asked = evaluate_checkpoint(path, device="cpu", progress=False, precision="bf16")
    assert asked["precision"] == "bf16" and set(used) == {"bf16"}
    assert asked["loss"] != default["loss"]  # bf16 autocast really ran
    used.clear()
    assert main(["eval", "--checkpoint", str(path), "--device", "cpu", "--no-progress"]) == 0
    assert set(used) == {"32"}


# ---------------------------------------------------------------------------------- --deterministic
def test_deterministic_flag_reaches_torch_for_the_run_and_is_undone_after(tiny_modelnet10_root, tmp_path,
                                                                          monkeypatch, capsys):
    import json
    import os

    from pcattn.cli import main
    from pcattn.engine import loop

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = []
    step = loop.train_step

    def recording_step(*args, **kwargs):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                     torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG")))
        return step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", recording_step)
    args = ["train", "--dataset", "modelnet10", "--format", "folder", "--data-root", str(tiny_modelnet10_root),
            "--num-points", "32", "--batch-size", "20", "--epochs", "1", "--model", "pt-tiny-vector",
            "--no-progress", "--no-plots"]
    assert not torch.are_deterministic_algorithms_enabled()
    assert main([*args, "--deterministic", "--out", str(tmp_path / "exact")]) == 0
    assert seen and set(seen) == {(True, True, False, ":4096:8")}
    assert "deterministic algorithms" in capsys.readouterr().out
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert json.loads((tmp_path / "exact" / "config.json").read_text())["deterministic"] is True


# ---------------------------------------------------------------------------------- step schedule
def test_step_schedule_drops_tenfold_after_the_named_epochs():
    from pcattn.engine.loop import lr_schedule

    per_epoch = 3  # iterations per epoch; epochs 1-2 at 1, 3-4 at 0.1, 5 at 0.01 (--lr-steps 2,4)
    factor = lr_schedule(5 * per_epoch, 0.0, "step", per_epoch, (2, 4))
    assert [factor(step) for step in (0, 5)] == [1.0, 1.0]                      # epoch 2's last iteration
    assert [factor(step) for step in (6, 11)] == pytest.approx([0.1, 0.1])       # epoch 3's first, epoch 4's last
    assert [factor(step) for step in (12, 14)] == pytest.approx([0.01, 0.01])    # epoch 5
    warmed = lr_schedule(5 * per_epoch, 0.2, "step", per_epoch, (2, 4))          # 3 warm-up iterations, then steps
    assert [warmed(step) for step in (0, 2, 3, 6)] == pytest.approx([1 / 3, 1.0, 1.0, 0.1])


def test_step_schedule_reaches_the_optimizer_and_is_checked(tmp_path):
    from pcattn.cli import build_parser
    from pcattn.engine import TrainConfig
    from pcattn.engine.loop import build_training
    from pcattn.engine.tasks import Labels

    args = build_parser().parse_args(["train", "--lr-schedule", "step", "--lr-steps", "1,2", "--lr", "0.5",
                                      "--warmup", "0", "--epochs", "3"])
    config = TrainConfig(**{name: value for name, value in vars(args).items()
                            if value is not None and name in TrainConfig.__dataclass_fields__}).resolved()
    assert config.lr_steps == [1, 2] and config.lr_step_factor == 0.1
    state = build_training(config, Labels(["a", "b"]), 2, torch.device("cpu"), torch.Generator())
    rates = []
    for _ in range(6):
        rates.append(state.optimizer.param_groups[0]["lr"])
        state.optimizer.step()
        state.scheduler.step()
    assert rates == pytest.approx([0.5, 0.5, 0.05, 0.05, 0.005, 0.005])
    for bad, match in [(dict(lr_schedule="step"), "needs lr_steps"), (dict(lr_schedule="step", lr_steps=(160, 120)),
                       "increasing"), (dict(lr_steps=(120,)), "are for lr_schedule='step'"),
                       (dict(lr_schedule="linear"), "'cosine' or 'step'"),
                       (dict(lr_schedule="step", lr_steps=(1,), lr_step_factor=0), "lr_step_factor")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad).resolved()


# ---------------------------------------------------------------------------------- the paper's network
def test_the_papers_configurations_have_the_official_depths():
    from pcattn.models import create_model
    from pcattn.nn import PointTransformerBlock

    def blocks(module):
        return sum(isinstance(child, PointTransformerBlock) for child in module.modules())

    classifier = create_model("pt-vector-paper", num_classes=40)
    # official blocks [2, 3, 4, 6, 3]: a transition down and 1, 2, 3, 5, 2 Point Transformer blocks
    assert [blocks(stage) for stage in classifier.encoder.stages] == [1, 2, 3, 5, 2]
    segmenter = create_model("pt-seg-vector-paper", num_classes=50, num_categories=16)
    assert [blocks(stage) for stage in segmenter.encoder.stages] == [1, 2, 3, 5, 2]
    assert [blocks(stage) for stage in segmenter.decoder] == [1, 1, 1, 1] and blocks(segmenter) == 17
    assert [type(layer).__name__ for layer in segmenter.head] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert segmenter.head[0].out_features == 32 and segmenter.config["interpolation_power"] == 1


def test_transition_up_weighs_the_three_nearest_coarse_points_by_inverse_distance():
    from pcattn.nn import TransitionUp

    up = TransitionUp(3, 1, 3)
    up.coarse = torch.nn.Identity()
    up.skip = torch.nn.Linear(1, 3)  # the interpolated features alone: the skip adds zeros
    torch.nn.init.zeros_(up.skip.weight), torch.nn.init.zeros_(up.skip.bias)
    coarse_pos = torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, -4.0], [9.0, 9, 9]])  # distances 1, 2, 4 (and 15.6)
    coarse_x = torch.eye(4)[:, :3]
    fine_pos = torch.zeros(1, 3)
    one = torch.zeros(4, dtype=torch.long)
    out = up(coarse_x, coarse_pos, one, torch.zeros(1, 1), fine_pos, torch.zeros(1, dtype=torch.long))
    inverse = torch.tensor([1.0, 1 / 2, 1 / 4])
    assert torch.allclose(out[0], inverse / inverse.sum(), atol=1e-6)  # 1/d, normalised: 4/7, 2/7, 1/7
    squared = TransitionUp(3, 1, 3, interpolation_power=2)
    squared.coarse, squared.skip = torch.nn.Identity(), up.skip
    out = squared(coarse_x, coarse_pos, one, torch.zeros(1, 1), fine_pos, torch.zeros(1, dtype=torch.long))
    assert torch.allclose(out[0], inverse ** 2 / (inverse ** 2).sum(), atol=1e-6)
    on_a_point = up(coarse_x, coarse_pos, one, torch.zeros(1, 1), coarse_pos[:1], torch.zeros(1, dtype=torch.long))
    assert torch.allclose(on_a_point[0], torch.tensor([1.0, 0, 0]), atol=1e-6)
