#!/usr/bin/env bash
# Create (when missing) and fill a virtual environment for the Makefile:
#   scripts/make_venv.sh DIR REQUIREMENTS_FILE [PYTHON_VERSION]
# With uv on PATH (.ci/run installs it) the install takes under a minute; otherwise pip (about two).
# Both resolve the same pinned ranges from PyPI (seen: the same releases, four patch versions apart).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1 req=$2 want=${3:-}
uv=$(command -v uv 2>/dev/null || true)
if [[ ! -x "$dir/bin/python" ]]; then
  py=$(scripts/find_python.sh $want) || exit 1
  echo "creating $dir with $py ($("$py" --version))"
  if [[ -n "$uv" ]]; then
    "$uv" venv --quiet --seed --python "$py" "$dir"          # --seed: pip in the venv, as with venv
  else
    "$py" -m venv "$dir" && "$dir/bin/python" -m pip install --quiet --upgrade pip
  fi
  # one-line errors for the runbook's `python -c` one-liners (errors.py says why)
  purelib=$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  printf '%s\nimport importlib.util as u; u.find_spec("errors") and __import__("errors").install_excepthook()\n' \
    "$PWD" > "$purelib/lstm_trader.pth"
fi
if [[ -n "$uv" ]]; then
  "$uv" pip install --quiet --compile-bytecode --python "$dir/bin/python" -r "$req"   # .pyc now, as pip does
else
  "$dir/bin/python" -m pip install --quiet -r "$req"
fi
