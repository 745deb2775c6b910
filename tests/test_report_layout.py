"""The HTML report's results table fits a 1280-px window: every recipe and every metric column of the demo shown,
in a real headless Chromium, without a horizontal scroll."""

import json

import pytest

from structvl.lab.demo import ABLATIONS, RECIPES, TABLE_COLUMNS
from structvl.lab.report import TABLE_MAX_COLUMNS, column_groups, write_report

WIDTH, HEIGHT = 1280, 900


def test_column_groups_keep_every_column_once_in_order():
    groups = column_groups(TABLE_COLUMNS)
    assert [c for _, cols in groups for c in cols] == TABLE_COLUMNS
    assert all(0 < len(cols) <= TABLE_MAX_COLUMNS for _, cols in groups)
    assert groups[0][0] == "Zero-shot retrieval" and all(c.startswith("retrieval/") for c in groups[0][1])


@pytest.fixture
def big_report(tmp_path):
    """A report of every recipe and ablation (long labels) over every demo column, with loss curves."""
    labels = [label for label, _ in {**RECIPES, **ABLATIONS}.values()]
    rows = {label: {c: (100.0 * (i + 1) / (len(labels) + 1) + j, 0.5 * j) for j, c in enumerate(TABLE_COLUMNS)}
            for i, label in enumerate(labels)}
    runs = {}
    for i, label in enumerate(labels):
        run = tmp_path / f"run{i}"
        run.mkdir()
        (run / "metrics.jsonl").write_text("".join(json.dumps({"kind": "train", "step": s, "loss": 3.0 - 0.1 * s + i / 50})
                                                   + "\n" for s in range(10)))
        runs[label] = [run]
    chance = {c: 10.0 for c in TABLE_COLUMNS}
    path = write_report(tmp_path / "report.html", "demo", rows, TABLE_COLUMNS, chance, runs, notes="layout test")
    return path, labels


def test_results_table_fits_a_1280_px_window(big_report, headless_chromium):
    from selenium.webdriver.common.by import By

    path, labels = big_report
    driver = headless_chromium(WIDTH, HEIGHT)
    driver.get(path.as_uri())
    assert driver.execute_script("return window.innerWidth") == WIDTH
    assert driver.execute_script("return document.documentElement.scrollWidth") <= WIDTH
    tables = driver.find_elements(By.CSS_SELECTOR, "table.results")
    assert len(tables) == len(column_groups(TABLE_COLUMNS)) > 1
    shown = []
    for table in tables:
        assert table.is_displayed()
        box = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.left, r.right]", table)
        assert 0 <= box[0] and box[1] <= WIDTH
        head = table.find_elements(By.TAG_NAME, "th")
        shown += [th.text.replace("\n", "") for th in head[1:]]
        assert [tr.find_element(By.TAG_NAME, "td").text.replace("\n", " ")
                for tr in table.find_elements(By.TAG_NAME, "tr")[1:]] == labels + ["chance"]
    assert shown == TABLE_COLUMNS  # every column, in order, its name whole
    clipped = driver.execute_script(
        "return [...document.querySelectorAll('table.results td, table.results th')]"
        ".filter(c => c.scrollWidth > c.clientWidth + 1).map(c => c.textContent)")
    assert clipped == []  # no cell's text runs out of its box
