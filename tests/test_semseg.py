"""Scene semantic segmentation as a training task: the model inputs of a crop, flat batches of crops,
labelling every point of a whole room (fragments, votes, far from the origin), the evaluation's metrics
checked by hand, the loss and hits with the ignore label, and training through the engine and the CLI."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pcattn.data.grid import CentreCrop, collate_scenes, scene_model_inputs, scene_test_fragments
from pcattn.data.rooms import BuiltinRooms
from pcattn.engine.scene_inference import evaluate_scenes, segment_room
from pcattn.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_room():
    """One built-in test room of about 700 points (float64, hundreds of metres from the origin)."""
    return BuiltinRooms("test", rooms=1, num_points=(600, 800))[0]


@pytest.fixture(scope="module")
def scene_model():
    torch.manual_seed(0)
    return create_model("pt-scene-tiny-vector", num_classes=10, in_channels=6).eval()


def crop(points, seed, **extra):
    generator = torch.Generator().manual_seed(seed)
    sample = {"pos": torch.rand(points, 3, generator=generator, dtype=torch.float64) + 500.0,
              "color": torch.rand(points, 3, generator=generator),
              "normals": torch.rand(points, 3, generator=generator),
              "seg": torch.randint(0, 4, (points,), generator=generator)}
    return CentreCrop()({**sample, **extra})


# ------------------------------------------------------------------------------------------ model inputs
def test_scene_model_inputs_are_centred_xyz_colour_and_normals():
    sample = crop(7, 0)
    x, pos, batch = scene_model_inputs(sample)
    assert x.dtype == pos.dtype == torch.float32 and x.shape == (7, 6)
    assert torch.equal(x[:, :3], sample["pos"]) and torch.equal(x[:, 3:], sample["color"])
    assert torch.equal(batch, torch.zeros(7, dtype=torch.long))
    x9, _, _ = scene_model_inputs(sample, in_channels=9)
    assert torch.equal(x9[:, 6:], sample["normals"])
    assert torch.equal(scene_model_inputs(sample, in_channels=3)[0], sample["pos"])
    with pytest.raises(ValueError, match="float64"):
        scene_model_inputs({**sample, "pos": sample["pos"].double()})
    with pytest.raises(ValueError, match="no colours"):
        scene_model_inputs({"pos": sample["pos"]})
    with pytest.raises(ValueError, match="in_channels must be 3"):
        scene_model_inputs(sample, in_channels=4)


def test_collate_scenes_concatenates_crops_of_different_sizes_with_a_sorted_batch_vector():
    crops = [crop(5, 1), crop(3, 2), crop(4, 3)]
    batch = collate_scenes(crops)
    assert batch["pos"].shape == (12, 3) and batch["seg"].shape == (12,)
    assert batch["batch"].tolist() == [0] * 5 + [1] * 3 + [2] * 4
    assert torch.equal(batch["color"][5:8], crops[1]["color"])
    x, _, clouds = scene_model_inputs(batch)
    assert torch.equal(clouds, batch["batch"]) and x.shape == (12, 6)
    with pytest.raises(ValueError, match="same ones"):
        collate_scenes([crops[0], {key: value for key, value in crops[1].items() if key != "normals"}])


# ------------------------------------------------------------------------------------------ whole rooms
def test_segment_room_with_one_fragment_is_the_model_on_the_centred_room(tiny_room, scene_model):
    """A voxel far smaller than the points' spacing holds one point each: one fragment, the whole room,
    centred; the scores are the model's softmax on it, in the room's row order."""
    fragments = scene_test_fragments({"pos": tiny_room["pos"], "color": tiny_room["color"]}, 1e-4)
    assert len(fragments) == 1
    x, pos, batch = scene_model_inputs(fragments[0])
    with torch.no_grad():
        expected = torch.empty(len(pos), 10)
        expected[fragments[0]["index"]] = scene_model(x, pos, batch).softmax(-1)
    scores = segment_room(scene_model, tiny_room, voxel_size=1e-4)
    assert scores.shape == (tiny_room["pos"].shape[0], 10)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)


def test_segment_room_scores_every_point_in_every_vote_and_batches_do_not_change_them(tiny_room, scene_model):
    fragments = scene_test_fragments({"pos": tiny_room["pos"], "color": tiny_room["color"]}, 0.04)
    holding = torch.zeros(tiny_room["pos"].shape[0])
    for fragment in fragments:
        holding.index_add_(0, fragment["index"], torch.ones(len(fragment["index"])))
    assert len(fragments) > 1 and bool((holding >= 1).all())
    scores = segment_room(scene_model, tiny_room, 0.04, votes=2, batch_points=10 ** 6)
    torch.testing.assert_close(scores.sum(1), 2 * holding)          # each holding fragment adds 1 per vote
    one_by_one = segment_room(scene_model, tiny_room, 0.04, votes=2, batch_points=1)
    torch.testing.assert_close(one_by_one, scores, rtol=1e-4, atol=1e-5)
    plain = segment_room(scene_model, tiny_room, 0.04, votes=1)
    assert not torch.allclose(scores - plain, plain, atol=1e-3)     # the second vote saw turned copies
    with pytest.raises(ValueError, match="votes"):
        segment_room(scene_model, tiny_room, votes=0)


def test_a_room_moved_1e5_m_away_evaluates_the_same(tiny_room, scene_model):
    assert scene_model.unpool == "grid"  # the scene decoder copies each voxel's features back by index
    far = {**tiny_room, "pos": tiny_room["pos"] - tiny_room["pos"].min(0).values + 1e5}
    near = {**tiny_room, "pos": tiny_room["pos"] - tiny_room["pos"].min(0).values}
    torch.testing.assert_close(segment_room(scene_model, far, votes=2), segment_room(scene_model, near, votes=2),
                               rtol=1e-4, atol=1e-5)
    classes = [str(c) for c in range(10)]
    results = [evaluate_scenes(scene_model, [room], classes=classes) for room in (far, near)]
    assert results[0]["intersection"] == results[1]["intersection"]
    assert results[0]["miou"] == results[1]["miou"] and results[0]["oa"] == results[1]["oa"]


# ------------------------------------------------------------------------------------------ evaluation
class Constant(torch.nn.Module):
    """Predicts, for each point, the class written in its red channel (``round(10 r)``)."""

    in_channels = 6

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, pos, batch):
        return torch.nn.functional.one_hot((x[:, 3] * 10).round().long(), 3).float() * 50 + self.weight


def test_evaluation_metrics_checked_by_hand_with_ignored_points():
    """Two rooms, 3 classes; the prediction is planted in the colour. By hand: room A true [0 0 1 1 -1],
    predicted [0 1 1 1 2]; room B true [2 2 0], predicted [2 0 0]. Class 0: I 2, U 3 (pred 0 at A0, B1, B2;
    true at A0, A1, B2 -> pred or true: A0, A1, B1, B2 = 4)..."""
    def room(true, predicted, x0):
        count = len(true)
        pos = torch.tensor([[x0 + 0.5 * i, 0.0, 0.0] for i in range(count)], dtype=torch.float64)
        color = torch.zeros(count, 3)
        color[:, 0] = torch.tensor(predicted, dtype=torch.float32) / 10
        return {"pos": pos, "color": color, "seg": torch.tensor(true)}

    rooms = [room([0, 0, 1, 1, -1], [0, 1, 1, 1, 2], 0.0), room([2, 2, 0], [2, 0, 0], 300.0)]
    result = evaluate_scenes(Constant(), rooms, classes=["a", "b", "c"], voxel_size=0.04)
    # labelled points: A0..A3, B0..B2 (A4 is ignored: its prediction 2 counts nowhere)
    # class 0: true {A0, A1, B2}, pred {A0, B1, B2}: I = 2 (A0, B2), U = 4, target 3
    # class 1: true {A2, A3}, pred {A1, A2, A3}: I = 2, U = 3, target 2
    # class 2: true {B0, B1}, pred {B0}: I = 1, U = 2, target 2
    assert result["intersection"] == [2, 2, 1] and result["union"] == [4, 3, 2] and result["target"] == [3, 2, 2]
    assert result["miou"] == pytest.approx((2 / 4 + 2 / 3 + 1 / 2) / 3)
    assert result["macc"] == pytest.approx((2 / 3 + 2 / 2 + 1 / 2) / 3)
    assert result["oa"] == pytest.approx(5 / 7)
    assert result["iou"] == pytest.approx({"a": 0.5, "b": 2 / 3, "c": 0.5})
    assert result["samples"] == 2 and result["points"] == 7


# ------------------------------------------------------------------------------------------ the task
def test_loss_and_hits_leave_the_ignore_label_out():
    from pcattn.engine.tasks import get_task

    task = get_task("semseg")
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([0, 0, -1, -1])
    assert task.hits(logits, target) == (1, 2)                       # 2 labelled points, 1 right
    expected = torch.nn.functional.cross_entropy(logits[:2], target[:2])
    torch.testing.assert_close(task.loss(logits, target, 0.0), expected)
    unlabelled = task.loss(logits.requires_grad_(), torch.full((4,), -1), 0.0)
    assert float(unlabelled.detach()) == 0.0 and unlabelled.requires_grad    # no NaN from a crop without labels
    batch = collate_scenes([crop(5, 1), crop(3, 2), crop(4, 3)])
    assert task.samples(batch, batch["seg"]) == 3                    # crops, not points
    weight, both = torch.tensor([0.5, 2.0]), torch.tensor([0, 1, -1, 1])   # both classes among the targets
    weighted = torch.nn.functional.cross_entropy(logits[[0, 1, 3]], both[[0, 1, 3]], weight=weight)
    torch.testing.assert_close(task.loss(logits, both, 0.0, weight), weighted)
    assert not torch.allclose(weighted, task.loss(logits, both, 0.0))


def test_class_weights_are_the_inverse_share_of_the_labelled_points_to_a_power():
    from pcattn.engine.tasks import class_loss_weights

    counts = [900, 90, 10, 0]                                        # shares 0.9, 0.09, 0.01; class 3 absent
    raw = torch.tensor([0.9, 0.09, 0.01]) ** -0.5
    sqrt = class_loss_weights(counts, "sqrt")
    torch.testing.assert_close(sqrt, torch.cat([raw / raw.mean(), torch.zeros(1)]))
    inverse = class_loss_weights(counts, "inverse")
    torch.testing.assert_close(inverse[:3] / inverse[0], torch.tensor([1.0, 10.0, 90.0]))
    assert float(inverse[3]) == 0.0 and float(inverse[:3].mean()) == pytest.approx(1.0)
    assert class_loss_weights(counts, "none") is None
    with pytest.raises(ValueError, match="no labelled point"):
        class_loss_weights([0, 0], "sqrt")
    with pytest.raises(ValueError, match="class_weights"):
        class_loss_weights(counts, "log")


def test_a_weighted_run_weighs_the_loss_by_the_training_rooms_labels(tmp_path, monkeypatch):
    from pcattn.engine import train
    from pcattn.engine.tasks import SemanticSegmentationTask, class_loss_weights

    rooms = BuiltinRooms("train", rooms=2, num_points=(600, 800))
    counts = rooms.label_counts()
    seen = torch.cat([rooms[i]["seg"] for i in range(len(rooms))])
    assert counts.tolist() == torch.bincount(seen, minlength=len(rooms.classes)).tolist()
    weights = []
    loss = SemanticSegmentationTask.loss
    monkeypatch.setattr(SemanticSegmentationTask, "loss",
                        lambda self, *args: weights.append(args[3]) or loss(self, *args))
    train(tiny_rooms_config(tmp_path / "weighted", class_weights="inverse", epochs=1, rooms=(2, 1), eval_fragments=1))
    assert weights and all(torch.equal(w, class_loss_weights(counts, "inverse")) for w in weights)


def test_balanced_crops_centre_on_points_weighed_by_the_training_rooms_labels():
    from pcattn.data.grid import SphereCrop
    from pcattn.engine.loaders import build_loaders
    from pcattn.engine.tasks import class_loss_weights

    def crop_of(config):
        train_loader, _ = build_loaders(config.resolved(), torch.Generator().manual_seed(0))
        rooms = train_loader.dataset.rooms
        return rooms, next(step for step in rooms.transform.transforms if isinstance(step, SphereCrop))

    rooms, crop = crop_of(tiny_rooms_config("unused", crop_centres="inverse", rooms=(2, 1)))
    torch.testing.assert_close(crop.centre_weights, class_loss_weights(rooms.label_counts(), "inverse").double())
    assert crop_of(tiny_rooms_config("unused", crop_centres="none", rooms=(2, 1)))[1].centre_weights is None


def test_task_of_model_tells_a_scene_segmenter_from_a_part_segmenter(scene_model):
    from pcattn.engine.tasks import task_of_model

    parts = create_model("pt-seg-tiny-vector", num_classes=4, num_categories=2)
    assert task_of_model(scene_model).name == "semseg" and task_of_model(parts).name == "partseg"
    assert task_of_model(parts, {"task": "semseg"}).name == "semseg"  # what the checkpoint records wins


@pytest.mark.parametrize("options, match", [
    (dict(dataset="builtin-rooms", test_area=3), "test_area"),
    (dict(dataset="s3dis", test_area=7), "areas 1-6"),
    (dict(dataset="s3dis", rooms=(2, 1)), "built-in rooms"),
    (dict(dataset="builtin", voxel_size=0.05), "scene segmentation"),
    (dict(dataset="builtin-rooms", voxel_size=0.0), "voxel_size"),
    (dict(dataset="builtin-rooms", up_axis=1), "z up"),
    (dict(dataset="builtin-rooms", data_root="somewhere"), "generated in memory"),
    (dict(dataset="builtin-rooms", room_points=(900, 100)), "low <= high"),
    (dict(task="partseg", dataset="builtin-rooms"), "semseg dataset"),
    (dict(dataset="builtin-rooms", class_weights="log"), "class_weights"),
    (dict(dataset="builtin", class_weights="sqrt"), "scene segmentation"),
    (dict(dataset="builtin-rooms", crop_centres="log"), "crop_centres"),
    (dict(dataset="builtin", crop_centres="sqrt"), "scene segmentation"),
])
def test_scene_settings_are_checked_before_anything_runs(options, match):
    from pcattn.engine import TrainConfig

    with pytest.raises(ValueError, match=match):
        TrainConfig(**options).resolved()


def test_builtin_rooms_imply_semseg_with_the_scene_defaults():
    from pcattn.engine import TrainConfig

    config = TrainConfig(dataset="builtin-rooms").resolved()
    assert (config.task, config.model, config.voxel_size) == ("semseg", "pt-scene-tiny-vector", 0.08)
    assert (config.num_points, config.class_weights, config.crop_centres) == (4096, "sqrt", "none")
    s3dis = TrainConfig(dataset="s3dis").resolved()
    assert (s3dis.model, s3dis.test_area, s3dis.num_points) == ("pt-scene-vector", 5, 80_000)
    assert (s3dis.voxel_size, s3dis.class_weights, s3dis.crop_centres) == (0.04, "none", "none")


# ------------------------------------------------------------------------------------------ training runs
TINY_ROOMS = ["--rooms", "4,1", "--room-points", "600,800", "--num-points", "128", "--room-repeats", "1",
              "--batch-size", "2", "--epochs", "2", "--lr", "5e-3", "--threads", "1", "--no-progress", "--no-plots"]


def tiny_rooms_config(out, **overrides):
    from pcattn.engine import TrainConfig

    options = dict(dataset="builtin-rooms", rooms=(4, 1), room_points=(600, 800), num_points=128, room_repeats=1,
                   batch_size=2, epochs=2, lr=5e-3, threads=1, progress=False, plots=False, out=str(out))
    options.update(overrides)
    return TrainConfig(**options)


@pytest.fixture(scope="module")
def rooms_run(tmp_path_factory):
    """Two epochs on 4 tiny built-in rooms through the command line (``--dataset builtin-rooms`` alone
    implies the task); the run folder."""
    from pcattn.cli import main

    out = tmp_path_factory.mktemp("semseg") / "run"
    assert main(["train", "--dataset", "builtin-rooms", *TINY_ROOMS, "--out", str(out)]) == 0
    return out


def test_builtin_rooms_train_from_the_command_line_into_a_complete_run_folder(rooms_run):
    import json

    from pcattn.data import ROOM_CLASSES
    from pcattn.engine import load_checkpoint, load_model
    from test_engine import metric_rows

    rows = metric_rows(rooms_run)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "train_loss", "train_acc", "test_loss", "test_miou", "test_macc", "test_oa",
                            "lr"}
    checkpoint = load_checkpoint(rooms_run / "best.pt")
    assert checkpoint["task"] == "semseg" and checkpoint["kind"] == "pcattn-segmenter"
    assert checkpoint["classes"] == list(ROOM_CLASSES) and checkpoint["categories"] is None
    assert checkpoint["train_config"]["model"] == "pt-scene-tiny-vector"
    best = max(rows, key=lambda row: row["test_miou"])
    assert checkpoint["epoch"] == best["epoch"] and checkpoint["best_metric"] == "test_miou"
    evaluation = json.loads((rooms_run / "eval.json").read_text())       # best.pt on every point of the test room
    test_room = BuiltinRooms("test", rooms=1, num_points=(600, 800))[0]
    assert evaluation["points"] == test_room["pos"].shape[0] == sum(map(sum, evaluation["confusion"]))
    assert evaluation["miou"] == pytest.approx(best["test_miou"])
    model, _, _ = load_model(rooms_run / "best.pt")
    assert model.in_channels == 6 and model.num_categories is None


def test_eval_of_a_scene_checkpoint_prints_miou_and_the_class_table(rooms_run, tmp_path, capsys):
    import json

    from pcattn.cli import main
    from pcattn.data import ROOM_CLASSES

    saved = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(rooms_run / "best.pt"), "--votes", "2", "--json", str(saved),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for line in ("mIoU", "mAcc", "OA", "1 test rooms", "2 vote(s)", *ROOM_CLASSES):
        assert line in printed, line
    result, one_vote = json.loads(saved.read_text()), json.loads((rooms_run / "eval.json").read_text())
    assert f"mIoU                    {result['miou']:.4f}" in printed
    assert result["votes"] == 2 and result["target"] == one_vote["target"]   # the same points, scored again
    assert result["points"] == sum(result["target"]) == sum(map(sum, result["confusion"]))
    assert main(["eval", "--checkpoint", str(rooms_run / "best.pt"), "--batch-size", "4"]) == 2  # one room at a time
    assert "--batch-size" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(rooms_run / "best.pt"), "--max-fragments", "1", "--json", str(saved),
                 "--no-progress"]) == 0
    assert "at most 1 fragments per room" in capsys.readouterr().out
    capped = json.loads(saved.read_text())
    assert capped["max_fragments"] == 1 and capped["target"] == one_vote["target"]  # every point still scored


def test_killed_scene_run_resumes_to_the_same_result(rooms_run, tmp_path, monkeypatch):
    from pcattn.engine import train
    from test_engine import metric_rows, train_killed_in_epoch_2

    killed = tmp_path / "killed"
    train_killed_in_epoch_2(tiny_rooms_config(killed), monkeypatch)
    torch.manual_seed(1234), np.random.seed(99)                       # the checkpoint restores them
    train(tiny_rooms_config(killed, resume=True))
    assert metric_rows(killed) == metric_rows(rooms_run)
    a, b = (torch.load(run / "last.pt", weights_only=True)["model_state"] for run in (rooms_run, killed))
    assert all(torch.equal(a[key], b[key]) for key in a)


S3DIS_RAW = "Stanford3dDataset_v1.2_Aligned_Version"


def test_real_s3dis_files_train_and_evaluate_on_every_point_of_the_test_area(shared_fixtures, tmp_path):
    """The real raw release's files (every 40th line of each, so it runs in seconds): conferenceRoom_1 as
    Area 1 for training, copyRoom_1 in Area 5, the default test area; the evaluation scores each of the
    test room's points once, by the class its file names."""
    import json

    from pcattn.cli import main
    from pcattn.data import S3DIS_CLASSES

    source = shared_fixtures / "s3dis" / S3DIS_RAW / "Area_5"
    counts = {}
    for area, room in (("Area_1", "conferenceRoom_1"), ("Area_5", "copyRoom_1")):
        folder = tmp_path / S3DIS_RAW / area / room / "Annotations"
        folder.mkdir(parents=True)
        for path in sorted((source / room / "Annotations").glob("*.txt")):
            lines = path.read_text().splitlines()[::40]
            (folder / path.name).write_text("\n".join(lines) + "\n")
            counts[path.stem.split("_")[0]] = counts.get(path.stem.split("_")[0], 0) + len(lines) * (area == "Area_5")
    out = tmp_path / "run"
    assert main(["train", "--dataset", "s3dis", "--data-root", str(tmp_path / S3DIS_RAW), "--num-points", "256",
                 "--model", "pt-scene-tiny-vector",
                 "--batch-size", "2", "--room-repeats", "2", "--epochs", "1", "--threads", "1", "--no-progress",
                 "--no-plots", "--out", str(out)]) == 0
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["classes"] == list(S3DIS_CLASSES) and evaluation["samples"] == 1
    expected = [counts.get(name, 0) for name in S3DIS_CLASSES]
    assert evaluation["target"] == expected and expected[S3DIS_CLASSES.index("beam")] == 250


def write_scene_layout(root, kind):
    """Built-in rooms written as ScanNet's preprocessed scenes (some points unlabelled: -1) or as a folder of
    your own rooms (``.npy`` and ``.txt`` tables and classes.txt); returns the test room's labels."""
    from pcattn.data import ROOM_CLASSES, generate_room

    splits = {"train": [0, 1], "val" if kind == "scannet" else "test": [2]}
    for split, seeds in splits.items():
        for seed in seeds:
            room = generate_room([7, seed], num_points=(500, 600))
            seg = room["seg"].copy()
            seg[::7] = -1 if kind == "scannet" else seg[::7]
            if kind == "scannet":
                folder = root / split / f"scene{seed:04d}_00"
                folder.mkdir(parents=True)
                np.save(folder / "coord.npy", room["pos"].astype(np.float32))
                np.save(folder / "color.npy", np.round(room["color"] * 255).astype(np.uint8))
                np.save(folder / "normal.npy", room["normals"])
                np.save(folder / "segment20.npy", seg)
            else:
                (root / split).mkdir(parents=True, exist_ok=True)
                table = np.concatenate([room["pos"], room["color"] * 255, seg[:, None]], axis=1)
                if split == "train":
                    np.save(root / split / f"room{seed}.npy", table)
                else:
                    np.savetxt(root / split / f"room{seed}.txt", table, fmt="%.6f")
    if kind == "folder":
        (root / "classes.txt").write_text("\n".join(ROOM_CLASSES) + "\n")
    return seg


@pytest.mark.parametrize("kind", ["scannet", "folder"])
def test_scannet_and_folder_layouts_train_and_evaluate_every_labelled_point(kind, tmp_path):
    import json

    from pcattn.cli import main

    test_labels = write_scene_layout(tmp_path / "data", kind)
    out = tmp_path / "run"
    assert main(["train", "--dataset", kind, "--data-root", str(tmp_path / "data"), "--model", "pt-scene-tiny-vector",
                 "--num-points", "256", "--batch-size", "2", "--epochs", "1", "--threads", "1", "--no-progress",
                 "--no-plots", "--out", str(out)]) == 0
    evaluation = json.loads((out / "eval.json").read_text())
    labelled = test_labels[test_labels >= 0]
    assert evaluation["points"] == len(labelled) < len(test_labels) + (kind == "folder")
    assert evaluation["target"] == np.bincount(labelled, minlength=len(evaluation["classes"])).tolist()


def test_two_processes_train_and_evaluate_whole_rooms_as_one_process(tmp_path):
    """torchrun with 2 processes: one epoch (one step: 2 crops, one per rank), then best.pt evaluated with the
    3 test rooms sharded over the ranks (2 + 1) and the intersection, union and target counts summed: exactly
    the one-process result."""
    import json

    from pcattn.engine import evaluate_checkpoint
    from test_distributed import torchrun

    out = tmp_path / "rooms"
    options = [option if option != "4,1" else "2,3" for option in TINY_ROOMS]
    options[options.index("--epochs") + 1] = "1"
    printed = torchrun(2, "train", "--dataset", "builtin-rooms", *options, "--out", out)
    assert "2 processes (DistributedDataParallel, global batch 2" in printed
    two = json.loads((out / "eval.json").read_text())
    one = evaluate_checkpoint(out / "best.pt", progress=False)
    assert two["samples"] == one["samples"] == 3
    for key in ("intersection", "union", "target", "confusion"):
        assert two[key] == one[key], key
    assert two["miou"] == one["miou"] and two["loss"] == pytest.approx(one["loss"], rel=1e-9)


def test_capped_fragments_label_every_point_with_its_voxels_scores(tiny_room, scene_model):
    """max_fragments: the kept fragments' points are scored as without a cap, every other point takes the
    scores of its voxel's first point; a cap at or above the fragment count changes nothing."""
    from pcattn.data.grid import voxel_groups

    voxel = 0.2  # coarse: a few points per voxel, so there are several fragments
    fragments = scene_test_fragments(tiny_room, voxel)
    assert len(fragments) >= 3
    full = segment_room(scene_model, tiny_room, voxel)
    assert torch.equal(segment_room(scene_model, tiny_room, voxel, max_fragments=len(fragments)), full)
    capped = segment_room(scene_model, tiny_room, voxel, max_fragments=1)
    order, starts, counts = voxel_groups(tiny_room["pos"], voxel)
    first = order[starts]  # fragment 0 holds exactly these rows
    assert torch.allclose(capped[first], segment_room(scene_model, {**tiny_room}, voxel, max_fragments=1)[first])
    voxel_of_row = torch.empty_like(order)
    voxel_of_row[order] = torch.repeat_interleave(torch.arange(len(counts)), counts)
    assert torch.allclose(capped.sum(1), torch.ones(len(capped)))  # one fragment: one probability vector per point
    assert torch.equal(capped, capped[first[voxel_of_row]])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_capped_fragments_refuse_a_bad_cap(tiny_room, scene_model, bad):
    with pytest.raises(ValueError, match="max_fragments"):
        segment_room(scene_model, tiny_room, 0.2, max_fragments=bad)
