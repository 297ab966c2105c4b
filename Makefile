# dbpromote: `make demo` to try it, `make test` to test it (`make test-fast`: the pure logic, no servers, in seconds),
# `make stop` to tear the local stack down.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PG_BIN ?= /usr/lib/postgresql/15/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-packages demo stop test test-fast lint format benchmarks docs

install: system-packages $(VENV)/.installed

# System packages: PostgreSQL 15 server binaries and client tools, zstd; Chromium for the browser test.
system-packages:
	@missing=""; \
	[ -x "$(PG_BIN)/initdb" ] || missing="$$missing postgresql-15"; \
	command -v pg_dump >/dev/null || missing="$$missing postgresql-client-15"; \
	command -v zstd >/dev/null || missing="$$missing zstd"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# The stack up, both databases back at v1, the sample release promoted: staging's before-deploy phase run, the
# promotion waiting for the app deploy (`dbpromote deployed RUN ...`), then for production's approval.
demo: install
	$(BIN)/dbpromote stack up
	$(BIN)/dbpromote stack reset
	$(BIN)/dbpromote stack status
	$(BIN)/dbpromote promote --project tenant-backend --through staging,production --until-paused

stop:
	@if [ -x $(BIN)/dbpromote ]; then $(BIN)/dbpromote stack down; fi

# The modules spread over TEST_WORKERS pytest-xdist workers, each with a stack of its own; a module stays on one
# worker, so its module-scoped fixtures are made once.
TEST_WORKERS ?= 3
test: install
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --durations=20

test-fast: $(VENV)/.installed
	$(BIN)/pytest tests/fast

# The docs site from docs/ into site/, strict: a broken link or a page missing from the nav fails the build.
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

benchmarks: install
	for b in $$(grep -l "__main__" benchmarks/*.py); do $(BIN)/python $$b || exit 1; done  # not the helpers
