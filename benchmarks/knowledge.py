"""Knowledge at corpus scale: extraction throughput on 1 and 2 processes, and a pre-training run's start-up on a
corpus of 20,000 vs 200,000 cached captions, each pair measured side by side in one run.

1. Extraction: `knowledge_pass` (the map step of `structvl knowledge`: parse, write to a fresh cache, count) on
   the same N unique captions with `n_process` 1 and 2: half real annotations (tests/fixtures/realdata:
   MSR-VTT 1k-A captions, DiDeMo descriptions, ActivityNet-QA, NExT-QA and TGIF-QA questions), the rest the
   structured corpus's captions (`structvl.lab.synth` plans, without rendering). Target: 2 processes >= 1.8x one.
   `--spacy` also times spaCy's own `nlp.pipe(n_process=2)` with the rules in the parent (why parse.py has its
   own pool).
2. Start-up: a cache filled with synthetic knowledge rows (parsed captions, renamed "caption #i"), counted by the
   knowledge pass; then `engine.pretrain.build_objective_context` (the corpus fingerprint, the vocabulary from
   the label table, the lookup) and the first batch's lookup, at 20k and 200k captions. For contrast, what the
   old start-up did at least: read every caption's knowledge into a dict (`get_many` over the corpus).

    python benchmarks/knowledge.py                   # 20,000 captions, start-up at 20k and 200k
    python benchmarks/knowledge.py --captions 4000 --startup 2000,20000   # quick
    python benchmarks/knowledge.py --write-captions captions.txt      # the caption set, for another machine:
    python benchmarks/knowledge.py --captions-file captions.txt --processes 1,2,4 --startup none
        (the last needs only spaCy, torch and tqdm: the start-up part's imports are made only when it runs)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

from structvl.data.formats import read_annotations
from structvl.data.knowledge.cache import KnowledgeCache
from structvl.data.knowledge.corpus import corpus_fingerprint, knowledge_pass
from structvl.data.knowledge.lookup import KnowledgeLookup
from structvl.data.knowledge.parse import caption_key
from structvl.data.knowledge.rules import iter_knowledge, load_nlp
from structvl.data.records import VideoRecord

REALDATA = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "realdata"


def _rows(path: Path, delimiter: str = ",") -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def real_captions() -> list[str]:
    texts = [row["sentence"] for row in _rows(REALDATA / "msrvtt" / "MSRVTT_JSFUSION_test.csv")]
    for name in ("test_data.json", "val_data.json"):
        texts += [c for r in read_annotations("didemo", REALDATA / "didemo" / name) for c in r.captions]
    texts += [q["question"] for q in json.loads((REALDATA / "activitynet_qa" / "test_q.json").read_text())]
    for name in ("val.csv", "test.csv"):
        texts += [row["question"] for row in _rows(REALDATA / "nextqa" / name)]
    texts += [row["question"] for row in _rows(REALDATA / "tgif_qa" / "Test_frameqa_question.csv", "\t")]
    return list(dict.fromkeys(t.strip() for t in texts if t.strip()))


def synth_captions(count: int) -> list[str]:
    from structvl.lab.synth.plan import plan_clip  # only here: the extraction part runs without the lab's imports

    out: dict[str, None] = {}
    index = 0
    while len(out) < count:
        for caption in plan_clip(0, "train", index, index, 64, 16, []).captions:
            out[caption.text] = None
        index += 1
    return list(out)[:count]


def corpus(count: int) -> list[str]:
    real = real_captions()[:count // 2]
    return real + synth_captions(count - len(real))


def records_of(captions: list[str]) -> list[VideoRecord]:
    return [VideoRecord(video_id=f"v{i}", video=f"v{i}.mp4", captions=[c]) for i, c in enumerate(captions)]


def extraction(captions: list[str], processes: list[int], work: Path, spacy: bool) -> dict:
    rates = {}
    load_nlp()  # loaded once, outside the timings (forked workers inherit it)
    for n in processes:
        with KnowledgeCache(work / f"extract-{n}") as cache:
            start = time.perf_counter()
            knowledge_pass(records_of(captions), cache, "bench", n_process=n)
            rates[f"structvl pool, {n} process(es)"] = len(captions) / (time.perf_counter() - start)
    if spacy:
        for n in (1, 2):
            start = time.perf_counter()
            for _ in iter_knowledge(captions, n_process=n):
                pass
            rates[f"spaCy nlp.pipe(n_process={n}), rules in the parent"] = len(captions) / (time.perf_counter() - start)
    return rates


def fill_cache(root: Path, size: int, base: KnowledgeCache, base_captions: list[str]) -> None:
    """A data root whose train.jsonl lists `size` captions, all in its knowledge cache, counted."""
    rows, lines = [], []
    known = base.get_many(base_captions)
    templates = [known[c].to_dict() for c in base_captions]
    with KnowledgeCache(root / "knowledge_cache") as cache:
        for i in range(size):
            data = dict(templates[i % len(templates)])
            data["caption"] = caption = f"{data['caption']} #{i}"
            rows.append((caption_key(caption), caption, json.dumps(data)))
            lines.append(json.dumps({"video_id": f"v{i}", "video": f"v{i}.mp4", "captions": [caption]}))
            if len(rows) >= 10000:
                cache.put_rows(rows)
                rows.clear()
        cache.put_rows(rows)
        (root / "train.jsonl").write_text("\n".join(lines) + "\n")
        knowledge_pass(read_annotations("jsonl", root / "train.jsonl"), cache,
                       corpus_fingerprint("jsonl", root / "train.jsonl", cache))  # as `structvl knowledge` does


def startup(root: Path, run_dir: Path) -> dict:
    # Only here: the extraction part runs where only spaCy, torch and tqdm are installed.
    from structvl.config import load_config
    from structvl.data.text import Tokenizer
    from structvl.engine.pretrain import build_objective_context

    cfg = load_config("clop", [f"data.root={root}", "clop.kcl_construct=false", "clop.kcl_batch_sampler=false",
                               "knowledge.startup_parse_limit=0"])  # a corpus not counted would be an error here
    tokenizer = Tokenizer(max_length=cfg.model.text.max_length)
    times = {}
    start = time.perf_counter()
    corpus_fingerprint(cfg.data.format, root / cfg.data.train)
    times["[not at start-up] hash of train.jsonl (remembered)"] = time.perf_counter() - start
    start = time.perf_counter()
    context = build_objective_context(cfg, tokenizer, run_dir, is_main=True)
    times["build_objective_context (vocab + lookup)"] = time.perf_counter() - start
    lines = (root / "train.jsonl").read_text().splitlines()[:32]
    captions = [json.loads(line)["captions"][0] for line in lines]
    start = time.perf_counter()
    fields = KnowledgeLookup(context.knowledge.cache).batch_fields([{"caption": c} for c in captions])
    assert fields["knowledge_parsed"] == 0
    times["first batch's lookup (32 captions)"] = time.perf_counter() - start
    all_captions = [json.loads(line)["captions"][0] for line in (root / "train.jsonl").read_text().splitlines()]
    start = time.perf_counter()
    context.knowledge.cache.get_many(all_captions)
    times["[old start-up] every caption's knowledge into a dict"] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=20000, help="captions parsed per extraction run")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--startup", default="20000,200000", help="corpus sizes of the start-up comparison")
    parser.add_argument("--spacy", action="store_true", help="also time spaCy's own n_process")
    parser.add_argument("--skip-extraction", action="store_true")
    parser.add_argument("--captions-file", default=None, help="read the captions (one a line) instead of making them")
    parser.add_argument("--write-captions", default=None, help="write the caption set to this file and stop")
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f} (shared cores: numbers are provisional)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.captions_file:
            captions = Path(args.captions_file).read_text(encoding="utf-8").splitlines()[:args.captions]
        else:
            captions = corpus(args.captions)
        if args.write_captions:
            Path(args.write_captions).write_text("\n".join(captions) + "\n", encoding="utf-8")
            return
        print(f"{len(captions)} unique captions")
        if not args.skip_extraction:
            rates = extraction(captions, [int(n) for n in args.processes.split(",")], work, args.spacy)
            base = next(iter(rates.values()))
            for name, rate in rates.items():
                print(f"  {name:<55} {rate:8.1f} captions/s  {rate / base:5.2f}x")
        if args.startup == "none":
            return
        base_captions = captions[:2000]
        with KnowledgeCache(work / "base") as base_cache:
            knowledge_pass(records_of(base_captions), base_cache, "base", n_process=2)
            sizes = [int(n) for n in args.startup.split(",")]
            results = {}
            for size in sizes:
                fill_cache(work / f"corpus-{size}", size, base_cache, base_captions)
                results[size] = startup(work / f"corpus-{size}", work / f"run-{size}")
        print("start-up (seconds)" + "".join(f"{size:>12,}" for size in sizes) + "   ratio")
        for name in results[sizes[0]]:
            values = [results[size][name] for size in sizes]
            print(f"  {name:<52}" + "".join(f"{v:12.3f}" for v in values) + f"   {values[-1] / values[0]:5.1f}x")


if __name__ == "__main__":
    main()
