# The two set-up commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYX := $(wildcard src/cygate/core/_*_c.pyx src/cygate/core/_*_c.pxd src/cygate/edge/_*_c.pyx src/cygate/edge/_*_c.pxd)
STAMP := $(VENV)/.installed
# Exact versions, with hashes, of everything installed (scripts/lock.py; `make lock` rewrites it).
LOCK := requirements/dev.txt
SERVICES := scripts/services.sh
ENVFILE := .services/env
WITH_ENV := set -a && source $(ENVFILE) && set +a &&

.PHONY: help install lock lock-refresh build services migrate seed run test test-c test-py lint bench bench-micro bench-macro bench-search bench-events bench-orders bench-mix bench-catalog bench-buyers bench-callers bench-routes bench-l1 bench-rate bench-instructions load capacity fuzz fuzz-api contract soak clean

help:
	@echo "make run    install, build, start services, migrate, seed demo data, serve on :8000"
	@echo "           (with the payment processor simulator on a free port; see docs/payments.md)"
	@echo "           (CYGATE_ADMIN_EMAIL + CYGATE_ADMIN_PASSWORD: that admin exists at start-up)"
	@echo "make test   install, build, start services, lint, run every test (compiled and pure)"
	@echo "make bench  micro (compiled vs pure vs peers) and macro (server vs peers) benchmarks"
	@echo "make load   locust, headless, against the gateway (started if none answers);"
	@echo "           SHAPE=steady|step|spike|soak RATE=req/s RUN_TIME=2m (docs/load.md)"
	@echo "make capacity  step the offered rate until the SLO breaks: the highest sustainable rate"
	@echo "make lock   re-resolve requirements/*.txt after a pyproject.toml edit (lock-refresh: all)"
	@echo "make fuzz   atheris: each compiled parser against its pure twin (FUZZ_SECONDS per target)"
	@echo "make soak   mixed load for SOAK_SECONDS (600) sampling the gateway's RSS, fds, connections"
	@echo "make fuzz-api  schemathesis over the whole API (customer + admin), no 5xx allowed"
	@echo "make contract  schemathesis, all checks + stateful, zero failures; the generated client's flow"

# The lock is complete (every transitive dependency), so pip installs it as it is (--no-deps) and
# checks every download against its hashes; the project goes in last, editable, without build
# isolation: its build requirements (the lock's `build` group) are already in the venv.
$(STAMP): $(LOCK) pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --progress-bar off --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(STAMP)

# After an edit of pyproject.toml's requirements: re-resolve, keeping every pin that still fits.
lock: install
	$(BIN)/python scripts/lock.py compile
	$(MAKE) test

# Deliberately, in a commit of its own: every package to its newest allowed release, then the suite.
lock-refresh: install
	$(BIN)/python scripts/lock.py compile --upgrade
	$(MAKE) test

# Compiles the Cython core in place (fails loudly on a compile error). A pure build skips it.
build: install
ifeq ($(CYGATE_NO_EXTENSIONS),)
	$(BIN)/python setup.py -q build_ext --inplace
else
	@echo "CYGATE_NO_EXTENSIONS set: pure-Python build, nothing to compile"
endif

services:
	$(SERVICES) up

migrate: build services
	$(WITH_ENV) CYGATE_DATABASE_URL=$${CYGATE_DATABASE_URL:-$${DATABASE_URL%/*}/cygate} \
	  CYGATE_REDIS_URL=$${CYGATE_REDIS_URL:-$$REDIS_URL} $(BIN)/cygate migrate

seed: migrate
	$(WITH_ENV) CYGATE_DATABASE_URL=$${CYGATE_DATABASE_URL:-$${DATABASE_URL%/*}/cygate} \
	  $(BIN)/cygate seed --if-empty --categories 40 --products 20000 --users 50

# scripts/run.sh starts the payment processor simulator first (a free port) and points the gateway at it.
run: seed
	$(WITH_ENV) CYGATE_DATABASE_URL=$${CYGATE_DATABASE_URL:-$${DATABASE_URL%/*}/cygate} \
	  CYGATE_REDIS_URL=$${CYGATE_REDIS_URL:-$$REDIS_URL} scripts/run.sh

lint: install
	$(BIN)/python scripts/lock.py check
	$(BIN)/ruff check src tests benchmarks loadtests scripts
	$(BIN)/ruff format --check src tests benchmarks loadtests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/python scripts/import_cycles.py
	scripts/lint-dockerfile.sh

# The micro benchmarks run once each as tests too (--benchmark-disable: a few seconds), so
# their set-up and their own checks cannot rot between `make bench` runs.
MICRO_SMOKE = -m pytest -q -p no:cacheprovider benchmarks/micro --benchmark-disable

test-c: build services
	$(WITH_ENV) $(BIN)/python -m pytest -q
	$(WITH_ENV) $(BIN)/python $(MICRO_SMOKE)

# SUITE_PASS=second (set by `make test` after the compiled pass) leaves out the tests marked
# `once` (tests/conftest.py): they ran in the compiled pass. (Not a CYGATE_ name: the settings
# refuse unknown ones.)
test-py: build services
	$(WITH_ENV) CYGATE_NO_EXTENSIONS=1 SUITE_PASS=$(TEST_PASS) $(BIN)/python -m pytest -q
	$(WITH_ENV) CYGATE_NO_EXTENSIONS=1 $(BIN)/python $(MICRO_SMOKE)

# Both implementations on every run; with CYGATE_NO_EXTENSIONS=1 only the pure one exists.
ifeq ($(CYGATE_NO_EXTENSIONS),)
test: TEST_PASS := second
test: lint test-c test-py
else
test: lint test-py
endif

bench-micro: build
	$(BIN)/python -m pytest benchmarks/micro -q -p no:cacheprovider \
	  --benchmark-json=benchmarks/results/micro-latest.json
	$(BIN)/python -m benchmarks.report_micro benchmarks/results/micro-latest.json --update-doc docs/benchmarks.md

# The edge's hit path in instructions and new objects per request (callgrind: the same count
# whatever the machine is doing; ~4 min). TREE=/path/to/other/checkout compares with it.
bench-instructions: build
	$(BIN)/python -m benchmarks.micro.instructions $(if $(TREE),--tree $(TREE))

# Search latency on the 100k-product seed through a gateway (docs/catalog.md).
bench-search: build services
	$(WITH_ENV) $(BIN)/python -m benchmarks.macro.search

# Every contender under wrk, three rounds (docs/benchmarks.md); the full tables go to
# docs/benchmarks.md, the headline table (cygate-full and its three peers) to README.md.
bench-macro: build services
	$(WITH_ENV) $(BIN)/python -m benchmarks.macro.run --rounds 3 --duration 8 --open-rate 5000 \
	  --update-doc docs/benchmarks.md

# Orders: order placement vs pgbench's TPC-B-like rate, then a lost/duplicate check.
bench-orders: build services
	$(WITH_ENV) $(BIN)/python -m benchmarks.macro.orders

# The mix, open loop (fixedrate's request file): MIX_ARGS="--rate 3000 --duration 10", "--find".
bench-mix: build services
	$(WITH_ENV) $(BIN)/python -m benchmarks.macro.mix $(MIX_ARGS)

# How cost grows (docs/benchmarks.md): the uncached product read and search at 10k, 100k and 1M
# products (each size's database is seeded once and kept: cygate_curve_*; the 1M seed takes
# minutes), and order placement against 1-64 concurrent buyers of one product.
bench-catalog: build services
	$(WITH_ENV) $(BIN)/python -m benchmarks.macro.curves catalog $(CURVE_ARGS)

bench-buyers: build services
	$(WITH_ENV) $(BIN)/python -m benchmarks.macro.curves buyers $(CURVE_ARGS)

bench: bench-micro bench-macro

# Cost curves (docs/benchmarks.md, "How cost grows"): cygate-full against distinct callers (with
# a per-minute rate-limit class beside the default, N by N; CALLERS_BEFORE=/a/built/checkout
# adds that tree's gateway as the variant "before"), the router, start-up and RSS against
# routes, and the L1's hit ratio against its size.
CALLERS_VARIANTS = --variant 'minute-limit:CYGATE_RATE_LIMITS={"bench":{"rate":60000000,"period":60,"mode":"batched"}}' \
	$(if $(CALLERS_BEFORE),--variant 'before@$(CALLERS_BEFORE):')
bench-callers: build services
	$(WITH_ENV) $(BIN)/python -m benchmarks.macro.curve_callers $(CALLERS_VARIANTS)

bench-routes: build services
	$(WITH_ENV) $(BIN)/python -m benchmarks.macro.curve_routes

bench-l1: build
	$(BIN)/python -m benchmarks.macro.curve_l1

# CPU per request against the offered rate: the gateway's cached read beside a bare ASGI app on
# Granian and on uvicorn, one worker each (what a request that arrives alone costs).
bench-rate: build services
	$(WITH_ENV) $(BIN)/python -m benchmarks.macro.curve_rate

# Events: relay throughput and commit-to-consumer latency (under a minute; docs/events.md).
bench-events: build services
	$(WITH_ENV) $(BIN)/python -m benchmarks.macro.events

# `make load SHAPE=step RATE=800 RUN_TIME=2m`, `make capacity`: loadtests/tool.py (docs/load.md).
# `make capacity START=500 STEP=250 MAX=5000 STEP_TIME=45s` sets LOAD_CAPACITY_*.
LOAD_VARS = $(if $(SHAPE),LOAD_SHAPE='$(SHAPE)') $(if $(RATE),LOAD_RATE='$(RATE)') \
	$(if $(RUN_TIME),LOAD_RUN_TIME='$(RUN_TIME)') $(if $(SCENARIO),LOAD_SCENARIO='$(SCENARIO)') \
	$(if $(START),LOAD_CAPACITY_START='$(START)') $(if $(STEP),LOAD_CAPACITY_STEP='$(STEP)') \
	$(if $(MAX),LOAD_CAPACITY_MAX='$(MAX)') $(if $(STEP_TIME),LOAD_CAPACITY_STEP_TIME='$(STEP_TIME)')

load: build services
	$(WITH_ENV) $(LOAD_VARS) scripts/load.sh run

capacity: build services
	$(WITH_ENV) $(LOAD_VARS) scripts/load.sh capacity

# API fuzzing: schemathesis over the whole OpenAPI document of a private gateway, as a customer
# and as an admin, FUZZ_API_SECONDS each (the suite runs the same test for 45 s each); any 5xx
# fails it. Reports (schemathesis JSON/NDJSON, figures.json) in FUZZ_API_REPORTS.
FUZZ_API_SECONDS ?= 600
FUZZ_API_REPORTS ?= loadtests/reports/fuzz-api
fuzz-api: build services
	$(WITH_ENV) CYGATE_FUZZ_API_SECONDS=$(FUZZ_API_SECONDS) \
	  CYGATE_FUZZ_API_REPORT_DIR=$(abspath $(FUZZ_API_REPORTS)) \
	  $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/acceptance/test_api_fuzz.py

# The API contract: schemathesis with every check and the stateful phase (customer and admin,
# CONTRACT_SECONDS each), the document against the route table and the statuses served, and
# a client generated from the document running a flow (docs/api-contract.md).
CONTRACT_SECONDS ?= 120
CONTRACT_REPORTS ?= loadtests/reports/contract
contract: build services
	$(WITH_ENV) CYGATE_FUZZ_API_SECONDS=$(CONTRACT_SECONDS) \
	  CYGATE_FUZZ_API_REPORT_DIR=$(abspath $(CONTRACT_REPORTS)) \
	  $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/acceptance/test_api_fuzz.py \
	  tests/acceptance/test_api_client.py

# Coverage-guided fuzzing (atheris) of the compiled parsers against their pure twins, FUZZ_SECONDS
# per target (FUZZ_TARGETS=jwt,path,... picks some). The corpus grows under .fuzz/corpus, findings
# go to .fuzz/findings (tests/fuzz/fuzz_run.py says how to replay one).
FUZZ_SECONDS ?= 60
fuzz: build
	$(BIN)/python tests/fuzz/fuzz_run.py --seconds "$(FUZZ_SECONDS)" --artifacts .fuzz/findings \
	  $(if $(FUZZ_TARGETS),--targets "$(FUZZ_TARGETS)")

# Soak: a gateway of its own under the mixed load for SOAK_SECONDS, its processes' RSS, open
# descriptors and connections sampled (CSV, PNG chart, summary; python -m loadtests.soak --help).
SOAK_SECONDS ?= 600
soak: build services
	$(WITH_ENV) $(BIN)/python -m loadtests.soak --seconds "$(SOAK_SECONDS)" $(SOAK_ARGS)

clean:
	rm -rf build src/cygate/core/*.so src/cygate/core/_*_c.c src/cygate/edge/*.so src/cygate/edge/_*_c.c .pytest_cache .mypy_cache
