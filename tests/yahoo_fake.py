"""A fake Yahoo Finance behind a requests transport adapter, so yfinance's real request,
cookie/crumb and chart-parsing code runs offline. Prices come from the sample generator."""
import json
import threading
import time
from urllib.parse import parse_qs, urlparse

import pandas as pd
import requests
from requests.adapters import BaseAdapter

import sample_data


class FakeYahoo(BaseAdapter):
    """``behaviour`` maps a symbol to 'ok' (default), 'delisted', 'ratelimit' (429 for the first
    ``ratelimit_times`` requests, then ok) or 'hang' (never answers within the test)."""

    def __init__(self, behaviour=None, ratelimit_times=10**6, hang_s=8.0, end="2025-10-31", events=None):
        """``events``: {symbol: {"splits": {ex-date: ratio}, "dividends": {ex-date: cash}}}, served
        in the chart's ``events`` as Yahoo does; like Yahoo, the served prices are already
        split-adjusted (the sample prices), so the as-traded price before a split is ratio x them."""
        super().__init__()
        self.events = dict(events or {})
        self.behaviour = dict(behaviour or {})
        self.ratelimit_left = {s: ratelimit_times for s, b in self.behaviour.items() if b == "ratelimit"}
        self.hang_s = hang_s
        self.end = end
        self.requests = []
        self.lock = threading.Lock()

    def close(self):
        pass

    def _response(self, request, status, body, content_type="application/json"):
        resp = requests.Response()
        resp.status_code = status
        resp._content = body.encode() if isinstance(body, str) else body
        resp.headers["Content-Type"] = content_type
        resp.url = request.url
        resp.request = request
        resp.encoding = "utf-8"
        return resp

    def send(self, request, **kwargs):
        url = urlparse(request.url)
        with self.lock:
            self.requests.append(request.url)
        if url.netloc == "fc.yahoo.com":
            return self._response(request, 404, "", "text/html")
        if url.path.endswith("/v1/test/getcrumb"):
            return self._response(request, 200, "fakecrumb", "text/plain")
        if "/v8/finance/chart/" in url.path:
            symbol = url.path.rsplit("/", 1)[-1].upper()
            return self._chart(request, symbol, parse_qs(url.query))
        return self._response(request, 404, "{}")

    def _chart(self, request, symbol, query):
        mode = self.behaviour.get(symbol, "ok")
        if mode == "hang":
            time.sleep(self.hang_s)
            return self._response(request, 504, "{}")
        if mode == "ratelimit":
            with self.lock:
                left = self.ratelimit_left.get(symbol, 0)
                self.ratelimit_left[symbol] = left - 1
            if left > 0:
                return self._response(request, 429, "Too Many Requests", "text/plain")
        if mode == "delisted":
            body = {"chart": {"result": None, "error": {
                "code": "Not Found", "description": "No data found, symbol may be delisted"}}}
            return self._response(request, 404, json.dumps(body))
        raw = sample_data.generate_prices([symbol], end=self.end)
        if "period1" in query:
            start = pd.Timestamp(int(query["period1"][0]), unit="s").normalize()
            stop = pd.Timestamp(int(query["period2"][0]), unit="s")
            raw = raw[(raw["Date"] >= start) & (raw["Date"] < stop)]
        else:
            raw = raw.tail(1)
        stamps = [int((d + pd.Timedelta(hours=14, minutes=30)).timestamp()) for d in raw["Date"]]
        quote = {k.lower(): raw[k].round(4).tolist() for k in ["Open", "High", "Low", "Close"]}
        quote["volume"] = raw["Volume"].astype(int).tolist()
        last = raw.iloc[-1] if len(raw) else None
        meta = {
            "currency": "USD", "symbol": symbol, "exchangeName": "NMS", "fullExchangeName": "NasdaqGS",
            "instrumentType": "EQUITY", "firstTradeDate": 345479400,
            "regularMarketTime": stamps[-1] if stamps else 0, "hasPrePostMarketData": True,
            "gmtoffset": -18000, "timezone": "EST", "exchangeTimezoneName": "America/New_York",
            "regularMarketPrice": float(last["Close"]) if last is not None else None,
            "chartPreviousClose": float(raw["Close"].iloc[0]) if len(raw) else None,
            "priceHint": 2, "dataGranularity": "1d", "range": "",
            "validRanges": ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"],
        }
        result = {"meta": meta, "timestamp": stamps,
                  "indicators": {"quote": [quote], "adjclose": [{"adjclose": quote["close"]}]}}
        events = self._events(symbol, raw["Date"])
        if events:
            result["events"] = events
        return self._response(request, 200, json.dumps({"chart": {"result": [result], "error": None}}))


    def _events(self, symbol, dates) -> dict:
        """Yahoo's ``events`` block (splits with numerator/denominator, dividends with amount),
        keyed by the ex-date's 09:30 New York timestamp, for the dates served."""
        spec = self.events.get(symbol) or {}
        served = set(pd.DatetimeIndex(dates))
        out: dict = {}
        for day, ratio in (spec.get("splits") or {}).items():
            if pd.Timestamp(day) in served:
                ts = int((pd.Timestamp(day) + pd.Timedelta(hours=14, minutes=30)).timestamp())
                out.setdefault("splits", {})[str(ts)] = {"date": ts, "numerator": float(ratio),
                                                         "denominator": 1.0, "splitRatio": f"{ratio:g}:1"}
        for day, amount in (spec.get("dividends") or {}).items():
            if pd.Timestamp(day) in served:
                ts = int((pd.Timestamp(day) + pd.Timedelta(hours=14, minutes=30)).timestamp())
                out.setdefault("dividends", {})[str(ts)] = {"amount": float(amount), "date": ts}
        return out


def session_for(adapter: FakeYahoo) -> requests.Session:
    s = requests.Session()
    s.mount("https://", adapter)
    s.mount("http://", adapter)
    return s
