"""The demo report names the one command that serves a search with the best recipe, and that command
(`make search RUN=...`) is a valid sequence of `structvl` commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from structvl.cli import build_parser
from structvl.lab.report import search_command_html

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


def test_report_names_the_best_recipes_run():
    rows = {"contrastive baseline": {"retrieval/t2v/R@1": (58.0, 1.5)},
            "+ CLOP": {"retrieval/t2v/R@1": (61.0, 2.0)},
            "+ S-ViLM": {"retrieval/t2v/R@1": (56.2, 2.1)}}
    runs = {"contrastive baseline": [Path("runs/demo/baseline/seed0")],
            "+ CLOP": [Path("runs/demo/clop/seed0"), Path("runs/demo/clop/seed1")],
            "+ S-ViLM": [Path("runs/demo/svilm/seed0")]}
    html = search_command_html(rows, runs)
    assert "<code>make search RUN=runs/demo/clop/seed0</code>" in html and "61.0" in html
    assert search_command_html({"x": {"hard_negative/overall": (70.0, 0.0)}}, {"x": [Path("r")]}) == ""


def test_make_search_runs_structvl_extract_index_serve(tmp_path, monkeypatch):
    # The arguments name existing paths (the CLI checks them): lay out what `make demo` and the first two
    # commands leave behind, in a scratch directory.
    monkeypatch.chdir(tmp_path)
    for folder in ("runs/demo/clop/seed0/search/embeddings", "runs/demo/clop/seed0/search/index", "data/structured"):
        (tmp_path / folder).mkdir(parents=True)
    text = MAKEFILE.read_text()
    recipe = re.search(r"^search:.*\n((?:\t.*\n)+)", text, re.M).group(1)
    variables = {"VENV": ".venv", "RUN": "runs/demo/clop/seed0", "DATA": "data/structured"}
    commands = []
    for line in recipe.splitlines():
        line = re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)], line.strip())
        argv = shlex.split(line)
        assert argv[0] == ".venv/bin/structvl"
        commands.append(build_parser().parse_args(argv[1:]))
    assert [c.command for c in commands] == ["extract", "index", "serve"]
    extract, index, serve = commands
    assert extract.checkpoint == "runs/demo/clop/seed0" and extract.data == "data/structured"
    assert index.embeddings == extract.out and serve.index == index.out and serve.host == "127.0.0.1"
