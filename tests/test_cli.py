"""``pcattn train`` / ``pcattn eval`` and the script wrappers, end to end on a tiny dataset."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pcattn.cli import main

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # small models: threads only add overhead


def train_args(root, out, *extra):
    return ["train", "--dataset", "modelnet10", "--data-root", str(root), "--num-points", "64", "--batch-size", "8",
            "--epochs", "2", "--out", str(out), "--no-progress", "--threads", "1", *map(str, extra)]


def test_train_then_eval_from_the_command_line(tiny_modelnet10_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_modelnet10_root, out)) == 0
    printed = capsys.readouterr().out
    assert "epoch   2/2" in printed and "test OA" in printed and f"best checkpoint {out}/best.pt" in printed
    assert (out / "curves.png").is_file() and (out / "confusion.png").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["format"] is None and config["model"] == "pt-vector"          # format guessed, ModelNet model

    report = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--votes", "2", "--json", str(report),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(report.read_text())
    assert f"overall accuracy (OA)   {result['oa']:.4f}" in printed
    assert "confusion matrix" in printed and result["votes"] == 2 and result["samples"] == 20

    # The run folder is protected; errors are one clear line, exit code 2.
    assert main(train_args(tiny_modelnet10_root, out)) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_resume_takes_the_run_settings_and_rejects_changes(tiny_modelnet10_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_modelnet10_root, out, "--attention", "scalar", "--epochs", "1", "--no-plots")) == 0
    # --resume with only --out and a longer --epochs: the saved settings (scalar attention, 64 points) are kept.
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "resuming" in printed and "epoch   2/2" in printed and "epoch   1/2" not in printed
    assert json.loads((out / "config.json").read_text())["model"] == "pt-scalar"
    assert main(["train", "--out", str(out), "--resume", "--attention", "vector"]) == 2
    assert "model 'pt-scalar' uses scalar attention, but attention='vector'" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume", "--num-points", "32"]) == 2
    assert "num_points: run has 64, now 32" in capsys.readouterr().err


def test_scripts_run_and_a_killed_process_resumes(tiny_modelnet10_root, tmp_path):
    """The real scripts in subprocesses: SIGKILL a training run after its first checkpoint, resume it,
    and compare with an uninterrupted run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = train_args(tiny_modelnet10_root, "OUT", "--epochs", "6", "--no-plots")[1:]

    def command(out, *extra):
        return [sys.executable, str(REPO / "scripts" / "train_cls.py"),
                *[str(out) if a == "OUT" else a for a in common], *extra]

    subprocess.run(command(tmp_path / "whole"), env=env, check=True, capture_output=True)
    process = subprocess.Popen(command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    epochs_done = torch.load(last, weights_only=True)["epoch"]
    assert epochs_done < 6, "the run finished before it could be killed"
    subprocess.run(command(tmp_path / "killed", "--resume"), env=env, check=True, capture_output=True)

    def rows(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in ("epoch_time", "samples_per_s")}
                for line in lines]

    assert rows("killed") == rows("whole")
    a, b = (torch.load(tmp_path / run / "last.pt", weights_only=True)["model_state"] for run in ("whole", "killed"))
    assert all(torch.equal(a[key], b[key]) for key in a)

    evaluation = subprocess.run([sys.executable, str(REPO / "scripts" / "eval_cls.py"), "--checkpoint",
                                 str(tmp_path / "killed" / "best.pt"), "--no-progress"],
                                env=env, capture_output=True, text=True)
    assert evaluation.returncode == 0, evaluation.stderr
    assert "mean class accuracy" in evaluation.stdout


def test_help_of_every_command():
    for command in ("train", "eval", "plot", "visualize", "bench"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
