# checkout: two commands on a fresh machine.
#   make run   - install everything, run the whole local stack in the foreground (Ctrl-C stops it)
#   make test  - install everything, lint, run the whole test suite against real servers
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
INSTALLED := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')
GENERATED := build/checkout.pb

.PHONY: all install proto stack run test lint unit integration bench clean openapi

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

# The editable install maps the package folders it finds; checkout_api is generated, so a
# placeholder makes it known before the first generation.
$(INSTALLED): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	mkdir -p client/checkout_api && touch client/checkout_api/__init__.py
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

$(GENERATED): $(PROTOS) tools/gen_protos.py $(INSTALLED)
	$(PY) tools/gen_protos.py

install: $(INSTALLED) proto stack

proto: $(GENERATED)

# FerretDB, MinIO, Kafka jars, grpcurl, buf (pinned; skipped when already there).
stack: $(INSTALLED)
	$(PY) -m devstack install

run: install
	$(PY) -m devstack run

# The OpenAPI document of the REST surface (checked in; a test fails when it is stale).
openapi: $(INSTALLED) proto stack
	$(PY) tools/gen_openapi.py

lint: $(INSTALLED) proto stack
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	.stack/bin/buf lint
	$(PY) -m devstack validate-envoy

unit: $(INSTALLED) proto
	$(BIN)/pytest tests/unit

integration: install
	$(BIN)/pytest tests/integration

test: install lint
	$(BIN)/pytest

# Benchmarks (minutes; numbers vary with machine load: compare the printed ratios).
bench: install
	$(PY) bench/upload_throughput.py
	$(PY) bench/rest_upload.py
	$(PY) bench/status_watch.py --events 10000
	$(PY) bench/relay_throughput.py --events 2000 --rate 50 --seconds 5 --batch 200
	$(PY) bench/ferretdb_queries.py --events 100000

clean:
	rm -rf build client/checkout_api .pytest_cache .mypy_cache .ruff_cache
