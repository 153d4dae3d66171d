#!/usr/bin/env bash
# What cron runs every few minutes (./install_cron.sh installs the line): runs the jobs due now by
# the NYSE calendar in New York time, each at most once per session, one at a time.
#   ./run_scheduled.sh                 run the due jobs (exit 0 ok or nothing due, 1 a job failed)
#   ./run_scheduled.sh --dry-run       what is due now and why; changes nothing
# Logs: logs/scheduler_YYYYMMDD.log; the jobs' own output goes to cron's log (logs/cron_trading.log).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
exec "$PY" "$PROJECT_DIR/scheduler.py" "$@"
