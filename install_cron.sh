#!/usr/bin/env bash
# Install, print or remove the project's crontab block (one line: ./run_scheduled.sh every few
# minutes on New York's weekdays). Every other crontab line is left untouched. No CRON_TZ.
#   ./install_cron.sh            install or update
#   ./install_cron.sh --print    show the block
#   ./install_cron.sh --remove   remove the block
# TRADING_CRONTAB_FILE=FILE edits FILE instead of your crontab (tests).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
exec "$PY" "$PROJECT_DIR/cron_install.py" "$@"
