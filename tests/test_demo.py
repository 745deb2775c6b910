"""The demo's rows say what they are: an ablation that goes beyond its paper's setup is an [extension] in its
config file and in its row label, which is what the table and the report print. A corpus named by a relative or
an absolute path is one corpus: its finished runs are reused either way."""

import pytest

from structvl.config import load_config, resolve_config_path
from structvl.lab.demo import ABLATIONS, RECIPES, aggregate, format_table, run_demo
from structvl.lab.report import results_table_html

EXTENSION = "[extension]"


def opening_comment(config: str) -> str:
    lines = resolve_config_path(config).read_text(encoding="utf-8").splitlines()
    return " ".join(line for line in lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))])


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_a_row_is_an_extension_exactly_when_its_config_says_so(name):
    label, config = ABLATIONS[name]
    comment = opening_comment(config)
    assert comment.startswith("# "), f"{config} opens without a comment saying what it changes"
    assert comment.startswith(f"# {EXTENSION}") == label.endswith(EXTENSION), (name, label, comment)


def test_the_papers_recipes_are_not_extensions():
    assert not any(EXTENSION in label or opening_comment(config).startswith(f"# {EXTENSION}")
                   for label, config in RECIPES.values())


def test_the_table_and_the_report_print_the_tag():
    label = ABLATIONS["clop_motion_skp"][0]
    rows = {RECIPES["baseline"][0]: aggregate([{"retrieval/t2v/R@1": 10.0, "clover_mlm/accuracy": 5.0}]),
            label: aggregate([{"retrieval/t2v/R@1": 12.0}])}
    table = format_table(rows, {"retrieval/t2v/R@1": 1.0})
    assert any(line.startswith(label) and "12.0±0.0" in line for line in table.splitlines())
    # A column without a chance figure (the MLM accuracy) shows "-" in the chance row, as a missing value does.
    assert table.splitlines()[-1].split() == ["chance", "1.0", "-"], table
    assert f"{label}</td>" in results_table_html(rows, ["retrieval/t2v/R@1"], {})


def test_the_corpus_spelled_relative_or_absolute_is_one_config(stubbed_demo, tmp_path, monkeypatch, one_thread,
                                                             capsys):
    monkeypatch.chdir(tmp_path)
    assert run_demo(out="runs", data="structured", recipes=["baseline"], overrides=stubbed_demo,
                    isolate=False) == 0
    run = tmp_path / "runs" / "baseline" / "seed0"
    assert load_config(run / "config.yaml", check_init=False).data.root == str((tmp_path / "structured").resolve())
    capsys.readouterr()
    assert run_demo(out="runs", data=tmp_path / "structured", recipes=["baseline"], overrides=stubbed_demo,
                    isolate=False) == 0
    assert "finished before with this exact config and code" in capsys.readouterr().out
    assert not list(run.parent.glob("seed0.replaced-*"))
