# Two commands for a newcomer:  make demo   and   make test   (see README.md)
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python

.PHONY: demo test test-py311 test-py311-fast venv venv-dev bench health clean-demo gate-properties faults

$(VENV)/bin/python:
	@py=$$(scripts/find_python.sh) || exit 1; echo "creating $(VENV) with $$py ($$($$py --version))"; \
	  "$$py" -m venv $(VENV) && $(PY) -m pip install --quiet --upgrade pip
	@# one-line errors for the runbook's `python -c` one-liners (errors.py says why)
	@printf '%s\nimport importlib.util as u; u.find_spec("errors") and __import__("errors").install_excepthook()\n' "$(CURDIR)" \
	  > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/lstm_trader.pth"

$(VENV)/.runtime-installed: requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@ $(VENV)/.runtime-installed

venv: $(VENV)/.runtime-installed
venv-dev: $(VENV)/.dev-installed

## make demo: set up, then the whole system on the offline sample data in .demo_home/
demo: venv
	@bash scripts/demo.sh

## make test: set up with the dev requirements, then the test suite
test: venv-dev
	$(PY) -m pytest tests/ -q -rfE --durations=15 -n 2 --dist loadfile

## make gate-properties: the walk-forward verdict's properties over 200 seeds (the suite runs 30)
gate-properties: venv-dev
	GATE_SEEDS=200 GATE_INFO_SEEDS=40 GATE_INFO_MIN_RATE=0.1 $(PY) -m pytest tests/test_gate_properties.py -q -s -rfE --timeout 7200

## make faults: the crash matrix of the Schwab path (every failpoint at every clock skew), 30 random
## kill -9 trials per broker, halt/flatten races (the normal suite runs a subset and 2 trials each)
FAULT_TESTS := tests/test_live_crash_matrix.py tests/test_kill9_harness.py tests/test_halt_race.py
faults: venv-dev
	FAULTS=full KILL9_TRIALS=$${KILL9_TRIALS:-30} $(PY) -m pytest $(FAULT_TESTS) -q -s -rfE --durations=10 --timeout 10800

## make bench: every benchmark under bench/ (prints its figures)
bench: venv-dev
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

health: venv
	./run_health_check.sh

clean-demo:
	rm -rf .demo_home

## make test-py311: the suite again on Python 3.11 (a second venv, .venv311; pyenv or python3.11)
VENV311 := .venv311
$(VENV311)/.dev-installed: requirements.txt requirements-dev.txt
	@py=$$(scripts/find_python.sh 3.11) || exit 1; echo "creating $(VENV311) with $$py ($$($$py --version))"; \
	  "$$py" -m venv $(VENV311) && $(VENV311)/bin/python -m pip install --quiet --upgrade pip
	@printf '%s\nimport importlib.util as u; u.find_spec("errors") and __import__("errors").install_excepthook()\n' "$(CURDIR)" \
	  > "$$($(VENV311)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/lstm_trader.pth"
	$(VENV311)/bin/python -m pip install --quiet -r requirements-dev.txt
	@touch $@

test-py311: $(VENV311)/.dev-installed
	$(VENV311)/bin/python -m compileall -q *.py tests/*.py bench/*.py
	$(VENV311)/bin/python -m pytest tests/ -q -rfE --durations=15 -n 2 --dist loadfile -p no:cacheprovider

## make test-py311-fast: what CI runs on 3.11 after the full 3.12 suite (CI's time budget of ~15
## minutes on 2 cores holds one full run): every module and test compiled by 3.11 (no 3.12-only
## syntax), then the tests of the version-sensitive code (health check, alerts, scheduler, risk,
## audit trail, kill switch, order execution); `make test-py311` runs everything on 3.11
PY311_FAST := tests/test_health_check.py tests/test_alerts.py tests/test_scheduler.py \
	tests/test_risk_management.py tests/test_audit_logging.py tests/test_kill_switch.py \
	tests/test_trading_execution.py
test-py311-fast: $(VENV311)/.dev-installed
	$(VENV311)/bin/python -m compileall -q *.py tests/*.py bench/*.py
	$(VENV311)/bin/python -m pytest $(PY311_FAST) -q -rfE -n 2 --dist loadfile -p no:cacheprovider
