#!/usr/bin/env bash
# The whole system, end to end, on the offline sample data set, in its own TRADING_HOME
# (.demo_home/): nothing here can touch real data, models, logs, credentials or a broker.
set -uo pipefail
cd "$(dirname "$0")/.."
export TRADING_HOME="${DEMO_HOME:-$PWD/.demo_home}" DATA_SOURCE=sample TRADING_MODE=paper
export TRADING_CONFIG_DIR="$TRADING_HOME/keys" TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
PY=${TRADING_PYTHON:-.venv/bin/python}   # TRADING_PYTHON: the suite's interpreter (tests on 3.11)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { echo "DEMO FAILED at: $*" >&2; exit 1; }
# every run starts clean and ends the same way; only a folder an earlier demo made is removed
MARK="$TRADING_HOME/.made_by_make_demo"
if [[ -e "$TRADING_HOME" && ! -e "$MARK" && -n "$(ls -A "$TRADING_HOME" 2>/dev/null)" ]]; then
  fail "$TRADING_HOME exists and was not made by make demo: remove it or set DEMO_HOME to a new folder"
fi
rm -rf "$TRADING_HOME"
mkdir -p "$TRADING_HOME" && touch "$MARK"

echo "DATA_SOURCE=sample: SYNTHETIC sample prices, not market data (real tickers, made-up prices;"
echo "see sample_data.py). Nothing here says anything about the real stocks."

step "1/6 data: SYNTHETIC sample prices -> validation -> features -> processed_stock_data.csv"
./run_daily_data_update.sh --force 2>/dev/null | sed 's/^/   /'
[[ ${PIPESTATUS[0]} -eq 0 ]] || fail "data update (see $TRADING_HOME/logs/)"
"$PY" - <<'PY'
import data_collection as d
df = d.load_processed()
print(f"   {len(df)} rows, {df.Symbol.nunique()} symbols, {df.Date.min().date()} .. {df.Date.max().date()}, "
      f"NaN: {int(df.isna().sum().sum())}, features: {', '.join(d.FEATURE_COLUMNS)}")
PY

step "2/6 model: train a small LSTM on the sample data (test metrics vs the naive baseline)"
"$PY" train_model.py --profile tiny --force 2>&1 | grep -E "directional_accuracy|MSE|skill|promot|ERROR" | sed 's/^.*\] /   /' \
  || fail "training"
"$PY" model_management.py verify >/dev/null 2>&1 || fail "model verification"

step "3/6 walk-forward: retrain every 252 sessions, predict only the sessions after each retrain (Ray)"
echo "   the evidence the go-live gate asks for: 4 folds of the tiny model, about 1-2 minutes (the newest"
echo "   252 sessions are the sealed holdout: python walk_forward.py holdout opens them once)"
./run_backtest.sh --walk-forward --profile tiny --retrain 252 | sed 's/^/   /'; rc=${PIPESTATUS[0]}
case $rc in
  0) echo "   walk-forward PASS: out of sample, the forecasts beat both naive baselines significantly and the"
     echo "   strategy beat equal-weight buy-and-hold after costs by more than luck" ;;
  1) echo "   walk-forward FAIL: that evidence is missing (the FAIL lines above say which part); the go-live"
     echo "   gate refuses live trading on it. The sample's predictability is documented in docs/MODEL.md" ;;
  *) fail "walk-forward (exit $rc)" ;;
esac

step "4/6 backtest: out-of-sample replay with the live rules (its report links the walk-forward's folds)"
./run_backtest.sh 2>/dev/null; rc=$?
[[ $rc -le 1 ]] || fail "backtest (exit $rc)"
[[ $rc -eq 0 ]] && echo "   go-live criteria: PASS" || echo "   go-live criteria: not met (exit 1) -- a real deployment would stay in paper mode"
echo "   report: $TRADING_HOME/reports/latest_backtest.html"

step "5/6 paper trading: replay the last 10 sample sessions, one cycle each (positions carry over)"
echo "   replays (--as-of) trade a throwaway replay account, never the real paper account:"
echo "   'status --replay' and 'history --replay' show it"
days=$("$PY" -c "import data_collection as d; print(' '.join(str(x.date()) for x in sorted(d.load_processed().Date.unique())[-10:]))")
for day in $days; do
  out=$("$PY" live_trading.py --as-of "$day" 2>/dev/null) || fail "paper trading cycle as of $day"
  orders=$(grep -m1 '^orders:' <<<"$out")
  echo "   $day: $orders"
done
echo "   --- the last cycle ($day): signals, orders, resulting positions"
sed 's/^/   /' <<<"$out"

step "6/6 the replay account (status --replay, history --replay), audit trail and health check"
"$PY" live_trading.py status --replay 2>/dev/null | sed 's/^/   /'
[[ ${PIPESTATUS[0]} -eq 0 ]] || fail "status --replay"
echo "   --- round trips and fills of the replay account (last 10 fills)"
"$PY" live_trading.py history --replay --limit 10 2>/dev/null | sed 's/^/   /'
[[ ${PIPESTATUS[0]} -eq 0 ]] || fail "history --replay"
"$PY" audit_logging.py verify 2>/dev/null | sed 's/^/   /'
[[ ${PIPESTATUS[0]} -eq 0 ]] || fail "audit verification"
./run_health_check.sh | sed 's/^/   /'
echo "   status page: $TRADING_HOME/reports/status.html (the paper account of scheduled cycles: still"
echo "   empty here, since the demo traded only the replay account shown by status --replay above)"
echo
echo "Everything above ran in $TRADING_HOME (logs in $TRADING_HOME/logs). 'make clean-demo' removes it;"
echo "the next 'make demo' starts again from nothing. To look at the demo's state yourself, paste:"
echo
echo "  export TRADING_HOME=\"$TRADING_HOME\" TRADING_CONFIG_DIR=\"$TRADING_CONFIG_DIR\" DATA_SOURCE=sample"
echo "  . .venv/bin/activate"
echo "  python audit_logging.py verify"
echo "  ./run_health_check.sh"
echo "  python live_trading.py status --replay      # the replay account the demo traded"
echo "  python live_trading.py history --replay"
echo
echo "(open a new shell, or 'unset TRADING_HOME TRADING_CONFIG_DIR DATA_SOURCE', to get back to your own set-up)"
