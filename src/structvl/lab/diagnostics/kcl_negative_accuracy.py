"""Diagnostic: how often does a run's video embedding prefer its caption over CLOP's constructed negatives
(one knowledge element swapped), per element type, on training clips (what KCL trains on) and test clips?

    python -m structvl.lab.diagnostics.kcl_negative_accuracy CORPUS_DIR VOCAB_JSON RUN_DIR [RUN_DIR ...]

e.g. CORPUS_DIR = the demo's structured corpus, VOCAB_JSON = a CLOP run's knowledge_vocab.json, RUN_DIRs = the
baseline's and CLOP's runs: if even the training clips' negatives are not told apart, KCL is limited by what
the video tower can see, not by overfitting its negatives. The control column scores the same caption pairs
against another clip's video: above 50% there, the text side tells a constructed negative from a real caption
without looking at the video.
"""

import collections
import sys
from pathlib import Path

import torch

from structvl.data.formats import read_annotations
from structvl.data.knowledge.cache import KnowledgeCache, knowledge_for
from structvl.data.knowledge.swaps import build_swapped_negatives
from structvl.data.knowledge.vocab import KnowledgeVocab
from structvl.engine.checkpoint import load_run_model
from structvl.models.text_encoder import build_tokenizer
from structvl.tasks.eval_data import eval_loader


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    root, vocab, runs = Path(argv[0]), KnowledgeVocab.load(argv[1]), argv[2:]
    splits = {"train": read_annotations("jsonl", root / "train.jsonl")[:240],
              "test": read_annotations("jsonl", root / "eval/retrieval_test.jsonl")[:200]}
    with KnowledgeCache(root / "knowledge_cache") as cache:
        negs = {}
        for split, recs in splits.items():
            ks = knowledge_for([r.captions[0] for r in recs], cache)
            negs[split] = build_swapped_negatives(ks, vocab, cache, ["object", "attribute", "action", "relation"], 4)
    for run in runs:
        model, cfg, _ = load_run_model(run)
        model.eval()
        tok = build_tokenizer(cfg.model.text)
        for split, recs in splits.items():
            hits, other_clip = collections.defaultdict(list), collections.defaultdict(list)
            with torch.no_grad():
                for batch in eval_loader(recs, cfg, root, tok):
                    v = model.encode_video(batch["video"], batch["frame_mask"]).embed
                    for i, cap in enumerate(batch["caption"]):
                        items = negs[split].get(cap, [])
                        if not items:
                            continue
                        t = model.encode_text(**{k: x for k, x in tok([cap] + [n for n, _ in items]).items()
                                                 if k in ("input_ids", "attention_mask")}).embed
                        s, s_other = t @ v[i], t @ v[(i + 1) % len(v)]
                        for j, (_, kind) in enumerate(items):
                            hits[kind].append(float(s[0] > s[j + 1]))
                            other_clip[kind].append(float(s_other[0] > s_other[j + 1]))
            for name, table in (("", hits), (" (another clip's video)", other_clip)):
                print(run, split + name, {k: round(100 * sum(h) / len(h), 1) for k, h in sorted(table.items())}, "all",
                      round(100 * sum(sum(h) for h in table.values()) / sum(len(h) for h in table.values()), 1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
