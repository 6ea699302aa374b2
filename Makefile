# The two commands: `make run` (the whole suite locally) and `make test` (lint, types, buf, tests).
# Every target creates what it needs: the virtual environment, packages, stubs, buf.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := .tools/node_modules/.bin/buf
PROTOS := $(shell find protos -name '*.proto')
STAMP := $(VENV)/.installed
STUBS := build/aias.binpb
# The source tree mirrors the installed layout (`aias.services`, `aias.gateway`) with two links,
# ignored by git: mypy resolves imports by path and cannot follow the editable install's finder.
LINKS := aias/services aias/gateway

.PHONY: run test lint typecheck buf-lint pytest test-tools protos lock bench bench-ingest bench-worker bench-artifacts bench-pg clean

# `make run REPLICAS=execution-worker=3,gateway=2` runs more than one process of a kind.
run: $(STUBS)
	$(PY) -m aias.core.launcher $(if $(REPLICAS),--replicas $(REPLICAS))

test: lint typecheck buf-lint pytest

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# The services run with PYTHONOPTIMIZE=2; pip compiles only the plain .pyc files.
	$(PY) -OO -m aias.core.precompile
	touch $@

$(LINKS):
	ln -sfn ../$(notdir $@) $@

# One command regenerates every stub and the descriptor image from protos/ (the wheel's build
# generates its own, setup.py).
$(STUBS): $(STAMP) $(PROTOS) | $(LINKS)
	$(PY) -m aias.core.protogen
	$(PY) -OO -m compileall -q -j0 aias services gateway
protos: $(STAMP)
	$(PY) -m aias.core.protogen

# The container's pinned runtime dependencies, with hashes, from pyproject.toml's ranges: run
# after changing a dependency, or to take newer releases.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 \
		--generate-hashes --upgrade --quiet -o requirements.lock

$(BUF): tools/package.json tools/package-lock.json
	mkdir -p .tools
	cp tools/package.json tools/package-lock.json .tools/
	cd .tools && npm ci --silent --no-audit --no-fund
	touch $@

lint: $(STUBS)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STUBS)
	$(VENV)/bin/mypy aias/core aias/cli aias/services aias/gateway tests bench setup.py

buf-lint: $(STUBS) $(BUF)
	$(BUF) lint $(STUBS) --exclude-path google --config buf.yaml

# Debian's chromium and promtool for the browser and alert-rules tests, when missing.
test-tools:
	@tools/install-test-tools.sh

pytest: $(STUBS) $(BUF) test-tools
	$(PY) -m pytest -q

bench: $(STUBS)
	$(PY) -m bench.webhook_path

bench-ingest: $(STUBS)
	$(PY) -m bench.ingest

bench-worker: $(STUBS)
	$(PY) -m bench.worker_throughput

bench-artifacts: $(STUBS)
	$(PY) -m bench.artifacts_path

bench-pg: $(STUBS)
	$(PY) -m bench.pg_profile

clean:
	rm -rf $(VENV) .tools build $(LINKS)
