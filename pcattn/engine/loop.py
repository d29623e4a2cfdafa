"""The training loop, in the steps :func:`train` reads as:

1. resolve the config, the device and the precision; lock the run folder and check it (a checkpoint
   to resume?);
2. seed every random stream and build the loaders (:mod:`~pcattn.engine.loaders`);
3. :func:`build_training`: the model, its optimizer, the learning-rate schedule and the fp16 scaler,
   held together in a :class:`TrainingState`; :func:`restore` loads them from the checkpoint;
4. per epoch, :func:`run_epoch` (:func:`train_one_epoch`, then the task's evaluation) and
   :func:`end_epoch` (checkpoints, ``metrics.jsonl``, a log line);
5. :func:`finish_run`: ``best.pt`` evaluated into ``eval.json``.

The plots (``curves.png``, ``confusion.png``) are drawn from the run folder by the layer above both the
engine and :mod:`pcattn.viz`: ``pcattn train`` (:func:`pcattn.viz.plot_run` in Python).

Classification and part segmentation run the same steps; what differs (the model, the target and
loss, the metrics, the score that picks ``best.pt``) is the run's :class:`~pcattn.engine.tasks.Task`.

Under ``torchrun`` (:mod:`~pcattn.engine.distributed`) the shape is the same: every process runs
these steps; :func:`build_training` wraps the model in ``DistributedDataParallel`` (SyncBatchNorm
with ``sync_bn``), :func:`~pcattn.engine.build_loaders` gives each rank its share of every global
batch and of the test set, and rank 0 alone holds the run folder's lock, prints and writes
(checkpoints, ``metrics.jsonl``, ``eval.json``) while the others wait at a barrier.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..deprecation import warn_renamed
from ..models.checkpoint import recorded_model_config
from .checkpoint import CheckpointError, load_checkpoint, load_encoder, load_model, model_checkpoint, rng_state, \
    save_checkpoint, seed_everything, set_rng_state
from .config import TrainConfig
from .device import autocast, deterministic_algorithms, grad_scaler, resolve_device, resolve_precision
from .distributed import (SYNC_BATCHNORMS, Distributed, broadcast_buffers, convert_sync_batchnorm, distributed_session,
                          is_main_process, raise_first_failure, rank_outcomes, reseed_rank, sum_over_ranks)
from .loaders import build_loaders
from .run_folder import (CONFIG, METRICS, RunFolderLock, append_metrics, check_shared_folder, mark_shared_folder,
                         prepare_run_folder, remove_temporary_files, start_metrics, write_json)
from .tasks import Labels, Task, class_loss_weights, describe_labels, get_task

__all__ = ["TrainingState", "train", "build_training", "restore", "run_epoch", "train_one_epoch", "end_epoch",
           "finish_run", "lr_schedule"]


@dataclass
class TrainingState:
    """What a checkpoint saves and a resume restores, besides the config."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: Optional[torch.amp.GradScaler]  # fp16 only
    generator: torch.Generator  # the train loader's shuffling (and its workers' seeds)
    labels: Labels  # what the model predicts (class names; part names, categories and their parts)
    task: Task
    epoch: int = 0  # the last finished epoch
    best_score: float = -1.0  # the best test score: OA (classification), instance mIoU (partseg)
    best_epoch: int = 0
    history: Optional[List[Dict[str, Any]]] = None  # every epoch's metrics row (metrics.jsonl is rebuilt from it)
    run_id: str = ""  # the run folder's identity (config.json and every checkpoint carry it)
    network: Optional[nn.Module] = None  # what the training forward calls: DistributedDataParallel(model) or None
    class_weight: Optional[Tensor] = None  # scenes: the loss's weight of each class (config.class_weights)

    @property
    def training_module(self) -> nn.Module:
        """The module a training step calls: ``network`` (DistributedDataParallel) when set, else ``model``."""
        return self.network if self.network is not None else self.model

    @property
    def forward(self) -> nn.Module:
        """Deprecated name of :attr:`training_module` (it is a module, not a forward pass)."""
        warn_renamed("TrainingState.forward", "TrainingState.training_module")
        return self.training_module

    def checkpoint(self, config: TrainConfig, metrics: Dict[str, Any]) -> Dict[str, Any]:
        return model_checkpoint(
            self.model, **self.task.checkpoint_entries(self.labels), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict() if self.scaler is not None else None,
            epoch=self.epoch, rng_state=rng_state(self.generator), best_score=self.best_score,
            best_metric=self.task.score, best_epoch=self.best_epoch,
            metrics=metrics, history=list(self.history or []), run_id=self.run_id, train_config=config.to_dict())


def train(config: TrainConfig) -> Dict[str, Any]:
    """Train a classifier, a part segmenter or a scene segmenter as ``config`` says; returns a summary
    ``{"task", "score": the metric that chose best.pt, "best_score", "best_epoch", "final": metrics of
    the last epoch, "eval": evaluation of best.pt, "run_dir", "seconds"}`` (and ``"best_oa"`` =
    ``best_score`` for classification).

    Raises:
        FileExistsError: ``out`` already holds a run and ``resume`` is off.
        RunFolderInUse: another process is training in ``out``.
        ValueError: bad settings, or ``resume`` with settings that differ from the saved run's.
        DiskFullError: no space left for a checkpoint (the previous one is intact).
        FloatingPointError: the training diverged (the last good checkpoint is kept).
    """
    config = config.resolved()  # every setting is checked before the run folder is touched
    with deterministic_algorithms(config.deterministic), distributed_session(resolve_device(config.device)) \
            as distributed:
        if config.batch_size % distributed.world_size:
            raise ValueError(f"batch_size {config.batch_size} is the global batch and does not split evenly over "
                             f"{distributed.world_size} processes; use a multiple of {distributed.world_size}")
        device = distributed.device
        config.precision = resolve_precision(config.precision, device)
        if not distributed.is_main:
            config.progress = False  # one progress bar, rank 0's
        out = Path(config.out)
        with contextlib.ExitStack() as held:
            # rank 0 takes the lock; a refusal (another run holds it) stops every rank with its message
            distributed.on_main(lambda: held.enter_context(RunFolderLock(out)) and None)
            return _train_locked(config, device, out, distributed)


def _train_locked(config: TrainConfig, device: torch.device, out: Path, distributed: Distributed) -> Dict[str, Any]:
    found: Dict[str, Any] = {}

    def prepare() -> Tuple[List[str], bool, str, Optional[str]]:  # rank 0 checks the folder; its error stops every rank
        removed = [path.name for path in remove_temporary_files(out)]
        found["checkpoint"], run_id = prepare_run_folder(config, out)
        probe = mark_shared_folder(out) if distributed.enabled else None
        return removed, found["checkpoint"] is not None, run_id, probe

    removed, resuming, run_id, probe = distributed.on_main(prepare)
    with distributed.together():  # a rank that fails here (another disk, an unreadable last.pt) stops them all
        if probe is not None and not distributed.is_main:
            check_shared_folder(out, probe)
        checkpoint = found.get("checkpoint") if distributed.is_main else \
            (load_checkpoint(out / "last.pt") if resuming else None)
    if probe is not None and distributed.is_main:
        (out / probe).unlink(missing_ok=True)
    if removed:
        _log(f"removed {len(removed)} temporary file(s) left by an interrupted save: {', '.join(removed)}",
             config.progress)
    if config.threads is not None:
        torch.set_num_threads(int(config.threads))
    seed_everything(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader, test_loader = build_loaders(config, generator, distributed=distributed)
    config.up_axis = int(train_loader.dataset.up_axis)
    state = build_training(config, Labels.of_dataset(train_loader.dataset), len(train_loader), device, generator,
                           distributed)
    state.run_id = run_id
    if config.class_weights not in (None, "none"):
        state.class_weight = _class_weight(config, train_loader.dataset, device)
    metrics_path = out / METRICS
    with distributed.together():
        if checkpoint is None and config.init_encoder:
            load_encoder(state.model, config.init_encoder)
            _log(f"encoder initialised from {config.init_encoder}", config.progress)
        if checkpoint is not None:
            restore(state, checkpoint, out / "last.pt")
            _log(f"resuming {out} after epoch {state.epoch} (best {state.task.score_name} so far "
                 f"{state.best_score:.4f})", config.progress)
        if distributed.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / CONFIG, {**config.to_dict(), "run_id": run_id})
            state.history = start_metrics(out, state.epoch, state.history)
    parameters = sum(p.numel() for p in state.model.parameters())
    _log(f"training {config.model} ({parameters / 1e6:.2f} M parameters) on {config.dataset} "
         f"({_describe_data(config, train_loader.dataset, test_loader.dataset)}, {describe_labels(state.labels)}) "
         f"on {device}, precision {config.precision}, {torch.get_num_threads()} threads"
         + (", deterministic algorithms" if torch.are_deterministic_algorithms_enabled() else "")
         + (f", {distributed.world_size} processes (DistributedDataParallel, global batch {config.batch_size}, "
            f"{_count_sync_bn(state.model)} SyncBatchNorm layers)" if distributed.enabled else ""), config.progress)

    started = time.perf_counter()
    metrics: Dict[str, Any] = {}
    for epoch in range(state.epoch + 1, config.epochs + 1):
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        reseed_rank(config.seed, epoch, distributed.rank)
        try:
            metrics = run_epoch(state, epoch, train_loader, test_loader, config, device)
        except FloatingPointError as error:
            kept = f"last.pt keeps epoch {state.epoch}" if state.epoch else "no epoch was saved"
            raise FloatingPointError(f"{error}. The run diverged: {kept}; a resume would diverge again with the "
                                     f"same settings, so start a new run in another --out (or delete {out})") from None
        with distributed.together():  # rank 0 has written the epoch's files (or every rank raises its error)
            end_epoch(state, metrics, config, out, metrics_path)
    summary = finish_run(state, config, out, test_loader, device, metrics, time.perf_counter() - started)
    distributed.barrier()
    return summary


# ============================================================================ set-up

def _class_weight(config: TrainConfig, train_set, device: torch.device) -> Tensor:
    """The loss's class weights of a scene run, from the labels of every training room (counted once, the same
    on every rank and on a resume), logged with the class names."""
    rooms = getattr(train_set, "rooms", train_set)  # RepeatedRooms -> its SceneDataset
    weight = class_loss_weights(rooms.label_counts(progress=config.progress), config.class_weights)
    shown = ", ".join(f"{name} {value:.2f}" for name, value in zip(rooms.classes, weight.tolist()))
    _log(f"class weights ({config.class_weights}): {shown}", config.progress)
    return weight.to(device)


def lr_schedule(total_steps: int, warmup: float, kind: str = "cosine", steps_per_epoch: int = 1,
                epoch_steps: Sequence[int] = (), step_factor: float = 0.1) -> Callable[[int], float]:
    """The learning-rate factor of each iteration ``step`` (from 0): a linear warm-up over the first
    ``warmup`` fraction of ``total_steps``, then

    * ``kind="cosine"``: a cosine decay to zero at ``total_steps``;
    * ``kind="step"``: ``step_factor ** d``, ``d`` the number of ``epoch_steps`` that the iteration's
      epoch (``step // steps_per_epoch`` epochs finished) has reached: PyTorch's ``MultiStepLR`` with
      milestones ``epoch_steps`` stepped once per epoch (``epoch_steps=(120, 160)``: epochs 1-120 at
      1, 121-160 at 0.1, 161 on at 0.01).
    """
    warmup_steps = int(round(warmup * total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "step":
            finished_epochs = step // steps_per_epoch
            return step_factor ** sum(finished_epochs >= milestone for milestone in epoch_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov when ``momentum > 0``); biases and norm weights get no weight decay."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)


def build_training(config: TrainConfig, labels: Labels, steps_per_epoch: int, device: torch.device,
                   generator: torch.Generator, distributed: Optional[Distributed] = None) -> TrainingState:
    """A fresh model for ``labels`` (the task's: :meth:`~pcattn.engine.tasks.Task.build_model`) on
    ``device`` with its optimizer, schedule and (fp16) gradient scaler; in a job of
    several processes with ``config.sync_bn`` (default on there) its BatchNorm layers synchronised,
    and wrapped in ``DistributedDataParallel`` (``state.network``; ``state.model`` stays the plain
    module that checkpoints save)."""
    distributed = distributed or Distributed(device=device)
    task = get_task(config.task)
    options = {"attention_kwargs": dict(config.attention_options)} if config.attention_options else {}
    model = task.build_model(config.model, labels, task.in_channels(config.use_normals), **options)
    sync_bn = config.sync_bn if config.sync_bn is not None else distributed.world_size > 1
    if sync_bn and distributed.world_size > 1:
        model = convert_sync_batchnorm(model, device)
    model = model.to(device)
    network = None
    if distributed.enabled:
        from torch.nn.parallel import DistributedDataParallel

        network = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = build_optimizer(model, config)
    schedule = lr_schedule(config.epochs * steps_per_epoch, config.warmup, config.lr_schedule, steps_per_epoch,
                           config.lr_steps or (), config.lr_step_factor)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return TrainingState(model, optimizer, scheduler, grad_scaler(device, config.precision), generator, labels, task,
                         network=network)


def _count_sync_bn(model: nn.Module) -> int:
    return sum(isinstance(module, SYNC_BATCHNORMS) for module in model.modules())


def restore(state: TrainingState, checkpoint: Dict[str, Any], path: Path) -> None:
    """Load the model, optimizer, schedule, scaler, epoch, best result and every random stream from
    ``checkpoint`` (read from ``path``), so the run continues as if it had never stopped."""
    if recorded_model_config(checkpoint) != state.model.config:
        raise CheckpointError(f"{path}: holds a {checkpoint['model_config'].get('name')} model that differs from "
                              f"this run's ({state.model.config}); start a new --out")
    different = Labels.of_checkpoint(checkpoint).differences(state.labels)
    if different:
        raise CheckpointError(f"{path}: trained on other labels than the data now has ({different})")
    state.model.load_state_dict(checkpoint["model_state"])
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    state.scheduler.load_state_dict(checkpoint["scheduler"])
    if state.scaler is not None and checkpoint.get("scaler"):
        state.scaler.load_state_dict(checkpoint["scaler"])
    set_rng_state(checkpoint["rng_state"], state.generator)
    state.epoch = int(checkpoint["epoch"])
    # best_acc: the name of best_score before it was known to hold mIoU for part segmentation too
    state.best_score = float(checkpoint.get("best_score", checkpoint.get("best_acc", -1.0)))
    state.best_epoch = int(checkpoint.get("best_epoch", 0))
    state.history = checkpoint.get("history")  # None in checkpoints of older versions: metrics.jsonl is kept


# ============================================================================ one epoch
def run_epoch(state: TrainingState, epoch: int, train_loader, test_loader, config: TrainConfig,
              device: torch.device) -> Dict[str, Any]:
    """Train one epoch and evaluate on the test loader: the epoch's ``metrics.jsonl`` row."""
    started = time.perf_counter()
    trained = train_one_epoch(state, epoch, train_loader, config, device)
    broadcast_buffers(state.model)  # every rank evaluates rank 0's BatchNorm statistics, the ones saved
    result = state.task.evaluate(state.model, test_loader, device, state.labels,
                                 label_smoothing=config.label_smoothing, precision=config.precision,
                                 **state.task.evaluation_options(config))
    return {"epoch": epoch, "train_loss": trained["loss"], "train_acc": trained["acc"],
            **state.task.epoch_row(result), "lr": state.optimizer.param_groups[0]["lr"],
            "epoch_time": time.perf_counter() - started,
            "samples_per_s": trained["samples"] / trained["seconds"]}


def train_one_epoch(state: TrainingState, epoch: int, loader, config: TrainConfig,
                    device: torch.device) -> Dict[str, float]:
    """One pass over ``loader``: ``{"loss", "acc", "samples", "seconds"}`` (mean training loss; accuracy
    of the clouds, or for part segmentation of the points)."""
    from tqdm.auto import tqdm

    state.model.train()
    started = time.perf_counter()
    loss_sum, correct, counted, seen = 0.0, 0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", disable=not config.progress, unit="batch",
               leave=False, dynamic_ncols=True)
    for batch in bar:
        args, kwargs, target = state.task.inputs(batch, device, config.use_normals)
        loss, logits = train_step(state, args, kwargs, target, config, device, epoch)
        size = state.task.samples(batch, target)  # clouds or crops, not points
        right, count = state.task.hits(logits, target)
        loss_sum += float(loss) * size
        correct, counted, seen = correct + right, counted + count, seen + size
        elapsed = time.perf_counter() - started
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / counted:.3f}",
                        rate=f"{seen / max(elapsed, 1e-9):.1f}/s")
    bar.close()
    totals = sum_over_ranks(torch.tensor([loss_sum, correct, counted, seen], dtype=torch.float64), device)
    loss_sum, correct, counted, seen = float(totals[0]), int(totals[1]), int(totals[2]), int(totals[3])
    return {"loss": loss_sum / seen, "acc": correct / counted, "samples": seen,
            "seconds": time.perf_counter() - started}


def train_step(state: TrainingState, args: Tuple[Any, ...], kwargs: Dict[str, Any], target: Tensor,
               config: TrainConfig, device: torch.device, epoch: int) -> Tuple[Tensor, Tensor]:
    """Forward ``model(*args, **kwargs)`` (under the run's autocast), the task's loss against ``target``,
    backward and one optimizer and schedule step: ``(loss, logits)``, both detached."""
    failure = None
    try:
        with autocast(device, config.precision):
            logits = state.training_module(*args, **kwargs)
            loss = state.task.loss(logits, target, config.label_smoothing, state.class_weight)
    except Exception as error:  # e.g. out of memory on this rank alone: the other ranks must hear of it
        failure, loss = error, torch.zeros(())
    # Every rank's loss and outcome, before the backward's gradient all-reduce that a rank stopping
    # alone would leave the others waiting in (outside torchrun: this process's own).
    losses, failed = rank_outcomes(loss.detach(), failure is not None, device)
    if bool(failed.any()):
        raise_first_failure(failure)
    finite = torch.isfinite(losses[:, 0])
    if not bool(finite.all()):
        rank = int((~finite).nonzero()[0])
        where = f" on rank {rank} of {len(losses)}" if len(losses) > 1 else ""
        raise FloatingPointError(f"epoch {epoch}: the training loss became {float(losses[rank, 0])}{where}; lower "
                                 f"--lr (now {config.lr}) or check the data for NaN coordinates")
    state.optimizer.zero_grad(set_to_none=True)
    if state.scaler is None:
        loss.backward()
        state.optimizer.step()
    else:  # fp16: scale the loss so small gradients survive; steps with inf/NaN gradients are skipped
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
    with warnings.catch_warnings():  # the schedule counts iterations, also those whose step the scaler skipped
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        state.scheduler.step()
    return loss.detach(), logits.detach()


def end_epoch(state: TrainingState, metrics: Dict[str, Any], config: TrainConfig, out: Path,
              metrics_path: Path) -> None:
    """Record a finished epoch: ``best.pt`` when the test score improved, ``last.pt``, the metrics row, a log line."""
    state.epoch = metrics["epoch"]
    score = metrics[state.task.score]
    improved = score > state.best_score
    if improved:
        state.best_score, state.best_epoch = score, state.epoch
    state.history = list(state.history or []) + [metrics]
    if not is_main_process():
        return  # rank 0 writes; the others wait at the barrier after this
    checkpoint = state.checkpoint(config, metrics)
    # best first: a kill between the two writes then resumes from the previous last.pt and
    # redoes this epoch, which rewrites the same best.pt. The metrics row is inside last.pt too:
    # a kill before the append below is repaired on resume.
    if improved:
        save_checkpoint(out / "best.pt", checkpoint)
    save_checkpoint(out / "last.pt", checkpoint)
    append_metrics(metrics_path, metrics)
    _log(f"epoch {state.epoch:3d}/{config.epochs}  loss {metrics['train_loss']:.4f}  train acc "
         f"{metrics['train_acc']:.4f}  {state.task.describe(metrics)}  "
         f"({metrics['samples_per_s']:.1f} samples/s, {metrics['epoch_time']:.1f} s)"
         + ("  *best*" if improved else ""), config.progress)


# ============================================================================ the end
def finish_run(state: TrainingState, config: TrainConfig, out: Path, test_loader, device: torch.device,
               final: Dict[str, Any], seconds: float) -> Dict[str, Any]:
    """Evaluate ``best.pt`` into ``eval.json``; returns :func:`train`'s summary."""
    summary: Dict[str, Any] = {"task": state.task.name, "score": state.task.score, "best_score": state.best_score,
                               "best_epoch": state.best_epoch, "final": final, "run_dir": str(out), "seconds": seconds}
    if state.task.name == "classification":
        summary["best_oa"] = state.best_score
    best_path = out / "best.pt"
    if best_path.exists():
        best_model, _, _ = load_model(best_path, device)
        evaluation = state.task.evaluate(best_model, test_loader, device, state.labels, up_axis=config.up_axis,
                                         precision=config.precision, **state.task.evaluation_options(config))
        evaluation.update(checkpoint=str(best_path), epoch=state.best_epoch)
        if is_main_process():
            write_json(out / "eval.json", evaluation)
        summary["eval"] = evaluation
    _log(f"done: best {state.task.score_name} {state.best_score:.4f} at epoch {state.best_epoch}; checkpoints in {out}",
         config.progress)
    return summary


def _describe_data(config: TrainConfig, train_set, test_set) -> str:
    """``"64 train / 16 test shapes, 512 points"``, or for scenes the rooms, crops and voxel, for the log."""
    if config.task == "semseg":
        return (f"{len(train_set.room_names)} train rooms x {config.room_repeats} crops of <= {config.num_points} "
                f"points / {len(test_set)} test rooms, voxel {config.voxel_size} m")
    return f"{len(train_set)} train / {len(test_set)} test shapes, {config.num_points} points"


def _log(message: str, progress: bool) -> None:
    if not is_main_process():
        return
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(message)
    else:
        print(message)
