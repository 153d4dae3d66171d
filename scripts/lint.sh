#!/usr/bin/env bash
# make lint (CI runs it): ruff (ruff.toml: pyflakes' errors) on everything, and mypy (mypy.ini) on
# the project's own modules, failing on any attribute error.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m ruff check . || { echo "ruff: fix the lines above (ruff.toml says what is checked)" >&2; exit 1; }
out=$("$PY" -m mypy --no-error-summary ./*.py 2>&1)
attr=$(grep -E '\[(attr-defined|union-attr)\]$' <<<"$out")
if [[ -n "$attr" ]]; then
  echo "$attr"
  echo "mypy: $(wc -l <<<"$attr") attribute errors (above): declare the member, or pass the object that has it" >&2
  exit 1
fi
echo "mypy: no attribute errors in $(ls ./*.py | wc -l) modules ($(grep -c ': error:' <<<"$out") other findings, not gated)"
