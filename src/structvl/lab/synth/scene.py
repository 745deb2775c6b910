"""Scenes: what is in a clip, where each object is in every frame, and how a frame is drawn.

A `Scene` is fully planned before anything is drawn: every object's per-frame centre, diameter, angle and
visibility is fixed here, and its per-frame bounding box is read off the very sprite mask the renderer paints
with, so the ground-truth boxes match the pixels exactly. Rendering (`render_frames`) is then a pure function
of the scene, which is what lets worker processes draw clips in any order and still produce identical videos.

Coordinates are pixel edges: a box [x0, y0, x1, y1] covers frame[y0:y1, x0:x1]. Object centres sit on pixel
corners, so a shape of even diameter is symmetric on the pixel grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from structvl.lab.synth.vocab import (
    BACKGROUNDS,
    COLOURS,
    CONVERSE,
    REFERENCE_FRAME,
    ROTATION_SYMMETRY,
    SHAPES,
    SIZES,
    actions_for,
)

# ----------------------------------------------------------------------------- shapes
# Unrotated shapes inside the unit box [-1, 1]^2 (image coordinates: y grows downwards, so the triangle and
# the star point up). The square is inset and the diamond is a narrow rhombus so that a square rotated by
# 45 degrees never looks like a diamond.


def _regular_polygon(n: int, radius: float, start_deg: float) -> list[tuple[float, float]]:
    return [(radius * math.cos(math.radians(start_deg + 360.0 * k / n)),
             radius * math.sin(math.radians(start_deg + 360.0 * k / n))) for k in range(n)]


def _star(points: int = 5, inner: float = 0.5) -> list[tuple[float, float]]:
    outer = _regular_polygon(points, 1.0, -90.0)
    inner_pts = _regular_polygon(points, inner, -90.0 + 180.0 / points)
    return [p for pair in zip(outer, inner_pts) for p in pair]


_ARM = 0.34  # half-thickness of the cross's arms
RING_HOLE = 0.5  # inner radius of the ring, as a fraction of its outer radius
ROUND_SHAPES = ("circle", "ring")  # drawn from their equations; every other shape is a polygon outline
OUTLINES: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.86, -0.86), (0.86, -0.86), (0.86, 0.86), (-0.86, 0.86)],
    "triangle": [(0.0, -1.0), (1.0, 0.85), (-1.0, 0.85)],
    "star": _star(),
    "diamond": [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)],
    "cross": [(-_ARM, -1), (_ARM, -1), (_ARM, -_ARM), (1, -_ARM), (1, _ARM), (_ARM, _ARM), (_ARM, 1),
              (-_ARM, 1), (-_ARM, _ARM), (-1, _ARM), (-1, -_ARM), (-_ARM, -_ARM)],
}


def _inside_polygon(u: np.ndarray, v: np.ndarray, outline: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd rule, vectorised over points: correct for the non-convex star and cross too."""
    inside = np.zeros(u.shape, bool)
    for (xi, yi), (xj, yj) in zip(outline, outline[-1:] + outline[:-1]):
        if yi == yj:
            continue  # a horizontal edge never crosses a horizontal ray
        crosses = (yi > v) != (yj > v)
        x_at_v = xi + (xj - xi) * (v - yi) / (yj - yi)
        inside ^= crosses & (u < x_at_v)
    return inside


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Which points (in unit-box coordinates of the unrotated shape) the shape covers."""
    if shape == "circle":
        return u ** 2 + v ** 2 <= 1.0
    if shape == "ring":
        return (u ** 2 + v ** 2 <= 1.0) & (u ** 2 + v ** 2 >= RING_HOLE ** 2)
    return _inside_polygon(u, v, OUTLINES[shape])


assert set(OUTLINES) | set(ROUND_SHAPES) == set(SHAPES)


@lru_cache(maxsize=65536)
def sprite(shape: str, diameter_halfpx: int, angle_deg: int) -> tuple[np.ndarray, int, int]:
    """The pixel mask of a shape, cropped to its extent, and the mask's offset from the object's centre.

    diameter_halfpx: the unrotated shape's width in half pixels (integers make the cache effective).
    Returns (mask (h, w) bool, dy, dx): the mask covers frame[cy+dy : cy+dy+h, cx+dx : cx+dx+w] for an object
    centred on the pixel corner (cx, cy). Never empty: a shape too small to cover any pixel centre still
    occupies the pixel beside its centre.
    """
    radius = diameter_halfpx / 4.0
    half = math.ceil(1.5 * radius) + 1  # the rotated triangle reaches 1.32 radii from the centre
    offsets = np.arange(-half, half) + 0.5  # pixel centres relative to the object's centre
    v, u = np.meshgrid(offsets, offsets, indexing="ij")
    a = math.radians(angle_deg)
    # Sample the unrotated outline at the back-rotated pixel position: that draws the shape rotated by +a.
    u_r = (math.cos(a) * u + math.sin(a) * v) / max(radius, 1e-6)
    v_r = (-math.sin(a) * u + math.cos(a) * v) / max(radius, 1e-6)
    mask = _inside(shape, u_r, v_r)
    if not mask.any():
        mask[half, half] = True
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    cropped = np.ascontiguousarray(mask[r0:r1, c0:c1])
    cropped.flags.writeable = False  # shared through the cache
    return cropped, int(r0 - half), int(c0 - half)


# ----------------------------------------------------------------------------- scene description
@dataclass
class SceneObject:
    """One object: what it is (shape, colour, size, action) and where it is in each frame.

    Per-frame arrays, all of length num_frames: centre_x/centre_y (int pixel corners), diameter_halfpx (int),
    angle (int degrees), visible (bool; False while a blinking object is off), boxes ((T, 4) int, the tight
    box of the painted mask, also for frames where the object is invisible).
    """

    shape: str
    colour: str
    size: str
    action: str
    centre_x: np.ndarray
    centre_y: np.ndarray
    diameter_halfpx: np.ndarray
    angle: np.ndarray
    visible: np.ndarray
    boxes: np.ndarray

    @property
    def composition(self) -> tuple[str, str]:
        return self.colour, self.shape

    def box_centres(self) -> tuple[np.ndarray, np.ndarray]:
        return (self.boxes[:, 0] + self.boxes[:, 2]) / 2.0, (self.boxes[:, 1] + self.boxes[:, 3]) / 2.0


@dataclass(frozen=True)
class Relation:
    """A spatial relation between two objects of a scene: objects[subject] is <predicate> objects[object]."""

    subject: int
    predicate: str
    object: int

    def to_dict(self) -> dict:
        return {"subject": self.subject, "predicate": self.predicate, "object": self.object}


@dataclass
class Scene:
    background: str
    objects: list[SceneObject]
    relation: Relation | None
    frame_size: int
    num_frames: int

    def to_meta(self) -> dict:
        """The ground truth written into a record's `meta` (JSON-serialisable)."""
        return {
            "background": self.background,
            "objects": [{"shape": o.shape, "colour": o.colour, "size": o.size, "action": o.action,
                         "boxes": o.boxes.tolist(), "visible": o.visible.tolist()} for o in self.objects],
            "relation": None if self.relation is None else self.relation.to_dict(),
        }


# ----------------------------------------------------------------------------- motion
# Motions are defined over the whole clip (not per second) because models sample a fixed number of frames
# across a clip: every motion must stay visible at 8 frames spread over it, whatever the clip length.
MOVE_TRAVEL = (0.30, 0.45)  # fraction of the frame a moving object travels...
MIN_TRAVEL = 0.20  # ...and the least it may travel after being clipped to stay in frame
BOUNCE_HEIGHT, MIN_BOUNCE_HEIGHT, BOUNCE_HOPS = 0.22, 0.13, 2  # fractions of the frame; hops per clip
SCALE_RANGE = (0.7, 1.3)  # growing objects go from 0.7x to 1.3x their size, shrinking ones the other way
ROTATION_PERIODS = 1.75  # symmetry periods turned per clip: ~1/4 period between 8 uniformly sampled frames
BLINK_PHASES = 4  # on, off, on, off: each phase spans a quarter of the clip
MARGIN = 1  # pixels kept free between an object and the frame border


def _timeline(num_frames: int) -> np.ndarray:
    return np.arange(num_frames) / max(1, num_frames - 1)


def _appearance(action: str, shape: str, diameter: float, num_frames: int, rng: np.random.Generator):
    """Per-frame diameter (half pixels), angle (degrees) and visibility of an object doing `action`."""
    s = _timeline(num_frames)
    scale = np.ones(num_frames)
    if action == "growing":
        scale = SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * s
    elif action == "shrinking":
        scale = SCALE_RANGE[1] - (SCALE_RANGE[1] - SCALE_RANGE[0]) * s
    diameter_halfpx = np.maximum(2, np.round(2 * diameter * scale)).astype(np.int64)

    angle = np.zeros(num_frames)
    if action == "rotating":
        period = 360.0 / ROTATION_SYMMETRY[shape]
        direction = rng.choice([-1.0, 1.0])
        angle = rng.uniform(0, period) + direction * ROTATION_PERIODS * period * s
    angle = np.round(angle).astype(np.int64) % 360

    visible = np.ones(num_frames, bool)
    if action == "blinking":
        visible = (np.arange(num_frames) * BLINK_PHASES // num_frames) % 2 == 0
    return diameter_halfpx, angle, visible


def _sprite_boxes(shape: str, diameter_halfpx: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """(T, 4) boxes of the object's sprite relative to its centre, [dx0, dy0, dx1, dy1]."""
    rel = []
    for d, a in zip(diameter_halfpx.tolist(), angle.tolist()):
        mask, dy, dx = sprite(shape, d, a)
        rel.append((dx, dy, dx + mask.shape[1], dy + mask.shape[0]))
    return np.array(rel, np.int64)


def _displacement(action: str, rel: np.ndarray, frame: int, num_frames: int, rng: np.random.Generator):
    """Per-frame (dx, dy) of the object's centre from its first position, or None if it cannot fit.

    Travel is clipped to the room the object's extent leaves inside the frame ("clip the motion").
    """
    s = _timeline(num_frames)
    zero = np.zeros(num_frames, np.int64)
    if action.startswith("moving"):
        horizontal = action in ("moving left", "moving right")
        extent = (rel[:, 2].max() - rel[:, 0].min()) if horizontal else (rel[:, 3].max() - rel[:, 1].min())
        room = frame - 2 * MARGIN - extent
        travel = min(rng.uniform(*MOVE_TRAVEL) * frame, room)
        if travel < MIN_TRAVEL * frame:
            return None
        sign = -1 if action in ("moving left", "moving up") else 1
        path = np.round(sign * travel * s).astype(np.int64)
        return (path, zero) if horizontal else (zero, path)
    if action == "bouncing":
        room = frame - 2 * MARGIN - (rel[:, 3].max() - rel[:, 1].min())
        height = min(BOUNCE_HEIGHT * frame, room)
        if height < MIN_BOUNCE_HEIGHT * frame:
            return None
        return zero, -np.round(height * np.abs(np.sin(math.pi * BOUNCE_HOPS * s))).astype(np.int64)
    return zero, zero


def plan_object(rng: np.random.Generator, shape: str, colour: str, size: str, action: str, frame: int,
                num_frames: int) -> SceneObject | None:
    """An object with a random size within its size class, motion and start position that keep it in frame
    for the whole clip; None when the motion cannot fit (the caller draws again)."""
    lo, hi = SIZES[size]
    diameter = rng.uniform(lo, hi) * frame / REFERENCE_FRAME
    diameter_halfpx, angle, visible = _appearance(action, shape, diameter, num_frames, rng)
    rel = _sprite_boxes(shape, diameter_halfpx, angle)
    moved = _displacement(action, rel, frame, num_frames, rng)
    if moved is None:
        return None
    dx, dy = moved
    # Start positions that keep every frame's box inside [MARGIN, frame - MARGIN].
    x_lo, x_hi = np.max(MARGIN - dx - rel[:, 0]), np.min(frame - MARGIN - dx - rel[:, 2])
    y_lo, y_hi = np.max(MARGIN - dy - rel[:, 1]), np.min(frame - MARGIN - dy - rel[:, 3])
    if x_lo > x_hi or y_lo > y_hi:
        return None
    cx = int(rng.integers(x_lo, x_hi + 1)) + dx
    cy = int(rng.integers(y_lo, y_hi + 1)) + dy
    boxes = np.stack([cx + rel[:, 0], cy + rel[:, 1], cx + rel[:, 2], cy + rel[:, 3]], axis=1)
    return SceneObject(shape, colour, size, action, cx, cy, diameter_halfpx, angle, visible, boxes)


def _gap(frame: int) -> int:
    """Pixels kept free between two objects (and required between related objects)."""
    return max(2, frame // 32)


def _apart(a: SceneObject, b: SceneObject, gap: int) -> bool:
    """True if the two objects' boxes stay at least `gap` pixels apart in every frame."""
    sep_x = np.maximum(b.boxes[:, 0] - a.boxes[:, 2], a.boxes[:, 0] - b.boxes[:, 2])
    sep_y = np.maximum(b.boxes[:, 1] - a.boxes[:, 3], a.boxes[:, 1] - b.boxes[:, 3])
    return bool(np.all(np.maximum(sep_x, sep_y) >= gap))


# ----------------------------------------------------------------------------- relations
AXIS_DOMINANCE = 1.5  # a relation is stated only if its axis offset is this many times the other axis's


def relation_holds(scene: Scene, subject: int, predicate: str, obj: int, strict: bool = True) -> bool:
    """Whether "objects[subject] is <predicate> objects[obj]" is true of the scene.

    strict: the boxes are separated along the relation's axis in every frame and that axis dominates the
    mean offset between the objects: the standard for stating a relation in a caption. Not strict: the mean
    centres merely lie on that side: anything that fails even this is safely false (hard negatives).
    """
    a, b = scene.objects[subject], scene.objects[obj]
    ax, ay = a.box_centres()
    bx, by = b.box_centres()
    dx, dy = float(np.mean(bx - ax)), float(np.mean(by - ay))  # offset of the object from the subject
    horizontal = predicate in ("left of", "right of")
    sign = 1.0 if predicate in ("left of", "above") else -1.0
    along, across = (dx, dy) if horizontal else (dy, dx)
    if not strict:
        return sign * along > 0
    first, second = (a, b) if sign > 0 else (b, a)  # `first` must lie left of / above `second`
    lo_edge, hi_edge = (2, 0) if horizontal else (3, 1)
    separated = np.all(first.boxes[:, lo_edge] + _gap(scene.frame_size) <= second.boxes[:, hi_edge])
    return bool(separated) and abs(along) >= AXIS_DOMINANCE * abs(across)


def stateable_relations(scene: Scene) -> list[Relation]:
    """Every relation between two objects that holds strictly (each unordered pair at most once)."""
    found = []
    for i in range(len(scene.objects)):
        for j in range(i + 1, len(scene.objects)):
            for predicate in ("left of", "right of", "above", "below"):
                if relation_holds(scene, i, predicate, j, strict=True):
                    found.append(Relation(i, predicate, j))
    return found


# ----------------------------------------------------------------------------- sampling
def sample_scene(rng: np.random.Generator, frame: int, num_frames: int, num_objects: int,
                 compositions: list[tuple[str, str]], actions: list[str | None] | None = None,
                 first_composition: tuple[str, str] | None = None,
                 exclude_background: str | None = None, with_relation: bool = True,
                 max_attempts: int = 200) -> Scene:
    """A random scene of `num_objects` non-overlapping objects.

    compositions: the (colour, shape) pairs objects may take (the train split leaves the held-out ones out);
        no two objects of a scene share a composition, so "the red circle" always names one object.
    actions: a fixed action per object, or None for a random action the shape can show.
    first_composition: force object 0's (colour, shape) (used to place held-out compositions in test).
    with_relation: attach a relation whenever some pair of objects stands in one unambiguously.
    """
    actions = actions or [None] * num_objects
    backgrounds = [b for b in BACKGROUNDS if b != exclude_background]
    gap = _gap(frame)
    for _ in range(max_attempts):
        objects: list[SceneObject] = []
        for i in range(num_objects):
            obj = _sample_object(rng, frame, num_frames, compositions, actions[i],
                                 first_composition if i == 0 else None, objects, gap)
            if obj is None:
                break
            objects.append(obj)
        else:
            scene = Scene(str(rng.choice(backgrounds)), objects, None, frame, num_frames)
            candidates = stateable_relations(scene) if with_relation else []
            if candidates:
                chosen = candidates[int(rng.integers(len(candidates)))]
                # Either object may be the subject: "A left of B" and "B right of A" are the same fact.
                if rng.random() < 0.5:
                    chosen = Relation(chosen.object, CONVERSE[chosen.predicate], chosen.subject)
                scene.relation = chosen
            return scene
    raise RuntimeError(f"could not place {num_objects} objects in a {frame}px frame "
                       f"after {max_attempts} attempts; use a larger frame or fewer objects")


def _sample_object(rng: np.random.Generator, frame: int, num_frames: int, compositions: list[tuple[str, str]],
                   action: str | None, forced: tuple[str, str] | None, placed: list[SceneObject], gap: int,
                   tries: int = 12) -> SceneObject | None:
    """Draw an object's attributes once, then up to `tries` motions and positions clear of `placed`.
    Attributes are not redrawn on failure (the whole scene is): redrawing only the size, say, would make
    large objects rarer exactly when they move, a shortcut between size and action."""
    used = {o.composition for o in placed}
    options = [forced] if forced else [c for c in compositions if c not in used]
    if action is not None:
        options = [c for c in options if action in actions_for(c[1])]
    if not options:
        return None
    colour, shape = options[int(rng.integers(len(options)))]
    action = action or str(rng.choice(actions_for(shape)))
    size = str(rng.choice(list(SIZES)))
    for _ in range(tries):
        obj = plan_object(rng, shape, colour, size, action, frame, num_frames)
        if obj is not None and all(_apart(obj, other, gap) for other in placed):
            return obj
    return None


# ----------------------------------------------------------------------------- rendering
@lru_cache(maxsize=64)
def background_image(name: str, frame: int) -> np.ndarray:
    """The (frame, frame, 3) uint8 background; textures repeat 8 times across the frame."""
    kind, *colours = BACKGROUNDS[name]
    if kind == "flat":
        image = np.empty((frame, frame, 3), np.uint8)
        image[:] = colours[0]
        image.flags.writeable = False  # shared through the cache
        return image
    period = max(2, frame // 8)
    y, x = np.mgrid[0:frame, 0:frame]
    # Diagonal stripes rather than vertical/horizontal ones, so the texture never lines up with a motion.
    odd = ((x + y) // period) % 2 == 1 if kind == "stripes" else ((x // period) + (y // period)) % 2 == 1
    image = np.where(odd[..., None], np.array(colours[1], np.uint8), np.array(colours[0], np.uint8))
    image.flags.writeable = False  # shared through the cache
    return image


def render_frames(scene: Scene) -> np.ndarray:
    """Draw the scene: (num_frames, frame, frame, 3) uint8 RGB."""
    frames = np.repeat(background_image(scene.background, scene.frame_size)[None], scene.num_frames, axis=0)
    for obj in scene.objects:
        colour = np.array(COLOURS[obj.colour], np.uint8)
        for t in np.flatnonzero(obj.visible):
            mask, _, _ = sprite(obj.shape, int(obj.diameter_halfpx[t]), int(obj.angle[t]))
            x0, y0, x1, y1 = obj.boxes[t]
            frames[t, y0:y1, x0:x1][mask] = colour
    return frames
