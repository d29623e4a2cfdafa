"""The run folder on disk: its lock, the check before a run starts (a new run never overwrites one, a
resumed one keeps its settings and its identity), ``config.json``, ``metrics.jsonl`` and the atomic
JSON writer.

What a run folder guarantees:

* **one run at a time**: :class:`RunFolderLock` holds an OS lock (``fcntl.flock``) on
  ``<out>/.lock`` for the whole run; a second run on the same folder gets :class:`RunFolderInUse`
  naming the holder's process id. The kernel drops the lock when its process dies, so a lock left
  by a killed run never blocks.
* **nothing overwritten**: a folder holding any of :data:`RUN_FILES` is refused without
  ``resume``; ``resume`` without ``last.pt`` continues from ``config.json`` only when no epoch has
  been recorded yet, and refuses (naming what is missing) otherwise.
* **one consistent state**: each checkpoint carries every metrics row so far (``history``);
  ``metrics.jsonl`` is rewritten from it on resume, so a kill between the checkpoint and the log
  loses no line.
* **identity**: ``config.json`` and every checkpoint carry the run's ``run_id``; a ``last.pt``
  from another run is refused.
* temporary files of a killed save (``.*.tmp``) are removed at the next start.
"""
from __future__ import annotations

import errno
import json
import os
import uuid
import weakref
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .checkpoint import CheckpointError, load_checkpoint, raise_if_disk_full
from .config import TrainConfig, check_resume_settings, read_run_config

__all__ = ["check_writable", "RUN_FILES", "RunFolderInUse", "RunFolderLock", "prepare_run_folder", "read_run_config", "write_json",
           "start_metrics", "append_metrics", "remove_temporary_files", "mark_shared_folder", "check_shared_folder"]

METRICS = "metrics.jsonl"
CONFIG = "config.json"
LOCK = ".lock"
# The files a run writes: a folder holding any of them is never started afresh without resume.
RUN_FILES = ("last.pt", "best.pt", METRICS, CONFIG, "eval.json")


class RunFolderInUse(OSError):
    """Another process holds the run folder's lock."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 16]" (every rank prints it)
        return self.strerror or super().__str__()


class RunFolderLock:
    """An exclusive OS lock on ``<folder>/.lock`` (``fcntl.flock``), held while the context is open.

    The lock file holds the holder's process id, for the error message of the next one. The lock
    itself lives in the kernel and goes with its process, so a killed run leaves no stale lock (the
    file stays, harmless). A process forked while the lock is held (a DataLoader worker) closes its copy
    of the descriptor at once: a ``flock`` is shared with forked children, and workers that outlive a
    killed run by a few seconds would otherwise refuse its immediate ``--resume``. Where ``fcntl`` does
    not exist (Windows) no lock is taken.

    Raises:
        RunFolderInUse: another process holds the lock.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self._descriptor: Optional[int] = None

    def __enter__(self) -> "RunFolderLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(descriptor, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunFolderInUse(errno.EBUSY, f"{self.folder} is in use by another pcattn run (process {holder}); "
                                 f"wait for it to finish or choose another --out") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        self._descriptor = descriptor
        _HELD_LOCKS.add(self)
        return self

    def __exit__(self, *exc_info) -> None:
        _HELD_LOCKS.discard(self)
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the last descriptor releases the flock
            self._descriptor = None

    def _forget_in_child(self) -> None:
        """In a forked child: close the inherited descriptor (the parent's lock stays held by the parent)."""
        if self._descriptor is not None:
            try:
                os.close(self._descriptor)
            except OSError:
                pass
            self._descriptor = None


_HELD_LOCKS: "weakref.WeakSet[RunFolderLock]" = weakref.WeakSet()  # the locks this process holds now


def _release_in_child() -> None:
    for lock in list(_HELD_LOCKS):
        lock._forget_in_child()
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_release_in_child)


def check_writable(path) -> Path:
    """Fail early, before a long computation, when the file ``path`` could not be written: its folder
    is not a writable directory (it is created when missing). Returns ``path``.

    Raises:
        PermissionError / NotADirectoryError / IsADirectoryError naming the path.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{path}: cannot write it, {folder} is not a folder")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: cannot write it, it is a folder (name a file)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PermissionError(f"{path}: cannot create its folder {folder} ({error.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PermissionError(f"{path}: cannot write it, {folder if not path.exists() else path} is read-only")
    return path


def remove_temporary_files(out: Path) -> List[Path]:
    """Delete the ``.*.tmp`` files that killed saves left in ``out`` (call with the lock held)."""
    removed = []
    for path in sorted(out.glob(".*.tmp")) if out.is_dir() else []:
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def prepare_run_folder(config: TrainConfig, out: Path) -> Tuple[Optional[Dict[str, Any]], str]:
    """Check the run folder (call with its lock held): ``(checkpoint to resume from or None, run_id)``.

    Raises:
        FileExistsError: ``out`` holds a run and ``config.resume`` is off.
        FileNotFoundError: ``resume`` on a folder that recorded epochs but has no ``last.pt``.
        ValueError: resuming with settings that change the run's results.
        CheckpointError: ``last.pt`` is unusable or belongs to another run.
    """
    present = [name for name in RUN_FILES if (out / name).exists()]
    if not config.resume:
        if present:
            raise FileExistsError(f"{out} already holds a training run ({', '.join(present)}): pass --resume to "
                                  f"continue it, or choose another --out")
        _warn_about_other_files(out)
        return None, uuid.uuid4().hex
    saved = read_run_config(out)
    last = out / "last.pt"
    if last.exists():
        checkpoint = load_checkpoint(last)
        check_resume_settings(config, checkpoint.get("train_config") or {}, last)
        return checkpoint, _run_identity(checkpoint, saved, last)
    progress = [name for name in present if name not in (CONFIG, METRICS)] + \
        ([METRICS] if _metrics_rows(out / METRICS, None) else [])
    if progress:
        raise FileNotFoundError(f"cannot resume {out}: last.pt is missing, but the folder holds {', '.join(progress)} "
                                f"of epochs already run; put last.pt back, or start a new run in another --out")
    if saved is None:
        return None, uuid.uuid4().hex  # an empty folder: nothing to resume, a new run
    # Killed before its first checkpoint: start again with the settings it was started with.
    check_resume_settings(config, saved, out / CONFIG)
    return None, str(saved.get("run_id") or uuid.uuid4().hex)


def _warn_about_other_files(out: Path) -> None:
    """A new run in a folder that holds files of its own (a user's folder, ``--out .``): the run's
    files land beside them, so say so, naming a few."""
    import warnings

    others = sorted(entry.name for entry in out.iterdir() if entry.name not in _RUN_OUTPUTS
                    and not (entry.name.startswith(".") and entry.name.endswith(".tmp"))) if out.is_dir() else []
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        warnings.warn(f"{out} holds {len(others)} file(s) that are not a pcattn run's ({shown}): the run's files are "
                      f"written beside them (choose an empty or new --out to keep runs apart)", stacklevel=3)


# What a run writes into its folder (a folder holding only these is the run's own).
_RUN_OUTPUTS = frozenset(RUN_FILES + (LOCK, "curves.png", "confusion.png"))


def _run_identity(checkpoint: Dict[str, Any], saved: Optional[Dict[str, Any]], path: Path) -> str:
    """The run id shared by ``last.pt`` and ``config.json`` (older runs carry none: a new one is made)."""
    from_checkpoint, from_folder = checkpoint.get("run_id"), (saved or {}).get("run_id")
    if from_checkpoint and from_folder and from_checkpoint != from_folder:
        raise CheckpointError(f"{path}: belongs to another run (run id {from_checkpoint}) than this folder's "
                              f"config.json (run id {from_folder}), e.g. a last.pt copied from another run; put "
                              f"this run's last.pt back or resume the other run in its own folder")
    return str(from_checkpoint or from_folder or uuid.uuid4().hex)


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON through a temporary file, so a kill never leaves half a file."""
    _write_text_atomic(path, json.dumps(value, indent=1) + "\n",
                       f"the previous {path.name}" if path.exists() else "every other file")


def _write_text_atomic(path: Path, text: str, kept: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise_if_disk_full(error, path, kept)
        raise


def start_metrics(out: Path, last_epoch: int, history: Optional[List[Dict[str, Any]]] = None) -> List[Dict]:
    """Rewrite ``metrics.jsonl`` as the rows of epochs <= ``last_epoch``: ``history`` (the resumed
    checkpoint's rows) when given, else the file's own rows (checkpoints of older versions).
    Returns the rows written."""
    path = out / METRICS
    rows = list(history) if history is not None else _metrics_rows(path, last_epoch)
    _write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows), "every checkpoint")
    return rows


def append_metrics(path: Path, metrics: Dict[str, Any]) -> None:
    try:
        with path.open("a") as stream:
            stream.write(json.dumps(metrics) + "\n")
    except OSError as error:
        raise_if_disk_full(error, path, f"the checkpoint of epoch {metrics.get('epoch')} (which holds this line too)")
        raise


def _metrics_rows(path: Path, epoch: Optional[int]) -> List[Dict[str, Any]]:
    """The rows of ``metrics.jsonl`` with an integer epoch (<= ``epoch`` unless ``None``); a line cut
    by a kill is dropped."""
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if isinstance(row, dict) and isinstance(row.get("epoch"), int) and (epoch is None or row["epoch"] <= epoch):
            kept.append(row)
    return kept


def mark_shared_folder(out: Path) -> str:
    """Rank 0 of a job of several processes: write a file of a new name into ``out`` (call with the
    lock held) for :func:`check_shared_folder`; returns its name. It ends in ``.tmp``, so a job
    killed before removing it leaves nothing that the next start does not clean."""
    name = f".rank0-{uuid.uuid4().hex}.tmp"
    (out / name).write_text(f"{os.getpid()}\n")
    return name


def check_shared_folder(out: Path, probe: str, wait: float = 2.0) -> None:
    """A rank other than 0: check that it sees the file rank 0 wrote into ``out``
    (:func:`mark_shared_folder`), waiting up to ``wait`` seconds for a network file system.
    Only rank 0 reads and writes the run folder (``last.pt``, ``best.pt``), but every rank decides
    from it whether and where to resume: on machines that do not share ``out`` they would decide
    differently and wait for each other forever.

    Raises:
        FileNotFoundError: the file is not there, naming this host and the need for a shared ``--out``.
    """
    import socket
    import time

    deadline = time.monotonic() + wait
    while not (out / probe).is_file():
        if time.monotonic() > deadline:
            raise FileNotFoundError(
                f"host {socket.gethostname()} does not see the run folder {out} that rank 0 writes (its file {probe} "
                f"is not there): with several machines, --out must be a folder every machine shares at the same path "
                f"(e.g. NFS)")
        time.sleep(0.05)
