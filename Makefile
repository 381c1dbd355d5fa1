# The README's commands. Each target sets up .venv first (idempotent), so a fresh clone needs nothing else.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
# stages call `python`: make it the venv's
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
# pip's mirror set-up prints one warning per package it does not hold: keep the log readable
QUIET := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: setup repro quick test test-fast bench plots server clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 2>&1 | $(QUIET)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | $(QUIET)
	$(BIN)/python -c "import ganflow, torch, torch_fidelity, mlflow, dvc" 
	touch $@

repro: setup
	$(BIN)/ganflow check params.yaml
	$(BIN)/dvc repro

# The whole pipeline at try-it-out size (a 1-epoch evaluator, 300 steps, 500 samples), as a DVC experiment
# in a temp copy (`dvc exp run --temp`): the workspace, params.yaml and the model registry stay as they are;
# `dvc exp show` lists it. Add your own changes: make quick S="train.lr_g=0.0008 train.loss=non-saturating"
# One CPU thread (QUICK_THREADS): on a shared, loaded 2-core machine torch's two threads wait for each other,
# and train ran 5-8x faster on one (1,040 against 127-207 img/s, docs/team.md); a GPU run is unaffected.
QUICK_THREADS ?= 1
QUICK := evaluator.epochs=1 train.steps=300 train.resume=false train.eval_every=0 train.sample_every=100 \
	train.checkpoint_every=100 sample.n=500 evaluate.bootstrap=50 evaluate.inception=off evaluate.cas=off \
	tracking.registered_model=null
quick: setup
	OMP_NUM_THREADS=$(QUICK_THREADS) $(BIN)/dvc exp run --temp $(addprefix -S ,$(QUICK) $(S))

# everything, as CI runs it: one pytest-xdist worker per logical CPU, each on one thread (tests/conftest.py), handed
# tests as they free up (worksteal: the slowest take minutes). 20 min on a 2-core Intel Xeon (32 min serially)
test: setup
	$(BIN)/pytest -n logical --dist worksteal

# the unit tier: quick in-process tests (tests/conftest.py; under a minute on 2 cores)
test-fast: setup
	$(BIN)/pytest -m unit

bench: setup
	$(BIN)/python bench/quality.py

# dvc plots as HTML that renders offline (Vega inlined, built once with npm into an ignored path);
# REVS="HEAD~1" or REVS="main my-exp" gives `dvc plots diff REVS` instead of `dvc plots show`
PLOTS_TEMPLATE := .dvc/tmp/offline-plots.html
plots: setup
	@$(BIN)/python tools/offline_plots_template.py $(PLOTS_TEMPLATE)
	$(BIN)/dvc plots $(if $(REVS),diff $(REVS),show) --html-template $(PLOTS_TEMPLATE)

# a team's tracking server: MLflow over PostgreSQL with proxied artifacts (tools/team_server.py, docs/scale.md);
# DIR (data, default .ganflow/server), HOST (0.0.0.0: the team's network), PORT, DB (an existing postgresql+psycopg:// database)
server: setup
	$(BIN)/python tools/team_server.py --dir $(or $(DIR),.ganflow/server) --host $(or $(HOST),127.0.0.1) --port $(or $(PORT),5000) $(if $(DB),--db-uri $(DB))

clean-venv:
	rm -rf $(VENV)
