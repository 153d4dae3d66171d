#!/usr/bin/env bash
# Download prices for selected_stocks.txt, validate them, rebuild processed_stock_data.csv.
#   ./run_daily_data_update.sh           skip when the file is fresh
#   ./run_daily_data_update.sh --force   refetch everything and rebuild
# Logs: logs/data_update_YYYYMMDD.log (errors also in logs/errors.log). Exit 0 ok, 1 failed, 2 setup.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
exec "$PY" "$PROJECT_DIR/data_collection.py" "$@"
