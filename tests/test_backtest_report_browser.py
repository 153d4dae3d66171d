"""The backtest report in headless Chromium (Debian's ``chromium``): a real backtest of a tiny model
on the sample data, its rendered page's key figures (total return, Sharpe, round trips, best and
worst trade, a round-trip row, the yearly totals, the walk-forward folds) checked against the JSON
report, and screenshots saved to ``$TEST_ARTIFACTS_DIR`` or ``reports/screenshots/``."""
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from browser import ARTIFACTS, chromium, needs_chromium, rendered_dom

import report_tables as rt
from conftest import TRAINED_FILES, run_entry

ROOT = Path(__file__).resolve().parent.parent
LOOSE = ["--min-sharpe", "-100", "--min-total-return", "-1", "--max-drawdown", "1", "--min-trades", "0"]
FOLDS = [{"fold": 1, "train_start": "2019-01-02", "train_end": "2022-12-30", "test_start": "2023-01-03",
          "test_end": "2023-12-29", "total_return": 0.0412, "sharpe": 0.71},
         {"fold": 2, "train_start": "2019-01-02", "train_end": "2023-12-29", "test_start": "2024-01-02",
          "test_end": "2024-12-31", "total_return": -0.0133, "sharpe": -0.2}]


@pytest.fixture(scope="module")
def report(trained, tmp_path_factory):
    """Sample data (SYNTHETIC) and the session's tiny model (conftest's ``trained``), a walk-forward
    report beside it, one backtest of a three-symbol universe over the whole history (--in-sample:
    the tiny model trades too rarely out of sample to close trips)."""
    home = tmp_path_factory.mktemp("report_home")
    (home / "selected_stocks.txt").write_text("AAPL\nMSFT\nJPM\n")
    for name in TRAINED_FILES:                            # the session's sample data and tiny model
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(trained["home"] / name, home / name)
    (home / "reports").mkdir()
    (home / "reports" / "latest_walkforward.json").write_text(json.dumps(
        {"title": "Walk-forward 2023-01-03 .. 2024-12-31 (2 folds)", "created_at": "2025-01-01T00:00:00+00:00",
         "passed": False, "folds": FOLDS}))
    done = run_entry(["backtest.py", "--no-progress", "--no-record", "--in-sample", *LOOSE], home, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "SYNTHETIC sample prices, not market data" in done.stdout            # the console summary
    reports = home / "reports"
    return json.loads((reports / "latest_backtest.json").read_text()), reports / "latest_backtest.html"


class _Dom(HTMLParser):
    """Attributes and text of every element with an id; the rows of each table by table id."""
    def __init__(self):
        super().__init__()
        self.ids, self.text, self.tables, self.body = {}, {}, {}, {}
        self._open: list[str] = []          # ids of the open elements with an id
        self._stack: list[str | None] = []
        self._table = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if tag == "table" and "id" in a:
            self._table = a["id"]
            self.tables[self._table] = []
        if tag == "tr" and self._table:
            self.tables[self._table].append({**a, "cells": []})
        if tag == "td" and self._table and self.tables[self._table]:
            self.tables[self._table][-1]["cells"].append("")
        if "id" in a:
            self.ids[a["id"]] = a
            self.text[a["id"]] = ""
            self._open.append(a["id"])
        if tag not in ("br", "img", "meta", "link", "input", "hr"):
            self._stack.append(a.get("id"))

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        if self._stack:
            closed = self._stack.pop()
            if closed is not None and self._open and self._open[-1] == closed:
                self._open.pop()

    def handle_data(self, data):
        for i in self._open:
            self.text[i] += data
        if self._table and self.tables[self._table] and self.tables[self._table][-1]["cells"]:
            self.tables[self._table][-1]["cells"][-1] += data


@needs_chromium
def test_rendered_report_figures_match_the_json(report, tmp_path):
    data, page = report
    dom = rendered_dom(_Dom(), page.as_uri(), tmp_path)
    s = data["metrics"]["strategy"]
    # the summary at the top: shown text and value both from the JSON
    assert float(dom.ids["summary-return"]["data-value"]) == pytest.approx(s["total_return"])
    assert f"{100 * s['total_return']:.2f}%" in dom.text["summary-return"]
    assert float(dom.ids["summary-sharpe"]["data-value"]) == pytest.approx(s["sharpe"])
    assert f"{s['sharpe']:.2f}" in dom.text["summary-sharpe"]
    closed = [t for t in data["round_trips"] if not t["open"]]      # only closed round trips are trades
    assert int(float(dom.ids["summary-trades"]["data-value"])) == s["trades"] == len(closed)
    assert dom.text["summary-trades"].split("round trips", 1)[1].strip().startswith(str(s["trades"]))
    assert "SYNTHETIC sample prices, not market data" in dom.text["data-source"]
    # best and worst trade: the JSON's, and really the largest and smallest round trip
    trips = data["round_trips"]
    assert trips, "the tiny model should trade in the test period"
    best, worst = data["trade_stats"]["best"], data["trade_stats"]["worst"]
    closed_trips = [t for t in trips if not t["open"]]              # the stats are over closed trips
    assert best["pnl"] == pytest.approx(max(t["pnl"] for t in closed_trips))
    assert worst["pnl"] == pytest.approx(min(t["pnl"] for t in closed_trips))
    assert float(dom.ids["best-trade"]["data-value"]) == pytest.approx(best["pnl"])
    assert float(dom.ids["worst-trade"]["data-value"]) == pytest.approx(worst["pnl"])
    assert best["symbol"] in dom.text["best-trade"] and rt._money(best["pnl"]) in dom.text["best-trade"]
    closed_pnl = [t["pnl"] for t in trips if not t["open"]]
    assert float(dom.ids["expectancy"]["data-value"]) == pytest.approx(sum(closed_pnl) / len(closed_pnl))
    # the round-trip table: one row per trip (newest last), each row's figures as in the JSON
    rows = dom.tables["round-trips"][1:]
    shown = trips[-len(rows):]
    assert len(rows) == min(len(trips), rt.C.REPORT_MAX_TRIPS_SHOWN)
    for row, trip in zip(rows, shown):
        assert row["data-symbol"] == trip["symbol"] and float(row["data-pnl"]) == pytest.approx(trip["pnl"])
        cells = [c.strip() for c in row["cells"]]
        assert cells[0] == trip["symbol"] and cells[1] == trip["side"] and cells[2] == trip["entry_date"]
        assert cells[7] == rt._money(trip["pnl"]) and cells[10] == trip["why_closed"]
    closed = [t for t in trips if not t["open"]]
    assert closed and all(t["why_closed"] for t in closed)
    assert {t["why_closed"] for t in closed} & {"SELL signal", "BUY signal (short covered)", "resized by risk limits",
                                               "risk halt (trading halted: positions only move toward flat)"}
    # per symbol and long/short add up to the total; yearly totals beside the monthly heatmap
    per_symbol = dom.tables["per-symbol"][1:]
    assert sum(int(r["data-trades"]) for r in per_symbol) == len(closed)      # closed trips only
    assert sum(float(r["data-total"]) for r in per_symbol) == pytest.approx(sum(t["pnl"] for t in closed))
    assert {r["data-key"] for r in dom.tables["long-short"][1:]} <= {"long", "short"}
    years = {r["data-year"]: float(r["data-total"]) for r in dom.tables["monthly-returns"][1:]}
    assert years == pytest.approx({y: v for y, v in data["yearly_returns"].items()})
    # the walk-forward folds, linked to their report; parameters readable, not raw JSON
    assert [c.strip() for c in dom.tables["folds"][1]["cells"][:2]] == ["1", "2019-01-02"]
    assert len(dom.tables["folds"]) == 1 + len(FOLDS)
    assert data["walk_forward"]["folds"] == FOLDS
    assert "latest_walkforward.html" in page.read_text()
    assert dom.ids["parameters"] and '{"' not in dom.text["parameters"]


@needs_chromium
def test_report_screenshots_full_width(report, tmp_path):
    data, page = report
    probe = page.with_name("width_probe.html")
    probe.write_text('<!DOCTYPE html><html><body style="margin:0"><iframe src="latest_backtest.html" '
                     'style="width:1800px;height:900px;border:0" onload="document.body.setAttribute('
                     "'data-width', this.contentDocument.getElementById('summary').offsetWidth)\">"
                     "</iframe></body></html>")
    dom = rendered_dom(_Dom(), probe.as_uri(), tmp_path,
                       ["--allow-file-access-from-files", "--window-size=1900,1000"])
    assert int(dom.body["data-width"]) > 1500                             # not a 1100 px column
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, size in (("backtest_report_desktop.png", "1600,2400"), ("backtest_report_narrow.png", "600,2000")):
        shot = ARTIFACTS / name
        chromium([f"--window-size={size}", f"--screenshot={shot}", page.as_uri()], tmp_path)
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
