# Two commands: `make run` and `make test`; `make check` is the fast lane. All create .venv
# (Python 3.12) if needed.
# make run CONFIG=path/to.yaml ARGS="--listen-port 8081 --admin-port 9465"
# make test WORKERS=2   (pytest-xdist workers; the e2e tests mostly wait, so more than cores)
PYTHON ?= python3.12
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config/crawlguard.yaml
ARGS ?=
WORKERS ?= 4

.PHONY: run check test lint format clean system-tools docs

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (pyenv honours .python-version)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/crawlguard run --config $(CONFIG) $(ARGS)

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
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n 2 tests/unit tests/inprocess

# Everything, tests/e2e included (real proxies, CLIs, browsers as subprocesses). A file's tests
# stay on one worker (--dist loadfile), so a module's shared proxy starts once; the few tests
# marked `alone` (a bound on the proxy's own CPU time) run afterwards, on a quiet machine.
test: $(STAMP) system-tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile -m "not alone" --durations=15
	$(BIN)/python -m pytest -q -m alone

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# docs/reference/{config,cli,decisions,metrics}.md from the code (tests/unit/test_reference_docs.py
# fails when they differ from what this writes).
docs: $(STAMP)
	$(BIN)/python docs/reference/generate.py

format: $(STAMP)
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var .pytest_cache
