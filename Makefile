# The few commands a newcomer types. Everything installs into .venv from PyPI.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install dev test bench lint clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (3.11 or 3.12)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[local,dev]"
	touch $(STAMP)

install: $(STAMP)

dev: $(STAMP)  ## run the whole service locally (Ctrl-C stops it)
	$(BIN)/python -m infra.dev --data-dir .data

# The web app's browser tests drive Debian's chromium; installed once, with apt.
CHROMIUM := /usr/bin/chromium
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	@echo "installing Debian's chromium for the browser tests (apt)"
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

test: $(STAMP) $(CHROMIUM)  ## lint, type-check and run every test against real services
	$(BIN)/ruff check --no-cache .
	$(BIN)/ruff format --no-cache --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

bench: $(STAMP)  ## print every benchmark beside its baseline (each starts its own stack)
	$(BIN)/python -m bench.pipeline_overhead
	$(BIN)/python -m bench.pipeline_steps
	$(BIN)/python -m bench.sse_fanout
	$(BIN)/python -m bench.burst_starts
	$(BIN)/python -m bench.ledger_charges
	$(BIN)/python -m bench.extension_cost
	$(BIN)/python -m bench.storage_memory
	$(BIN)/python -m bench.transcode

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
