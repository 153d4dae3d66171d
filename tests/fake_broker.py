"""An in-memory broker with the interface of ``broker_base.Broker``, for the fast unit tests of the
order path (order book, gateway, recovery, external activity). Only the broker is faked: the
executor, the book, the gateway and recovery run for real against the test's state database.

``fail(method, *errors)`` makes the next calls of ``method`` raise ``errors`` one by one; an error
may be a callable taking the call's arguments (e.g. to store the order and then time out).
``calls`` counts every call by method name."""
from collections import Counter, deque
from datetime import datetime, timedelta, timezone

from broker_base import FINAL_STATUSES, OPEN_STATUSES, BrokerError

UTC = timezone.utc


class FakeBroker:
    name = "fake"
    simulated = True

    def __init__(self, *, fills_at_next_open: bool = False, keeps_client_key: bool = False):
        self.fills_at_next_open = fills_at_next_open
        self.keeps_client_key = keeps_client_key
        self.server_time: datetime | None = None
        self.orders: dict[str, dict] = {}
        self.positions: dict[str, int] = {}
        self.calls: Counter = Counter()
        self._failures: dict[str, deque] = {}
        self._next_id = 1000

    # -- scripting
    def fail(self, method: str, *errors) -> None:
        self._failures.setdefault(method, deque()).extend(errors)

    def _maybe_fail(self, method: str, *args) -> None:
        self.calls[method] += 1
        queue = self._failures.get(method)
        if queue:
            error = queue.popleft()
            if callable(error) and not isinstance(error, BaseException):
                error = error(*args)
            if error is not None:
                raise error

    def add_order(self, symbol="AAPL", side="BUY", quantity=10, status="WORKING", client_key=None,
                  order_type="MARKET", entered_time=None) -> str:
        """An order at the broker (ours through ``place_order``, or someone else's)."""
        self._next_id += 1
        oid = str(self._next_id)
        self.orders[oid] = {"order_id": oid, "symbol": symbol, "side": side, "quantity": int(quantity),
                            "order_type": order_type, "status": status, "filled_quantity": 0,
                            "remaining_quantity": int(quantity), "avg_fill_price": None,
                            "entered_time": entered_time or datetime.now(UTC),
                            "client_key": client_key if self.keeps_client_key else None}
        return oid

    def fill(self, oid: str, price: float = 100.0, quantity: int | None = None) -> None:
        """Fill ``oid`` up to ``quantity`` in all (default: entirely); the position moves by the difference."""
        o = self.orders[oid]
        qty = o["quantity"] if quantity is None else quantity
        delta = qty - o["filled_quantity"]
        o.update(filled_quantity=qty, remaining_quantity=o["quantity"] - qty, avg_fill_price=price,
                 status="FILLED" if qty == o["quantity"] else "PARTIALLY_FILLED")
        signed = delta if o["side"] in ("BUY", "BUY_TO_COVER") else -delta
        self.positions[o["symbol"]] = self.positions.get(o["symbol"], 0) + signed

    # -- the interface
    def get_account_balance(self) -> dict:
        self._maybe_fail("get_account_balance")
        return {"equity": 100_000.0, "cash": 100_000.0, "buying_power": 100_000.0}

    def get_positions(self) -> dict:
        self._maybe_fail("get_positions")
        return {s: {"quantity": q, "avg_price": 100.0, "market_value": 100.0 * q, "recalled": False}
                for s, q in self.positions.items() if q}

    def get_quotes(self, symbols) -> dict:
        self._maybe_fail("get_quotes")
        return {s: {"last": 100.0} for s in symbols}

    def set_prices(self, prices, as_of=None, opens=None, bars=None) -> None:
        return None

    def apply_corporate_actions(self, actions, through=None) -> list[dict]:
        return []

    def place_order(self, order: dict) -> str:
        self._maybe_fail("place_order", order)
        return self.add_order(order["symbol"], order["side"], order["quantity"], client_key=order.get("client_key"),
                              order_type=order.get("order_type") or "MARKET")

    def get_order(self, order_id) -> dict:
        self._maybe_fail("get_order", order_id)
        if str(order_id) not in self.orders:
            raise BrokerError(f"no order {order_id}")
        return dict(self.orders[str(order_id)])

    def cancel_order(self, order_id) -> None:
        self._maybe_fail("cancel_order", order_id)
        o = self.orders[str(order_id)]
        if o["status"] not in FINAL_STATUSES:
            o["status"] = "CANCELED"

    def get_open_orders(self) -> list[dict]:
        self._maybe_fail("get_open_orders")
        return [dict(o) for o in self.orders.values() if o["status"] in OPEN_STATUSES]

    def broker_time(self):
        return None                           # like the paper broker: no clock of its own

    def get_orders_since(self, dt, reach=None) -> list[dict]:
        self._maybe_fail("get_orders_since", dt)
        self.server_time = datetime.now(UTC)
        return [dict(o) for o in self.orders.values() if o["entered_time"] >= dt - timedelta(seconds=0)]
