"""The ``pcattn`` command: ``train``, ``eval``, ``plot``, ``visualize``, ``predict``, ``ablate``, ``bench``, ``export``.

    pcattn train --dataset builtin --attention vector --out runs/builtin-vector
    pcattn train --out runs/builtin-vector --resume          # continue a killed run
    pcattn train --task partseg --dataset builtin-parts      # part segmentation (instance / class mIoU)
    pcattn train --dataset builtin-rooms                     # scene segmentation (mIoU, mAcc, OA on whole rooms)
    torchrun --nproc_per_node 2 -m pcattn train ...          # DistributedDataParallel, --batch-size is global
    pcattn eval --checkpoint runs/builtin-vector/best.pt --votes 3
    pcattn plot runs/builtin-vector
    pcattn visualize --checkpoint runs/builtin-vector/best.pt --dataset builtin --index 7 --out attention.png
    pcattn predict --checkpoint runs/builtin-vector/best.pt --input my_clouds/   # label your own files
    pcattn ablate --variants vector vector-no-pe scalar --epochs 15
    pcattn bench --quick

Each subcommand imports its module only when it runs, so ``pcattn train`` does not load Open3D's
renderer and ``pcattn --help`` is instant.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

__all__ = ["main", "add_train_arguments", "add_eval_arguments", "add_visualize_arguments", "add_predict_arguments"]


# ============================================================================ train
def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``pcattn train`` / ``scripts/train_cls.py``. Every default is ``None`` here and
    filled from :class:`pcattn.engine.TrainConfig`, so ``--resume`` can tell what was given."""
    data = parser.add_argument_group("data")
    data.add_argument("--task", choices=("classification", "partseg", "semseg"),
                      help="classification of whole clouds (default), part segmentation (one part label per "
                           "point, the object category given) or semseg (one class per point of whole rooms); "
                           "default: the dataset's task")
    data.add_argument("--dataset", choices=("builtin", "modelnet10", "modelnet40", "builtin-parts", "shapenetpart",
                                            "builtin-rooms", "s3dis", "scannet", "folder"),
                      help="classification: built-in generated shapes (default, no download) or ModelNet; "
                           "partseg: built-in part-labelled shapes (default, no download) or ShapeNetPart; "
                           "semseg: built-in generated rooms (default, no download), S3DIS, ScanNet v2 "
                           "(preprocessed) or folder (your own labelled rooms: classes.txt, train/, test/)")
    data.add_argument("--format", choices=("off", "normal_resampled", "hdf5", "folder", "normal", "v0", "raw", "npy",
                                           "folders"),
                      help="ModelNet format (off, normal_resampled, hdf5, folder), ShapeNetPart layout "
                           "(normal, v0, hdf5) or S3DIS layout (raw, npy, folders); default: guessed from the files")
    data.add_argument("--data-root", help="dataset folder (default: looked up under datasets/, see its README)")
    data.add_argument("--download", action="store_true", default=None,
                      help="download the Princeton ModelNet zip (format off), or the ShapeNetPart archive of "
                           "--format (default normal), into --data-root (default datasets/)")
    data.add_argument("--skip-missing", action="store_true", default=None,
                      help="ShapeNetPart: leave out (with a warning) listed shapes whose files are absent "
                           "(default: an error naming the file)")
    data.add_argument("--num-points", type=int, help="points per cloud (default 512 built-in, 1024 ModelNet, "
                                                     "2048 ShapeNetPart); semseg: at most this many points per "
                                                     "training crop (default 4096 built-in rooms, 80000 S3DIS, "
                                                     "100000 ScanNet)")
    scenes = parser.add_argument_group("scenes (semseg)")
    scenes.add_argument("--voxel-size", type=float, help="grid sampling's voxel edge in metres, in training and in "
                                                         "the evaluation on whole rooms (default 0.04; 0.08 built-in rooms)")
    scenes.add_argument("--eval-fragments", type=int, metavar="F",
                        help="the evaluation after each epoch segments at most F grid fragments per test room, the "
                             "other points taking their voxel's scores (default: every fragment, as the scene papers)")
    scenes.add_argument("--class-weights", choices=("none", "sqrt", "inverse"),
                        help="weigh each class's points in the loss by its share f of the training points: none "
                             "(default), sqrt (f^-1/2; the built-in rooms' default) or inverse (f^-1): rare classes count "
                             "more, as mIoU does")
    scenes.add_argument("--crop-centres", choices=("none", "sqrt", "inverse"),
                        help="centre each training crop on a point drawn with the weight of its class, as "
                             "--class-weights weighs the loss: none (any point alike; default), sqrt or inverse: "
                             "crops fall on rare classes more often")
    scenes.add_argument("--test-area", type=int, help="S3DIS: the held-out test area, 1-6 (default 5: train on the "
                                                      "other five)")
    scenes.add_argument("--room-repeats", type=int, help="random crops of each training room per epoch (default 8 "
                                                         "built-in rooms, 30 S3DIS, 1 otherwise)")
    scenes.add_argument("--rooms", type=_pair, metavar="TRAIN,TEST",
                        help="built-in rooms: how many train and test rooms (default 16,4)")
    scenes.add_argument("--room-points", type=_pair, metavar="LOW,HIGH",
                        help="built-in rooms: the range of points per room (default 50000,200000)")
    data.add_argument("--use-normals", action="store_true", default=None, help="normals as extra input features")
    data.add_argument("--up-axis", type=_axis, help="vertical axis x, y or z (default: the dataset's)")
    data.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                      help="switch the training augmentation off")
    data.add_argument("--num-workers", type=int, help="data-loading processes (default 0; per process under torchrun)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="named configuration (default pt-tiny-<attention> for builtin, "
                                       "pt-<attention> for ModelNet, pt-seg-tiny-<attention> for builtin-parts, "
                                       "pt-seg-<attention> for ShapeNetPart); see pcattn.models.list_models(task)")
    model.add_argument("--attention", choices=("vector", "scalar"), help="attention type (default vector)")
    model.add_argument("--init-encoder", metavar="CHECKPOINT",
                       help="start the encoder from a classifier's checkpoint (e.g. a pt-tiny-vector run's best.pt "
                            "for pt-seg-tiny-vector: each segmenter's encoder is its classifier's)")
    model.add_argument("--attention-option", dest="attention_options", action="append", type=_option,
                       metavar="KEY=VALUE", help="an option of every attention layer, repeatable: "
                       "positional_encoding=none, relation=addition, normalization=sigmoid, mapping=linear, ...")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, help="default 15 (both tasks)")
    optim.add_argument("--batch-size", type=int, help="default 32 (partseg 16); under torchrun the global batch, split "
                                                       "evenly over the processes")
    optim.add_argument("--lr", type=float, help="peak learning rate (default 2e-3, partseg 5e-3)")
    optim.add_argument("--weight-decay", type=float, help="default 1e-4 (partseg 1e-2)")
    optim.add_argument("--optimizer", choices=("adamw", "sgd"), help="default adamw")
    optim.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    optim.add_argument("--warmup", type=float, help="fraction of iterations warming up, then the schedule (default 0.1)")
    optim.add_argument("--lr-schedule", choices=("cosine", "step"),
                       help="after the warm-up: cosine decay to zero (default), or step: the rate times "
                            "--lr-step-factor after each epoch of --lr-steps (the papers: --warmup 0 --lr-schedule "
                            "step --lr-steps 120,160 of 200 epochs)")
    optim.add_argument("--lr-steps", type=_epochs, metavar="E1,E2,...",
                       help="step schedule: the epochs after which the rate drops, e.g. 120,160")
    optim.add_argument("--lr-step-factor", type=float, help="step schedule: the factor of each drop (default 0.1)")
    optim.add_argument("--label-smoothing", type=float, help="default 0.1 (partseg 0)")
    run = parser.add_argument_group("run")
    run.add_argument("--seed", type=int, help="default 0; the same seed gives the same metrics on a CPU")
    run.add_argument("--device", help="auto (default: CUDA when present), cpu or cuda")
    run.add_argument("--precision", choices=("32", "bf16", "fp16"),
                     help="float32, or autocast to bfloat16 / float16 (fp16 with a gradient scaler) in training "
                          "and evaluation (default fp16 on CUDA, 32 on the CPU)")
    run.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                     help="under torchrun with several processes: SyncBatchNorm, statistics of the global batch "
                          "(default on when there are several processes; --no-sync-bn: per-process statistics)")
    run.add_argument("--deterministic", action="store_true", default=None,
                     help="deterministic algorithms (torch.use_deterministic_algorithms, cuBLAS workspace, cuDNN): "
                          "on a GPU the same seed then gives the same metrics, somewhat slower; the CPU is "
                          "deterministic without it")
    run.add_argument("--threads", type=int, help="torch threads (default: torch's choice; per process under torchrun)")
    run.add_argument("--out", help="run folder (default runs/<dataset>-<model>)")
    run.add_argument("--resume", action="store_true", default=None,
                     help="continue the run in --out from its last checkpoint (with its own settings)")
    run.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                     help="no progress bars (one line per epoch)")
    run.add_argument("--no-plots", dest="plots", action="store_false", default=None,
                     help="do not draw curves.png / confusion.png at the end")
    return parser


def _axis(value: str) -> int:
    """An axis as the command line names it (``x``, ``y``, ``z`` or ``0``, ``1``, ``2``) -> 0, 1 or 2;
    the type of ``--up-axis`` in ``train`` and ``visualize``."""
    value = value.strip().lower()
    if value in ("x", "y", "z"):
        return "xyz".index(value)
    if value in ("0", "1", "2"):
        return int(value)
    raise argparse.ArgumentTypeError(f"expected x, y, z, 0, 1 or 2, got {value!r}")


def _pair(text: str) -> tuple:
    """``"16,4"`` -> ``(16, 4)``, the type of ``--rooms`` and ``--room-points``."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected two whole numbers separated by a comma (e.g. 16,4), got {text!r}")
    return values


def _epochs(text: str) -> tuple:
    """``"120,160"`` -> ``(120, 160)``, the type of ``--lr-steps``."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole epochs separated by commas (e.g. 120,160), got {text!r}") \
            from None


def _option(text: str):
    """``KEY=VALUE`` -> ``(key, value)``, the value read as int, float, true/false/none, else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        parsed = lowered == "true"
    elif lowered == "none" and key.strip() not in ("positional_encoding", "mapping"):
        parsed = None  # (for these two, "none" is itself the value the layer takes)
    else:
        try:
            parsed = int(value)
        except ValueError:
            try:
                parsed = float(value)
            except ValueError:
                parsed = value.strip()
    return key.strip(), parsed


def run_train(args: argparse.Namespace) -> int:
    from .engine import CheckpointError, TrainConfig, merge_resume_config, train
    from .engine.distributed import is_main_process

    fields = {name: value for name, value in vars(args).items()
              if value is not None and name in TrainConfig.__dataclass_fields__}
    if "attention_options" in fields:
        fields["attention_options"] = dict(fields["attention_options"])
    explicit = [name for name in fields if name not in ("out", "resume")]
    config = TrainConfig(**fields)
    try:
        if "out" not in fields:
            probe = config.resolved()
            config.out = f"runs/{probe.dataset}-{probe.model}"
        config = merge_resume_config(config, explicit)
        if "momentum" in explicit and str(config.optimizer).lower() != "sgd":
            raise ValueError(f"--momentum is SGD's; the optimizer is {config.optimizer} (add --optimizer sgd)")
        summary = train(config)
    except (OSError, ValueError, ImportError, CheckpointError, FloatingPointError) as error:  # OSError: files, disk, lock
        print(f"pcattn train: error{_rank_tag()}: {error}", file=sys.stderr)
        return 2
    if config.plots and is_main_process():
        _plot_finished_run(summary["run_dir"])
    evaluation = summary.get("eval")
    if evaluation and is_main_process():
        from .engine.tasks import get_task

        print(f"best checkpoint {summary['run_dir']}/best.pt (epoch {summary['best_epoch']}): test "
              f"{get_task(summary['task']).summary(evaluation)}; trained in {summary['seconds']:.0f} s")
    return 0


def _plot_finished_run(run_dir: str) -> None:
    """``curves.png`` and ``confusion.png`` of a finished run (drawn here, above the engine and viz)."""
    from .viz import plot_run

    try:
        for path in plot_run(run_dir):
            print(f"wrote {path}")
    except Exception as error:  # plots are a convenience: never fail a finished run for them
        print(f"pcattn train: warning: could not draw the training plots: {error}", file=sys.stderr)


# ============================================================================ eval
def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by pcattn train")
    parser.add_argument("--votes", type=int, default=1,
                        help="test-time voting: passes averaged, extra ones rotated about the up axis and scaled "
                             "(default 1: no voting)")
    parser.add_argument("--data-root", default=None, help="where the test data is (default: as in training)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: as in training")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--precision", choices=("32", "bf16", "fp16"), default=None,
                        help="autocast of the forward passes (default: 32, whatever the run trained in)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the voting augmentation (default 0; "
                        "with --votes 2 or more)")
    parser.add_argument("--max-fragments", type=int, default=None, metavar="F",
                        help="scenes: segment at most F grid fragments per room, the other points taking their "
                             "voxel's scores (default: every fragment, the scene papers' protocol)")
    parser.add_argument("--json", default=None, help="also write the full result (confusion matrix...) as JSON")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=True)
    return parser


def run_eval(args: argparse.Namespace) -> int:
    from .engine import CheckpointError, check_writable, evaluate_checkpoint
    from .engine.distributed import is_main_process

    try:
        refuse_unused([("--seed", args.seed is not None and args.votes == 1,
                        "it seeds the voting augmentation, and --votes 1 has none")])
        if args.json:
            check_writable(args.json)  # before the evaluation, not after it
        result = evaluate_checkpoint(args.checkpoint, votes=args.votes, device=args.device, batch_size=args.batch_size,
                                     num_workers=args.num_workers, seed=0 if args.seed is None else args.seed,
                                     data_root=args.data_root, progress=args.progress, precision=args.precision,
                                     max_fragments=args.max_fragments)
    except (OSError, ValueError, ImportError, CheckpointError) as error:  # OSError: e.g. --data-root is a file
        print(f"pcattn eval: error{_rank_tag()}: {error}", file=sys.stderr)
        return 2
    if not is_main_process():  # under torchrun every process has the whole result; rank 0 reports it
        return 0
    print(format_evaluation(result))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        except OSError as error:
            print(f"pcattn eval: error: {args.json}: {error.strerror or error}", file=sys.stderr)
            return 2
        print(f"wrote {args.json}")
    return 0


def refuse_unused(options) -> None:
    """Every option a command accepts acts or is refused: raise a ``ValueError`` naming the first of
    ``options``, ``(option, given_but_unused, why)`` triples, that was given where it does nothing."""
    for option, unused, why in options:
        if unused:
            raise ValueError(f"{option} is not used here: {why}")


def _rank_tag() -> str:
    """`` (rank R of N)`` in a torchrun job of several processes (each prints its own error), else ``""``."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f" (rank {os.environ.get('RANK')} of {world})" if world > 1 else ""


def format_evaluation(result) -> str:
    """A readable report: OA, mAcc, per-class accuracy and the confusion matrix; for part segmentation
    the point accuracy, instance and class mIoU and the per-category table."""
    if "instance_miou" in result:
        return format_part_evaluation(result)
    if "miou" in result:
        return format_scene_evaluation(result)
    classes = result["classes"]
    width = max(len(name) for name in classes)
    lines = [f"{result['checkpoint']} (epoch {result.get('epoch')}), {result['samples']} test shapes, "
             f"{result['votes']} vote(s)",
             f"overall accuracy (OA)   {result['oa']:.4f}",
             f"mean class accuracy     {result['macc']:.4f}",
             "per class:"]
    support = [sum(row) for row in result["confusion"]]
    for name, n in zip(classes, support):
        accuracy = result["per_class"][name]
        lines.append(f"  {name:<{width}}  {'-' if accuracy is None else f'{accuracy:.3f}'}  ({n} shapes)")
    if len(classes) <= 20:
        lines.append("confusion matrix (rows: true class, columns: predicted):")
        cell = max(3, max(len(str(v)) for row in result["confusion"] for v in row))
        lines.append(" " * (width + 2) + " ".join(f"{i:>{cell}}" for i in range(len(classes))))
        for i, (name, row) in enumerate(zip(classes, result["confusion"])):
            lines.append(f"  {name:<{width}}" + " ".join(f"{v:>{cell}}" for v in row) + f"   [{i}]")
    return "\n".join(lines)


def format_part_evaluation(result) -> str:
    """The report of a part-segmentation evaluation (:func:`pcattn.engine.evaluate_parts`)."""
    names = list(result["per_category"])
    width = max(len(name) for name in names + ["category"])
    lines = [f"{result['checkpoint']} (epoch {result.get('epoch')}), {result['samples']} test shapes, "
             f"{result['votes']} vote(s)",
             f"instance mIoU           {result['instance_miou']:.4f}",
             f"class mIoU              {result['class_miou']:.4f}",
             f"point accuracy          {result['accuracy']:.4f}",
             f"  {'category':<{width}}  mIoU    shapes"]
    for name in names:
        lines.append(f"  {name:<{width}}  {result['per_category'][name]:.4f}  {result['category_shapes'][name]:>6}")
    return "\n".join(lines)


def format_scene_evaluation(result) -> str:
    """The report of a scene evaluation (:func:`pcattn.engine.scene_inference.evaluate_scenes`): mIoU, mAcc,
    OA and the per-class IoU table."""
    names = list(result["iou"])
    width = max(len(name) for name in names + ["class"])
    lines = [f"{result['checkpoint']} (epoch {result.get('epoch')}), {result['samples']} test rooms, "
             f"{result['points']:,} labelled points, {result['votes']} vote(s), voxel {result['voxel_size']} m"
             + (f", at most {result['max_fragments']} fragments per room" if result.get("max_fragments") else ""),
             f"mIoU                    {result['miou']:.4f}",
             f"mAcc                    {result['macc']:.4f}",
             f"OA                      {result['oa']:.4f}",
             f"  {'class':<{width}}  IoU     Acc     points"]
    for name, target in zip(names, result["target"]):
        iou, accuracy = result["iou"][name], result["acc"][name]
        lines.append(f"  {name:<{width}}  {'-' if iou is None else f'{iou:.4f}':<6}  "
                     f"{'-' if accuracy is None else f'{accuracy:.4f}':<6}  {target:>9,}")
    return "\n".join(lines)


# ============================================================================ plot
def run_plot(args: argparse.Namespace) -> int:
    from .viz import plot_run

    try:
        written = plot_run(args.run_dir)
    except (OSError, ValueError, ImportError) as error:  # OSError: a read-only run folder; ImportError: no matplotlib
        print(f"pcattn plot: error: {error}", file=sys.stderr)
        return 2
    if not written:
        print(f"pcattn plot: nothing to plot in {args.run_dir} (metrics.jsonl holds no epoch yet)", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


# ============================================================================ visualize
def add_visualize_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``pcattn visualize`` / ``scripts/visualize_attention.py``."""
    parser.add_argument("--checkpoint", required=True, metavar="PT",
                        help="trained classifier, part segmenter or scene segmenter (best.pt / last.pt)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", metavar="FILE", help="a point cloud: .ply .pcd .xyz .txt .npy or .off (mesh); "
                                                        "for a scene segmenter a room: .ply, or .npy / .txt "
                                                        "columns x y z [r g b] [label]")
    source.add_argument("--dataset", metavar="NAME",
                        help="take a sample of a dataset: builtin, modelnet10, modelnet40, builtin-parts, "
                             "shapenetpart (these two with true parts); a room of builtin-rooms, s3dis, scannet "
                             "or folder for a scene segmenter")
    parser.add_argument("--category", metavar="NAME", default=None,
                        help="part segmenter: the object category of --input (one of the checkpoint's categories; "
                             "a part dataset's sample has its own)")
    parser.add_argument("--index", type=int, default=None, help="sample index in --dataset (default 0)")
    parser.add_argument("--split", default=None, choices=("train", "test"), help="dataset split (default test)")
    parser.add_argument("--data-root", default=None, help="dataset folder (default: the checkpoint's, else the usual)")
    parser.add_argument("--format", default=None, help="dataset format (default: the checkpoint's, else guessed)")
    parser.add_argument("--layer", nargs="+", default=None, metavar="L",
                        help="attention layer(s) by index (0 = first, -1 = last) or module name; "
                             "several give one row each (default: the first attention layer)")
    parser.add_argument("--query", type=int, default=None,
                        help="--mode query: query point index in the input cloud (default 0)")
    parser.add_argument("--mode", choices=("query", "received", "parts", "semseg"), default="query",
                        help="query: weights the query gives its neighbours (in a room: zoomed around it); "
                             "received: total weight each point receives (default query); parts (part segmenter): "
                             "predicted parts, and with the truth known the true parts and the wrong points; "
                             "semseg (scene segmenter): a room's predicted classes, true classes and wrong points, "
                             "from above and in perspective, with the room's mIoU")
    parser.add_argument("--cut-height", type=float, default=None, metavar="M",
                        help="--mode semseg: hide the points higher than M above the floor, so the ceiling does "
                             "not hide the room (default: 70%% of the room's height)")
    parser.add_argument("--zoom", type=float, default=None,
                        help="--mode query in a room: draw the points within ZOOM times the radius of the query's "
                             "neighbourhood (default 3)")
    parser.add_argument("--reduce", default=None, help="over groups/heads: mean (default), max, or an index")
    parser.add_argument("--out", default="attention.png", help="picture to write (PNG; default attention.png)")
    parser.add_argument("--ply", default=None, metavar="PLY",
                        help="also write the coloured cloud as .ply (--mode parts: the predicted parts' colours; "
                             "--mode semseg: every point of the room in its predicted class's colour)")
    parser.add_argument("--compare", default=None, metavar="PT",
                        help="a second checkpoint (e.g. scalar vs vector) shown below the first")
    parser.add_argument("--views", type=int, default=None, help="fixed camera views side by side (default 3)")
    parser.add_argument("--view", nargs=2, type=float, action="append", metavar=("AZIMUTH", "ELEVATION"),
                        help="a chosen camera in degrees (repeatable; replaces --views; --mode semseg: the "
                             "perspective cameras beside the view from above)")
    parser.add_argument("--size", type=int, default=420, help="pixels per view (square, default 420)")
    parser.add_argument("--renderer", choices=("auto", "open3d", "matplotlib"), default="auto",
                        help="open3d (headless), matplotlib (fallback), auto (open3d, else matplotlib; default)")
    parser.add_argument("--up-axis", type=_axis, default=None,
                        help="up axis of the clouds, x, y or z (default: the checkpoint's training data, else y)")
    parser.add_argument("--num-points", type=int, default=None,
                        help="points to sample from --input (default: as in training)")
    parser.add_argument("--sampling", choices=("fps", "random"), default=None,
                        help="how --input files larger than --num-points are subsampled (default fps)")
    parser.add_argument("--title", default=None, help="picture title (default: input and prediction)")
    parser.add_argument("--show", action="store_true", help="also open an interactive Open3D window (needs a display)")
    return parser


def run_visualize(args: argparse.Namespace) -> int:
    from . import viz

    from .engine import check_writable

    views = [tuple(v) for v in args.view] if args.view else (args.views or 3)
    if not Path(args.out).suffix:  # the picture is a PNG: name the file that is really written
        args.out = f"{args.out}.png"
    parts = args.mode == "parts"
    try:
        refuse_unused(_unused_visualize_options(args))
        args.index, args.split = args.index or 0, args.split or "test"
        args.reduce = args.reduce or "mean"
        for path in (args.out, args.ply):
            if path:
                check_writable(path)
        classifiers = viz.load_trained_models([args.checkpoint] + ([args.compare] if args.compare else []))
        if classifiers[0].is_scene_segmenter:
            return _visualize_room(args, classifiers)
        if args.mode == "semseg":
            raise ValueError(f"--mode semseg needs a scene segmentation checkpoint (pcattn train --task semseg), but "
                             f"{args.checkpoint} is a {classifiers[0].kind} (--mode parts draws a part segmenter's "
                             f"parts; --mode query or received the attention)")
        refuse_unused(_unused_room_options(args))
        args.query, args.sampling = args.query or 0, args.sampling or "fps"
        if parts and not classifiers[0].is_segmenter:
            raise ValueError(f"--mode parts needs a part segmentation checkpoint, but {args.checkpoint} is a "
                             f"classifier (show its attention with --mode query or --mode received)")
        cloud = viz.checkpoint_input(classifiers[0], input_file=args.input, dataset=args.dataset, index=args.index,
                                     split=args.split, data_root=args.data_root, format=args.format,
                                     num_points=args.num_points, sampling=args.sampling, up_axis=args.up_axis,
                                     category=args.category)
        if cloud.pos.shape[0] > LARGE_CLOUD:  # minutes on a CPU: say what runs
            print(f"pcattn visualize: running {classifiers[0].name} on {cloud.pos.shape[0]:,} points...", file=sys.stderr,
                  flush=True)
        if parts:
            result = viz.checkpoint_parts_picture(classifiers, cloud, title=args.title, views=views,
                                                  size=(args.size, args.size), backend=args.renderer, path=args.out)
        else:
            result = viz.checkpoint_picture(classifiers, cloud, title=args.title, layers=args.layer or [None],
                                            mode=args.mode, query=args.query, reduce=args.reduce, views=views,
                                            size=(args.size, args.size), backend=args.renderer, path=args.out)
    except (OSError, ValueError, ImportError, viz.RenderingUnavailable) as error:  # ImportError: an extra missing
        print(f"pcattn visualize: error: {error}", file=sys.stderr)
        return 2

    if parts:
        for segmenter, segmentation in zip(classifiers, result.segmentations):
            scores = (f"{100 * segmentation.accuracy:.1f}% of points right, mIoU {segmentation.miou:.3f}"
                      if segmentation.accuracy is not None else "true parts unknown")
            print(f"{segmenter.name}: category {segmentation.category}, {scores}")
        legend = viz.part_legend(result.segmentations[0].part_names)
        print(f"input: {cloud.source}, {cloud.pos.shape[0]} points; parts: {legend}")
        rows, colors, highlight, neighborhood = len(result.picture.captions), result.picture.colors[0], None, None
        ply_note = f"predicted parts of {classifiers[0].name}"
    else:
        truth_label = "true category" if classifiers[0].is_segmenter else "true class"
        for classifier, prediction in zip(classifiers, result.predictions):
            truth = f", {truth_label} {cloud.truth}" if cloud.truth else ""
            print(f"{classifier.name}: predicted {prediction}{truth}")
        layer_rows = result.picture.rows
        print(f"input: {cloud.source}, {cloud.pos.shape[0]} points; layers: "
              + ", ".join(sorted({f"{row.layer.index} '{row.layer.name}'" for row in layer_rows})))
        if args.mode == "query" and any(row.values.query_point != args.query for row in layer_rows):
            print(f"note: in deeper layers the query is the kept point nearest to point {args.query}")
        first = layer_rows[0]
        rows, colors = len(layer_rows), first.colors
        highlight, neighborhood = first.values.query_point, first.values.neighborhood
        ply_note = f"first row: {first.name}, layer {first.layer.index}"
    height, width = result.picture.image.shape[:2]
    print(f"wrote {args.out} ({rows} row(s) x {len(viz.view_angles(views))} view(s), {width}x{height} px)")
    if args.ply:
        try:
            viz.write_ply(args.ply, cloud.pos, colors)
        except (ValueError, OSError) as error:
            print(f"pcattn visualize: error: {error}", file=sys.stderr)
            return 2
        print(f"wrote {args.ply} (coloured cloud of the {ply_note})")
    if args.show:
        try:
            viz.show_interactive(cloud.pos, colors, highlight, neighborhood, result.title)
        except RuntimeError as error:
            print(f"pcattn visualize: --show: {error}", file=sys.stderr)
    return 0


# Clouds larger than this take minutes through a model on a CPU: visualize says so before it starts.
LARGE_CLOUD = 100_000


def _unused_room_options(args: argparse.Namespace):
    """The options only pictures of rooms take, refused for classifiers and part segmenters."""
    return [(option, value is not None, "it is an option of pictures of rooms (scene segmenters)")
            for option, value in (("--cut-height", args.cut_height), ("--zoom", args.zoom))]


def _visualize_room(args: argparse.Namespace, segmenters) -> int:
    """``pcattn visualize`` of scene segmenters: ``--mode semseg`` (a room's classes) or ``--mode query``
    (the attention of a point of the room, zoomed around it)."""
    from . import viz

    semseg = args.mode == "semseg"
    name = segmenters[0].name
    try:
        refuse_unused([
            ("--num-points", args.num_points is not None, "a scene segmenter sees every point of the room"),
            ("--sampling", args.sampling is not None and args.input is not None,
             "a scene segmenter sees every point of the room"),
            ("--up-axis", args.up_axis is not None, "rooms are z-up"),
            ("--category", args.category is not None, "only part segmenters take an object category"),
            ("--compare", semseg and args.compare is not None, "--mode semseg draws one checkpoint's classes"),
            ("--views", semseg and args.views is not None, "--mode semseg draws the room from above and in "
                                                           "perspective; choose the perspective cameras with --view"),
            ("--cut-height", not semseg and args.cut_height is not None, "it hides the ceiling in --mode semseg"),
            ("--zoom", semseg and args.zoom is not None, "it frames the query point in --mode query"),
        ])
        if args.mode not in ("semseg", "query"):
            raise ValueError(f"--mode {args.mode} does not apply to {name}, a scene segmenter: --mode semseg draws "
                             f"a room's classes, --mode query the attention of one of its points")
        room = viz.checkpoint_room(segmenters[0], input_file=args.input, dataset=args.dataset, index=args.index,
                                   split=args.split, data_root=args.data_root)
        if room.num_points > LARGE_CLOUD:  # minutes on a CPU: say what runs
            print(f"pcattn visualize: running {name} on {room.num_points:,} points...", file=sys.stderr, flush=True)
        size = (args.size, args.size)
        if semseg:
            perspective = [tuple(v) for v in args.view] if args.view else viz.PERSPECTIVE_VIEWS
            result = viz.checkpoint_semseg_picture(segmenters[0], room, title=args.title, perspective=perspective,
                                                   size=size, cut_height=args.cut_height, backend=args.renderer,
                                                   path=args.out)
        else:
            views = [tuple(v) for v in args.view] if args.view else (args.views or 3)
            result = viz.checkpoint_room_attention(segmenters, room, query=args.query or 0, title=args.title,
                                                   zoom=3.0 if args.zoom is None else args.zoom,
                                                   layers=args.layer or [None], reduce=args.reduce, views=views,
                                                   size=size, backend=args.renderer, path=args.out)
    except (OSError, ValueError, ImportError, viz.RenderingUnavailable) as error:
        print(f"pcattn visualize: error: {error}", file=sys.stderr)
        return 2

    height, width = result.picture.image.shape[:2]
    if semseg:
        segmentation = result.segmentation
        print(f"{name}: {room.source}, {room.num_points:,} points: {segmentation.describe()}")
        if segmentation.metrics is None:
            print(f"note: {room.source} holds no true labels: only the predicted classes are drawn")
        else:
            scored = [f"{cls} {iou:.2f}" for cls, iou in segmentation.metrics["iou"].items() if iou is not None]
            print("IoU per class: " + ", ".join(scored))
        print(f"wrote {args.out} ({len(result.picture.captions)} row(s) x {len(result.picture.view_titles)} view(s), "
              f"{width}x{height} px)")
        pos = room.sample["pos"]
        colors = viz.label_colors(segmentation.labels, len(segmenters[0].classes))
        ply_note = f"every point of the room in the colour of the class {name} predicts"
    else:
        rows = result.picture.rows
        print(f"{room.source}, {room.num_points:,} points: point {args.query or 0}; predicted: "
              + " | ".join(result.predictions))
        print(f"wrote {args.out} ({len(rows)} row(s) x {len(viz.view_angles(views))} view(s), {width}x{height} px)")
        first = rows[0]
        pos, colors = result.pos, first.colors
        ply_note = f"the grid fragment the model saw, coloured by layer {first.layer.index}'s weights"
    if args.ply:
        try:
            viz.write_ply(args.ply, pos, colors)
        except (ValueError, OSError) as error:
            print(f"pcattn visualize: error: {error}", file=sys.stderr)
            return 2
        print(f"wrote {args.ply} ({ply_note})")
    if args.show:
        print("pcattn visualize: --show: not available for rooms; open the --ply file in a viewer", file=sys.stderr)
    return 0


def _unused_visualize_options(args: argparse.Namespace):
    """``pcattn visualize``'s options that the source (``--input`` or ``--dataset``) and ``--mode``
    leave without effect, as :func:`refuse_unused` takes them."""
    from_file = args.input is not None
    attention = "the attention modes' (--mode query or received)"
    return [
        ("--index", from_file and args.index is not None, "it picks a sample of --dataset, not of --input"),
        ("--split", from_file and args.split is not None, "it picks the split of --dataset, not of --input"),
        ("--data-root", from_file and args.data_root is not None, "it locates --dataset, not --input"),
        ("--format", from_file and args.format is not None, "it is the format of --dataset; --input's is its "
                                                            "extension"),
        ("--sampling", not from_file and args.sampling is not None, "it subsamples --input files; a --dataset "
                                                                    "sample is taken as in training"),
        ("--layer", args.mode == "parts" and args.layer is not None, f"--mode parts draws parts; --layer is {attention}"),
        ("--reduce", args.mode == "parts" and args.reduce is not None, f"--mode parts draws parts; --reduce is "
                                                                       f"{attention}"),
        ("--query", args.mode != "query" and args.query is not None, f"--mode {args.mode} has no query point"),
    ]


# ============================================================================ predict
def add_predict_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by pcattn train (any task)")
    parser.add_argument("--input", required=True, metavar="FILE_OR_FOLDER",
                        help="a cloud (.ply .pcd .npy .txt .xyz .las .laz) or a folder of them")
    parser.add_argument("--out", default=None, metavar="FILE_OR_FOLDER",
                        help="segmenters: the labelled cloud (.ply, .npy or .txt; default <input>.labels.ply), or "
                             "for a folder the folder of labelled clouds (default <folder>-labels); classifiers: a "
                             ".json file (default <input>.class.json, or <folder>-classes.json)")
    parser.add_argument("--format", choices=("ply", "npy", "txt"), default=None,
                        help="a folder's labelled clouds: .ply (default: colours and a label property), or .npy / .txt "
                             "columns x y z label")
    parser.add_argument("--category", default=None,
                        help="a part segmenter's object category (one of the checkpoint's)")
    parser.add_argument("--votes", type=int, default=1,
                        help="test-time votes of a classifier or scene segmenter (default 1: none)")
    parser.add_argument("--num-points", type=int, default=None,
                        help="points a classifier or part segmenter sees (default: as in training); every point "
                             "of a larger part cloud takes the part of its nearest seen point")
    parser.add_argument("--tile-points", type=int, default=None,
                        help="a scene segmenter labels a scan of more points tile by tile, with 2 m of context "
                             "around each (default 1,000,000: about 2 GB with pt-scene-tiny-vector)")
    parser.add_argument("--max-fragments", type=int, default=None, metavar="F",
                        help="a scene segmenter sees at most F grid fragments per room or tile, the other points "
                             "taking their voxel's scores (default: every fragment; 1-2 is several times faster)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip a file that cannot be read (named in the summary) instead of stopping")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choices (sampling, votes)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=True)
    return parser


def run_predict(args: argparse.Namespace) -> int:
    from .engine import CheckpointError
    from .engine.prediction import Predictor, format_summary, predict_files

    folder = Path(args.input).is_dir()

    def report(result) -> None:  # each file as it is done: a folder of large scans takes minutes
        if folder:
            status = result.prediction.describe() if result.ok else f"skipped: {result.error}"
            print(f"{result.input.name}: {status}", file=sys.stderr, flush=True)

    try:
        refuse_unused([("--format", not folder and args.format is not None,
                        "it is the format of a folder's labelled clouds; for one file --out's extension says it")])
        tiles = {} if args.tile_points is None else {"tile_points": args.tile_points}
        predictor = Predictor.from_checkpoint(args.checkpoint, category=args.category, num_points=args.num_points,
                                              votes=args.votes, device=args.device, progress=args.progress,
                                              seed=args.seed, max_fragments=args.max_fragments, **tiles)
        refuse_unused([("--tile-points", args.tile_points is not None and predictor.task != "semseg",
                        "it splits the scans of a scene segmenter; this checkpoint is not one"),
                       ("--max-fragments", args.max_fragments is not None and predictor.task != "semseg",
                        "it caps the grid fragments of a scene segmenter; this checkpoint is not one")])
        results = predict_files(predictor, args.input, args.out, skip_bad=args.skip_bad,
                                suffix=None if args.format is None else f".{args.format}", report=report)
    except (OSError, ValueError, ImportError, CheckpointError) as error:  # ValueError: a bad file, named
        print(f"pcattn predict: error: {error}", file=sys.stderr)
        return 2
    if folder:
        print(format_summary(results))
    else:
        result = results[0]
        print(f"{result.input}: {result.prediction.describe()}")
        if result.prediction.task == "classification":
            top = sorted(zip(result.prediction.probabilities, result.prediction.classes), reverse=True)[:5]
            print("  " + ", ".join(f"{name} {p:.3f}" for p, name in top))
    for path in sorted({str(result.output) for result in results if result.ok}):
        print(f"wrote {path}")
    return 0


# ============================================================================ export
def add_export_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by pcattn train (classifier, "
                        "part or scene segmenter)")
    parser.add_argument("--format", required=True, choices=("onnx", "torchscript", "torch-export"))
    parser.add_argument("--num-points", type=int, default=1024, help="points per cloud of the example input "
                        "(onnx and torch-export then take any number of points; torchscript keeps it)")
    parser.add_argument("--batch-size", type=int, default=2, help="batch of the example input (default 2; "
                        "onnx and torch-export take any batch size; scene segmenters take one cloud)")
    parser.add_argument("--out", required=True, help="file to write (.onnx, .pt, .pt2)")
    return parser


def run_export(args: argparse.Namespace) -> int:
    from .engine import CheckpointError, check_writable, load_model
    from .export import check_extension, export_model

    def progress(message: str) -> None:  # long exports (a minute) say what they are doing
        print(f"pcattn export: {message}", file=sys.stderr, flush=True)

    try:
        check_extension(args.out, args.format)
        check_writable(args.out)  # before the export, which takes a minute (as train, eval and visualize do)
        model, _, _ = load_model(args.checkpoint)
        result = export_model(model, args.out, args.format, num_points=args.num_points, batch_size=args.batch_size,
                              progress=progress)
    except (OSError, ValueError, TypeError, ImportError, RuntimeError, CheckpointError) as error:  # OSError: --out
        print(f"pcattn export: error: {error}", file=sys.stderr)
        return 2
    channels = model.in_channels
    if result.kind == "scene segmenter":
        shape = f"points (N, {channels}), N from {result.min_points:,}"
    elif result.dynamic_batch:
        shape = f"points (B, P, {channels}), any B, P from {result.min_points:,}"
    else:
        shape = f"points ({args.batch_size}, {args.num_points}, {channels}) only"
    if result.kind == "part segmenter" and getattr(model, "num_categories", None) is not None:
        shape += ", category (B,) int64"
    print(f"wrote {result.path} ({result.format}, {result.kind}, {shape}) in {result.seconds:.1f} s; max abs "
          f"difference from eager {result.max_abs_diff:.2e} on {result.checked_batch_size} "
          f"{'cloud' if result.checked_batch_size == 1 else 'clouds'} of {', '.join(map(str, result.checked_points))} "
          f"points")
    return 0


# ============================================================================ main
def _lazy(module: str, function: str):
    def call(args):
        import importlib

        return getattr(importlib.import_module(f"pcattn.{module}"), function)(args)

    return call


def build_parser() -> argparse.ArgumentParser:
    from .bench import ablation, harness  # they import only argparse/stdlib at module level

    parser = argparse.ArgumentParser(prog="pcattn", description="Self-attention on 3D point clouds: train, "
                                     "evaluate, visualise, benchmark.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser("train", help="train a classifier, a part segmenter or a scene segmenter",
                                description="Train a Point Transformer classifier (or, with --task partseg, a part "
                                "segmenter; with --task semseg, a scene segmenter); writes checkpoints, "
                                "metrics.jsonl and plots into --out.")
    add_train_arguments(train).set_defaults(handler=run_train)
    evaluation = commands.add_parser("eval", help="evaluate a checkpoint", description="OA, mAcc, per-class "
                                     "accuracy and confusion matrix of a classifier on its test split; instance and "
                                     "class mIoU, point accuracy and per-category mIoU of a part segmenter; mIoU, "
                                     "mAcc, OA and per-class IoU of a scene segmenter on every point of its whole "
                                     "test rooms.")
    add_eval_arguments(evaluation).set_defaults(handler=run_eval)
    plot = commands.add_parser("plot", help="draw a run's curves.png and confusion.png")
    plot.add_argument("run_dir", help="a run folder (holds metrics.jsonl / eval.json)")
    plot.set_defaults(handler=run_plot)
    visualize = commands.add_parser("visualize", help="render attention weights on a cloud",
                                    description="Render a trained classifier's attention on a point cloud.")
    add_visualize_arguments(visualize).set_defaults(handler=run_visualize)
    ablate = commands.add_parser("ablate", help="train attention variants, one table (vector vs scalar, "
                                 "positional encoding on/off, ...)")
    ablation.add_arguments(ablate).set_defaults(handler=_lazy("bench.ablation", "run"))
    benchmark = commands.add_parser("bench", help="speed and memory against PyG and other implementations")
    harness.add_arguments(benchmark).set_defaults(handler=_lazy("bench.harness", "run"))
    predict = commands.add_parser("predict", help="label your own clouds with a trained checkpoint",
                                  description="Label a cloud or a folder of clouds with a trained classifier, part "
                                  "segmenter or scene segmenter: every point, in the input's order, its coordinates "
                                  "kept.")
    add_predict_arguments(predict).set_defaults(handler=run_predict)
    export = commands.add_parser("export", help="export a trained network (ONNX, TorchScript, torch.export)",
                                 description="Export a checkpoint for inference, checked against eager.")
    add_export_arguments(export).set_defaults(handler=run_export)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))  # every handler returns its exit code (a None is a bug, not a 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
