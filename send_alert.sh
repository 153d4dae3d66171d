#!/usr/bin/env bash
# Send a message through every configured alert channel (apprise URLs: python alerts.py list).
#   ./send_alert.sh "CRITICAL: Check trading system immediately"
#   ./send_alert.sh --severity immediate "message"      (immediate | "same day" | "next day")
# Exit 0 delivered to every channel, 1 not (no channel, or one failed: see the log).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
exec "$PY" "$PROJECT_DIR/alerts.py" send "$@"
