"""The README's results tables, made from a finished `structvl demo` directory.

    python scripts/results_table.py runs/demo          # after `structvl demo --seeds 3 --generalize` (make table)
    python scripts/results_table.py runs/demo-val      # the table choices are made on

Reads OUT/metrics.json (for each recipe's row label, `LABEL/column` is the mean over seeds and
`LABEL/column/std` their standard deviation) and the run_info.json of every run under OUT/<recipe>/seedN, and
prints Markdown:

1. where the numbers come from: the command, the seeds, and the code. All runs must carry one source sha256 (a
   table never mixes code; else exit 2); it is matched against the working tree's package source and the
   package source of recent git revisions, so the table names the revision that made it.
2. The test (or val) columns: retrieval and hard negatives, then the downstream suite and each paper's measure,
   with chance (or the reference the demo shows) as the last row; then the unseen corpus's columns.
3. Every recipe minus the contrastive baseline (the first row) on every column, marked where the difference is
   beyond seed noise: |mean difference| > std(recipe) + std(baseline), the seed-noise rule the README states.
   For ranks (MdR) lower is better. Single-switch ablations are also compared with their paper's recipe.
4. One line per recipe: the columns where it gains and where it loses beyond noise, and for each retrieval or
   hard-negative gain on test whether the same column gains beyond noise on the unseen corpus too (issue 32:
   a gain counts when it holds on both).
5. `--records DIR` also copies what the table is made of into DIR, in OUT's layout: OUT/metrics.json and each
   run's metrics.json, config.yaml and run_info.json (no checkpoints). The records are small enough to commit
   (docs/results/) and the script rebuilds the table from them (`results_table.py DIR`). Copied back into a demo
   directory, they let `structvl demo --seeds N` reuse those runs (same config and code) and add seeds; the
   demo's report still loads the first seed's checkpoints, which the records do not hold.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from structvl.lab.demo import ABLATIONS, DOWNSTREAM_REFERENCE, RECIPES, TABLE_COLUMNS, UNSEEN_COLUMNS, UNSEEN_PREFIX
from structvl.runtime.provenance import PACKAGE_ROOT, code_fingerprint

LOWER_IS_BETTER = ("/MdR", "/MnR")
NAME_OF = {label: name for name, (label, _) in {**RECIPES, **ABLATIONS}.items()}  # row label -> recipe
MARK = {1: " ▲", -1: " ▼", 0: ""}  # a gain / a loss beyond seed noise / within it
# Column groups of the two main tables (the second holds what is measured downstream of the embedding).
FIRST_TABLE = [c for c in TABLE_COLUMNS if c.startswith(("retrieval/", "hard_negative/"))]
SECOND_TABLE = [c for c in TABLE_COLUMNS if c not in FIRST_TABLE]
SHORT = [("retrieval/", ""), ("hard_negative/blind/", "hn blind "), ("hard_negative/static/", "hn static "),
         ("hard_negative/balanced/", "hn bal "), ("hard_negative/", "hn "), ("/accuracy", ""),
         ("recognition/linear/top1", "rec top1"), ("localization/agnostic/mAP_avg", "TAL agn mAP_avg"),
         ("localization/", "TAL "), ("clop/skp_mAP", "SKP mAP"), ("grounding/pointing_best_patch", "best patch"),
         ("grounding/pointing", "pointing"), ("temporal/scene_change_acc", "scene chg"), ("clover_mlm", "MLM"),
         (UNSEEN_PREFIX, "unseen ")]


def short(column: str) -> str:
    for old, new in SHORT:
        column = column.replace(old, new)
    return column


def fail(message: str) -> None:
    print(f"results_table: {message}", file=sys.stderr)
    raise SystemExit(2)


def rows_of(metrics: dict) -> dict[str, dict[str, tuple[float, float]]]:
    """label -> column -> (mean, std), for the labels of RECIPES and ABLATIONS present in a demo's metrics.json."""
    labels = [label for label, _ in [*RECIPES.values(), *ABLATIONS.values()]]
    rows = {}
    for label in labels:
        prefix = f"{label}/"
        values = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix) and not k.endswith("/std")}
        if values:
            rows[label] = {c: (v, float(metrics.get(f"{prefix}{c}/std", 0.0))) for c, v in values.items()}
    return dict(sorted(rows.items(), key=lambda kv: labels.index(kv[0])))


def chance_of(metrics: dict) -> dict[str, float]:
    """The reference row the demo prints: a random ranking for retrieval, 50% for hard negatives, and the
    downstream references (chance, open QA's majority answer, a video-blind SKP scorer)."""
    chance = {}
    for prefix in ("", UNSEEN_PREFIX):
        for column in TABLE_COLUMNS:
            if column.startswith("retrieval/"):
                key = column.replace("/t2v/", "/chance/").replace("/v2t/", "/chance_v2t/")
                if f"{prefix}{key}" in metrics:
                    chance[f"{prefix}{column}"] = metrics[f"{prefix}{key}"]
            elif column.startswith("hard_negative/"):
                chance[f"{prefix}{column}"] = 50.0
    chance.update({c: metrics[ref] for c, ref in DOWNSTREAM_REFERENCE.items() if ref in metrics})
    return chance


def beyond_noise(row: dict, base: dict, column: str) -> tuple[float, int] | None:
    """(row - base, +1 for a gain beyond seed noise, -1 for a loss beyond it, 0 within it); None if either lacks
    the column."""
    if column not in row or column not in base:
        return None
    (mean, std), (base_mean, base_std) = row[column], base[column]
    delta = mean - base_mean
    better = -delta if column.endswith(LOWER_IS_BETTER) else delta
    noise = std + base_std + 1e-9  # the 1e-9: a difference that is zero but for float rounding is no difference
    return delta, (0 if abs(delta) <= noise else (1 if better > 0 else -1))


def markdown_table(rows: dict, columns: list[str], chance: dict, seeds: int) -> str:
    columns = [c for c in columns if any(c in r for r in rows.values())]
    lines = ["| recipe | " + " | ".join(short(c) for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, row in rows.items():
        cells = [f"{row[c][0]:.1f}±{row[c][1]:.1f}" if c in row else "-" for c in columns]
        lines.append(f"| {label} ({seeds}) | " + " | ".join(cells) + " |")
    lines.append("| chance / reference | " + " | ".join(f"{chance[c]:.1f}" if c in chance else "-" for c in columns)
                 + " |")
    return "\n".join(lines)


def delta_table(rows: dict, pairs: list[tuple[str, str]], columns: list[str], judged: bool) -> str:
    """One line per (row, reference): the difference on every column, ▲ / ▼ beyond seed noise (when `judged`:
    one seed has no noise estimate, so its differences are shown unmarked)."""
    columns = [c for c in columns if any(c in rows[a] and c in rows[b] for a, b in pairs)]
    lines = ["| recipe − reference | " + " | ".join(short(c) for c in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for label, ref in pairs:
        cells = []
        for column in columns:
            found = beyond_noise(rows[label], rows[ref], column)
            cells.append("-" if found is None else f"{found[0]:+.1f}{MARK[found[1]] if judged else ''}")
        lines.append(f"| {label} − {ref} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(rows: dict, pairs: list[tuple[str, str]], columns: list[str]) -> list[str]:
    out = []
    for label, ref in pairs:
        gains, losses = [], []
        for column in columns:
            if column.startswith(UNSEEN_PREFIX):
                continue
            found = beyond_noise(rows[label], rows[ref], column)
            if found is None or not found[1]:
                continue
            text = f"{short(column)} {found[0]:+.1f}"
            if found[1] > 0 and UNSEEN_PREFIX + column in rows[label]:
                unseen = beyond_noise(rows[label], rows[ref], UNSEEN_PREFIX + column)
                text += " (holds unseen)" if unseen and unseen[1] > 0 else " (not on unseen)"
            (gains if found[1] > 0 else losses).append(text)
        unseen_only = [f"{short(c)} {f[0]:+.1f}" for c in columns if c.startswith(UNSEEN_PREFIX)
                       and (f := beyond_noise(rows[label], rows[ref], c)) and f[1]
                       and not (beyond_noise(rows[label], rows[ref], c[len(UNSEEN_PREFIX):]) or (0, 0))[1]]
        out.append(f"- **{label}** vs {ref}: gains beyond seed noise on {', '.join(gains) or 'no column'}; "
                   f"loses on {', '.join(losses) or 'no column'}"
                   + (f"; on the unseen corpus only: {', '.join(unseen_only)}" if unseen_only else "") + ".")
    return out


def run_paths(rows: dict, seeds: int) -> list[Path]:
    """The run directories behind the table's rows, relative to the demo directory: <recipe>/seedN."""
    return [Path(NAME_OF[label]) / f"seed{seed}" for label in rows for seed in range(seeds)]


def run_fingerprints(out: Path, rows: dict, seeds: int) -> set[str]:
    """The source sha256 of every run behind the table's rows (OUT/<recipe>/seedN/run_info.json)."""
    hashes = set()
    for run in run_paths(rows, seeds):
        path = out / run / "run_info.json"
        if not path.exists():
            fail(f"{path}: missing; the table's runs must all be present (run `structvl demo` again)")
        hashes.add(json.loads(path.read_text(encoding="utf-8"))["code"]["source_sha256"])
    return hashes


RECORD_FILES = ("metrics.json", "config.yaml", "run_info.json")


def save_records(out: Path, rows: dict, seeds: int, records: Path) -> int:
    """Copy OUT/metrics.json and the RECORD_FILES of every run behind the table's rows into `records` (OUT's
    layout); returns how many files. A records directory that exists is refused: records are never overwritten."""
    if records.exists():
        fail(f"--records {records}: exists; records are never overwritten (remove it or name another directory)")
    pairs = [(out / "metrics.json", records / "metrics.json")]
    pairs += [(out / run / f, records / run / f) for run in run_paths(rows, seeds) for f in RECORD_FILES
              if (out / run / f).exists()]
    for source, target in pairs:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return len(pairs)


def revision_of(source_sha256: str, depth: int) -> str:
    """Which code the hash is: the working tree's package source, and/or a recent git revision whose package
    source hashes the same (each revision's src/structvl is extracted with `git archive` and hashed as
    `runtime.provenance.code_fingerprint` hashes the installed package)."""
    found = []
    if code_fingerprint()["source_sha256"] == source_sha256:
        found.append("the working tree's source")
    repo, package = PACKAGE_ROOT.parents[1], PACKAGE_ROOT.relative_to(PACKAGE_ROOT.parents[1]).as_posix()
    try:
        revisions = subprocess.run(["git", "-C", str(repo), "log", f"-{depth}", "--format=%h", "--", package],
                                   capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        revisions = []
    for revision in revisions:  # the last commit that changed the package source holds it until the next one
        archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", revision, package],
                                 capture_output=True, check=True).stdout
        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(fileobj=BytesIO(archive)) as tar:
                tar.extractall(tmp, filter="data")
            if code_fingerprint(Path(tmp) / package)["source_sha256"] == source_sha256:
                found.append(f"the package source of revision {revision} (and of every later commit up to the next "
                             f"one that changes {package})")
                break
    return " = ".join(found) if found else "not the current source, nor a recent revision's"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a structvl demo output directory (holds metrics.json)")
    parser.add_argument("--command", default=None, help="the command that made it, for the header")
    parser.add_argument("--git-depth", type=int, default=40,
                        help="how many of the last commits that changed the package to search for the runs' source")
    parser.add_argument("--records", type=Path, default=None,
                        help="also copy the table's metrics and each run's config and run_info here (a new directory)")
    args = parser.parse_args(argv)
    path = args.out / "metrics.json"
    if not path.exists():
        fail(f"{path}: no such file; run `structvl demo --out {args.out}` first")
    metrics = json.loads(path.read_text(encoding="utf-8"))
    rows, seeds = rows_of(metrics), int(metrics.get("demo/seeds", 1))
    if not rows:
        fail(f"{path}: holds no recipe rows (keys 'LABEL/column' of structvl.lab.demo.RECIPES or ABLATIONS)")
    hashes = run_fingerprints(args.out, rows, seeds)
    if len(hashes) != 1:
        fail(f"{args.out}: its runs were made by {len(hashes)} versions of the code ({', '.join(sorted(hashes))}); "
             "a table must come from one")
    (source,) = hashes
    if args.records is not None:
        copied = save_records(args.out, rows, seeds, args.records)
        print(f"results_table: {copied} record files copied to {args.records}", file=sys.stderr)
    chance = chance_of(metrics)
    labels = list(rows)
    base = labels[0]
    paper_of = {label: RECIPES[NAME_OF[label].split("_")[0]][0] for label in labels
                if NAME_OF[label] in ABLATIONS and NAME_OF[label].split("_")[0] in RECIPES
                and RECIPES[NAME_OF[label].split("_")[0]][0] in rows}
    pairs = [(label, base) for label in labels[1:]] + [(label, ref) for label, ref in paper_of.items()]
    unseen = [f"{UNSEEN_PREFIX}{c}" for c in UNSEEN_COLUMNS]
    all_columns = FIRST_TABLE + SECOND_TABLE + unseen
    split = "val" if args.out.name.endswith("-val") else "test"
    print(f"Made by `{args.command or f'structvl demo --out {args.out} --seeds {seeds}'}` "
          f"({seeds} seed{'s' * (seeds > 1)}, mean ± std over seeds); code: source sha256 {source[:12]}…, "
          f"{revision_of(source, args.git_depth)}. Evaluated on the {split} split; `unseen` columns: the unseen corpus "
          "(`--generalize`). Difference tables: ▲ / ▼ mark a gain / loss beyond seed noise "
          "(|Δ| > std + std of the baseline's column).\n")
    for title, columns in ((f"Retrieval and hard negatives ({split})", FIRST_TABLE),
                           (f"Downstream suite and each paper's measure ({split})", SECOND_TABLE),
                           ("Unseen corpus (zero-shot)", unseen)):
        if any(c in r for r in rows.values() for c in columns):
            print(f"**{title}**\n\n{markdown_table(rows, columns, chance, seeds)}\n")
    if pairs:
        for title, columns in (("Against the reference: retrieval and hard negatives", FIRST_TABLE + unseen),
                               ("Against the reference: downstream and each paper's measure", SECOND_TABLE)):
            print(f"**{title}**\n\n{delta_table(rows, pairs, columns, judged=seeds > 1)}\n")
        if seeds > 1:
            print("\n".join(verdicts(rows, pairs, all_columns)))
        else:
            print("One seed: no estimate of seed noise, so no difference is judged (run with --seeds 3).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
