# Two commands do everything on a fresh machine:
#   make demo   create .venv, install Troupe, run the example team (embedded, no servers)
#   make test   install the test extras and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python manage.py run-team examples/code_audit/team.yaml --input examples/code_audit/sample_project

# Two processes, each taking whole files (their module fixtures start workers): most
# tests wait on sleeps, brokers and subprocesses, so the suite takes about half the time.
test: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(VENV)/.installed
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(VENV)/.installed
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .troupe .mypy_cache .ruff_cache *.egg-info build dist
