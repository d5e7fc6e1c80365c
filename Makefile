# The two commands: `make run` (embedded demo) and `make test` (whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

# Exact versions with hashes, made by `make lock` from pyproject.toml.
LOCK     := requirements.lock
DEV_LOCK := requirements-dev.lock
UV_VERSION ?= 0.13.9

.PHONY: run test lint install install-dev lock bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The project itself goes in with --no-deps: everything it needs comes from
# the lock, so nothing is resolved afresh on a new machine.
$(VENV)/.installed: $(LOCK) pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-dev: $(DEV_LOCK) pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## Start the embedded demo: an embedded PostgreSQL in ./.pse-refunds/ (stopped with
## the service; delete the folder to start afresh), the sandbox PSE in-process,
## demo keys printed.
run: install
	$(BIN)/pse-refunds serve --host $(HOST) --port $(PORT)

## Run the whole suite, on the PostgreSQL at 127.0.0.1:5432 (PSE_REFUNDS_TEST_PG) or,
## when none answers, an embedded one started for the session. TEST_WORKERS
## pytest-xdist processes share the tests (each with databases of its own);
## TEST_WORKERS=0 runs them all in this one process.
TEST_WORKERS ?= 2
test: install-dev
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

## Static checks: ruff, mypy (strict on the domain) and the layer contracts.
lint: install-dev
	$(BIN)/ruff check app tests bench migrations
	$(BIN)/mypy app/domain
	$(BIN)/lint-imports

## Regenerate both lock files after a change to the dependencies in pyproject.toml.
# Made with uv (put into the venv on demand) for CPython 3.11 on linux x86_64,
# the platform of CI and of the image, whichever machine runs it:
#   uv pip compile pyproject.toml --generate-hashes --python-version 3.11
#     --python-platform x86_64-unknown-linux-gnu [--extra dev] -o <lock>
# Versions already in a lock are kept where they still fit; pass
# LOCK_FLAGS=--upgrade to take the newest allowed. The runtime lock is
# constrained by the dev one, so production gets the versions the tests ran on.
# The first locks kept the versions of the venv the suite had last passed on.
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes \
	--python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	--custom-compile-command 'make lock' $(LOCK_FLAGS)
lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(UV_COMPILE) --extra dev -o $(DEV_LOCK)
	$(UV_COMPILE) --constraint $(DEV_LOCK) -o $(LOCK)

## The benchmarks of bench/README.md, one run each (they print their figures).
bench: install-dev
	$(BIN)/python bench/refunds.py --duration 15 --audit on
	$(BIN)/python bench/webhooks.py --duration 10
	$(BIN)/python bench/reconcile.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
