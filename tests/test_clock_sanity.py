"""clock_sanity.py: the clock checks before any order, and broker order windows that survive a
clock a day or weeks away from Schwab's (issue 19, points 1 and 2).

The Schwab cases run schwab-py's real client in this process against the fake Schwab over HTTP on
127.0.0.1 (tests/fake_schwab_server.py, ``schwab_routed``), whose clock (``enteredTime``, the
``Date`` header, the order query filter, the 60-day limit of ``fromEnteredTime``) is ours plus
``clock_skew_s``. A "crash after Schwab accepted the order" is the order stored and the connection
closed without an answer (``drop_next_post``) with no retry: the row is left SENDING, as a killed
process leaves it; the rerun is a new connection, ``SchwabAPI`` and executor. The whole cycle (the
refusal before any order, the rerun after a crash) is proven with real processes in
tests/test_clock_skew_matrix.py."""
from datetime import date, datetime, timedelta, timezone

import pytest

import clock
import clock_sanity
import constants as C
import state_db
from audit_recorder import Recorder
from broker_gateway import BrokerGateway, CircuitBreaker
from schwab_broker import SchwabAPI
from credential_manager import CredentialManager
from fake_schwab_server import store_credentials
from schwab_env import fake_schwab, schwab_routed  # noqa: F401  (fixtures)
from order_recovery import AmbiguousOrderError
from trading_execution import OrderExecutor, client_key

UTC = timezone.utc
HOUR, DAY_S = 3600.0, 86_400.0
# Schwab's clock minus ours: the cases (our clock 23 h, 25 h, 48 h, 16 days behind) and
# ours ahead of Schwab's by a day
BIG_SKEWS = [23 * HOUR, 25 * HOUR, 48 * HOUR, 16 * DAY_S, -25 * HOUR]
TRADE_DAY = "2026-11-23"
T0 = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)


# ------------------------------------------------------------------ the rules
def test_skew_within_the_limit_passes_beyond_it_names_both_times_and_the_fix():
    assert clock_sanity.skew_problem(T0, None) is None                       # paper: no clock of its own
    assert clock_sanity.skew_problem(T0, T0 + timedelta(seconds=C.CLOCK_MAX_SKEW_S)) is None
    assert clock_sanity.skew_problem(T0, T0 - timedelta(seconds=C.CLOCK_MAX_SKEW_S)) is None
    ahead = clock_sanity.skew_problem(T0, T0 + timedelta(hours=25), "Schwab")
    assert ahead.startswith("CLOCK SKEW:") and "\n" not in ahead
    assert "2026-11-24 16:00:00 UTC" in ahead and "2026-11-25 17:00:00 UTC" in ahead
    assert "Schwab is 25.0 h ahead of us" in ahead and "CLOCK_MAX_SKEW_S = 120 s" in ahead
    assert "timedatectl" in ahead and "chronyc tracking" in ahead and "no order was sent" in ahead
    behind = clock_sanity.skew_problem(T0, T0 - timedelta(days=16), "Schwab")
    assert "Schwab is 16.0 days behind us" in behind
    assert clock_sanity.skew_problem(T0, T0 + timedelta(seconds=200), limit_s=300) is None


def test_a_clock_before_the_last_cycles_end_went_backwards():
    assert clock_sanity.backwards_problem(T0, None) is None
    assert clock_sanity.backwards_problem(T0, T0 + timedelta(seconds=60)) is None   # within the limit
    line = clock_sanity.backwards_problem(T0, T0 + timedelta(days=16))
    assert line.startswith("CLOCK BACKWARDS:") and "2026-12-10 16:00:00 UTC" in line and "16.0 days" in line
    assert "timedatectl" in line and "\n" not in line


def test_a_session_before_the_last_traded_or_the_data_is_refused():
    now = datetime(2026, 11, 9, 10, 0, tzinfo=UTC)
    day = date(2026, 11, 6)
    assert clock_sanity.session_problem(day, now) is None
    assert clock_sanity.session_problem(day, now, last_traded=day, last_data=day) is None
    traded = clock_sanity.session_problem(day, now, last_traded=date(2026, 11, 23))
    assert traded.startswith("CLOCK BEHIND:") and "2026-11-06" in traded and "2026-11-23" in traded
    assert "the last cycle traded the session of 2026-11-23" in traded and "timedatectl" in traded
    data = clock_sanity.session_problem(day, now, last_traded=date(2026, 11, 5), last_data=date(2026, 11, 20))
    assert "the processed data already reaches 2026-11-20" in data and "--as-of" in data
    pinned = clock_sanity.session_problem(day, now, last_data=date(2026, 11, 20), pinned=True)
    assert "TRADING_NOW=" in pinned and "unset it" in pinned


def test_order_windows_reach_both_clocks(monkeypatch):
    ours = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)
    monkeypatch.setattr(clock, "machine_now", lambda: ours)
    ahead, behind = ours + timedelta(hours=48), ours - timedelta(hours=25)
    assert clock_sanity.window_start(None, 3600) == ours - timedelta(hours=1)
    assert clock_sanity.window_start(ahead, 3600) == ours - timedelta(hours=1)
    assert clock_sanity.window_start(behind, 3600) == behind - timedelta(hours=1)
    margin = timedelta(seconds=C.SCHWAB_ORDER_QUERY_AHEAD_S)
    assert clock_sanity.window_end() == ours + margin
    assert clock_sanity.window_end(ahead, None) == ahead + margin
    assert clock_sanity.window_end(behind, ahead + timedelta(days=16)) == ahead + timedelta(days=16) + margin


def test_machine_now_is_never_pinned(fixed_now):
    assert clock.now() == fixed_now                                   # the suite pins TRADING_NOW
    assert abs((clock.machine_now() - datetime.now(UTC)).total_seconds()) < 5


# ------------------------------------------------------------------ the Schwab path, in process
@pytest.fixture
def schwab_home(trading_home):
    """Schwab credentials stored where ``SchwabAPI()`` of this process reads them."""
    store_credentials(CredentialManager())
    return trading_home


def _query_window(server):
    listing = [r for r in server.requests if r["method"] == "GET" and r["path"].endswith("/orders")][-1]
    q = listing["query"]
    return _parse(q["fromEnteredTime"][0]), _parse(q["toEnteredTime"][0])


def _parse(text: str) -> datetime:
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise ValueError(text)


@pytest.mark.parametrize("skew", BIG_SKEWS, ids=lambda s: f"schwab{s / HOUR:+g}h")
def test_schwab_order_query_reaches_past_schwabs_clock(schwab_home, schwab_routed, skew):
    """The window ends after Schwab's clock (learnt before the first query) and starts within the
    60 days Schwab keeps by ITS clock (the fake refuses an older start, as Schwab does)."""
    server = schwab_routed
    server.clock_skew_s = skew
    oid = server.place_manual_order("AAPL", "BUY", 10)
    api = SchwabAPI()
    assert api.server_time is None
    since = datetime.now(UTC) - timedelta(seconds=C.ORDER_SNAPSHOT_LOOKBACK_S + max(-skew, 0))
    listed = api.get_orders_since(since)
    assert [o["order_id"] for o in listed] == [str(oid)]
    low, high = _query_window(server)
    assert high >= server.now() + timedelta(hours=23)
    assert api.server_time is not None and abs((api.server_time - server.now()).total_seconds()) < 5
    # the open-order listing reaches back 59 days on the later clock: Schwab accepts it
    assert [o["order_id"] for o in api.get_open_orders()] == [str(oid)]
    low, _ = _query_window(server)
    assert low >= server.now() - timedelta(days=60)


@pytest.mark.parametrize("skew", BIG_SKEWS, ids=lambda s: f"schwab{s / HOUR:+g}h")
def test_crash_after_schwab_accepted_then_rerun_sends_once(schwab_home, schwab_routed, skew):
    """Issue 19 point 1: with Schwab's clock a day or weeks from ours, the rerun after a crash
    right after Schwab accepted the order finds it (adopted) and sends nothing again."""
    server = schwab_routed
    server.clock_skew_s = skew
    order = {"symbol": "AAPL", "side": "BUY", "quantity": 10, "order_type": "MARKET", "price": 100.0}
    key = client_key(TRADE_DAY, "AAPL", "BUY")
    conn, api = state_db.connect(), SchwabAPI()
    first = OrderExecutor(broker=api, conn=conn, audit=Recorder(), sleep=lambda s: None,
                          gateway=BrokerGateway(CircuitBreaker(conn), api, sleep=lambda s: None, retries=0))
    server.drop_next_post = True                     # stored at Schwab; the answer never arrives
    with pytest.raises(Exception):
        first.submit(order, TRADE_DAY, "live")
    assert len(server.posted_orders()) == 1
    assert conn.execute("SELECT status FROM orders WHERE client_key = ?", (key,)).fetchone()[0] == "SENDING"
    conn.close()
    rerun = OrderExecutor(broker=SchwabAPI(), conn=state_db.connect(), audit=Recorder(), sleep=lambda s: None)
    ours = str(server.posted_orders()[0]["orderId"])
    with pytest.raises(AmbiguousOrderError, match=f"candidates: {ours}"):   # found, not "did not land"
        rerun.submit(order, TRADE_DAY, "live")         # no client id at Schwab: a person decides (point 13)
    assert server.duplicates() == {}, f"sent twice: {server.duplicates()}"
    assert len(server.posted_orders()) == 1
    record = rerun.resolve(key, ours, "test: the API order is ours")
    assert record["broker_order_id"] == ours and record["status"] != "SENDING"   # linked, as Schwab has it
