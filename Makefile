# Two commands for a newcomer:  make demo   and   make test   (see README.md)
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python

.PHONY: demo test test-py311 venv venv-dev venv311 bench health clean-demo gate-properties faults lint test-days test-days-short bench-suite

# scripts/make_venv.sh builds both venvs (uv when on PATH, else pip) and adds errors.py's hook
$(VENV)/.runtime-installed: requirements.txt
	@bash scripts/make_venv.sh $(VENV) requirements.txt
	@touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt
	@bash scripts/make_venv.sh $(VENV) requirements-dev.txt
	@touch $@ $(VENV)/.runtime-installed

venv: $(VENV)/.runtime-installed
venv-dev: $(VENV)/.dev-installed

## make demo: set up, then the whole system on the offline sample data in .demo_home/
demo: venv
	@bash scripts/demo.sh

## make test: set up with the dev requirements, then the test suite
test: venv-dev
	$(PY) -m pytest tests/ -q -rfE --durations=15 -n 2 --dist loadfile --no-loadscope-reorder

## make lint: ruff (ruff.toml) and mypy (mypy.ini: no attribute error in the project's modules)
lint: venv-dev
	@bash scripts/lint.sh

## make test-days: the whole suite under libfaketime on a Saturday, a Sunday, a Monday before the
## open, a weekday after the close and a market holiday (Debian's faketime); CI runs the short
## version (the health-check and scheduler tests at the same five moments)
test-days: venv-dev
	@bash scripts/test_days.sh
test-days-short: venv-dev
	@bash scripts/test_days.sh tests/test_health_check.py tests/test_scheduler.py

## make gate-properties: the walk-forward verdict's properties over 200 seeds, 1 and 10 configurations; positive control over 40
## (the suite runs 10 and 6); the sample's AR 0.3 after a 10-configuration sweep over 12 seeds (the suite runs 2)
gate-properties: venv-dev
	GATE_SEEDS=200 GATE_INFO_SEEDS=40 GATE_INFO_MIN_RATE=0.8 $(PY) -m pytest tests/test_gate_properties.py -q -s -rfE --timeout 7200
	SWEEP_POWER_SEEDS=12 $(PY) -m pytest tests/test_sweep_power.py -q -s -rfE --timeout 7200

## make faults: the crash matrix of the Schwab path (every failpoint at every clock skew), 30 random
## kill -9 trials per broker, halt/flatten races (the normal suite runs a subset and 2 trials each)
FAULT_TESTS := tests/test_live_crash_matrix.py tests/test_kill9_harness.py tests/test_halt_race.py \
               tests/test_broker_retry.py tests/test_storage_faults.py tests/test_clock_skew_matrix.py
faults: venv-dev
	FAULTS=full KILL9_TRIALS=$${KILL9_TRIALS:-30} $(PY) -m pytest $(FAULT_TESTS) -q -s -rfE --durations=10 --timeout 10800

## make bench: every benchmark under bench/ (prints its figures), except the whole suite's timing
## (bench/test_suite.py: make bench-suite)
bench: venv-dev
	@for b in $(filter-out bench/test_suite.py,$(wildcard bench/*.py)); do echo "== $$b"; $(PY) $$b || exit 1; done
bench-suite: venv-dev
	$(PY) bench/test_suite.py

health: venv
	./run_health_check.sh

clean-demo:
	rm -rf .demo_home

## make test-py311: the whole suite again on Python 3.11 (a second venv, .venv311; pyenv or python3.11);
## CI (.ci/run) runs it after `make test`
VENV311 := .venv311
$(VENV311)/.dev-installed: requirements.txt requirements-dev.txt
	@bash scripts/make_venv.sh $(VENV311) requirements-dev.txt 3.11
	@touch $@

venv311: $(VENV311)/.dev-installed

test-py311: $(VENV311)/.dev-installed
	$(VENV311)/bin/python -m compileall -q *.py tests/*.py bench/*.py
	$(VENV311)/bin/python -m pytest tests/ -q -rfE --durations=15 -n 2 --dist loadfile --no-loadscope-reorder -p no:cacheprovider
