"""``pcattn train`` / ``pcattn eval`` and the script wrappers, end to end on a tiny dataset."""
from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pcattn.cli import build_parser, main

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
    assert main(["train", "--epochs", "0"]) == 2                             # without --out too
    assert "epochs must be >= 1, got 0" in capsys.readouterr().err


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
    common = train_args(tiny_modelnet10_root, "OUT", "--epochs", "3", "--no-plots")[1:]

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
    assert epochs_done < 3, "the run finished before it could be killed"
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


def test_one_up_axis_parser_for_train_and_visualize(capsys):
    parser = build_parser()
    assert parser.parse_args(["train", "--up-axis", "Z"]).up_axis == 2
    visualize_args = ["visualize", "--checkpoint", "a.pt", "--input", "b.ply"]
    assert parser.parse_args([*visualize_args, "--up-axis", "x"]).up_axis == 0
    assert parser.parse_args([*visualize_args, "--up-axis", "2"]).up_axis == 2
    assert parser.parse_args(visualize_args).up_axis is None                # resolved from the checkpoint
    for command in (["train"], visualize_args):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([*command, "--up-axis", "w"])
        assert exit_.value.code == 2
        assert "expected x, y, z, 0, 1 or 2, got 'w'" in capsys.readouterr().err


def test_attention_options_reach_the_model(tiny_modelnet10_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_modelnet10_root, out, "--epochs", "1", "--no-plots",
                           "--attention-option", "positional_encoding=none",
                           "--attention-option", "relation=addition")) == 0
    from pcattn import VectorSelfAttention
    from pcattn.engine import load_model

    model, _, checkpoint = load_model(out / "best.pt")
    layers = [m for m in model.modules() if isinstance(m, VectorSelfAttention)]
    assert layers and all(m.pos_encoder is None and m.relation == "addition" for m in layers)
    assert checkpoint["train_config"]["attention_options"] == {"positional_encoding": "none", "relation": "addition"}
    capsys.readouterr()
    assert main(train_args(tiny_modelnet10_root, tmp_path / "bad", "--attention", "scalar",
                           "--attention-option", "relation=addition")) == 2
    assert "not accepted by ScalarSelfAttention" in capsys.readouterr().err
    assert main(train_args(tiny_modelnet10_root, tmp_path / "bad2", "--attention-option", "relation=divide")) == 2
    assert "relation must be" in capsys.readouterr().err


def test_ablation_table_and_rerun_reads_finished_runs(tiny_modelnet10_root, tmp_path, capsys):
    from pcattn.bench.ablation import run_ablation

    argv = ["ablate", "--variants", "vector", "scalar-no-pe", "--epochs", "1", "--seeds", "0", "1",
            "--dataset", "modelnet10", "--data-root", str(tiny_modelnet10_root), "--num-points", "64",
            "--out", str(tmp_path / "ablation"), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| vector | vector | defaults |" in printed and "| scalar-no-pe | scalar | positional_encoding=none |" in printed
    assert "±" in printed and (tmp_path / "ablation" / "ablation.md").is_file()
    runs = sorted(p.name for p in (tmp_path / "ablation").iterdir() if p.is_dir())
    assert runs == ["scalar-no-pe-seed0", "scalar-no-pe-seed1", "vector-seed0", "vector-seed1"]
    before = (tmp_path / "ablation" / "vector-seed0" / "metrics.jsonl").read_text()
    rows = run_ablation(["vector"], tmp_path / "ablation", epochs=1, seeds=[0], dataset="modelnet10",
                        data_root=str(tiny_modelnet10_root), num_points=64, progress=False)
    assert (tmp_path / "ablation" / "vector-seed0" / "metrics.jsonl").read_text() == before   # not retrained
    assert rows[0]["runs"][0]["best_oa"] == pytest.approx(json.loads(before.splitlines()[-1])["test_oa"])


@pytest.mark.parametrize("argv, message", [
    (["eval", "--checkpoint", "missing.pt", "--seed", "3"], "--seed is not used here: it seeds the voting"),
    (["visualize", "--checkpoint", "missing.pt", "--input", "c.npy", "--index", "3"], "--index is not used here"),
    (["visualize", "--checkpoint", "missing.pt", "--input", "c.npy", "--split", "train"], "--split is not used"),
    (["visualize", "--checkpoint", "missing.pt", "--input", "c.npy", "--data-root", "d"], "--data-root is not used"),
    (["visualize", "--checkpoint", "missing.pt", "--dataset", "builtin", "--sampling", "random"],
     "--sampling is not used here: it subsamples --input"),
    (["visualize", "--checkpoint", "missing.pt", "--dataset", "builtin", "--mode", "parts", "--layer", "0"],
     "--layer is not used here: --mode parts draws parts"),
    (["visualize", "--checkpoint", "missing.pt", "--dataset", "builtin", "--mode", "received", "--query", "5"],
     "--query is not used here: --mode received has no query point"),
    (["train", "--momentum", "0.5"], "--momentum is SGD's; the optimizer is adamw"),
    (["train", "--dataset", "builtin-parts", "--data-root", "somewhere"], "the built-in parts are generated in memory"),
    (["train", "--dataset", "builtin", "--format", "off"], "format 'off' .* the builtin dataset is generated"),
])
def test_an_option_that_would_do_nothing_is_refused(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import pcattn.engine

    def no_training(config):
        raise AssertionError("the option should have been refused before training")

    monkeypatch.setattr(pcattn.engine, "train", no_training)
    assert main(argv) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()                                   # refused before any run folder
