"""Clover's own measure: fill in a test caption's masked noun or verb through the fusion encoder, with the clip's
video and with another clip's (the gap is what the fusion reads from the video)."""

from __future__ import annotations

from pathlib import Path

import torch

from structvl.config import RunConfig
from structvl.data.knowledge.cache import KnowledgeCache, knowledge_for
from structvl.data.masking import candidate_units, unit_token_groups
from structvl.models.video_encoder import VideoEncoderOutput
from structvl.runtime.nonfinite import NonFiniteTally, top1_hits
from structvl.runtime.precision import autocast, autocast_dtype
from structvl.tasks.eval_data import eval_loader, test_records, test_video_root


@torch.no_grad()
def evaluate_masked_words(model, cfg: RunConfig, tokenizer, device=torch.device("cpu"), clips=None) -> dict[str, float]:
    """MLM accuracy through the fusion encoder on the test captions (`eval.split`, first caption per clip).

    Every noun and every verb phrase of a caption is masked *alone* (all its word pieces -> [MASK]) and predicted
    from the rest of the caption and the clip's video: on the structured corpus the nouns are the shapes and
    the verbs the actions, so this is a fill-in-the-blank QA on what is in the video. The same is measured with
    another test clip's video ("shuffled_video"): the gap between the two is what the fusion reads from the video
    rather than from the caption's words.
    Returns clover_mlm/{accuracy, noun_accuracy, verb_accuracy, accuracy_shuffled_video, ...} (token-level, %).
    clips: the test split's clips encoded by this model (tasks.eval_data.EvalClips), read instead of encoding them
    again when this evaluation uses the whole split.
    """
    if model.fusion is None:
        return {}
    root = Path(cfg.data.root)
    records = test_records(cfg)
    if cfg.clover.eval_max_captions:
        records = records[:cfg.clover.eval_max_captions]
    video_root = test_video_root(cfg)
    stored = clips is not None and len(records) == len(clips.records) and clips.covers(records, video_root)
    batches = (zip(clips.batches(), clips.encoded()) if stored
               else ((batch, None) for batch in eval_loader(records, cfg, video_root, tokenizer)))
    cache_dir = Path(cfg.knowledge.cache_dir or root / "knowledge_cache")
    autocast_context = autocast(device, autocast_dtype(cfg.train.precision, device))
    was_training = model.training
    model.eval()
    correct = {"noun": 0, "verb": 0, "shuffled": 0}
    total = {"noun": 0, "verb": 0, "shuffled": 0}
    units_seen = 0
    tally = NonFiniteTally("clover_mlm")
    with KnowledgeCache(cache_dir) as cache:
        for batch, encoded in batches:
            if batch.get("video") is None:
                continue
            captions = batch["caption"]
            knowledge = knowledge_for(captions, cache)
            enc, offsets = tokenizer.encode_with_offsets(captions)
            rows, kinds, owners = [], [], []
            for b, (k, offs) in enumerate(zip(knowledge, offsets)):
                for kind, tokens in unit_token_groups(k.words, candidate_units(k.words), offs):
                    rows.append(tokens)
                    kinds.append(kind)
                    owners.append(b)
            if not rows:
                continue
            units_seen += len(rows)
            ids = enc["input_ids"][owners].clone()
            labels = torch.full_like(ids, -100)
            for r, tokens in enumerate(rows):
                labels[r, tokens] = ids[r, tokens]
                ids[r, tokens] = tokenizer.mask_token_id
            attention = enc["attention_mask"][owners]
            with autocast_context:
                if encoded is None:
                    video = model.video_encoder(batch["video"].to(device), batch["frame_mask"].to(device))
                else:  # the stored encoding of these clips
                    video = VideoEncoderOutput(pooled=encoded.encoder.pooled.to(device),
                                               tokens=encoded.encoder.tokens.to(device),
                                               frame_mask=encoded.encoder.frame_mask.to(device))
                text = model.text_encoder(ids.to(device), attention.to(device))
                n = len(captions)
                for shuffled in ([False, True] if n > 1 else [False]):
                    owner = torch.tensor(owners, device=device)
                    if shuffled:  # the next clip's video in the batch: a different scene
                        owner = (owner + 1) % n
                    where = labels.to(device) != -100
                    fused = model.fuse(VideoEncoderOutput(pooled=video.pooled[owner], tokens=video.tokens[owner],
                                                          frame_mask=video.frame_mask[owner]), text, read=where)
                    hit = top1_hits(model.mlm_logits(fused.read_states).float(), labels.to(device)[where],
                                    tally).cpu()  # a non-finite logit: a miss
                    row_of = where.nonzero()[:, 0].cpu()
                    if shuffled:
                        correct["shuffled"] += int(hit.sum())
                        total["shuffled"] += hit.numel()
                    else:
                        for kind in ("noun", "verb"):
                            sel = torch.tensor([kinds[r] == kind for r in row_of.tolist()], dtype=torch.bool)
                            correct[kind] += int(hit[sel].sum())
                            total[kind] += int(sel.sum())
    model.train(was_training)
    pct = lambda c, t: 100.0 * c / t if t else float("nan")  # noqa: E731
    return tally.report({
        "clover_mlm/accuracy": pct(correct["noun"] + correct["verb"], total["noun"] + total["verb"]),
        "clover_mlm/noun_accuracy": pct(correct["noun"], total["noun"]),
        "clover_mlm/verb_accuracy": pct(correct["verb"], total["verb"]),
        "clover_mlm/accuracy_shuffled_video": pct(correct["shuffled"], total["shuffled"]),
        "clover_mlm/masked_units": float(units_seen),
    })
