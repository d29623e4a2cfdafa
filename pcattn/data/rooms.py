"""Built-in rooms: procedurally generated indoor scans for semantic segmentation, no download.

Each room is a box of 4-9 x 3.5-7 m, 2.6-3.2 m high, placed hundreds of metres from the origin (as real
scans are, in a building's frame), holding the 10 classes of :data:`ROOM_CLASSES`:

* the shell: **ceiling**, **floor**, **wall**;
* on the walls: **door** (an opening with the panel set back 5 cm, its reveal, a protruding frame and a
  handle; painted the wall's colour in half of the rooms, so only its geometry tells it apart),
  **window** (a deep opening with a sparse glass plane, its reveal and a sill), **board** (a thin plate
  standing 2 cm off the wall, often as white as the wall);
* furniture: **table** (a top at 0.7-0.78 m on four legs), **chair** (seat, back, legs; pushed partly
  under the tables), **bookcase** (tall, open shelves against a wall, with books); tables and bookcases
  take their colours from the same palette (wood, white, grey), so they differ by shape only;
* **clutter**: small boxes on tables and on the floor.

Like a scanner's output: points only on surfaces seen from one of two scanner positions (furniture casts
shadows on the floor and walls, the hidden faces of boxes have no points), drop-out holes, Gaussian noise
of 3 mm, colours varying per room, per object and per point, 50,000-200,000 points per room. Rooms are
deterministic by ``(seed, split, index)``; the train and test rooms come from separate streams.

A room is the room format of :mod:`pcattn.data.scenes` (``pos`` float64 metres, ``color`` float32 in
``[0, 1]``, ``normals`` float32, ``seg`` int64).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .scenes import SceneDataset

__all__ = ["ROOM_CLASSES", "BuiltinRooms", "generate_room"]

#: the built-in rooms' classes (label = index)
ROOM_CLASSES: Tuple[str, ...] = ("ceiling", "floor", "wall", "window", "door", "table", "chair", "bookcase", "board",
                                 "clutter")
CEILING, FLOOR, WALL, WINDOW, DOOR, TABLE, CHAIR, BOOKCASE, BOARD, CLUTTER = range(len(ROOM_CLASSES))
#: bumped when the generator's output changes
GENERATOR_VERSION = 1
_SPLITS = {"train": 0, "test": 1}
# Side of the square cells whose centres are tested for visibility: points inherit their cell's answer.
_VISIBILITY_CELL = 0.08
_NOISE = 0.003  # metres, the sensor's position noise
_FURNITURE_PALETTE = np.array([[0.55, 0.38, 0.22], [0.72, 0.55, 0.36], [0.40, 0.26, 0.16], [0.90, 0.90, 0.88],
                               [0.45, 0.45, 0.47], [0.20, 0.20, 0.22]])


@dataclass
class _Rect:
    """A rectangle ``corner + s u + t v`` (``s, t`` in ``[0, 1]``), its class, colour and outward normal;
    ``density`` scales its points (glass: sparse); ``holes``: ``(s0, s1, t0, t1)`` ranges with no points."""

    corner: np.ndarray
    u: np.ndarray
    v: np.ndarray
    label: int
    color: np.ndarray
    normal: np.ndarray
    density: float = 1.0
    holes: List[Tuple[float, float, float, float]] = field(default_factory=list)

    @property
    def area(self) -> float:
        return float(np.linalg.norm(self.u) * np.linalg.norm(self.v))


@dataclass
class _Scene:
    rects: List[_Rect] = field(default_factory=list)
    boxes: List[Tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # occluders (low, high)

    def box(self, low, high, label: int, color) -> None:
        """An axis-aligned solid box: its six faces (hidden ones lose their points to the visibility test)."""
        low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        size = high - low
        for axis in range(3):
            a, b = [(1, 2), (2, 0), (0, 1)][axis]
            u, v = np.zeros(3), np.zeros(3)
            u[a], v[b] = size[a], size[b]
            for side, coordinate in ((-1.0, low[axis]), (1.0, high[axis])):
                corner = low.copy()
                corner[axis] = coordinate
                normal = np.zeros(3)
                normal[axis] = side
                self.rects.append(_Rect(corner, u, v, label, np.asarray(color, dtype=np.float64), normal))
        self.boxes.append((low, high))


def _jitter_color(rng: np.random.Generator, base, spread: float = 0.06) -> np.ndarray:
    return np.clip(np.asarray(base, dtype=np.float64) + rng.normal(0, spread, 3), 0.02, 0.98)


class _Wall:
    """One wall in its own frame: ``s`` along it (0 to ``length``), ``t`` up, ``d`` into the room."""

    def __init__(self, origin, along, inward, length: float):
        self.origin, self.along, self.inward, self.length = origin, along, inward, length
        self.used: List[Tuple[float, float]] = []  # s ranges taken by doors, windows, boards, bookcases

    def point(self, s, t, d) -> np.ndarray:
        return self.origin + s * self.along + t * np.array([0.0, 0.0, 1.0]) + d * self.inward

    def box(self, scene: _Scene, s0, s1, t0, t1, d0, d1, label, color) -> None:
        corners = np.stack([self.point(s0, t0, d0), self.point(s1, t1, d1)])
        scene.box(corners.min(0), corners.max(0), label, color)

    def rect(self, scene: _Scene, s0, s1, t0, t1, d, label, color, density=1.0) -> None:
        """A rectangle parallel to the wall at depth ``d``, facing into the room."""
        corner = self.point(s0, t0, d)
        scene.rects.append(_Rect(corner, (s1 - s0) * self.along, np.array([0.0, 0.0, t1 - t0]), label,
                                 np.asarray(color, dtype=np.float64), self.inward.copy(), density))

    def reveal(self, scene: _Scene, s0, s1, t0, t1, depth, label, color, bottom=True) -> None:
        """The sides of an opening ``[s0, s1] x [t0, t1]`` going ``depth`` behind the wall plane."""
        back = -depth * self.inward
        up = np.array([0.0, 0.0, t1 - t0])
        for s, facing in ((s0, self.along), (s1, -self.along)):
            scene.rects.append(_Rect(self.point(s, t0, 0), back, up, label, color, facing.copy()))
        scene.rects.append(_Rect(self.point(s0, t1, 0), back, (s1 - s0) * self.along, label, color,
                                 np.array([0.0, 0.0, -1.0])))
        if bottom:
            scene.rects.append(_Rect(self.point(s0, t0, 0), back, (s1 - s0) * self.along, label, color,
                                     np.array([0.0, 0.0, 1.0])))

    def free_range(self, rng: np.random.Generator, width: float, margin: float = 0.15) -> Optional[float]:
        """A start ``s`` for an item of ``width`` that overlaps nothing already on the wall, or ``None``."""
        if width + 2 * margin > self.length:
            return None
        for _ in range(20):
            start = rng.uniform(margin, self.length - width - margin)
            if all(start + width + margin < a or start > b + margin for a, b in self.used):
                self.used.append((start, start + width))
                return start
        return None


def _build_scene(rng: np.random.Generator) -> Tuple[_Scene, np.ndarray, np.ndarray, List[np.ndarray]]:
    """Lay out one room. Returns the scene, its size ``(3,)``, the offset of its corner from the origin and
    the scanner positions (room frame: the floor's corner at 0)."""
    width, depth, height = rng.uniform(4.0, 9.0), rng.uniform(3.5, 7.0), rng.uniform(2.6, 3.2)
    size = np.array([width, depth, height])
    offset = np.array([rng.uniform(150.0, 900.0), rng.uniform(-900.0, -150.0), rng.uniform(0.0, 30.0)])
    scene = _Scene()
    tint = rng.normal(0, 0.03, 3)
    wall_color = np.clip(rng.choice([[0.85, 0.85, 0.82], [0.80, 0.76, 0.68], [0.70, 0.78, 0.80],
                                     [0.88, 0.82, 0.74], [0.66, 0.66, 0.64]]) + tint, 0, 1)
    floor_color = _jitter_color(rng, rng.choice([[0.45, 0.42, 0.40], [0.55, 0.40, 0.28], [0.30, 0.32, 0.38],
                                                 [0.62, 0.60, 0.55]]) + tint)
    ceiling_color = _jitter_color(rng, [0.90, 0.90, 0.88], 0.04)

    z = np.array([0.0, 0.0, 1.0])
    floor = _Rect(np.zeros(3), np.array([width, 0, 0]), np.array([0, depth, 0]), FLOOR, floor_color, z.copy())
    ceiling = _Rect(np.array([0, 0, height]), np.array([width, 0, 0]), np.array([0, depth, 0]), CEILING,
                    ceiling_color, -z)
    scene.rects += [floor, ceiling]
    x, y = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    walls = [_Wall(np.zeros(3), x, y, width), _Wall(np.array([width, 0, 0]), y, -x, depth),
             _Wall(np.array([width, depth, 0]), -x, -y, width), _Wall(np.array([0, depth, 0]), -y, x, depth)]
    wall_rects = []
    for wall in walls:
        rect = _Rect(wall.origin.copy(), wall.length * wall.along, np.array([0, 0, height]), WALL, wall_color,
                     wall.inward.copy())
        wall_rects.append(rect)
        scene.rects.append(rect)

    def hole(index: int, s0, s1, t0, t1) -> None:
        wall_rects[index].holes.append((s0 / walls[index].length, s1 / walls[index].length, t0 / height, t1 / height))

    keep_out: List[Tuple[float, float, float, float]] = []  # floor areas kept free (door swings), room frame
    for _ in range(rng.integers(1, 3)):  # doors
        index = int(rng.integers(4))
        wall, door_width, door_height = walls[index], rng.uniform(0.8, 1.0), rng.uniform(2.0, 2.15)
        start = wall.free_range(rng, door_width + 0.12)
        if start is None:
            continue
        s0, s1 = start + 0.06, start + 0.06 + door_width
        painted = rng.random() < 0.5  # the wall's colour: only the geometry tells the door apart
        color = wall_color if painted else _jitter_color(rng, _FURNITURE_PALETTE[rng.integers(3)])
        frame_color = wall_color if painted else _jitter_color(rng, [0.9, 0.9, 0.88], 0.03)
        hole(index, s0, s1, 0.0, door_height)
        wall.rect(scene, s0, s1, 0.0, door_height, -0.05, DOOR, color)
        wall.reveal(scene, s0, s1, 0.0, door_height, 0.05, DOOR, frame_color, bottom=False)
        wall.box(scene, s0 - 0.06, s0, 0.0, door_height + 0.06, 0.0, 0.015, DOOR, frame_color)
        wall.box(scene, s1, s1 + 0.06, 0.0, door_height + 0.06, 0.0, 0.015, DOOR, frame_color)
        wall.box(scene, s0, s1, door_height, door_height + 0.06, 0.0, 0.015, DOOR, frame_color)
        handle = s1 - 0.1 if rng.random() < 0.5 else s0 + 0.02
        wall.box(scene, handle, handle + 0.08, 0.98, 1.02, -0.05, 0.02, DOOR, _jitter_color(rng, [0.7, 0.7, 0.7]))
        corners = np.stack([wall.point(s0 - 0.2, 0, 0), wall.point(s1 + 0.2, 0, 1.1)])
        keep_out.append((*corners.min(0)[:2], *corners.max(0)[:2]))
    for _ in range(rng.integers(0, 3)):  # windows
        index = int(rng.integers(4))
        wall = walls[index]
        window_width, sill = rng.uniform(0.8, 2.0), rng.uniform(0.8, 1.0)
        top = min(height - 0.25, sill + rng.uniform(1.0, 1.5))
        start = wall.free_range(rng, window_width)
        if start is None:
            continue
        s0, s1 = start, start + window_width
        frame_color = _jitter_color(rng, rng.choice([[0.92, 0.92, 0.9], [0.35, 0.35, 0.37], [0.5, 0.35, 0.2]]), 0.03)
        hole(index, s0, s1, sill, top)
        wall.reveal(scene, s0, s1, sill, top, 0.15, WINDOW, frame_color)
        wall.rect(scene, s0, s1, sill, top, -0.12, WINDOW, _jitter_color(rng, [0.45, 0.55, 0.62], 0.08), density=0.2)
        wall.box(scene, s0 - 0.05, s1 + 0.05, sill - 0.04, sill, 0.0, 0.06, WINDOW, frame_color)
    if rng.random() < 0.7:  # a board, standing 2 cm off the wall
        index = int(rng.integers(4))
        wall = walls[index]
        board_width = rng.uniform(1.2, 2.4)
        start = wall.free_range(rng, board_width)
        if start is not None:
            bottom = rng.uniform(0.85, 1.0)
            board_color = wall_color if rng.random() < 0.4 else _jitter_color(rng, [0.93, 0.93, 0.93], 0.03)
            wall.box(scene, start, start + board_width, bottom, bottom + rng.uniform(0.9, 1.2), 0.0, 0.02, BOARD,
                     board_color)

    footprints: List[Tuple[float, float, float, float]] = list(keep_out)

    def free(x0, y0, x1, y1, margin=0.1) -> bool:
        inside = x0 > 0.02 and y0 > 0.02 and x1 < width - 0.02 and y1 < depth - 0.02
        return inside and all(x1 + margin < a0 or x0 > a1 + margin or y1 + margin < b0 or y0 > b1 + margin
                              for a0, b0, a1, b1 in footprints)

    for _ in range(rng.integers(1, 3)):  # bookcases against a wall, with books
        index = int(rng.integers(4))
        wall = walls[index]
        case_width, case_depth, case_height = rng.uniform(0.8, 1.6), rng.uniform(0.3, 0.4), rng.uniform(1.6, 2.2)
        start = wall.free_range(rng, case_width, margin=0.05)
        if start is None:
            continue
        corners = np.stack([wall.point(start, 0, 0), wall.point(start + case_width, 0, case_depth)])
        footprint = (*corners.min(0)[:2], *corners.max(0)[:2])
        if not all(footprint[2] < a0 or footprint[0] > a1 or footprint[3] < b0 or footprint[1] > b1
                   for a0, b0, a1, b1 in footprints):
            continue
        footprints.append(footprint)
        color = _jitter_color(rng, _FURNITURE_PALETTE[rng.integers(len(_FURNITURE_PALETTE))])
        s0, s1 = start, start + case_width
        wall.box(scene, s0, s1, 0.0, case_height, 0.0, 0.02, BOOKCASE, color)  # back
        for side in (s0, s1 - 0.02):
            wall.box(scene, side, side + 0.02, 0.0, case_height, 0.0, case_depth, BOOKCASE, color)
        shelves = np.arange(0.0, case_height - 0.2, rng.uniform(0.3, 0.4)).tolist() + [case_height - 0.02]
        for level in shelves:
            wall.box(scene, s0 + 0.02, s1 - 0.02, level, level + 0.02, 0.02, case_depth, BOOKCASE, color)
        for level in shelves[:-1]:
            cursor = s0 + 0.03
            while cursor < s1 - 0.1 and rng.random() < 0.85:
                book = rng.uniform(0.02, 0.06)
                wall.box(scene, cursor, cursor + book, level + 0.02, level + 0.02 + rng.uniform(0.15, 0.28), 0.03,
                         0.03 + rng.uniform(0.15, case_depth - 0.05), BOOKCASE, _jitter_color(rng, rng.random(3), 0.02))
                cursor += book + rng.uniform(0.0, 0.08)

    tops: List[Tuple[np.ndarray, np.ndarray]] = []  # table tops, for clutter
    for _ in range(rng.integers(1, 4)):  # tables with chairs
        table_x, table_y = rng.uniform(0.8, 1.8), rng.uniform(0.6, 1.0)
        if rng.random() < 0.5:
            table_x, table_y = table_y, table_x
        for _ in range(20):
            x0, y0 = rng.uniform(0.6, max(0.61, width - table_x - 0.6)), rng.uniform(0.6, max(0.61, depth - table_y - 0.6))
            if free(x0 - 0.45, y0 - 0.45, x0 + table_x + 0.45, y0 + table_y + 0.45):
                break
        else:
            continue
        footprints.append((x0 - 0.45, y0 - 0.45, x0 + table_x + 0.45, y0 + table_y + 0.45))
        top_height, thickness = rng.uniform(0.70, 0.78), rng.uniform(0.03, 0.05)
        color = _jitter_color(rng, _FURNITURE_PALETTE[rng.integers(len(_FURNITURE_PALETTE))])
        scene.box([x0, y0, top_height - thickness], [x0 + table_x, y0 + table_y, top_height], TABLE, color)
        tops.append((np.array([x0, y0, top_height]), np.array([x0 + table_x, y0 + table_y, top_height])))
        leg = rng.uniform(0.04, 0.06)
        for lx in (x0 + 0.03, x0 + table_x - 0.03 - leg):
            for ly in (y0 + 0.03, y0 + table_y - 0.03 - leg):
                scene.box([lx, ly, 0.0], [lx + leg, ly + leg, top_height - thickness], TABLE, color)
        chair_color = _jitter_color(rng, rng.random(3) * 0.8 + 0.1)
        for side in rng.permutation(4)[: rng.integers(2, 5)]:
            seat = rng.uniform(0.42, 0.5)
            gap = rng.uniform(-0.25, 0.1)  # negative: pushed under the table
            along = rng.uniform(0.05, max(0.06, (table_x if side < 2 else table_y) - seat - 0.05))
            if side == 0:  # south of the table, back to the south
                cx0, cy0, back = x0 + along, y0 - gap - seat, "south"
            elif side == 1:
                cx0, cy0, back = x0 + along, y0 + table_y + gap, "north"
            elif side == 2:
                cx0, cy0, back = x0 - gap - seat, y0 + along, "west"
            else:
                cx0, cy0, back = x0 + table_x + gap, y0 + along, "east"
            if cx0 < 0.05 or cy0 < 0.05 or cx0 + seat > width - 0.05 or cy0 + seat > depth - 0.05:
                continue
            _chair(scene, rng, cx0, cy0, seat, back, _jitter_color(rng, chair_color, 0.03))

    clutter = int(rng.integers(3, 10))
    for _ in range(clutter):
        item = rng.uniform(0.08, 0.35, 3)
        if tops and rng.random() < 0.6:
            low, high = tops[int(rng.integers(len(tops)))]
            span = np.maximum(high[:2] - low[:2] - item[:2], 0.0)
            x0, y0 = low[:2] + rng.random(2) * span
            base = high[2]
        else:
            x0, y0 = rng.uniform(0.1, width - 0.5), rng.uniform(0.1, depth - 0.5)
            if not free(x0, y0, x0 + item[0], y0 + item[1], margin=0.0):
                continue
            footprints.append((x0, y0, x0 + item[0], y0 + item[1]))
            base = 0.0
        scene.box([x0, y0, base], [x0 + item[0], y0 + item[1], base + item[2]], CLUTTER,
                  _jitter_color(rng, rng.random(3), 0.02))

    scanners = []
    for _ in range(2):
        for _ in range(50):
            position = np.array([rng.uniform(0.5, width - 0.5), rng.uniform(0.5, depth - 0.5), rng.uniform(1.3, 1.7)])
            if not any((position >= low).all() and (position <= high).all() for low, high in scene.boxes):
                break
        scanners.append(position)
    return scene, size, offset, scanners


def _chair(scene: _Scene, rng: np.random.Generator, x0: float, y0: float, seat: float, back: str, color) -> None:
    seat_height, leg, back_height = rng.uniform(0.43, 0.48), 0.03, rng.uniform(0.38, 0.5)
    scene.box([x0, y0, seat_height - 0.05], [x0 + seat, y0 + seat, seat_height], CHAIR, color)
    for lx in (x0, x0 + seat - leg):
        for ly in (y0, y0 + seat - leg):
            scene.box([lx, ly, 0.0], [lx + leg, ly + leg, seat_height - 0.05], CHAIR, color)
    top = seat_height + back_height
    if back == "south":
        scene.box([x0, y0, seat_height], [x0 + seat, y0 + 0.04, top], CHAIR, color)
    elif back == "north":
        scene.box([x0, y0 + seat - 0.04, seat_height], [x0 + seat, y0 + seat, top], CHAIR, color)
    elif back == "west":
        scene.box([x0, y0, seat_height], [x0 + 0.04, y0 + seat, top], CHAIR, color)
    else:
        scene.box([x0 + seat - 0.04, y0, seat_height], [x0 + seat, y0 + seat, top], CHAIR, color)


def _occluded(points: np.ndarray, scanner: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> np.ndarray:
    """Whether the segment from each point to the scanner passes through a box (slab test; a point on a
    box's face is hidden by that box only when the segment goes into it). ``points (P, 3)``, boxes ``(B, 3)``;
    returns bool ``(P,)``. Points come in chunks of neighbours (the cells of one rectangle): only the boxes
    that meet a chunk's bounding box, scanner included, are tested."""
    direction = scanner - points  # t in [0, 1] covers the segment
    direction = np.where(np.abs(direction) < 1e-12, 1e-12, direction)  # no 0 * inf below
    inverse = (1.0 / direction).astype(np.float32)
    lows32, highs32 = lows.astype(np.float32), highs.astype(np.float32)
    hidden = np.zeros(len(points), dtype=bool)
    for start in range(0, len(points), 1024):
        chunk = points[start:start + 1024]
        reach_low = np.minimum(chunk.min(axis=0), scanner)
        reach_high = np.maximum(chunk.max(axis=0), scanner)
        near_boxes = np.flatnonzero(((highs >= reach_low) & (lows <= reach_high)).all(axis=1))
        if not near_boxes.size:
            continue
        p = chunk.astype(np.float32)[:, None, :]
        inv = inverse[start:start + 1024, None, :]
        t1, t2 = (lows32[near_boxes][None] - p) * inv, (highs32[near_boxes][None] - p) * inv  # (chunk, B, 3)
        near = np.minimum(t1, t2).max(axis=2)
        far = np.maximum(t1, t2).min(axis=2)
        hit = (near < far - 1e-6) & (far > 1e-4) & (near < 1.0)
        hidden[start:start + 1024] = hit.any(axis=1)
    return hidden


def generate_room(seed, num_points: Tuple[int, int] = (50_000, 200_000)) -> Dict[str, np.ndarray]:
    """Generate one room (module docstring).

    Args:
        seed: anything :func:`numpy.random.default_rng` takes (an int, a sequence of ints).
        num_points: the range the room's number of points is drawn from (uniformly).

    Returns:
        The room format: ``pos`` float64 ``(N, 3)`` (metres, far from the origin), ``color`` float32
        ``(N, 3)``, ``normals`` float32 ``(N, 3)``, ``seg`` int64 ``(N,)`` (index into :data:`ROOM_CLASSES`).
    """
    low_count, high_count = num_points
    if not 0 < low_count <= high_count:
        raise ValueError(f"num_points must be (low, high) with 0 < low <= high, got {num_points}")
    rng = np.random.default_rng(seed)
    scene, size, offset, scanners = _build_scene(rng)
    lows = np.array([low for low, _ in scene.boxes]).reshape(-1, 3)
    highs = np.array([high for _, high in scene.boxes]).reshape(-1, 3)

    # Visibility of square cells on every rectangle, tested at the cells' centres.
    cell_rects, cell_params, areas = [], [], []
    for number, rect in enumerate(scene.rects):
        length_u, length_v = np.linalg.norm(rect.u), np.linalg.norm(rect.v)
        cells_u, cells_v = max(1, int(np.ceil(length_u / _VISIBILITY_CELL))), max(1, int(np.ceil(length_v / _VISIBILITY_CELL)))
        s, t = np.meshgrid((np.arange(cells_u) + 0.5) / cells_u, (np.arange(cells_v) + 0.5) / cells_v, indexing="ij")
        cell_rects.append(np.full(s.size, number))
        cell_params.append(np.stack([s.ravel(), t.ravel()], axis=1))
        areas.append(np.full(s.size, rect.area * rect.density / s.size))
    cell_rect, cell_param, cell_area = np.concatenate(cell_rects), np.concatenate(cell_params), np.concatenate(areas)
    corners = np.array([rect.corner for rect in scene.rects])
    us, vs = np.array([rect.u for rect in scene.rects]), np.array([rect.v for rect in scene.rects])
    centres = corners[cell_rect] + cell_param[:, :1] * us[cell_rect] + cell_param[:, 1:] * vs[cell_rect]
    visible = np.zeros(len(centres), dtype=bool)
    for scanner in scanners:
        pending = ~visible
        visible[pending] = ~_occluded(centres[pending], scanner, lows, highs)
    cell_offsets = np.cumsum([0] + [len(rows) for rows in cell_rects])

    # Points: Poisson counts per rectangle for the drawn total over the visible area.
    target = rng.uniform(low_count, high_count)
    density = target / max(float((cell_area * visible).sum()), 1e-9)
    holes = [(rng.integers(len(scene.rects)), rng.random(2), rng.uniform(0.05, 0.25)) for _ in range(rng.integers(3, 9))]
    positions, colors, normals, labels = [], [], [], []
    light = rng.uniform(-0.12, 0.12, 2)  # a lighting gradient across the room
    for number, rect in enumerate(scene.rects):
        count = rng.poisson(density * rect.area * rect.density)
        if not count:
            continue
        st = rng.random((count, 2))
        keep = np.ones(count, dtype=bool)
        for s0, s1, t0, t1 in rect.holes:
            keep &= ~((st[:, 0] >= s0) & (st[:, 0] <= s1) & (st[:, 1] >= t0) & (st[:, 1] <= t1))
        for hole_rect, centre, radius in holes:  # scanner drop-outs
            if hole_rect == number:
                reach = np.hypot((st[:, 0] - centre[0]) * np.linalg.norm(rect.u), (st[:, 1] - centre[1]) * np.linalg.norm(rect.v))
                keep &= reach > radius
        cells_u = max(1, int(np.ceil(np.linalg.norm(rect.u) / _VISIBILITY_CELL)))
        cells_v = max(1, int(np.ceil(np.linalg.norm(rect.v) / _VISIBILITY_CELL)))
        cell = np.minimum((st[:, 0] * cells_u).astype(np.int64), cells_u - 1) * cells_v + \
            np.minimum((st[:, 1] * cells_v).astype(np.int64), cells_v - 1)
        keep &= visible[cell_offsets[number] + cell]
        st = st[keep]
        if not len(st):
            continue
        points = rect.corner + st[:, :1] * rect.u + st[:, 1:] * rect.v
        shade = 0.92 + 0.08 * rect.normal[2] + light[0] * (points[:, 0] / size[0] - 0.5) + light[1] * (points[:, 1] / size[1] - 0.5)
        color = rect.color * shade[:, None] + rng.normal(0, 0.025, (len(st), 3))
        positions.append(points)
        colors.append(np.clip(color, 0, 1))
        normals.append(np.broadcast_to(rect.normal, points.shape))
        labels.append(np.full(len(st), rect.label, dtype=np.int64))
    pos = np.concatenate(positions)
    pos = pos + np.clip(rng.normal(0, _NOISE, pos.shape), -4 * _NOISE, 4 * _NOISE)
    order = rng.permutation(len(pos))[:high_count]  # scanner order means nothing: shuffle (and cap)
    return {"pos": pos[order] + offset, "color": np.concatenate(colors)[order].astype(np.float32),
            "normals": np.concatenate(normals)[order].astype(np.float32), "seg": np.concatenate(labels)[order]}


class BuiltinRooms(SceneDataset):
    """The built-in rooms of one split, generated in memory on first use (module docstring).

    Args:
        split: ``"train"`` or ``"test"`` (separate random streams: no room is in both).
        rooms: how many rooms (default 16 train, 4 test).
        seed: the generator's seed.
        num_points: range of points per room.
        transform: callable on the sample dict.
    """

    def __init__(self, split: str = "train", rooms: Optional[int] = None, seed: int = 0,
                 num_points: Tuple[int, int] = (50_000, 200_000), transform: Optional[Callable] = None):
        if split not in _SPLITS:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        count = (16 if split == "train" else 4) if rooms is None else rooms
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"rooms must be a positive integer, got {rooms!r}")
        self.split, self.seed = split, seed
        generated: Dict[int, Dict[str, np.ndarray]] = {}

        def reader(index: int) -> Dict[str, np.ndarray]:
            if index not in generated:
                generated[index] = generate_room([seed, GENERATOR_VERSION, _SPLITS[split], index], num_points)
            return generated[index]

        super().__init__(ROOM_CLASSES, [f"{split}_room_{index:02d}" for index in range(count)], reader, transform)
