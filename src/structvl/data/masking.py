"""Clover's masked samples: semantic (or random) text masking and video block/tube masking.

Text, semantic ("semantic masked samples", Clover's released code):
  candidates are NOUN/PROPN words and verb phrases matching VERB? ADV* AUX* VERB+ (spaCy's universal tags,
  `CaptionKnowledge.words`); round(ratio x #candidates) of them, at least one, are masked *whole* - every
  word piece of every word of the candidate - in the tokenizer's sub-word space.
Text, random (the ablation alternative): each real token is picked with probability p (at least one).
Either way a picked token becomes [MASK] 80%, a random token 10%, stays itself 10% (BERT), and the label
is its original id (-100 elsewhere, PyTorch's ignore index).

Video: BEiT's block masking on the spatial patch grid - rectangles of random area and aspect ratio until
the target number of cells is covered - and the *same* cells are masked at every time step (tube masking),
so the model cannot copy a masked patch from a neighbouring frame. The caller replaces the masked patch
embeddings with a learned mask token (`apply_video_mask`).

All randomness comes from the `generator` passed in (default: torch's global RNG, which the trainer seeds
per rank and restores on resume).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

from structvl.data.text import word_token_groups

NOUN_TAGS = ("NOUN", "PROPN")
# Verb phrase pattern VERB? ADV* AUX* VERB+ over one letter per word: V = VERB, A = ADV, X = AUX.
_POS_LETTER = {"VERB": "V", "ADV": "A", "AUX": "X"}
VERB_PHRASE = re.compile(r"V?A*X*V+")


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


# ---------------------------------------------------------------- text: which tokens
def candidate_units(words: Sequence[dict]) -> list[tuple[str, list[int]]]:
    """The maskable units of a caption: ("noun", [word index]) per NOUN/PROPN word and ("verb", [word indices])
    per verb phrase (leftmost-longest matches of VERB? ADV* AUX* VERB+), in caption order."""
    letters = "".join(_POS_LETTER.get(w["pos"], "N" if w["pos"] in NOUN_TAGS else ".") for w in words)
    units = [(m.start(), ("verb", list(range(m.start(), m.end())))) for m in VERB_PHRASE.finditer(letters)]
    units += [(i, ("noun", [i])) for i, c in enumerate(letters) if c == "N"]
    return [u for _, u in sorted(units, key=lambda x: x[0])]


def unit_token_groups(words: Sequence[dict], units, offsets) -> list[tuple[str, list[int]]]:
    """Units mapped to their word-piece indices (a unit truncated away entirely is dropped)."""
    out = []
    for kind, word_ids in units:
        groups = word_token_groups(offsets, [(words[i]["start"], words[i]["end"]) for i in word_ids])
        tokens = sorted({t for g in groups for t in g})
        if tokens:
            out.append((kind, tokens))
    return out


def semantic_selection(knowledge: Sequence, offsets: Sequence, length: int, ratio: float = 0.3,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, length) bool: the word pieces of round(ratio x #candidates) (>= 1) whole nouns / verb phrases per
    caption. A caption without a noun or verb (or whose candidates were truncated away) falls back to one
    whole random word, so every caption has an MLM target and a masked twin."""
    selected = torch.zeros(len(knowledge), length, dtype=torch.bool)
    for b, (k, offs) in enumerate(zip(knowledge, offsets)):
        units = unit_token_groups(k.words, candidate_units(k.words), offs)
        if not units:
            units = unit_token_groups(k.words, [("word", [i]) for i in range(len(k.words))], offs)
            count = 1
        else:
            count = max(1, round(ratio * len(units)))
        if not units:
            continue
        for j in torch.randperm(len(units), generator=generator)[:count].tolist():
            selected[b, units[j][1]] = True
    return selected


def random_selection(input_ids: torch.Tensor, special_ids: Sequence[int], prob: float = 0.15,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, L) bool: each non-special token with probability `prob`, at least one per caption."""
    maskable = ~torch.isin(input_ids, torch.tensor(list(special_ids), device=input_ids.device)).cpu()
    draw = torch.rand(input_ids.shape, generator=generator) < prob
    selected = draw & maskable
    for b in range(input_ids.shape[0]):
        if not selected[b].any() and maskable[b].any():
            candidates = maskable[b].nonzero().flatten()
            selected[b, candidates[torch.randint(len(candidates), (1,), generator=generator)]] = True
    return selected


# ---------------------------------------------------------------- text: corruption
def corrupt_tokens(input_ids: torch.Tensor, selected: torch.Tensor, mask_token_id: int, vocab_size: int,
                   special_ids: Sequence[int], replace_prob: float = 0.8, random_prob: float = 0.1,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 on the selected tokens. Returns (masked input_ids, labels with -100 where not selected)."""
    selected = selected.to(input_ids.device)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    u = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)
    # Random replacements never draw a special token (a random [SEP] or [PAD] would change the sequence's shape).
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[list(special_ids)] = False
    pool = allowed.nonzero().flatten()
    random_ids = pool[torch.randint(len(pool), input_ids.shape, generator=generator)].to(input_ids.device)
    masked = input_ids.clone()
    masked = torch.where(selected & (u < replace_prob), torch.full_like(input_ids, mask_token_id), masked)
    masked = torch.where(selected & (u >= replace_prob) & (u < replace_prob + random_prob), random_ids, masked)
    return masked, labels


# ---------------------------------------------------------------- video
def block_mask(height: int, width: int, num_masked: int, min_block: int = 4, min_aspect: float = 0.3,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """BEiT's MaskingGenerator: (height, width) bool with about `num_masked` cells covered by rectangles.

    Each round draws a target area in [min_block, remaining] and a log-uniform aspect ratio, places the
    rectangle at random, and keeps it only if it adds cells without overshooting the remaining budget; it stops
    at the budget or when 10 tries in a row add nothing (BEiT's rule; it can end a few cells short).
    """
    mask = torch.zeros(height, width, dtype=torch.bool)
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    count = 0
    while count < num_masked:
        remaining = num_masked - count
        delta = 0
        for _ in range(10):
            area = min_block + (remaining - min_block) * _uniform(generator)
            aspect = math.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * _uniform(generator))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if 0 < h < height and 0 < w < width:
                top = int(torch.randint(0, height - h + 1, (), generator=generator))
                left = int(torch.randint(0, width - w + 1, (), generator=generator))
                new = h * w - int(mask[top:top + h, left:left + w].sum())
                if 0 < new <= remaining:
                    mask[top:top + h, left:left + w] = True
                    delta = new
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return mask


def video_tube_masks(batch: int, grid: int, ratio: float, min_block: int = 4, min_aspect: float = 0.3,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, grid * grid) bool, one block mask per clip over the row-major patch grid; the caller applies it to
    every time step."""
    num = max(1, round(ratio * grid * grid))
    return torch.stack([block_mask(grid, grid, num, min_block, min_aspect, generator).flatten()
                        for _ in range(batch)])


def apply_video_mask(patch_embeddings: torch.Tensor, mask: torch.Tensor, replacement: torch.Tensor) -> torch.Tensor:
    """patch_embeddings (B, T', N, D); mask (B, N) True = masked, the same at every time step; replacement
    broadcastable to (B, T', N, D) (the mask token plus the cell's position embeddings)."""
    return torch.where(mask.to(patch_embeddings.device)[:, None, :, None], replacement.to(patch_embeddings.dtype),
                       patch_embeddings)
