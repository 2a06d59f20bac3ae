# warmroute — every target sets up what it needs; `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
MLS_VENV := .venv-mlserver
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
MODELS := .cache/models
# Custom processing code may only come from these module prefixes (SPEC); the examples' steps live
# in examples/. Set it empty (or to your own package) to override.
WARMROUTE_STEP_MODULES ?= examples.
export WARMROUTE_STEP_MODULES

.PHONY: setup run test lint typecheck check schema docs dashboard-png bench bench-coldstart bench-placement clean faults

# The project's environment: the locked dev set (a superset of the runtime lock the image installs).
$(VENV)/.stamp: requirements/dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check uv==0.13.8
	$(UV) pip install -q --compile-bytecode --python $(PY) -r requirements/dev.lock
	$(UV) pip install -q --python $(PY) --no-deps -e .
	touch $@

# MLServer in its own environment (uvloop < 0.22, its own FastAPI pins). Bytecode is compiled at install:
# where PYTHONDONTWRITEBYTECODE is set, every MLServer start would otherwise recompile its imports (~60 s).
$(MLS_VENV)/.stamp: requirements/mlserver.lock $(VENV)/.stamp
	$(PYTHON) -m venv $(MLS_VENV)
	$(UV) pip install -q --compile-bytecode --python $(MLS_VENV)/bin/python -r requirements/mlserver.lock
	touch $@

# Small scikit-learn models, trained in MLServer's environment so the pickles match its sklearn.
$(MODELS)/.stamp: $(MLS_VENV)/.stamp devstack/train_models.py
	$(MLS_VENV)/bin/python devstack/train_models.py $(MODELS)
	touch $@

setup: $(VENV)/.stamp $(MLS_VENV)/.stamp $(MODELS)/.stamp

run: setup
	$(PY) -m devstack run

test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m pytest

lint: $(VENV)/.stamp
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(VENV)/.stamp
	$(PY) -m mypy

# The JSON Schemas, and the docs/ pages generated from them and from the metrics registries.
schema: $(VENV)/.stamp
	$(PY) -m tenancy schema schema/
	$(PY) -m devstack docs docs/

# Generated reference pages (config from schema/, metrics from the registries); after `make schema`.
docs: $(VENV)/.stamp
	$(PY) -m devstack docs docs/

# docs/dashboard.png: the Grafana dashboard's main panels, drawn from a live stack under load.
dashboard-png: setup
	$(PY) -m devstack.dashboard --out docs/dashboard.png

# Validate a config directory: make check DIR=examples/config
DIR ?= examples/config
check: $(VENV)/.stamp
	$(PY) -m tenancy check $(DIR)

bench: setup
	$(PY) -m bench

bench-coldstart: setup
	$(PY) -m bench.coldstart

# The fault matrix on the real stack: one table row per fault, exit 1 when a promise breaks.
faults: setup
	$(PY) -m faults

# Pure simulation (no servers): placement against the alternatives on 10,000 models, 100 instances.
bench-placement: $(VENV)/.stamp
	$(PY) -m bench.placement_sim

clean:
	rm -rf $(VENV) $(MLS_VENV) .cache
