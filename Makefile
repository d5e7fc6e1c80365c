# The two commands: `make run` (embedded demo) and `make test` (whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test lint install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## Start the embedded demo: SQLite, the sandbox PSE in-process, demo keys printed.
run: install
	$(BIN)/pse-refunds serve --host $(HOST) --port $(PORT)

## Run the whole suite (PostgreSQL tests skip without a server unless REQUIRE_POSTGRES=1).
test: install-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Static checks: ruff, mypy (strict on the domain) and the layer contracts.
lint: install-dev
	$(BIN)/ruff check app tests bench migrations
	$(BIN)/mypy app/domain
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
