#!/usr/bin/env bash
# Every runbook check, one line each. Exit 0 healthy, 1 warnings, 2 failures.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
exec "$PY" "$PROJECT_DIR/health_check.py" "$@"
