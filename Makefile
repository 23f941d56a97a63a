# Two commands: `make run` and `make test`; `make check` is the fast lane. All create .venv
# (Python 3.12) if needed.
# make run CONFIG=path/to.yaml ARGS="--listen-port 8081 --admin-port 9465"
# make test WORKERS=2   (pytest-xdist workers; the e2e tests mostly wait, so more than cores)
PYTHON ?= python3.12
VENV := .venv
BIN := $(VENV)/bin
# What each install used; a newer lock (make lock) or pyproject.toml reinstalls.
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
CONFIG ?= config/crawlguard.yaml
ARGS ?=
WORKERS ?= 4
# Every install goes through the locks (requirements/*.txt, pinned with hashes): two machines
# get the same versions. crawlguard itself is then installed without dependencies.
PIP := $(BIN)/python -m pip install --quiet --require-hashes
PIP_SELF := $(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
# make lock: the locks for Python 3.12 on Linux (hashes of every wheel and sdist of a pinned
# version, so x86-64 and arm64 install from the same file).
UV_COMPILE := $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.12 \
	--python-platform linux --custom-compile-command "make lock"

.PHONY: run check test lint format clean system-tools docs lock wheels docker-test

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (pyenv honours .python-version)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# make run: the runtime lock only (no Scrapy, Playwright, ruff...).
$(RUNTIME_STAMP): requirements/build.txt requirements/runtime.txt pyproject.toml | $(BIN)/python
	$(PIP) -r requirements/build.txt
	$(PIP) -r requirements/runtime.txt
	$(PIP_SELF)
	touch $@

# make check / make test: the dev lock (the runtime lock's versions plus the test tools).
$(DEV_STAMP): requirements/build.txt requirements/dev.txt pyproject.toml | $(BIN)/python
	$(PIP) -r requirements/build.txt
	$(PIP) -r requirements/dev.txt
	$(PIP_SELF)
	touch $@ $(RUNTIME_STAMP)

run: $(RUNTIME_STAMP)
	$(BIN)/crawlguard run --config $(CONFIG) $(ARGS)

# Refresh the locks from pyproject.toml and requirements/build.in: pins still allowed are kept
# (a new or changed requirement is resolved), `make lock UPGRADE=1` moves every pin to the newest
# allowed version. dev is constrained to runtime's versions, so `make run` and `make test` agree.
UPGRADE ?=
lock: $(DEV_STAMP)
	$(UV_COMPILE) $(if $(UPGRADE),--upgrade) pyproject.toml -o requirements/runtime.txt
	$(UV_COMPILE) $(if $(UPGRADE),--upgrade) pyproject.toml --extra dev -c requirements/runtime.txt \
		-o requirements/dev.txt
	$(UV_COMPILE) $(if $(UPGRADE),--upgrade) requirements/build.in -o requirements/build.txt

# Browser and Prometheus tests need Debian's chromium, promtool (package prometheus) and
# certutil (libnss3-tools: the Playwright guide's CA route).
# Installed here when missing and apt-get can; otherwise those tests fail saying what is missing.
system-tools:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v certutil >/dev/null 2>&1 || missing="$$missing libnss3-tools"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian packages:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; } || \
		echo "could not install$$missing: the tests that need them will fail and say so"; \
	elif [ -n "$$missing" ]; then \
		echo "missing$$missing (apt-get install -y$$missing): the tests that need them will fail and say so"; \
	fi

# The fast lane: ruff, then tests/unit (no sockets, no subprocesses) and tests/inprocess
# (crawlguard in the test process), in under a minute.
check: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n 2 tests/unit tests/inprocess

# Everything, tests/e2e included (real proxies, CLIs, browsers as subprocesses). A file's tests
# stay on one worker (--dist loadfile), so a module's shared proxy starts once; the few tests
# marked `alone` (a bound on the proxy's own CPU time) run afterwards, on a quiet machine.
test: $(DEV_STAMP) system-tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile -m "not alone" --durations=15
	$(BIN)/python -m pytest -q -m alone

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# docs/reference/{config,cli,decisions,metrics}.md from the code (tests/unit/test_reference_docs.py
# fails when they differ from what this writes).
docs: $(DEV_STAMP)
	$(BIN)/python docs/reference/generate.py

format: $(DEV_STAMP)
	$(BIN)/ruff format .

# Wheels for an air-gapped image build, on a host that reaches the index: the locked files
# themselves (same hashes) for this platform (Linux, CPython 3.12, like the image). Then
#   docker build --build-arg WHEELS=docker/wheels -f docker/Dockerfile -t crawlguard:0.1.0 .
wheels: $(DEV_STAMP)
	$(BIN)/python -m pip download --quiet --require-hashes --no-deps -d docker/wheels \
		-r requirements/build.txt -r requirements/runtime.txt

# The image built and run in a local Docker engine, then the compose stack (docker/test/run.sh:
# installs docker.io and starts dockerd if needed; root only). Not part of `make test`.
docker-test: $(DEV_STAMP)
	docker/test/run.sh

clean:
	rm -rf $(VENV) var .pytest_cache
