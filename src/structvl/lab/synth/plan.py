"""What the corpus contains: splits, held-out compositions, and the content of every clip and untrimmed video.

Every clip is planned from its own random stream, seeded by (corpus seed, kind, split, index), so a clip's
content does not depend on which worker plans it or in what order: parallel generation is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from structvl.lab.synth.captions import SceneFacts, Span, Wording, paraphrases
from structvl.lab.synth.scene import Scene, sample_scene
from structvl.lab.synth.vocab import ACTIONS, COLOURS, SHAPES

SPLITS = ("train", "val", "test")
EVAL_FRACTION = 0.1  # of the clips (and of the untrimmed videos) for each of val and test

# Independent random streams of one corpus seed. STREAM_EVAL draws the test split's multiple-choice items and
# STREAM_EVAL_VAL the val split's: a stream of its own, so adding val's evaluation sets left test's unchanged.
STREAM_HOLDOUT, STREAM_CLIPS, STREAM_UNTRIMMED, STREAM_EVAL, STREAM_EVAL_VAL = range(5)
# The splits that carry the full evaluation suite (retrieval, hard negatives, QA, recognition, localization):
# val for every choice (weights, options, budgets), test for the reported numbers.
EVALUATED_SPLITS = ("val", "test")

NUM_OBJECTS = {1: 0.3, 2: 0.45, 3: 0.25}
P_SINGLE_ACTOR = 0.35  # multi-object clips where every object but the first stays still
CAPTIONS_PER_CLIP = (2, 5)
# Relations are stated in two-object scenes only: three objects plus a relation do not fit a caption of
# captions.MAX_PIECES word pieces, and a truncated caption would lose the relation.
RELATION_MAX_OBJECTS = 2
HOLDOUT_FRACTION = 0.1  # of all colour-shape compositions, with holdout_compositions=True
HELDOUT_EVERY = 2  # every 2nd test clip's first object takes a held-out composition, cycling through them

SEGMENTS_PER_VIDEO = (2, 4)
SEGMENT_FRAMES = (8, 24)
SEGMENT_OBJECTS = {1: 0.6, 2: 0.4}

ALL_COMPOSITIONS = [(colour, shape) for colour in COLOURS for shape in SHAPES]


@dataclass
class Caption:
    text: str
    spans: list[Span]  # noun phrases naming objects: (start, end, object index)
    wording: Wording  # the grammar choices, kept to build hard negatives with the same wording


@dataclass
class Clip:
    """A trimmed clip: its scene, its paraphrased captions and where it sits in the corpus."""

    clip_id: str
    split: str
    msrvtt_index: int  # N of msrvtt/videos/video{N}.mp4
    scene: Scene
    captions: list[Caption]
    heldout: bool  # contains a held-out colour-shape composition

    @property
    def video(self) -> str:
        return f"videos/{self.clip_id}.mp4"

    @property
    def facts(self) -> SceneFacts:
        return SceneFacts.of(self.scene)

    @property
    def action_label(self) -> str:
        """The clip's action class: the action of its first object (the one that acts, when one does)."""
        return self.scene.objects[0].action

    @property
    def label_unambiguous(self) -> bool:
        """Whether the label names what the clip visibly shows: every other object either does the same or
        stays still (and when the first object stays still, everything does)."""
        label = self.action_label
        others = [o.action for o in self.scene.objects[1:]]
        if label == "staying still":
            return all(a == label for a in others)
        return all(a in (label, "staying still") for a in others)


@dataclass
class Segment:
    scene: Scene
    start_frame: int
    caption: Caption

    @property
    def end_frame(self) -> int:
        return self.start_frame + self.scene.num_frames

    @property
    def label(self) -> str:
        return self.scene.objects[0].action


@dataclass
class UntrimmedVideo:
    """A longer video of consecutive segments, each a different scene whose first object does the
    segment's action (every other object stays still), so each segment has exactly one action label."""

    video_id: str
    split: str
    segments: list[Segment]

    @property
    def video(self) -> str:
        return f"untrimmed/{self.video_id}.mp4"

    @property
    def num_frames(self) -> int:
        return self.segments[-1].end_frame


def split_sizes(total: int) -> dict[str, int]:
    """80/10/10, with at least one val and one test item."""
    held = max(1, round(EVAL_FRACTION * total))
    if total < 3:
        raise ValueError(f"need at least 3 items for train/val/test splits, got {total}")
    return {"train": total - 2 * held, "val": held, "test": held}


def heldout_compositions(seed: int) -> list[tuple[str, str]]:
    """~10% of colour-shape pairs, no two sharing a colour or a shape, so every colour and every shape
    still appears in train in other pairs: the model can know both words, never their combination."""
    rng = np.random.default_rng([seed, STREAM_HOLDOUT])
    count = max(1, round(HOLDOUT_FRACTION * len(ALL_COMPOSITIONS)))
    colours, shapes = rng.permutation(list(COLOURS)), rng.permutation(list(SHAPES))
    return sorted((str(c), str(s)) for c, s in zip(colours[:count], shapes[:count]))


def _choose_count(rng: np.random.Generator, weights: dict[int, float]) -> int:
    counts = list(weights)
    return counts[int(rng.choice(len(counts), p=np.array(list(weights.values())) / sum(weights.values())))]


def _captions(rng: np.random.Generator, scene: Scene, count: int) -> list[Caption]:
    return [Caption(text, spans, wording) for text, spans, wording in paraphrases(rng, SceneFacts.of(scene), count)]


def plan_clip(seed: int, split: str, index: int, msrvtt_index: int, frame: int, num_frames: int,
              heldout: list[tuple[str, str]]) -> Clip:
    rng = np.random.default_rng([seed, STREAM_CLIPS, SPLITS.index(split), index])
    # Held-out compositions appear in test only: val is for choices, and a choice made on the held-out pairs would
    # leak the compositional-generalisation test into the selection.
    allowed = ALL_COMPOSITIONS if split == "test" else [c for c in ALL_COMPOSITIONS if c not in heldout]
    forced = None
    if split == "test" and heldout and index % HELDOUT_EVERY == 0:
        forced = heldout[(index // HELDOUT_EVERY) % len(heldout)]
    num_objects = _choose_count(rng, NUM_OBJECTS)
    actions = None
    if num_objects > 1 and rng.random() < P_SINGLE_ACTOR:
        actions = [None] + ["staying still"] * (num_objects - 1)
    scene = sample_scene(rng, frame, num_frames, num_objects, allowed, actions, first_composition=forced,
                         with_relation=num_objects <= RELATION_MAX_OBJECTS)
    captions = _captions(rng, scene, int(rng.integers(CAPTIONS_PER_CLIP[0], CAPTIONS_PER_CLIP[1] + 1)))
    contains_heldout = any(o.composition in heldout for o in scene.objects)
    return Clip(f"{split}_{index:06d}", split, msrvtt_index, scene, captions, contains_heldout)


def plan_untrimmed(seed: int, split: str, index: int, frame: int, heldout: list[tuple[str, str]]) -> UntrimmedVideo:
    rng = np.random.default_rng([seed, STREAM_UNTRIMMED, SPLITS.index(split), index])
    allowed = ALL_COMPOSITIONS if split == "test" else [c for c in ALL_COMPOSITIONS if c not in heldout]
    segments: list[Segment] = []
    start, previous_label, previous_background = 0, None, None
    for _ in range(int(rng.integers(SEGMENTS_PER_VIDEO[0], SEGMENTS_PER_VIDEO[1] + 1))):
        length = int(rng.integers(SEGMENT_FRAMES[0], SEGMENT_FRAMES[1] + 1))
        label = str(rng.choice([a for a in ACTIONS if a != previous_label]))
        num_objects = _choose_count(rng, SEGMENT_OBJECTS)
        actions = [label] + ["staying still"] * (num_objects - 1)
        scene = sample_scene(rng, frame, length, num_objects, allowed, actions,
                             exclude_background=previous_background, with_relation=num_objects <= RELATION_MAX_OBJECTS)
        segments.append(Segment(scene, start, _captions(rng, scene, 1)[0]))
        start, previous_label, previous_background = start + length, label, scene.background
    return UntrimmedVideo(f"untrimmed_{split}_{index:06d}", split, segments)
