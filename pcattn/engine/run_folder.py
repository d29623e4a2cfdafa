"""The run folder on disk: the check before a run starts (a new run never overwrites one, a resumed one
keeps its settings), ``config.json``, ``metrics.jsonl`` (one line per epoch, trimmed back to the
resumed epoch) and the atomic JSON writer."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from .checkpoint import load_checkpoint
from .config import TrainConfig, check_resume_settings

__all__ = ["prepare_run_folder", "write_json", "start_metrics", "append_metrics"]

METRICS = "metrics.jsonl"


def prepare_run_folder(config: TrainConfig, out: Path) -> Optional[Dict[str, Any]]:
    """Check the run folder; return the checkpoint to resume from (or ``None`` for a new run).

    Raises:
        FileExistsError: ``out`` holds a run and ``config.resume`` is off.
        ValueError: resuming with settings that change the run's results.
    """
    last = out / "last.pt"
    if not config.resume:
        if last.exists() or (out / METRICS).exists():
            raise FileExistsError(f"{out} already holds a training run: pass --resume to continue it, or choose "
                                  f"another --out")
        return None
    if not last.exists():
        return None
    checkpoint = load_checkpoint(last)
    check_resume_settings(config, checkpoint.get("train_config") or {}, last)
    return checkpoint


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON through a temporary file, so a kill never leaves half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(temporary, path)


def start_metrics(out: Path, last_epoch: int) -> Path:
    """Keep the ``metrics.jsonl`` lines of epochs <= ``last_epoch`` (a resumed run rewrites what came
    after); returns the file's path."""
    path = out / METRICS
    kept = _metrics_lines_upto(path, last_epoch)
    path.write_text("".join(line + "\n" for line in kept))
    return path


def append_metrics(path: Path, metrics: Dict[str, Any]) -> None:
    with path.open("a") as stream:
        stream.write(json.dumps(metrics) + "\n")


def _metrics_lines_upto(path: Path, epoch: int) -> List[str]:
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if isinstance(row, dict) and isinstance(row.get("epoch"), int) and row["epoch"] <= epoch:
            kept.append(line)
    return kept
