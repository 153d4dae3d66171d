"""The status page: built read-only from a real paper account, rendered in headless Chromium
(Debian's ``chromium``), its figures checked against the database, screenshots saved.

Screenshots go to ``$TEST_ARTIFACTS_DIR`` or ``reports/screenshots/`` in the project."""
import threading
import urllib.error
import urllib.request
from datetime import date
from html.parser import HTMLParser
from pathlib import Path

import pytest
from browser import ARTIFACTS, chromium, needs_chromium, rendered_dom

import config
import constants as C
import pnl
import state_db
import status_page
from paper_broker import PaperBroker

ROOT = Path(__file__).resolve().parent.parent


def order(side, qty, symbol, key):
    return {"symbol": symbol, "side": side, "quantity": qty, "order_type": "MARKET", "limit_price": None,
            "client_key": key}


@pytest.fixture
def account(trading_home):
    """Three sessions of a paper account, the orders table, predictions and audit records."""
    import drift_monitor
    import pandas as pd
    from audit_logging import AuditLogger
    from trading_execution import OrderExecutor
    conn = state_db.connect()
    b = PaperBroker(conn=conn, prices={"AAPL": 100.0, "MSFT": 50.0, "JPM": 80.0}, as_of=date(2025, 3, 3))
    ex = OrderExecutor(broker=b, conn=conn, audit=AuditLogger())
    days = [(date(2025, 3, 3), {"AAPL": 100.0, "MSFT": 50.0, "JPM": 80.0},
             [("BUY", 10, "AAPL"), ("SELL_SHORT", 20, "MSFT")]),
            (date(2025, 3, 4), {"AAPL": 95.0, "MSFT": 52.0, "JPM": 81.0}, [("BUY", 5, "JPM")]),
            (date(2025, 3, 5), {"AAPL": 120.0, "MSFT": 40.0, "JPM": 79.0},
             [("SELL", 10, "AAPL"), ("BUY_TO_COVER", 20, "MSFT")])]
    for day, prices, orders in days:
        b.set_prices(prices, as_of=day)
        b.accrue_borrow_fees(as_of=day)
        for side, qty, sym in orders:
            rec = ex.submit(order(side, qty, sym, f"{day}:{sym}:{side}"), day, "paper")
            ex.refresh(rec["client_key"])
        pnl.record_equity(conn, day, b)
    scored = pd.DataFrame({"Date": pd.to_datetime(["2025-03-05"] * 3), "Symbol": ["AAPL", "MSFT", "JPM"],
                           "Close": [120.0, 40.0, 79.0], "volatility_20": [0.02] * 3,
                           "predicted_diff": [1.8, -0.2, -1.2], "score": [0.75, -0.25, -0.76],
                           "signal": ["BUY", "HOLD", "SELL"]})
    drift_monitor.record_predictions(scored, "abc123", conn)
    with state_db.transaction(conn):
        state_db.kv_set(conn, "kill_switch", {"reason": "test halt <b>", "by": "tester", "at": "2025-03-05T10:00"})
    return conn, b


HEALTH = [("OK", "mode", "TRADING_MODE=paper"), ("WARN", "data", "2 sessions behind")]


def _expected(conn):
    curve = pnl.equity_curve(conn, "paper")
    return curve, pnl.history(conn, "paper")


def test_page_figures_match_the_database(account):
    conn, b = account
    path = status_page.build_status_page(health=HEALTH, schedule=["DUE trade 09:35 ET"])
    assert path == config.path(C.STATUS_PAGE_FILE)
    text = path.read_text()
    curve, hist = _expected(conn)
    last = curve[-1]
    assert f'id="equity" data-value="{last["equity"]!r}"' in text
    assert f'id="realised" data-value="{last["realised"]!r}"' in text
    assert f'id="day-pnl" data-value="{last["equity"] - curve[-2]["equity"]!r}"' in text
    assert 'data-symbol="JPM" data-quantity="5"' in text
    assert 'id="kill-switch" data-state="on"' in text and "test halt &lt;b&gt;" in text
    assert 'data-level="WARN" data-check="data"' in text
    assert "DUE trade 09:35 ET" in text
    # self-contained: no script, nothing fetched
    assert "<script" not in text.lower()
    assert "http://" not in text and "https://" not in text and "src=" not in text


def test_missing_pieces_say_no_data_yet(trading_home):
    path = status_page.build_status_page()
    text = path.read_text()
    assert "no data yet" in text
    assert not config.path(C.STATE_DB_FILE).exists()        # read-only: the page created no database
    assert 'id="mode" class="badge paper"' in text


def test_after_the_demo_tables_never_written_say_no_data_yet_and_the_replay_is_named(trading_home):
    """Issue 23: after make demo (a backtest and replays only) the page said "unavailable:
    OperationalError: no such table: predictions" for the real account's missing tables."""
    conn = state_db.connect()
    state_db.kv_set(conn, "something", "1")                 # the database exists, most tables do not
    conn.commit()
    state_db.prepare_replay(date(2025, 3, 3))                # the demo's replays
    text = status_page.build_status_page().read_text()
    assert "unavailable" not in text and "no such table" not in text
    assert 'id="replay-note"' in text and "status --replay" in text


def test_a_broken_piece_says_unavailable_and_the_rest_shows(account, monkeypatch):
    conn, _ = account
    monkeypatch.setattr(status_page, "_recent_orders", lambda *a: 1 / 0)
    text = status_page.build_status_page().read_text()
    assert "unavailable: ZeroDivisionError" in text
    assert 'data-symbol="JPM" data-quantity="5"' in text


def test_serve_only_the_page_read_only(account):
    status_page.build_status_page()
    server = status_page.make_server(0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        body = urllib.request.urlopen(base + "/", timeout=10).read().decode()
        assert 'id="equity"' in body
        for path in ("/../state/trading_state.db", "/state/trading_state.db", "/etc/passwd"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(base + path, timeout=10)
            assert err.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(base + "/", data=b"x", method="POST"), timeout=10)
        assert err.value.code == 405
    finally:
        server.shutdown()
        server.server_close()
    assert server.server_address[0] == "127.0.0.1"


# ----------------------------------------------------------------------------- in a real browser
class _DomFigures(HTMLParser):
    """Every element's attributes by id, and table rows' data attributes, from the dumped DOM."""
    def __init__(self):
        super().__init__()
        self.ids, self.rows = {}, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids[a["id"]] = a
        if tag == "tr" and "data-symbol" in a:
            self.rows.append(a)
        if tag == "body":
            self.ids["body"] = a


@needs_chromium
def test_rendered_page_in_chromium_matches_the_database(account, tmp_path):
    conn, b = account
    path = status_page.build_status_page(health=HEALTH)
    dom = rendered_dom(_DomFigures(), path.as_uri(), tmp_path)
    curve, hist = _expected(conn)
    last = curve[-1]
    assert float(dom.ids["equity"]["data-value"]) == pytest.approx(last["equity"])
    assert float(dom.ids["equity"]["data-value"]) == pytest.approx(b.get_account_balance()["equity"])
    assert float(dom.ids["cash"]["data-value"]) == pytest.approx(last["cash"])
    assert float(dom.ids["realised"]["data-value"]) == pytest.approx(hist["realised_pnl"])
    assert float(dom.ids["unrealised"]["data-value"]) == pytest.approx(last["unrealised"])
    assert int(dom.ids["equity-chart"]["data-points"]) == len(curve) == 3
    assert float(dom.ids["equity-chart"]["data-last"]) == pytest.approx(last["equity"])
    worst = min(pnl.drawdown_series([r["equity"] for r in curve]))
    assert float(dom.ids["drawdown-worst"]["data-value"]) == pytest.approx(worst)
    positions = {r["data-symbol"]: r for r in dom.rows if "data-quantity" in r}
    assert set(positions) == {"JPM"}
    assert float(positions["JPM"]["data-unrealised"]) == pytest.approx(last["positions"][0]["unrealised_pnl"])
    signals = {r["data-symbol"]: r for r in dom.rows if "data-score" in r}
    assert {s: r["data-signal"] for s, r in signals.items()} == {"AAPL": "BUY", "MSFT": "HOLD", "JPM": "SELL"}
    assert float(dom.ids["signal-threshold"]["data-value"]) == C.SIGNAL_THRESHOLD
    trips = [r for r in dom.rows if "data-pnl" in r]
    assert sorted(float(r["data-pnl"]) for r in trips) == pytest.approx(sorted(t["pnl"] for t in hist["round_trips"]))
    assert dom.ids["kill-switch"]["data-state"] == "on"
    assert dom.ids["breaker"]["data-state"] == "closed"


PHONE_PROBE = """<!DOCTYPE html><html><body style="margin:0"><iframe src="status.html"
style="width:390px;height:844px;border:0" onload="document.body.setAttribute('data-scroll-width',
this.contentDocument.documentElement.scrollWidth)"></iframe></body></html>"""


@needs_chromium
def test_phone_width_screenshot_and_no_sideways_scroll(account, tmp_path):
    """Headless Chromium's window is at least 500 px wide, so the page is laid out in a 390 px
    iframe (an iPhone's width) of a probe page beside it; the status page itself has no script."""
    path = status_page.build_status_page(health=HEALTH, schedule=["DUE trade 09:35 ET"])
    probe = path.with_name("phone_probe.html")
    probe.write_text(PHONE_PROBE)
    flags = ["--allow-file-access-from-files", "--window-size=500,900"]
    dom = rendered_dom(_DomFigures(), probe.as_uri(), tmp_path, flags)
    assert int(dom.ids["body"]["data-scroll-width"]) <= 390
    shot = ARTIFACTS / "status_phone.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    chromium([*flags, f"--screenshot={shot}", probe.as_uri()], tmp_path)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_chromium
def test_desktop_screenshot(account, tmp_path):
    path = status_page.build_status_page(health=HEALTH, schedule=["DUE trade 09:35 ET"])
    shot = ARTIFACTS / "status_desktop.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    chromium(["--window-size=1280,1400", f"--screenshot={shot}", path.as_uri()], tmp_path)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_chromium
def test_chromium_reads_the_served_page(account, tmp_path):
    status_page.build_status_page()
    server = status_page.make_server(0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dom = rendered_dom(_DomFigures(), f"http://127.0.0.1:{server.server_address[1]}/", tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert dom.ids["mode"]["data-mode"] == "paper"
    assert "equity" in dom.ids
