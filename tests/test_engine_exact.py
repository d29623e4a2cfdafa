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
