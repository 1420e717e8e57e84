# goldenpath: one virtualenv, two commands (`make run`, `make test`) and a few more.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080
# Two stamps in one venv: `run` needs only the runtime dependencies; test, lint and bench add
# the dev extras (pytest, playwright, schemathesis, ...), which more than double a first install.
RUNTIME := $(VENV)/.installed-runtime
DEV     := $(VENV)/.installed-dev

.PHONY: install run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUNTIME)

# The dev install includes the runtime one, so it marks both.
$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(DEV) $(RUNTIME)

install: $(DEV)

run: $(RUNTIME)
	$(BIN)/goldenpath serve --host $(HOST) --port $(PORT)

test: $(DEV)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Not part of `test`: starts real servers and loads them for a few minutes (see docs/performance.md).
bench: $(DEV)
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info
