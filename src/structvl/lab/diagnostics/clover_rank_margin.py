"""Diagnostic: does Clover's pair-wise ranking need the clip? On the test clips, how far does each clip's video
prefer its complete caption over the same caption with nouns / verb phrases masked (the ranking's margin), and
how far does *another* clip's video prefer it?

    python -m structvl.lab.diagnostics.clover_rank_margin CORPUS_DIR RUN_DIR [RUN_DIR ...]

The ranking asks s(v_i, t_i) > s(v_i, tm_i) + margin. A text encoder can meet that without the video: a caption
with [MASK] tokens in it can score lower against every video. The "other clips" column scores caption i against
the other clips' videos; where it shows the same gap as the clip's own, the margin is a text-side preference for
unmasked captions, which teaches the video tower nothing. Masking follows training (`clover.text_mask_ratio`
of the nouns / verb phrases, whole words) with every selected piece replaced by [MASK], one fixed draw (seed 0).
Gaps are cosine differences; "met" is the share of pairs whose gap reaches Clover's margin in cosine units
(`clover.rank_margin` x its fixed temperature: 5 x 0.05 = 0.25), for every model alike.
"""

import sys
from pathlib import Path

import torch

from structvl.config import RunConfig
from structvl.data.formats import read_annotations
from structvl.data.knowledge.cache import KnowledgeCache, knowledge_for
from structvl.data.masking import corrupt_tokens, semantic_selection
from structvl.data.text import Tokenizer
from structvl.engine.checkpoint import load_run_model
from structvl.models.text_encoder import build_tokenizer
from structvl.tasks.eval_data import eval_loader
from structvl.tasks.retrieval import embed_videos


def rank_gaps(video: torch.Tensor, text: torch.Tensor, text_masked: torch.Tensor, margin: float) -> dict:
    """For L2-normalised (N, E) embeddings of N clips' videos, captions and masked captions: the mean cosine gap
    s(v, t_i) - s(v, tm_i) and the share (%) reaching `margin`, with v the clip's own video ("own") and with
    every other clip's video ("other")."""
    gap = video @ text.t() - video @ text_masked.t()  # [j, i]: video j, caption i
    own = gap.diagonal()
    other = gap[~torch.eye(len(gap), dtype=torch.bool)]
    return {"own_gap": own.mean().item(), "own_met": 100 * (own >= margin).float().mean().item(),
            "other_gap": other.mean().item(), "other_met": 100 * (other >= margin).float().mean().item()}


def mask_captions(tok: Tokenizer, captions: list[str], knowledge: list, ratio: float) -> tuple[dict, torch.Tensor]:
    """Tokenized captions and their masked ids: Clover's semantic selection, every selected piece -> [MASK]."""
    tokens, offsets = tok.encode_with_offsets(captions)
    selected = semantic_selection(knowledge, offsets, tokens["input_ids"].shape[1], ratio,
                                  generator=torch.Generator().manual_seed(0))
    selected &= tokens["attention_mask"].bool()
    masked_ids, _ = corrupt_tokens(tokens["input_ids"], selected, tok.mask_token_id, tok.vocab_size,
                                   tok.special_token_ids, replace_prob=1.0, random_prob=0.0)
    return tokens, masked_ids


def main(root: Path, runs: list[str]) -> None:
    records = read_annotations("jsonl", root / "eval/retrieval_test.jsonl")
    captions = [r.captions[0] for r in records]
    with KnowledgeCache(root / "knowledge_cache") as cache:
        knowledge = knowledge_for(captions, cache)
    defaults = RunConfig()  # the masking and margin of a default Clover run, for every model alike
    margin = defaults.clover.rank_margin * defaults.model.temperature
    print(f"{'run':<40} {'own gap':>8} {'met':>6} {'other-clip gap':>15} {'met':>6}")
    for run in runs:
        model, cfg, _ = load_run_model(run)
        tok = build_tokenizer(cfg.model.text)
        video, kept = embed_videos(model, eval_loader(records, cfg, root, tok), torch.device("cpu"))
        tokens, masked_ids = mask_captions(tok, [captions[i] for i in kept], [knowledge[i] for i in kept],
                                           defaults.clover.text_mask_ratio)
        with torch.no_grad():
            text = model.encode_text(tokens["input_ids"], tokens["attention_mask"]).embed
            text_masked = model.encode_text(masked_ids, tokens["attention_mask"]).embed
        g = rank_gaps(video, text, text_masked, margin)
        print(f"{run:<40} {g['own_gap']:>8.3f} {g['own_met']:>5.1f}% {g['other_gap']:>15.3f} {g['other_met']:>5.1f}%",
              flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
