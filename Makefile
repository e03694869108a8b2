# The two commands a newcomer runs are `make demo` and `make test`; both build .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install tools demo test lint format clean lock

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt --build-constraint constraints.txt \
		-e '.[dev,report,bench]'
	touch $(STAMP)

install: $(STAMP)

# promtool/prometheus (apt) and kustomize (Go module proxy) for the deploy tests; idempotent
tools: $(STAMP)
	bash deploy/tools/install-test-tools.sh $(BIN)

demo: $(STAMP)
	$(BIN)/python -m pipeline demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# --durations: every log (CI's too) names the slowest tests, so the suite's time budget
# (CONTRIBUTING.md) is watched where it is spent. Two xdist workers: every test that needs a
# broker runs in one of them, in order (xdist group in tests/conftest.py), while the other runs
# the rest; PYTEST_WORKERS=0 runs the whole suite in one process.
PYTEST_WORKERS ?= 2
test: lint tools
	$(BIN)/python -m pytest --durations=25 -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .demo

# Re-resolve every dependency in a fresh venv and pin the result in constraints.txt (pip and
# setuptools too: the venv's pip and the build backend are part of a fresh install).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip setuptools
	.lock-venv/bin/python -m pip install -q -e '.[dev,report,bench]'
	{ sed -n '1,/^# platform/p' constraints.txt; .lock-venv/bin/python -m pip freeze --all --exclude-editable | grep -v '^anomaly-pipeline'; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .lock-venv

