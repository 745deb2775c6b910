"""Video question answering on frozen encoder features: multiple choice (MSRVTT-MC, TGIF/NExT-QA style) and
open-ended answer classification (MSRVTT-QA, MSVD-QA, TGIF-Frame style).

The text side of an item is one sequence: the question, followed by the candidate answer for multiple choice
(MSRVTT-MC has no question: the candidate alone).

* Multiple choice, zero-shot: the candidate whose text embedding is most similar to the video's wins.
* Multiple choice, fine-tuned (`mode: finetune`): a scorer gives each (video, candidate) pair one score and
  a softmax over the item's candidates is trained with cross-entropy (Clover's MC head).
* Open-ended: classification over the `top_k_answers` most frequent training answers (the standard
  protocol); training questions whose answer is outside that vocabulary are dropped, test ones count as
  wrong, and their share is reported as `openqa/oov_rate` (the accuracy ceiling is 100 - oov_rate).

The scorer uses the fusion encoder when the model has one (`model.fuse(video_out, text_out).cls` -> MLP,
Clover's heads); otherwise it falls back to an MLP over [v; t; v*t; |v-t|] of the pooled, projected video
and text embeddings (`heads.PairHead`). The unimodal encoders stay frozen; the fusion encoder is frozen too
unless `train_fusion` is set (then a copy of the model is trained, never the caller's).

A question whose true answer is scored non-finite, or tied with or below another candidate, or beside a candidate
scored non-finite, counts as wrong (`structvl.runtime.nonfinite.pessimistic_rank`); such scores are counted in
`mcqa/nonfinite_scores` / `openqa/nonfinite_scores`.

Beside each accuracy: chance (1 / candidates), and for open-ended QA the majority answer and a "blind" head
of the same size trained with the video zeroed, i.e. how far the question alone gets.
"""

from __future__ import annotations

import copy
import os
from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F

from structvl.runtime.nonfinite import NonFiniteTally, top1_hits
from structvl.tasks.features import (
    ClipFeatures,
    FeatureCache,
    TextFeatures,
    extract_text_features,
    fuse_cached,
    has_fusion,
)
from structvl.tasks.heads import FusedHead, PairHead, fit_head, loss_summary
from structvl.tasks.task_config import read_task_records, video_root


def qa_text(question: str | None, candidate: str | None = None) -> str:
    return " ".join(part for part in (question, candidate) if part)


def video_rows(records, videos, cache: FeatureCache, num_frames: int, keep_tokens: bool):
    """Features of the distinct videos of `records` and, per record, its row (-1 when unreadable): QA files
    ask many questions about one clip, and patch states per question would not fit in memory."""
    key = [(os.path.realpath(r.resolve(videos)), r.start, r.end) for r in records]
    first = {}
    for i, k in enumerate(key):
        first.setdefault(k, i)
    distinct = list(first.values())
    feats = cache.get([records[i] for i in distinct], videos, num_frames=num_frames, keep_tokens=keep_tokens)
    row_of = {key[distinct[j]]: row for row, j in enumerate(feats.kept)}
    return feats, torch.tensor([row_of.get(k, -1) for k in key], dtype=torch.long)


class PairScorer(nn.Module):
    """(video row, text row) pairs -> (P, out) scores; fusion encoder + MLP, or the [v; t; v*t; |v-t|] MLP."""

    def __init__(self, model, video: ClipFeatures, text: TextFeatures, pairs: torch.Tensor, hidden: int, out: int,
                 train_fusion: bool = False, blind: bool = False, device=torch.device("cpu")):
        super().__init__()
        self.video, self.text, self.pairs, self.device = video, text, pairs, device
        self.fused_mode = has_fusion(model) and not blind
        self.train_fusion = self.fused_mode and train_fusion
        if not self.fused_mode:
            self.head = PairHead(video.embed.shape[-1], hidden, out, blind=blind)
            return
        self.model = copy.deepcopy(model) if self.train_fusion else model
        self.fused = None if self.train_fusion else self._fuse_all()  # frozen: fuse every pair once
        with torch.no_grad():
            width = (self.fused if self.fused is not None else self._fuse(pairs[:1])).shape[-1]
        self.head = FusedHead(width, hidden, out)

    def _fuse(self, pairs: torch.Tensor) -> torch.Tensor:
        v, t = pairs[:, 0], pairs[:, 1]
        fused = fuse_cached(self.model, self.video.pooled[v, 0], self.video.tokens[v], self.text, t, self.device)
        return fused.float().cpu()

    @torch.no_grad()
    def _fuse_all(self, chunk: int = 256) -> torch.Tensor:
        self.model.eval()
        return torch.cat([self._fuse(self.pairs[s:s + chunk]) for s in range(0, len(self.pairs), chunk)])

    def switch_to(self, video: ClipFeatures, text: TextFeatures, pairs: torch.Tensor) -> None:
        """Score another split's pairs (the test split, after training on the training split)."""
        self.video, self.text, self.pairs = video, text, pairs
        if self.fused_mode and not self.train_fusion:
            self.fused = self._fuse_all()

    def parameters_to_train(self) -> list[nn.Parameter]:
        extra = list(self.model.fusion.parameters()) if self.train_fusion else []
        return list(self.head.parameters()) + extra

    def train_modules(self) -> list[nn.Module]:
        return [self.head] + ([self.model.fusion] if self.train_fusion else [])

    def forward(self, pair_index: torch.Tensor) -> torch.Tensor:
        if not self.fused_mode:
            v, t = self.pairs[pair_index, 0], self.pairs[pair_index, 1]
            return self.head(self.video.embed[v, 0], self.text.embed[t])
        fused = self.fused[pair_index] if self.fused is not None else self._fuse(self.pairs[pair_index])
        return self.head(fused)

    @torch.no_grad()
    def predict(self, pair_index: torch.Tensor, chunk: int = 512) -> torch.Tensor:
        return torch.cat([self(pair_index[s:s + chunk]) for s in range(0, len(pair_index), chunk)])


def _train(scorer: PairScorer, loss_fn, num_items: int, task, seed: int) -> list[float]:
    return fit_head(loss_fn, scorer.parameters_to_train(), num_items, epochs=task.epochs, batch_size=task.batch_size,
                    lr=task.lr, weight_decay=task.weight_decay, seed=seed, modules=scorer.train_modules())


# ----------------------------------------------------------------------------- multiple choice
def _mc_items(model, records, videos, cache, tokenizer, device, keep_tokens):
    """Readable records, their (N*K, 2) (video row, text row) pairs and answers; K candidates each."""
    feats, rows = video_rows(records, videos, cache, model.cfg.video.num_frames, keep_tokens)
    keep = [i for i in range(len(records)) if rows[i] >= 0]
    records = [records[i] for i in keep]
    k = len(records[0].candidates or [])
    if k < 2 or any(len(r.candidates or []) != k for r in records):
        raise ValueError("multiple-choice QA needs the same number (>= 2) of candidates in every item")
    texts = [qa_text(r.question, c) for r in records for c in r.candidates]
    text = extract_text_features(model, tokenizer, texts, keep_tokens=keep_tokens, device=device,
                                 autocast_dtype=cache.autocast_dtype)
    pairs = torch.stack([rows[keep].repeat_interleave(k), torch.arange(len(texts))], dim=1)
    return feats, text, pairs, torch.tensor([int(r.answer) for r in records]), k


def run_mcqa(model, task, root, *, cache: FeatureCache, tokenizer, device=torch.device("cpu"),
             seed: int = 0) -> dict[str, float]:
    videos = video_root(task.data, root)
    fused = task.mode == "finetune" and has_fusion(model)
    feats, text, pairs, answers, k = _mc_items(model, read_task_records(task.data, root, "test"), videos, cache,
                                               tokenizer, device, fused)
    sims = (feats.embed[pairs[:, 0], 0] * text.embed[pairs[:, 1]]).sum(-1).view(-1, k)
    tally = NonFiniteTally("mcqa")
    zeroshot = float(100 * top1_hits(sims, answers, tally).float().mean())
    metrics = {"mcqa/zeroshot_accuracy": zeroshot, "mcqa/accuracy": zeroshot, "mcqa/chance": 100.0 / k,
               "mcqa/num_test": float(len(answers))}
    if task.mode == "finetune":
        tr_feats, tr_text, tr_pairs, tr_answers, tr_k = _mc_items(
            model, read_task_records(task.data, root, "train"), videos, cache, tokenizer, device, fused)
        torch.manual_seed(seed)
        scorer = PairScorer(model, tr_feats, tr_text, tr_pairs, task.hidden, 1, task.train_fusion, device=device)
        offsets = torch.arange(tr_k)

        def loss_fn(items):
            scores = scorer((items[:, None] * tr_k + offsets).flatten()).view(-1, tr_k)
            return F.cross_entropy(scores, tr_answers[items])

        history = _train(scorer, loss_fn, len(tr_answers), task, seed)
        scorer.switch_to(feats, text, pairs)
        scores = scorer.predict(torch.arange(len(pairs))).view(-1, k)
        metrics["mcqa/accuracy"] = float(100 * top1_hits(scores, answers, tally).float().mean())
        metrics.update(loss_summary(history, "mcqa"))
    return tally.report(metrics)


# ----------------------------------------------------------------------------- open-ended
def answer_vocabulary(records, top_k: int) -> list[str]:
    """The `top_k` most frequent training answers (ties: first seen first)."""
    return [a for a, _ in Counter(str(r.answer) for r in records).most_common(top_k)]


def oov_rate(records, vocabulary: list[str]) -> float:
    """Percentage of records whose answer is not in the vocabulary (unanswerable by a classifier over it)."""
    known = set(vocabulary)
    return 100.0 * sum(str(r.answer) not in known for r in records) / max(1, len(records))


def run_openqa(model, task, root, *, cache: FeatureCache, tokenizer, device=torch.device("cpu"),
               seed: int = 0) -> dict[str, float]:
    videos = video_root(task.data, root)
    num_frames, fused = model.cfg.video.num_frames, has_fusion(model)
    train = read_task_records(task.data, root, "train")
    test = read_task_records(task.data, root, "test")
    vocab = answer_vocabulary(train, task.top_k_answers)
    index = {a: i for i, a in enumerate(vocab)}
    train = [r for r in train if str(r.answer) in index]  # the standard protocol trains on in-vocabulary answers
    splits, evaluated = {}, []
    for name, records in (("train", train), ("test", test)):
        feats, rows = video_rows(records, videos, cache, num_frames, keep_tokens=fused)
        keep = torch.nonzero(rows >= 0).flatten()
        records = [records[i] for i in keep]
        text = extract_text_features(model, tokenizer, [qa_text(r.question) for r in records], keep_tokens=fused,
                                     device=device, autocast_dtype=cache.autocast_dtype)
        labels = torch.tensor([index.get(str(r.answer), -1) for r in records])  # -1: out of vocabulary
        splits[name] = (feats, text, torch.stack([rows[keep], torch.arange(len(records))], 1), labels)
        evaluated = records  # after the loop: the test questions whose video could be read
    metrics = {"openqa/oov_rate": oov_rate(evaluated, vocab),
               "openqa/num_answers": float(len(vocab)), "openqa/num_test": float(len(splits["test"][3]))}
    majority = splits["test"][3] == 0  # answer 0 is the most frequent training answer
    metrics["openqa/majority_accuracy"] = float(100 * majority.float().mean())
    tally = NonFiniteTally("openqa")
    for blind in ([False, True] if task.blind_baseline else [False]):
        torch.manual_seed(seed)
        tr_feats, tr_text, tr_pairs, tr_labels = splits["train"]
        scorer = PairScorer(model, tr_feats, tr_text, tr_pairs, task.hidden, len(vocab), task.train_fusion,
                            blind=blind, device=device)
        history = _train(scorer, lambda rows: F.cross_entropy(scorer(rows), tr_labels[rows]), len(tr_labels), task,
                         seed)
        *test_split, labels = splits["test"]
        scorer.switch_to(*test_split)
        correct = top1_hits(scorer.predict(torch.arange(len(labels))), labels, tally)  # OOV (-1) never matches
        if blind:
            metrics["openqa/text_only_accuracy"] = float(100 * correct.float().mean())
        else:
            metrics["openqa/accuracy"] = float(100 * correct.float().mean())
            metrics.update(loss_summary(history, "openqa"))
    return tally.report(metrics)
