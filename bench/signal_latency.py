"""Cold-process latency of one full prediction for the default universe: Keras vs the NumPy LSTM.

    python bench/signal_latency.py [--home DIR] [--repeat 5] [--epochs 3]

Without ``--home`` it builds a throw-away TRADING_HOME: the sample data (DATA_SOURCE=sample) for
the 10 symbols of selected_stocks.txt and a model of the default architecture (window 20,
32 LSTM units; trained for ``--epochs`` epochs: latency does not depend on the weights). With
``--home`` it uses the model and processed CSV found there.

Each measurement is the wall time of a fresh ``python -c`` subprocess (interpreter start, imports,
model load, CSV read, windows, prediction of every symbol's latest row):

* keras : TensorFlow/Keras ``load_model`` + ``predict`` (what the runbook's slow path does)
* fast  : ``model_management.load_model`` + ``pandas.read_csv`` + ``TradingModel.predict(last_only=True)``
          (the API live_trading.py calls: the LSTM evaluated with NumPy, no TensorFlow)

Target: the fast cold path under 1.0 s and at least 5x faster than Keras, in the same run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import model_management as mm  # noqa: E402  (the project root is put on the path first)

KERAS = """
import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
import numpy as np, pandas as pd, keras, json
import config, constants as C, model_management as mm
meta = json.loads(config.path(C.MODEL_METADATA_FILE).read_text())
net = keras.models.load_model(config.path(C.MODEL_FILE), compile=False)
f = pd.read_csv(config.path(C.PROCESSED_DATA_FILE), parse_dates=['Date'])
X, rows = mm.make_windows(f, meta['window'], meta['feature_columns'], meta['scaler'], last_only=True)
z = net.predict(X, verbose=0)[:, 0]
d = mm.y_to_diff(mm.unscale_target(z, meta['scaler']), rows['Close'], rows['volatility_20'])
assert len(d) == {n}, len(d)
"""

FAST = """
import pandas as pd, config, constants as C, model_management as mm
m = mm.load_model()
f = pd.read_csv(config.path(C.PROCESSED_DATA_FILE), parse_dates=['Date'])
p = m.predict(f, last_only=True)
assert len(p) == {n}
"""


def cold(code: str, env: dict, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"benchmark subprocess failed:\n{proc.stderr[-3000:]}")
    return times


def prepare(home: Path, env: dict, epochs: int) -> None:
    shutil.copy2(ROOT / "selected_stocks.txt", home / "selected_stocks.txt")
    subprocess.run([sys.executable, "-c", "import data_collection as d; d.update(force=True)"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    proc = subprocess.run([sys.executable, str(ROOT / "train_model.py"), "--epochs", str(epochs)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{proc.stderr[-3000:]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", help="an existing TRADING_HOME with a model and processed CSV")
    parser.add_argument("--repeat", type=int, default=5, help="cold runs per path")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the throw-away model")
    args = parser.parse_args(argv)

    tmp = None
    if args.home:
        home = Path(args.home).resolve()
    else:
        tmp = tempfile.mkdtemp(prefix="signal_latency_")
        home = Path(tmp)
    env = dict(os.environ, TRADING_HOME=str(home), DATA_SOURCE="sample",
               PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    try:
        if not args.home:
            print(f"preparing sample data and a default-architecture model in {home} ...", flush=True)
            prepare(home, env, args.epochs)
        os.environ.update(TRADING_HOME=str(home))
        model = mm.load_model()
        feats = pd.read_csv(home / "processed_stock_data.csv", parse_dates=["Date"])
        n = feats["Symbol"].nunique()
        arch = model.metadata.get("architecture", {})
        print(f"model: window {model.window}, {arch.get('lstm_layers', '?')} x LSTM({arch.get('lstm_units', '?')}), "
              f"{arch.get('params', '?')} parameters; {n} symbols, {len(feats)} feature rows")

        cold(FAST.format(n=n), env, 1)                 # warm the OS file cache once
        results = {}
        for name, code in (("keras", KERAS), ("fast", FAST)):
            results[name] = cold(code.format(n=n), env, args.repeat)

        # warm, in-process: the backtest's call (every window of every symbol at once)
        start = time.perf_counter()
        full = model.predict(feats)
        warm_full = time.perf_counter() - start
        start = time.perf_counter()
        model.predict(feats, last_only=True)
        warm_last = time.perf_counter() - start

        print(f"\ncold-process wall time of a full prediction ({n} symbols, {args.repeat} runs each)")
        print(f"{'path':<15} {'median s':>9} {'min s':>7} {'max s':>7}")
        for name, times in results.items():
            print(f"{name:<15} {statistics.median(times):>9.3f} {min(times):>7.3f} {max(times):>7.3f}")
        k = statistics.median(results["keras"])
        f = statistics.median(results["fast"])
        print(f"ratio keras / fast: {k / f:.1f}x  (target >= 5x; fast under 1.0 s: "
              f"{'yes' if f < 1.0 else 'NO'})")
        print(f"\nwarm in-process: predict(all {len(full)} windows) {warm_full * 1000:.0f} ms, "
              f"predict(last_only) {warm_last * 1000:.1f} ms")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
