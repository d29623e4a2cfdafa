"""A training run that records what ``train_step`` saw and left at every step of its first epoch, without
dropout: test_distributed.py runs it under torchrun (2 processes) and in the test process (1 process)."""
from __future__ import annotations

import torch

import pcattn.engine.loop as loop


def install(record: str, setattr=setattr) -> None:
    """Switch dropout off and record each step of epoch 1 into ``{record}/rank{rank}.pt``: the batch, the loss,
    and after the first step the (all-reduced) gradients and the BatchNorm running statistics. ``setattr``:
    how to patch (``pytest.MonkeyPatch.setattr`` in the test process, undone after the run).

    Dropout is the one thing a rank cannot draw as one process does (each rank draws the masks of its half of
    the batch from its own stream): the comparison with one process switches it off in both runs."""
    setattr(torch.nn.Dropout, "forward", lambda module, x: x)
    original = loop.train_step
    steps = []

    def recording_step(state, args, kwargs, target, config, device, epoch):
        loss, logits = original(state, args, kwargs, target, config, device, epoch)
        if epoch == 1:
            steps.append({"inputs": [a.clone() for a in args if a is not None],
                          "target": target.clone(), "loss": loss.clone()})
        if epoch == 1 and len(steps) == 1:
            steps[0]["grads"] = {n: p.grad.clone() for n, p in state.model.named_parameters()
                                 if p.grad is not None}
            steps[0]["buffers"] = {n: b.clone() for n, b in state.model.named_buffers()}
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        torch.save(steps, f"{record}/rank{rank}.pt")
        return loss, logits

    setattr(loop, "train_step", recording_step)
