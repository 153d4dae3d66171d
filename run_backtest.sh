#!/usr/bin/env bash
# Backtest the current model with the live cycle's rules; check the go-live criteria.
#   ./run_backtest.sh                       out-of-sample period (after the model's training/validation data)
#   ./run_backtest.sh --start 2025-01-02 --end 2025-06-30 --symbols AAPL,MSFT
#   ./run_backtest.sh --in-sample --start 2021-01-04      an IN-SAMPLE run (never counts for going live)
#   ./run_backtest.sh --help                              every option (costs, cash, fill, criteria)
#   ./run_backtest.sh --walk-forward [--profile tiny] [--workers N]   walk-forward with retraining, folds on Ray
#                                                          (RAY_ADDRESS: a cluster); exit 0 pass, 1 fail, 2 error
# Writes reports/backtest_<timestamp>.{json,html} and reports/latest_backtest.*; logs to
# logs/trading_YYYYMMDD.log. Exit 0: go-live criteria pass; 1: they do not; 2: error (missing model/data).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
exec "$PY" "$PROJECT_DIR/backtest.py" "$@"
