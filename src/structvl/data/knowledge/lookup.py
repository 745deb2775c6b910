"""`KnowledgeLookup`: where a training batch's knowledge comes from - the cache, a batch at a time.

A run never holds a caption -> knowledge dictionary of its corpus: the collator (in each loader worker)
reads the batch's captions from the sqlite cache (an index lookup per caption), and parses with spaCy, right
there, any caption the cache lacks (a corpus that changed since `structvl knowledge`, or was never passed
through it); such a caption is written back to the cache and counted, so the run reports how many it had to
parse (`data/knowledge_parsed`). CLOP's swapped captions are read the same way and, when missing, built in
the worker from the run's `SwapContext` (`data/swaps_built`).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from structvl.data.knowledge.cache import KnowledgeCache, knowledge_for
from structvl.data.knowledge.record import CaptionKnowledge
from structvl.data.knowledge.swaps import SwapContext, build_swaps

log = logging.getLogger("structvl.data")


@dataclass
class KnowledgeLookup:
    """The knowledge (and optionally CLOP's swaps) of a batch's captions, from the cache.

    cache: the run's knowledge cache (picklable: each loader worker opens its own connection).
    swaps: the run's swap context, when an objective reads `batch["swaps"]`.
    video_knowledge: also attach, per clip, the knowledge of every caption of its record (`video_knowledge`),
        for objectives that train on a video's captions together (CLOP's `skp_targets: video`).
    """

    cache: KnowledgeCache
    swaps: SwapContext | None = None
    video_knowledge: bool = False

    def knowledge(self, captions: Sequence[str]) -> tuple[list[CaptionKnowledge], int]:
        """The knowledge of `captions` in order, and how many (unique) captions had to be parsed here."""
        found = self.cache.get_many(captions)
        missing = [c for c in dict.fromkeys(captions) if c not in found]
        if missing:
            found.update((k.caption, k) for k in self._parse(missing))
        return [found[c] for c in captions], len(missing)

    def swapped(self, knowledges: Sequence[CaptionKnowledge]) -> tuple[list[list[tuple[str, str]]], int]:
        """Each caption's swapped captions [(caption, type)], and how many captions' swaps were built here."""
        found = self.cache.get_swaps(self.swaps.id, [k.caption for k in knowledges])
        missing = list({k.caption: k for k in knowledges if k.caption not in found}.values())
        if missing:
            try:
                found.update(build_swaps(missing, self.swaps, self.cache))
            except sqlite3.OperationalError as e:  # a read-only cache: build them without writing
                log.warning("knowledge cache %s is not writable (%s): swaps built in the loader are not kept",
                            self.cache.path, e)
                found.update(build_swaps(missing, self.swaps, None))
        return [found[k.caption] for k in knowledges], len(missing)

    def _parse(self, captions: list[str]) -> list[CaptionKnowledge]:
        try:
            return knowledge_for(captions, self.cache, progress=False)
        except sqlite3.OperationalError as e:
            log.warning("knowledge cache %s is not writable (%s): captions parsed in the loader are not kept",
                        self.cache.path, e)
            return knowledge_for(captions, None, progress=False)

    def batch_fields(self, items: Sequence[dict]) -> dict:
        """What the collator adds to a batch of dataset items: "knowledge" (one per item, taken from the item
        when its dataset attached it already), "swaps" and "video_knowledge" when configured, and the counts
        "knowledge_parsed" / "swaps_built" of what was not cached."""
        captions = [item["caption"] for item in items]
        attached = {item["caption"]: item["knowledge"] for item in items if item.get("knowledge") is not None}
        parsed = sum(int(item.get("knowledge_parsed", 0)) for item in items)
        rest = [c for c in captions if c not in attached]
        if rest:
            looked_up, count = self.knowledge(rest)
            attached.update(zip(rest, looked_up))
            parsed += count
        knowledge = [attached[c] for c in captions]
        fields = {"knowledge": knowledge, "knowledge_parsed": parsed, "swaps_built": 0}
        if self.swaps is not None:
            fields["swaps"], fields["swaps_built"] = self.swapped(knowledge)
        if self.video_knowledge:
            per_video = [item.get("video_captions") or [item["caption"]] for item in items]
            flat, count = self.knowledge([c for captions in per_video for c in captions])
            fields["knowledge_parsed"] += count
            fields["video_knowledge"], start = [], 0
            for captions in per_video:
                fields["video_knowledge"].append(flat[start:start + len(captions)])
                start += len(captions)
        return fields
