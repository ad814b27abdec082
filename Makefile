# Two commands matter: `make demo` (sets up, runs every saga outcome) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
# BROKER=kafka|tansu chooses the embedded broker (SAGA_BROKER); unset: Tansu. Asked for
# Kafka without Java 17, make run and make demo say so and use Tansu.
BROKER ?=
WITH_BROKER := $(if $(BROKER),SAGA_BROKER=$(BROKER))
# run, demo, bench and chaos exec their command (through env, for WITH_BROKER): the shell
# that make starts for a recipe would take a kill of make's pid (make passes SIGTERM on to
# its children) and die without passing it on, leaving the stack running (an operator
# trial, with BROKER=kafka)
# make bench and make chaos: N orders; make chaos: KILLS service kills, SEED its workload's
N     ?= 2000
KILLS ?= 10
SEED  ?= 1

.PHONY: help setup browser run demo invariants test lint format schemas bench chaos screenshots clean

help:
	@echo "make setup    create .venv with the pinned dependencies (requirements.lock)"
	@echo "make run      start broker, database, the payment provider simulator and the three services;"
	@echo "              Ctrl-C stops all (a second stack: RUN_DIR=DIR, and ports of its own;"
	@echo "              SECURE=1: Apache Kafka over SASL_SSL, each service its own user and ACLs)"
	@echo "make demo     eight sagas end to end (every outcome, from Kafka, forged, provider outage), then the invariants;"
	@echo "              on a terminal it keeps running for the dashboard (KEEP=0: stop at once)"
	@echo "              BROKER=kafka|tansu for run, demo, test, bench, chaos (default Tansu)"
	@echo "make invariants  check the invariants on the running stack once it settles (RUN_DIR=.run/demo: a demo's; WAIT=s)"
	@echo "make test     unit, integration and end-to-end tests on the real servers (Tansu), then"
	@echo "              e2e and chaos again on Apache Kafka where Java 17 is (BROKER=, PYTEST_ARGS=: one run)"
	@echo "make bench    N orders (N=$(N)) closed loop, then the open-loop sweep (SWEEP=r1,r2,… or 0),"
	@echo "              the idle saga and the null-saga ceiling: throughput, latency, CPU (SIGNING=0: unsigned;"
	@echo "              DB_STATEMENTS=10: each database's 10 statements with the most time in the closed loop)"
	@echo "make chaos    N orders under kills, restarts, duplicates; check every invariant"
	@echo "              (N=2000 KILLS=10 SEED=1; more: .venv/bin/python -m sagastack chaos -h)"
	@echo "make lint     ruff + mypy (strict); make format: ruff's fixes and formatting"
	@echo "make schemas  regenerate schemas/ from events/"
	@echo "make browser  install Debian's chromium and chromium-driver (as root) for the dashboard test"
	@echo "make screenshots  run the demo's sagas and photograph the dashboard for docs/"
	@echo "make clean    remove .run/ (every run's data) and .venv"

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@echo "setting up .venv: the pinned dependencies (requirements.lock), about a minute …"
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	@# setuptools warns that an editable install is one (a warning, not a problem): hush it
	@PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@
	@echo ".venv ready"

run: setup
	exec env $(WITH_BROKER) $(BIN)/python -m sagastack run $(if $(RUN_DIR),--run-dir $(RUN_DIR)) $(if $(filter 1,$(SECURE)),--secure)

# KEEP=0: stop at the end even on a terminal; KEEP=1: keep running even off one
demo: setup
	exec env $(WITH_BROKER) $(BIN)/python -m sagastack demo $(if $(filter 0,$(KEEP)),--no-keep,$(if $(filter 1,$(KEEP)),--keep,))

# the invariants on a stack that runs (make run's, or RUN_DIR's), once nothing is in flight
# (WAIT: seconds to wait for that, default 60)
invariants: setup
	$(BIN)/python -m sagastack check $(if $(RUN_DIR),--run-dir $(RUN_DIR)) $(if $(WAIT),--wait $(WAIT))

# make test: every test on Tansu, then the end-to-end and chaos tests again on Apache Kafka
# where Java 17 and Maven are installed (without them: one line saying so, or a failure
# with SAGA_REQUIRE_KAFKA=1). BROKER=tansu|kafka or PYTEST_ARGS=...: one pytest run only.
# pytest's "no tests collected" (exit 5) is a failure, said in so many words.
test: setup browser
	@run() { echo "== pytest $$*"; $(BIN)/python -m pytest "$$@"; s=$$?; \
	  if [ $$s -eq 5 ]; then echo "pytest collected no tests ($$*): that is a failure" >&2; fi; return $$s; }; \
	if [ -n "$(BROKER)$(PYTEST_ARGS)" ]; then run $(if $(BROKER),--broker $(BROKER)) $(PYTEST_ARGS); exit $$?; fi; \
	run || exit $$?; \
	if command -v java >/dev/null && command -v mvn >/dev/null; then \
	  run tests/e2e tests/chaos --broker kafka -m 'not broker_independent'; \
	elif [ "$$SAGA_REQUIRE_KAFKA" = 1 ]; then \
	  echo "the Apache Kafka tests need Java 17 and Maven (mvn)" >&2; exit 1; \
	else \
	  echo "Java 17 or Maven not found: the end-to-end and chaos tests did not run on Apache Kafka"; \
	fi

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
	exec env $(WITH_BROKER) $(BIN)/python -m sagastack bench --orders $(N) \
	  $$( [ "$${SWEEP:-}" = 0 ] || echo --sweep $${SWEEP:-50,100,200,300,400,500,600} ) \
	  $$( [ "$${SIGNING:-1}" = 0 ] && echo --no-signing ) \
	  $$( [ -n "$${DB_STATEMENTS:-}" ] && echo --db-statements $${DB_STATEMENTS} )

chaos: setup
	exec env $(WITH_BROKER) $(BIN)/python -m sagastack chaos --orders $(N) --kills $(KILLS) --seed $(SEED)

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
