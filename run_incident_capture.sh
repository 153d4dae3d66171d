#!/usr/bin/env bash
# Capture the system's state into ONE file for an incident: ./run_incident_capture.sh
# (the runbook's version computed the file name three times and could write three files).
# Prints the file's path. Read-only: trades nothing, changes no state.
set -uo pipefail
case "${1:-}" in
  -h|--help)
    echo "usage: ./run_incident_capture.sh"
    echo "Capture the system's state (health check, status, risk, audit chain, log tails) into ONE"
    echo "file, \$TRADING_HOME/incident_YYYYMMDD_HHMMSS.log (mode 600), and print its path."
    echo "Read-only: trades nothing, changes no state."
    exit 0 ;;
  "") ;;
  *) echo "usage: ./run_incident_capture.sh   (no arguments; --help for help)" >&2; exit 2 ;;
esac
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
HOME_DIR="${TRADING_HOME:-$PROJECT_DIR}"
out="$HOME_DIR/incident_$(date +%Y%m%d_%H%M%S).log"
{
  echo "=== incident capture $(date -Is) on $(hostname) by ${USER:-?}"
  echo "=== TRADING_MODE=${TRADING_MODE:-<unset: paper>} TRADING_HOME=$HOME_DIR"
  echo; echo "=== health check"; "$PY" "$PROJECT_DIR/health_check.py" 2>&1
  echo; echo "=== status"; "$PY" "$PROJECT_DIR/live_trading.py" status 2>&1
  echo; echo "=== risk"; "$PY" "$PROJECT_DIR/risk_management.py" status 2>&1
  echo; echo "=== audit chain"; "$PY" "$PROJECT_DIR/audit_logging.py" verify 2>&1
  for f in $(ls -1 "$HOME_DIR"/logs/trading_*.log 2>/dev/null | tail -n 2); do
    echo; echo "=== tail -100 $f"; tail -n 100 "$f"
  done
  echo; echo "=== tail -100 logs/errors.log"; tail -n 100 "$HOME_DIR/logs/errors.log" 2>/dev/null
  echo; echo "=== tail -100 logs/audit/audit_log.jsonl"; tail -n 100 "$HOME_DIR/logs/audit/audit_log.jsonl" 2>/dev/null
  echo; echo "=== grep MAX DRAWDOWN / DRIFT ALERT / Circuit breaker / Forced buy-in (last 50)"
  grep -h "MAX DRAWDOWN\|DRIFT ALERT\|Circuit breaker\|Forced buy-in" "$HOME_DIR"/logs/*.log 2>/dev/null | tail -n 50
} > "$out" 2>&1
chmod 600 "$out"
echo "$out"
