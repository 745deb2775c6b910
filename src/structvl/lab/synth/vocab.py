"""The closed world of the synthetic corpus: every shape, colour, size, action, background and relation.

These names are the ground-truth vocabulary: they appear in each clip's `meta`, in the manifest, as action
class names and as QA answers. Caption wording (synonyms, verb forms) lives in `captions.py`; how things look
and move lives in `scene.py`. Everything is sized for a tiny model that sees 8 frames at 64x64: colours are
saturated and far apart, backgrounds are dark and low-contrast, and sizes leave a gap between small and large.
"""

from __future__ import annotations

# No hexagon: at 12-16 px a rasterised hexagon and a circle are nearly the same pixels. A ring (a circle with a
# hole) is unmistakable at that size.
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "ring")

# Saturated, mutually distinct RGB colours that survive yuv420p chroma subsampling at small sizes.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 50),
    "blue": (40, 80, 255),
    "yellow": (250, 225, 20),
    "purple": (165, 50, 230),
    "orange": (255, 140, 0),
    "white": (245, 245, 245),
    "cyan": (0, 220, 230),
}

# Object diameter ranges in pixels for a 64 px frame (scaled with the frame). The gap between the ranges
# keeps "small" and "large" separable even while objects grow or shrink by +-30% around their size.
SIZES: dict[str, tuple[float, float]] = {"small": (12.0, 16.0), "large": (22.0, 28.0)}
REFERENCE_FRAME = 64

# Action class names double as the action-recognition labels, so they read like Kinetics classes.
ACTIONS = (
    "moving left", "moving right", "moving up", "moving down",
    "rotating", "growing", "shrinking", "blinking", "bouncing", "staying still",
)
DIRECTIONS = {"moving left": "left", "moving right": "right", "moving up": "up", "moving down": "down"}

# Order of rotational symmetry of each shape that may rotate. A circle or a ring looks the same at every angle,
# so neither is ever asked to rotate: its caption would be unlearnable.
ROTATION_SYMMETRY = {"square": 4, "triangle": 3, "star": 5, "diamond": 2, "cross": 4}


def actions_for(shape: str) -> tuple[str, ...]:
    """The actions a shape may perform (every action whose effect is visible on that shape)."""
    return tuple(a for a in ACTIONS if a != "rotating" or shape in ROTATION_SYMMETRY)


# Backgrounds: flat dark colours, or a low-contrast texture given as (pattern, colour A, colour B).
BACKGROUNDS: dict[str, tuple] = {
    "black": ("flat", (14, 14, 16)),
    "gray": ("flat", (72, 72, 76)),
    "navy": ("flat", (16, 22, 58)),
    "brown": ("flat", (64, 42, 24)),
    "striped": ("stripes", (30, 30, 34), (52, 52, 56)),
    "checkered": ("checker", (28, 28, 32), (50, 50, 54)),
}

# Spatial relations between two objects, "subject <predicate> object", and the predicate that holds with
# subject and object swapped.
RELATIONS = ("left of", "right of", "above", "below")
CONVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def vocabularies() -> dict[str, list[str]]:
    """Every closed-class vocabulary, as written into the corpus manifest."""
    return {
        "shapes": list(SHAPES),
        "colours": list(COLOURS),
        "sizes": list(SIZES),
        "actions": list(ACTIONS),
        "backgrounds": list(BACKGROUNDS),
        "relations": list(RELATIONS),
    }
