"""Fine-tuned text<->video retrieval: contrastive fine-tuning from a pre-trained checkpoint, then ranks.

Training is the pre-training engine itself: `RetrievalFinetuneModule` is a module with the `module(batch) ->
(loss, logs)` contract the `Trainer` steps (accumulation, bf16, clipping, DDP, checkpoints all apply), and its
loss is the same symmetric InfoNCE (`objectives.contrastive.info_nce`) on the task's training pairs: the
dual-encoder fine-tuning of the Clover/ALBEF protocols. The fine-tuned run (config.yaml + checkpoints) is
written to the output directory, so `structvl eval --checkpoint OUT` reloads it.

Paragraph-to-video (DiDeMo, ActivityNet Captions): `paragraph: true` joins each video's captions, in time
order, into one query against the whole video (the readers' own `paragraph` option does the same).

Re-ranking (`rerank_top_k > 0`, only when the model has a fusion encoder): ALBEF's practice. Fine-tuning
then also trains a matching head on `model.fuse(video, text).cls` (match vs. an in-batch hard negative drawn
in proportion to the dual-encoder similarity), and at test time each query's top-k candidates from the dual
encoder are re-ordered by the head's match probability; ranks below k are unchanged. Without a fusion
encoder the option is ignored (and logged).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from structvl.config import frame_normalization, save_config
from structvl.data.dataset import VideoTextCollator, VideoTextDataset
from structvl.data.records import VideoRecord
from structvl.data.transforms import VideoTransform
from structvl.engine.trainer import move_to
from structvl.models.text_encoder import build_tokenizer, paragraph_tokenizer
from structvl.objectives.contrastive import info_nce
from structvl.runtime.nonfinite import NonFiniteTally
from structvl.tasks.eval_data import eval_loader
from structvl.tasks.evaluate import evaluate_retrieval
from structvl.tasks.features import has_fusion
from structvl.tasks.finetuning import finetune_run_config, train_module
from structvl.tasks.heads import loss_summary
from structvl.tasks.retrieval import chance_metrics, max_per_group, metrics_from_ranks, pessimistic_ranks
from structvl.tasks.task_config import read_task_records, video_root

log = logging.getLogger("structvl")


def paragraph_records(records: list[VideoRecord]) -> list[VideoRecord]:
    """One record per video whose single caption is all its captions joined in time order (whole video)."""
    groups: dict[str, list[VideoRecord]] = defaultdict(list)
    for r in records:
        groups[r.video].append(r)
    out = []
    for video, group in groups.items():
        group.sort(key=lambda r: (r.start or 0.0, r.end or 0.0))
        captions = [c for r in group for c in r.captions]
        if captions:
            out.append(VideoRecord(video_id=group[0].video_id, video=video, captions=[" ".join(captions)],
                                   duration=group[0].duration))
    return out


def select(output, rows: torch.Tensor):
    """Rows of an encoder output dataclass (every tensor field indexed along the batch)."""
    return dataclasses.replace(output, **{f.name: getattr(output, f.name)[rows] for f in dataclasses.fields(output)
                                          if torch.is_tensor(getattr(output, f.name))})


class RetrievalFinetuneModule(nn.Module):
    """InfoNCE on the dual encoder, plus (with a fusion encoder and matching_weight > 0) a matching head."""

    def __init__(self, model, matching_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.matching_weight = matching_weight if has_fusion(model) else 0.0
        self.match_head = nn.Linear(self._fused_width(), 2) if self.matching_weight > 0 else None

    def _fused_width(self) -> int:
        """The fusion encoder's width, read off one tiny forward pass (its config is not ours to assume)."""
        video_cfg = self.model.cfg.video
        with torch.no_grad():
            dummy = torch.zeros(1, video_cfg.num_frames, 3, video_cfg.image_size, video_cfg.image_size)
            ids = torch.tensor([[0, 0]])
            return self.match_logits(self.model.encode_video(dummy).encoder,
                                     self.model.encode_text(ids, torch.ones_like(ids)).encoder, head=False).shape[-1]

    def match_logits(self, video_out, text_out, head: bool = True) -> torch.Tensor:
        cls = self.model.fuse(video_out, text_out, read="cls").cls
        return self.match_head(cls) if head else cls

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        video = self.model.encode_video(batch["video"], batch.get("frame_mask"))
        text = self.model.encode_text(batch["input_ids"], batch["attention_mask"])
        out = info_nce(video.embed, text.embed, self.model.logit_scale)
        loss, logs = out["loss"], {"contrastive": float(out["loss"].detach())}
        b = video.embed.shape[0]
        if self.match_head is not None and b > 1:
            with torch.no_grad():  # hard negatives: sampled in proportion to the (exponentiated) similarity
                weights = (self.model.logit_scale * video.embed @ text.embed.t()).float().softmax(1)
                weights.fill_diagonal_(0)
                neg_text = torch.multinomial(weights + 1e-9, 1).squeeze(1)
                neg_video = torch.multinomial(weights.t() + 1e-9, 1).squeeze(1)
            all_rows = torch.arange(b, device=video.embed.device)
            logits = torch.cat([self.match_logits(video.encoder, text.encoder),
                                self.match_logits(video.encoder, select(text.encoder, neg_text)),
                                self.match_logits(select(video.encoder, neg_video), text.encoder)])
            labels = torch.cat([torch.ones_like(all_rows), torch.zeros_like(all_rows), torch.zeros_like(all_rows)])
            matching = F.cross_entropy(logits.float(), labels)
            loss = loss + self.matching_weight * matching
            logs["matching"] = float(matching.detach())
        logs["loss"] = float(loss.detach())
        return loss, logs


def rerank_ranks(sims: torch.Tensor, positives: list[list[int]], top_k: int, pair_scores,
                 tally: NonFiniteTally | None = None) -> np.ndarray:
    """1-based rank of each query's best positive after re-ordering its top-k by `pair_scores(q, idx)`.
    Non-finite scores rank as the worst (`tasks.retrieval.pessimistic_ranks`); a query with a non-finite
    similarity keeps its dual-encoder rank, in which those items already rank above its positive."""
    ranks = np.empty(len(sims), dtype=np.int64)
    for q in range(len(sims)):
        pos = torch.zeros(sims.shape[1], dtype=torch.bool)
        pos[positives[q]] = True
        original = int(pessimistic_ranks(sims[q][None], pos[None], tally)[0])  # the dual encoder's rank
        top = sims[q].topk(min(top_k, sims.shape[1])).indices
        if not bool(pos[top].any()) or not bool(torch.isfinite(sims[q]).all()):
            ranks[q] = original
            continue
        rescored = pair_scores(q, top)
        ranks[q] = int(pessimistic_ranks(rescored[None].float(), pos[top][None], tally)[0])
    return ranks


@torch.no_grad()
def evaluate_with_rerank(module: RetrievalFinetuneModule, records, tokenizer, task, run_cfg, video_root, device,
                         prefix: str) -> dict[str, float]:
    """Dual-encoder ranks both ways, each query's top-k re-ordered by the matching head's probability."""

    model = module.model.eval()
    module.eval()
    embeds, outs, kept = [], [], []
    for batch in eval_loader(records, run_cfg, video_root, tokenizer):
        if batch.get("video") is None:
            continue
        batch = move_to(batch, device)
        v = model.encode_video(batch["video"], batch["frame_mask"])
        embeds.append(v.embed.float())
        outs.append(v.encoder)
        kept.extend(batch["record_index"].tolist())
    video_embed = torch.cat(embeds)
    video_out = dataclasses.replace(outs[0], **{f.name: torch.cat([getattr(o, f.name) for o in outs])
                                                for f in dataclasses.fields(outs[0])
                                                if torch.is_tensor(getattr(outs[0], f.name))})
    texts, text_to_video = [], []
    for position, r in enumerate(kept):
        texts.extend(records[r].captions)
        text_to_video.extend([position] * len(records[r].captions))
    tok = move_to(tokenizer(texts), device)
    text = model.encode_text(tok["input_ids"], tok["attention_mask"])
    sims = (text.embed.float() @ video_embed.t()).cpu()

    def match(video_rows, text_rows):
        logits = module.match_logits(select(video_out, video_rows.to(device)),
                                     select(text.encoder, text_rows.to(device)))
        return logits.float().softmax(-1)[:, 1].cpu()

    def t2v_scores(q, top):
        return match(top, torch.full_like(top, q))

    def v2t_scores(q, top):
        return match(torch.full_like(top, q), top)

    video_to_texts = [[] for _ in kept]
    for m, v in enumerate(text_to_video):
        video_to_texts[v].append(m)
    def v2t_video_scores(q, top):  # video_max: each candidate video scores its best caption's match
        captions = [video_to_texts[int(v)] for v in top]
        probs = match(torch.full((sum(map(len, captions)),), q), torch.tensor([m for c in captions for m in c]))
        return torch.stack([part.max() for part in probs.split([len(c) for c in captions])])

    k, tally = task.rerank_top_k, NonFiniteTally(prefix)
    if run_cfg.eval.v2t_multi_caption == "video_max":  # the rule of tasks.retrieval's module docstring
        best, bad = max_per_group(sims.t(), torch.as_tensor(text_to_video), len(kept))
        # a video with a non-finite caption score ranks above the query's own video, scored on its finite ones
        video_sims = best.masked_fill(bad & ~torch.eye(len(kept), dtype=torch.bool), float("nan"))
        v2t = rerank_ranks(video_sims, [[v] for v in range(len(kept))], k, v2t_video_scores, tally)
        v2t_chance = chance_metrics(len(kept), f"{prefix}/chance_v2t")
    else:
        v2t = rerank_ranks(sims.t().contiguous(), video_to_texts, k, v2t_scores, tally)
        v2t_chance = chance_metrics(len(texts), f"{prefix}/chance_v2t", [len(t) for t in video_to_texts])
    out = {**metrics_from_ranks(rerank_ranks(sims, [[v] for v in text_to_video], k, t2v_scores, tally),
                                f"{prefix}/t2v"), **metrics_from_ranks(v2t, f"{prefix}/v2t")}
    tally.report(out)
    out.update(chance_metrics(len(kept), f"{prefix}/chance"))
    out.update(v2t_chance)
    out[f"{prefix}/num_videos"], out[f"{prefix}/num_captions"] = float(len(kept)), float(len(texts))
    return out


def run_finetune_retrieval(model, run_cfg, task, root, out_dir: str | Path, *, device=torch.device("cpu"),
                           seed: int = 0, prefix: str = "finetune_retrieval") -> dict[str, float]:
    """Fine-tune (a copy of) `model` on the task's training split, save the run to `out_dir`, evaluate."""
    videos = video_root(task.data, root)
    train = read_task_records(task.data, root, "train")
    test = read_task_records(task.data, root, "test")
    if task.paragraph:
        train, test = paragraph_records(train), paragraph_records(test)
    cfg = finetune_run_config(run_cfg, steps=task.steps, batch_size=min(task.batch_size, len(train)), lr=task.lr,
                              text_lr=task.text_lr, warmup_steps=task.warmup_steps, seed=seed, sampling=task.sampling)
    rerank = task.rerank_top_k > 0 and has_fusion(model)
    if task.rerank_top_k > 0 and not rerank:
        log.info("finetune_retrieval: rerank_top_k ignored: the model has no fusion encoder")
    module = RetrievalFinetuneModule(copy.deepcopy(model), task.matching_weight if rerank else 0.0)
    # Paragraph queries are long: as many tokens as the text encoder allows, not the pre-training length.
    tokenizer = paragraph_tokenizer(model.text_encoder) if task.paragraph else build_tokenizer(cfg.model.text)
    transform = VideoTransform(cfg.model.video.image_size, train=True, **frame_normalization(cfg.model.video), scale=tuple(cfg.data.random_resized_crop_scale),
                               hflip=cfg.data.hflip)
    dataset = VideoTextDataset(train, videos, num_frames=cfg.data.num_frames, sampling=cfg.data.sampling,
                               transform=transform, backend=cfg.data.backend, caption_mode="random", seed=seed,
                               require_captions=True, allow_outside_root=cfg.data.allow_outside_root)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    history = train_module(cfg, module, dataset, VideoTextCollator(tokenizer), out_dir, device)
    if rerank:
        metrics = evaluate_with_rerank(module, test, tokenizer, task, cfg, videos, device, prefix)
    else:
        metrics = evaluate_retrieval(module.model, cfg, tokenizer, test, videos, device, prefix)
    metrics.update(loss_summary(history, prefix))
    return metrics
