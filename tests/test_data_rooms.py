"""The built-in rooms (pcattn.data.rooms): deterministic, scan-like, far from the origin, all classes."""
import numpy as np
import pytest

from pcattn.data.rooms import ROOM_CLASSES, BuiltinRooms, generate_room


@pytest.fixture(scope="module")
def rooms():
    train = BuiltinRooms("train", rooms=2)
    return [train.load_room(0), train.load_room(1), BuiltinRooms("test", rooms=1).load_room(0)]


def label(name):
    return ROOM_CLASSES.index(name)


def test_rooms_are_deterministic_and_splits_disjoint(rooms):
    again = BuiltinRooms("train", rooms=2)[1]  # a new dataset: generated again, as a tensor sample
    for key in ("pos", "color", "normals", "seg"):
        assert np.array_equal(again[key].numpy(), rooms[1][key])
    assert not np.array_equal(rooms[2]["pos"][:100], rooms[0]["pos"][:100])
    assert len(BuiltinRooms("test")) == 4 and len(BuiltinRooms("train")) == 16


def test_rooms_hold_the_classes_far_from_the_origin(rooms):
    assert len(ROOM_CLASSES) >= 8
    for room in rooms:
        count = len(room["pos"])
        assert 50_000 <= count <= 200_000
        assert room["pos"].dtype == np.float64 and room["seg"].dtype == np.int64
        assert len(room["color"]) == len(room["normals"]) == len(room["seg"]) == count
        assert (np.abs(room["pos"][:, :2]).min(axis=0) > 100).all()  # metres, hundreds away, as scans are
        assert room["color"].min() >= 0 and room["color"].max() <= 1
        present = set(np.unique(room["seg"]).tolist())
        assert {label(name) for name in ("ceiling", "floor", "wall", "door", "table", "chair", "bookcase")} <= present
    assert set(np.concatenate([room["seg"] for room in rooms]).tolist()) == set(range(len(ROOM_CLASSES)))


def test_only_surfaces_a_scanner_sees(rooms):
    """The scanners stand above every table, chair and box: no point lies on the underside of one, while
    the ceiling (seen from below) is all downward-facing."""
    for room in rooms:
        down = room["normals"][:, 2] < -0.9
        furniture = np.isin(room["seg"], [label("table"), label("chair"), label("clutter")])
        assert not (down & furniture).any()
        assert down[room["seg"] == label("ceiling")].all()


def test_a_door_painted_like_its_wall(rooms):
    """Some doors have the wall's colour: only their geometry (set back in the opening) tells them apart."""
    def median_color(room, name):
        return np.median(room["color"][room["seg"] == label(name)], axis=0)

    gaps = [np.abs(median_color(room, "door") - median_color(room, "wall")).max() for room in rooms]
    assert min(gaps) < 0.05 < max(gaps)
    with pytest.raises(ValueError, match="num_points must be"):
        generate_room(0, num_points=(10, 5))
