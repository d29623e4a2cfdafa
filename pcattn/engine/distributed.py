"""Training and evaluation on several processes with PyTorch's own DistributedDataParallel, launched by
``torchrun`` (``torchrun --nproc_per_node 2 -m pcattn train ...``): no launcher of our own.

* :func:`distributed_session` joins the process group torchrun describes in the environment
  (``nccl`` on CUDA, ``gloo`` on the CPU; one device per local rank) and leaves it at the end;
  without torchrun it yields a one-process :class:`Distributed` that does nothing.
* :class:`GlobalBatchSampler`: ``--batch-size`` is the global batch; every rank draws the same
  permutation from the run's shuffling generator (the one a one-process run uses, saved in every
  checkpoint) and takes its share of each global batch, so the global batches, and the data order of
  each epoch, are the one-process run's whatever the number of processes.
* :class:`ShardedBatches`: the test set in the one-process batches, dealt round-robin to the ranks
  without padding; :func:`~pcattn.engine.evaluate` sums the confusion matrix and the loss over the
  ranks, so every test shape counts once and the metrics equal a one-process evaluation's.
* :class:`CPUSyncBatchNorm`: ``torch.nn.SyncBatchNorm`` refuses CPU tensors (and DDP refuses it in
  a CPU model); this twin computes the same global statistics with ``dist.all_reduce``
  (differentiable) on the CPU, so ``--sync-bn`` works with gloo too.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Sampler

__all__ = ["Distributed", "distributed_session", "launched_by_torchrun", "is_main_process", "GlobalBatchSampler",
           "ShardedBatches", "sum_over_ranks", "broadcast_buffers", "CPUSyncBatchNorm", "SYNC_BATCHNORMS",
           "convert_sync_batchnorm", "rank_worker_init", "reseed_rank", "rank_outcomes", "raise_first_failure"]


def launched_by_torchrun() -> bool:
    """Whether this process is one of a ``torchrun`` job (its environment names a rank and a world)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def is_main_process() -> bool:
    """Rank 0, or a process that torchrun did not start: the one that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class Distributed:
    """This process's place in the job: ``rank`` of ``world_size``, ``device`` it computes on;
    ``enabled`` is False outside torchrun (every method is then a no-op)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. generates a dataset, writes a cache); the others wait for
        its outcome, then run it on what rank 0 left. An exception on any rank ends the block on every
        rank with that rank's error: rank 0's is raised on the others instead of running the block,
        and a failure of another rank is raised everywhere after it (:meth:`together`)."""
        if not self.enabled:
            yield
            return
        if self.is_main:
            failure = None
            try:
                yield
            except Exception as error:
                failure = error
            dist.broadcast_object_list([_portable(failure, self)], src=0)  # where the others wait
            if failure is not None:
                raise failure
        else:
            box: List[Any] = [None]
            dist.broadcast_object_list(box, src=0)
            if box[0] is not None:
                raise _rebuilt(box[0])
        with self.together():  # the others' outcome, on every rank (rank 0's block has run)
            if not self.is_main:
                yield

    @contextlib.contextmanager
    def together(self):
        """Run the block on every rank, then exchange the outcomes: when it raised on any rank, every
        rank raises that rank's error (the lowest failed rank's; on the other ranks as the same
        exception type, its message prefixed with ``on rank R of W:``). Put it around work that can
        fail on one rank alone and is followed by a collective (a barrier, DDP's broadcasts), which
        would otherwise wait forever for the failed rank. The block must not itself call a
        collective that a failed rank would skip."""
        failure = None
        try:
            yield
        except Exception as error:
            if not self.enabled:
                raise
            failure = error
        self.raise_any(failure)

    def on_main(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` on rank 0 and give its result to every rank; an exception it raises is
        raised on every rank (so a refused run folder stops the whole job with rank 0's message)."""
        if not self.enabled:
            return function()
        box: List[Any] = [None]
        failure = None
        if self.is_main:
            try:
                box[0] = ("ok", function())
            except Exception as error:  # sent to the other ranks, then raised here too
                failure = error
                box[0] = ("error", _portable(error, self))
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise failure if failure is not None else _rebuilt(value)
        return value

    def raise_any(self, failure: Optional[BaseException]) -> None:
        """Every rank calls this with its own outcome (``None``: it succeeded); when any rank failed,
        each raises the lowest failed rank's error (its own, on that rank). Outside a job: raises
        ``failure`` when there is one."""
        if not self.enabled:
            if failure is not None:
                raise failure
            return
        raise_first_failure(failure)


def raise_first_failure(failure: Optional[BaseException]) -> None:
    """:meth:`Distributed.raise_any` for the job this process belongs to (the process group)."""
    if not dist.is_initialized():
        if failure is not None:
            raise failure
        return
    here = Distributed(dist.get_rank(), dist.get_world_size(), enabled=True)
    outcomes: List[Any] = [None] * here.world_size
    dist.all_gather_object(outcomes, _portable(failure, here))
    failed = next((outcome for outcome in outcomes if outcome is not None), None)
    if failed is None:
        return
    if failure is not None and failed[2] == here.rank:
        raise failure
    raise _rebuilt(failed)


def _portable(error: Optional[BaseException], place: "Distributed"):
    """What the other ranks need to raise ``error`` again: ``(its type, its message, rank, world)``
    (the type only when it can be rebuilt from a message elsewhere), or ``None``."""
    if error is None:
        return None
    kind = type(error)
    try:
        rebuilt = kind(str(error))
        import pickle

        pickle.dumps(kind)
        if str(rebuilt) != str(error):
            kind = RuntimeError
    except Exception:  # a type that is not rebuilt from its message, or not importable elsewhere
        kind = RuntimeError
    return kind, str(error), place.rank, place.world_size


def _rebuilt(portable) -> BaseException:
    """The exception another rank sent (:func:`_portable`), its message prefixed with the rank."""
    kind, message, rank, world_size = portable
    return kind(f"on rank {rank} of {world_size}: {message}")


def rank_outcomes(values: Tensor, failed: bool, device: torch.device) -> Tuple[Tensor, Tensor]:
    """Every rank's ``values`` (a 1-D float tensor) and failure flag, in one all-reduce:
    ``(values (world_size, V), failed (world_size,) bool)``; outside a job, this process's alone.
    A cheap per-step check (the loss of each rank): the expensive exchange of messages
    (:meth:`Distributed.raise_any`) then runs only when a rank failed."""
    row = torch.cat([values.detach().double().reshape(-1).cpu(), torch.tensor([float(failed)], dtype=torch.float64)])
    if not dist.is_initialized():
        return row[None, :-1], row[None, -1] > 0
    table = torch.zeros(dist.get_world_size(), row.numel(), dtype=torch.float64)
    table[dist.get_rank()] = row
    table = table.to(device)
    dist.all_reduce(table)  # each rank fills its own row: the sum is the table of every rank's row
    table = table.cpu()
    return table[:, :-1], table[:, -1] > 0


def sum_over_ranks(values: Tensor, device: torch.device) -> Tensor:
    """``values`` summed over the ranks of the job (``values`` itself outside one); the sum runs on
    ``device`` (NCCL takes only GPU tensors) and comes back where ``values`` was."""
    if not dist.is_initialized():
        return values
    summed = values.to(device)
    dist.all_reduce(summed)
    return summed.to(values.device)


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, e.g. before an evaluation
    (without SyncBatchNorm each rank's statistics saw only its own batches)."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


@contextlib.contextmanager
def distributed_session(device: torch.device) -> Iterator[Distributed]:
    """The job this process belongs to: under torchrun, join (and at the end leave) the process group,
    ``nccl`` when ``device`` is CUDA (this process then computes on ``cuda:<local rank>``), else
    ``gloo``. A group the caller already set up is used and left open."""
    if not launched_by_torchrun():
        yield Distributed(device=device)
        return
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    try:
        yield Distributed(rank, world_size, local_rank, device, True)
    finally:
        if owned:
            dist.destroy_process_group()


class GlobalBatchSampler(Sampler[int]):
    """This rank's indices of the one-process epoch: the permutation a ``RandomSampler`` draws from
    ``generator`` (the same draw on every rank), cut into global batches of ``batch_size`` (the last,
    incomplete one dropped), of which this rank takes slice ``rank`` of ``world_size`` equal slices.
    The loader then uses ``batch_size // world_size``."""

    def __init__(self, length: int, batch_size: int, rank: int, world_size: int, generator: torch.Generator):
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} (the global batch) does not split evenly over "
                             f"{world_size} processes; use a multiple of {world_size}")
        self.length, self.batch_size, self.rank, self.world_size = length, batch_size, rank, world_size
        self.generator = generator
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """As ``DistributedSampler.set_epoch``; the order itself comes from the run's generator, which
        advances one permutation per epoch and is saved in every checkpoint."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.length, generator=self.generator)
        steps = self.length // self.batch_size
        per_rank = self.batch_size // self.world_size
        mine = order[:steps * self.batch_size].view(steps, self.world_size, per_rank)[:, self.rank]
        yield from mine.reshape(-1).tolist()
        # RandomSampler then draws one more permutation (for an empty remainder, which it slices
        # away): draw it too, so the generator, and the next epoch's order, stay the one-process ones.
        torch.randperm(self.length, generator=self.generator)

    def __len__(self) -> int:
        return (self.length // self.batch_size) * (self.batch_size // self.world_size)


class ShardedBatches(Sampler[List[int]]):
    """A batch sampler for evaluation: the one-process batches (``batch_size`` shapes in order, the last
    one smaller), batch ``j`` going to rank ``j % world_size``; no shape is repeated or left out.
    ``skipped[k]`` lists the sizes of the other ranks' batches between this rank's batch ``k - 1`` and
    ``k``, so a random stream drawn per batch (test-time voting) can stay in step with one process."""

    def __init__(self, length: int, batch_size: int, rank: int, world_size: int):
        batches = [list(range(start, min(start + batch_size, length))) for start in range(0, length, batch_size)]
        self.batches = batches[rank::world_size]
        self.skipped: Dict[int, List[int]] = {}
        for k in range(len(self.batches)):
            first = 0 if k == 0 else (k - 1) * world_size + rank + 1
            self.skipped[k] = [len(batches[j]) for j in range(first, k * world_size + rank)]

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _SumOverRanks(torch.autograd.Function):
    """``dist.all_reduce`` (sum) with its gradient: the sum of every rank's gradient, since each
    rank's loss depends on every rank's input."""

    @staticmethod
    def forward(ctx, values: Tensor) -> Tensor:
        summed = values.clone()
        dist.all_reduce(summed)
        return summed

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        summed = grad.clone()
        dist.all_reduce(summed)
        return summed


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """The CPU twin of ``torch.nn.SyncBatchNorm`` (which refuses CPU tensors, and which DDP refuses in a
    CPU model): in training, with several processes, the batch mean and variance are those of the
    global batch, summed with ``dist.all_reduce`` in an autograd function so that gradients flow through
    them (the same sums torch's SyncBatchNorm makes); otherwise it is plain BatchNorm.
    ``x: (N, C)`` or ``(N, C, L)``; same state_dict as ``BatchNorm1d``."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise ValueError(f"expected a 2D or 3D input, got {input.dim()}D")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        dims = [0] + list(range(2, input.dim()))
        shape = [1, -1] + [1] * (input.dim() - 2)
        values = input.float()
        channels = values.shape[1]
        count = torch.tensor([values.numel() / channels], dtype=values.dtype)
        # Two passes, as BatchNorm computes them: the global mean first, then the sum of squared deviations
        # from it. One pass (E[x^2] - E[x]^2) cancels catastrophically when |mean| >> std.
        totals = _SumOverRanks.apply(torch.cat([values.sum(dims), count]))
        total = totals[-1]
        mean = totals[:channels] / total
        centred = values - mean.view(shape)
        variance = _SumOverRanks.apply((centred * centred).sum(dims)) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = variance * (total / (total - 1).clamp(min=1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        output = centred * torch.rsqrt(variance.view(shape) + self.eps)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        return output.to(input.dtype)


SYNC_BATCHNORMS = (nn.SyncBatchNorm, CPUSyncBatchNorm)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm synchronised over the ranks: ``torch.nn.SyncBatchNorm`` for a GPU,
    :class:`CPUSyncBatchNorm` for the CPU (convert before moving the model to ``device``)."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SYNC_BATCHNORMS):
            synced = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            synced.train(child.training)
            setattr(model, name, synced)
        else:
            convert_sync_batchnorm(child, device)
    return model


def reseed_rank(seed: int, epoch: int, rank: int) -> None:
    """Give rank > 0 its own stream of torch's global RNG for an epoch (augmentation, dropout), so the
    ranks do not draw the same numbers; rank 0 keeps the run's saved stream (the one-process run's)."""
    if rank > 0:
        torch.manual_seed((seed * 1_000_003 + epoch * 1_009 + rank) % 2**63)


def rank_worker_init(rank: int, worker_id: int) -> None:
    """``worker_init_fn`` of a rank's loader: the data workers of different ranks draw different
    augmentations (they would otherwise share the broadcast base seed)."""
    from ..data import seed_worker

    if rank > 0:
        torch.manual_seed((torch.initial_seed() + rank * 7_919) % 2**63)
    seed_worker(worker_id)
