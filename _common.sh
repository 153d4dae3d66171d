# Sourced by the run_*.sh entry points: work from any directory (cron), no activated venv needed.
PROJECT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$PROJECT_DIR" || exit 2
if [[ -n "${TRADING_PYTHON:-}" ]]; then     # another interpreter (the test suite on Python 3.11)
  PY="$TRADING_PYTHON"
elif [[ -x "$PROJECT_DIR/.venv/bin/python" ]]; then
  PY="$PROJECT_DIR/.venv/bin/python"
else
  echo "ERROR: $PROJECT_DIR/.venv is missing: run 'make venv' (or 'make demo') in $PROJECT_DIR first" >&2
  exit 2
fi
# the interpreter must have the project's packages: say which environment, not a raw ModuleNotFoundError
missing=$("$PY" -c 'import importlib.util as u
print(" ".join(m for m in ("numpy", "pandas", "yfinance", "cryptography", "exchange_calendars", "crontab",
                           "apprise", "h5py") if u.find_spec(m) is None))' 2>&1) || missing="(cannot run $PY)"
if [[ -n "$missing" ]]; then
  echo "ERROR: $PY lacks the project's packages ($missing): run 'make venv' in $PROJECT_DIR (it fills" \
       "$PROJECT_DIR/.venv, which these scripts use; for python commands typed by hand: . .venv/bin/activate)" >&2
  exit 2
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
