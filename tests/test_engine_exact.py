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
