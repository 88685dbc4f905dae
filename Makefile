# Highwater developer entry points. `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV_VERSION := 0.13.9
# Evaluated when used, so it sees a uv installed by the `uv` target.
UV = $(shell command -v uv 2>/dev/null || echo python3 -m uv)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help env uv redis demo test lint typecheck unit proto bench clean

help:  ## List targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || \
	  python3 -m pip install --quiet "uv==$(UV_VERSION)"

redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server missing: installing it from Debian packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server >/dev/null; }

env: uv redis  ## Create .venv from uv.lock and install redis-server if missing
	$(UV) sync --frozen

demo: env  ## Run the whole pipeline once on the embedded stack and print a report
	$(UV) run highwater demo

lint: env
	$(UV) run ruff check .
	$(UV) run ruff format --check .

typecheck: env
	$(UV) run mypy

test: lint typecheck  ## Lint, type-check and run every test against real local parts
	$(UV) run pytest

proto: env  ## Regenerate the gRPC stubs from serving/protos/*.proto
	$(UV) run python -m serving.codegen

bench: env  ## Run the benchmarks (minutes); results land in bench/results/
	$(UV) run python -m bench.ingest
	$(UV) run python -m bench.serving
	$(UV) run python -m bench.scoring
	$(UV) run python -m bench.freshness
	$(UV) run python -m bench.training_set
	$(UV) run python -m bench.replay
	$(UV) run python -m bench.model_quality
	$(UV) run python -m bench.learner

clean:  ## Remove local state and caches
	rm -rf .highwater .mypy_cache .ruff_cache .pytest_cache
