# Two commands matter: `make demo` (sets up, runs every saga outcome) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
# BROKER=kafka|tansu chooses the embedded broker (SAGA_BROKER). Unset: make run and make
# demo use Apache Kafka where Java 17 is installed (else Tansu); the rest use Tansu.
BROKER ?=
WITH_BROKER := $(if $(BROKER),SAGA_BROKER=$(BROKER))

.PHONY: help setup browser run demo test lint format schemas bench chaos screenshots clean

help:
	@echo "make setup    create .venv with the pinned dependencies (requirements.lock)"
	@echo "make run      start broker, database and the three services; Ctrl-C stops all"
	@echo "make demo     run the three saga outcomes end to end and check the invariants"
	@echo "              (BROKER=kafka|tansu; default Apache Kafka where Java 17 is installed)"
	@echo "make test     unit, integration and end-to-end tests on the real servers"
	@echo "              (BROKER=kafka: e2e and chaos tests on Apache Kafka; PYTEST_ARGS=...)"
	@echo "make bench    place N orders (N=$${N:-2000}) and print throughput and latency"
	@echo "make chaos    N orders under kills, restarts, duplicates; check every invariant"
	@echo "              (N=2000 KILLS=10 SEED=1; more: .venv/bin/python -m sagastack chaos -h)"
	@echo "make lint     ruff + mypy (strict)"
	@echo "make schemas  regenerate schemas/ from events/"

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . \
	  || $(BIN)/python -m pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

run: setup
	$(WITH_BROKER) $(BIN)/python -m sagastack run

demo: setup
	$(WITH_BROKER) $(BIN)/python -m sagastack demo

test: setup browser
	$(BIN)/python -m pytest $(if $(BROKER),--broker $(BROKER)) $(PYTEST_ARGS)

# The dashboard test drives Debian's chromium with Selenium. Installed here when missing
# and we may (root); otherwise that one test is skipped with the command to run.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium and chromium-driver for the dashboard test …"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else \
	  echo "note: the dashboard test needs chromium + chromium-driver: sudo apt-get install chromium chromium-driver"; \
	fi

bench: setup
	$(WITH_BROKER) $(BIN)/python -m sagastack bench --orders $${N:-2000}

chaos: setup
	$(WITH_BROKER) $(BIN)/python -m sagastack chaos --orders $${N:-2000} --kills $${KILLS:-10} --seed $${SEED:-1}

screenshots: setup browser
	$(BIN)/python -m sagastack screenshots

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

schemas: setup
	$(BIN)/python -m events.schema_export

clean:
	rm -rf .run $(VENV) *.egg-info
