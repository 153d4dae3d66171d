#!/usr/bin/env bash
# Capture the system's state into ONE file for an incident: ./run_incident_capture.sh [DIR]
# (the runbook's version computed the file name three times and could write three files).
# Prints the file's path, only once the whole file is written. Read-only: trades nothing,
# changes no state. The file is private (0600) from its first byte.
set -uo pipefail
shopt -s lastpipe     # the pipeline's last command (the writer) runs in this shell: its error is kept
case "${1:-}" in
  -h|--help)
    echo "usage: ./run_incident_capture.sh [DIR]"
    echo "Capture the system's state (health check, status, risk, audit chain, log tails) into ONE"
    echo "file, \$TRADING_HOME/incident_YYYYMMDD_HHMMSS.log (mode 600; DIR: write it there instead,"
    echo "e.g. when TRADING_HOME is read-only or full), and print its path."
    echo "Read-only: trades nothing, changes no state. Exit 1 (one ERROR line) when the file cannot be written."
    exit 0 ;;
  -*) echo "usage: ./run_incident_capture.sh [DIR]   (--help for help)" >&2; exit 2 ;;
esac
if [[ $# -gt 1 ]]; then echo "usage: ./run_incident_capture.sh [DIR]   (--help for help)" >&2; exit 2; fi
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
HOME_DIR="${TRADING_HOME:-$PROJECT_DIR}"
OUT_DIR="${1:-$HOME_DIR}"
stamp=$(date +%Y%m%d_%H%M%S)
out="$OUT_DIR/incident_$stamp.log"
tmp="$OUT_DIR/.incident_$stamp.$$.tmp"

fail() {   # one line: the file, why, the fix; nothing left behind
  local why=${1##*: }
  rm -f "$tmp" 2>/dev/null
  local fix="make $OUT_DIR a folder you ($(id -un)) can write"
  case "$why" in
    *"No space left"*|*"quota"*) fix="free space on $(df --output=target "$OUT_DIR" 2>/dev/null | tail -n 1 || echo "the disk of $OUT_DIR") (df -h \"$OUT_DIR\")" ;;
    *"Read-only"*) fix="remount $(df --output=target "$OUT_DIR" 2>/dev/null | tail -n 1 || echo "the disk of $OUT_DIR") read-write" ;;
  esac
  echo "ERROR: cannot write the incident capture $out: ${why:-write failed}. Fix: $fix, or write it elsewhere: ./run_incident_capture.sh /tmp" >&2
  exit 1
}

# created 0600 before the first byte (the umask only for this file: the commands below keep theirs)
err=$( { (umask 077 && : > "$tmp"); } 2>&1 ) || fail "$err"
{
  echo "=== incident capture $(date -Is) on $(hostname) by ${USER:-$(id -un 2>/dev/null || echo '?')}"
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
} 2>&1 | err=$(cat 2>&1 >> "$tmp")      # cat says when a write fails (a full disk)
[[ ${PIPESTATUS[1]} -eq 0 ]] || fail "$err"
sync "$tmp" 2>/dev/null
err=$(mv -f "$tmp" "$out" 2>&1) || fail "$err"
echo "$out"
