#!/usr/bin/env bash
# The suite (or the test files given) under libfaketime at five moments that used to break tests
# that read the real clock: a Saturday, a Sunday, a Monday before the open, a weekday after the
# close and a market holiday. The suite pins its own clock (TRADING_NOW, tests/conftest.py), so
# every moment must give the same result; this proves that nothing else reads the machine's clock.
#   scripts/test_days.sh                      # the whole suite five times (make test-days)
#   scripts/test_days.sh tests/test_health_check.py tests/test_scheduler.py    # CI's short version
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if ! command -v faketime >/dev/null 2>&1; then
  echo "faketime is missing: install Debian's package (apt-get install faketime) and run again" >&2
  exit 2
fi
MOMENTS=(
  "2026-12-05 15:00:00 UTC"   # Saturday
  "2026-12-06 15:00:00 UTC"   # Sunday
  "2026-12-07 13:00:00 UTC"   # Monday 08:00 New York, before the open
  "2026-12-08 22:30:00 UTC"   # Tuesday 17:30 New York, after the close
  "2026-11-26 15:00:00 UTC"   # Thanksgiving (NYSE closed), 10:00 New York
)
files=("$@")
[[ ${#files[@]} -eq 0 ]] && files=(tests/)
# Left out: it measures a real timeout (a download thread joined with a 1 s deadline), and under
# libfaketime's interposed timed waits the join does not time out. It fails under faketime at the
# machine's own current time too (2026-12-05), and passes without it: LD_PRELOAD, not the date.
# Also left out: a file's age (a data file written a second earlier is "fresh"). The kernel stamps
# the file with the real time while libfaketime moves only the process's clock, so at a moment
# ahead of the real one (Monday 2026-12-07 seen from 2026-12-05) the new file looks 40 h old.
# Rule for tests (docs/DEVELOPMENT.md): no timed wait on a lock, an Event or a Condition that is meant
# to run out (use time.sleep): libfaketime 0.9.10 does not translate Python's sem_clockwait deadline
# on the faked CLOCK_MONOTONIC, so such a wait never returns (FAKETIME_DONT_FAKE_MONOTONIC=1 cures it
# but breaks time.sleep with EINVAL). tests/test_order_truth.py's WriteLock hung this way.
skip=(--deselect tests/test_data_collection.py::test_download_that_never_answers_hits_the_deadline
      --deselect tests/test_data_collection.py::test_fresh_file_is_skipped_unless_forced)
failed=()
for at in "${MOMENTS[@]}"; do
  echo "== $(faketime "$at" date '+%a %Y-%m-%d %H:%M %Z'): ${files[*]}"
  if ! faketime "$at" "$PY" -m pytest "${files[@]}" "${skip[@]}" -q -rfE -n 2 --dist loadfile \
       --no-loadscope-reorder -p no:cacheprovider; then
    failed+=("$at")
  fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "FAILED at: ${failed[*]}" >&2
  exit 1
fi
echo "passed at all ${#MOMENTS[@]} moments"
