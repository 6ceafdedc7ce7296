# Two commands set everything up on a fresh machine:
#   make repro   create/reuse .venv from requirements.txt, then run the pipeline (dvc repro)
#   make test    create/reuse .venv from requirements.txt, then run the test suite
#   make serve   the HTTP service over models/bundle (README "Deploy")
VENV ?= .venv
PYTHON ?= python3
BIN := $(CURDIR)/$(VENV)/bin
# Stages run as `python -m stages.X` through dvc: put the venv first so they find its packages.
export PATH := $(BIN):$(PATH)
export VIRTUAL_ENV := $(CURDIR)/$(VENV)

.PHONY: setup repro test test-all lint format bench bench-families bench-service fidelity serve clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	@test -x $(BIN)/python || { echo "==> creating $(VENV) with $$($(PYTHON) --version)"; $(PYTHON) -m venv $(VENV); }
	@echo "==> installing the pinned requirements.txt into $(VENV) (first time: about 2 minutes)"
	@$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt
	@touch $@
	@echo "==> $(VENV) ready"

repro: setup
	@echo "==> dvc repro: generate -> confidence -> matrix -> mask -> train -> evaluate -> export"
	dvc repro

test: setup
	python -m pytest

test-all: setup
	python -m pytest -m "slow or not slow"

lint: setup
	ruff check .
	ruff format --check .

format: setup
	ruff check --fix .
	ruff format .

bench: setup
	python scripts/benchmark.py

bench-families: setup
	python scripts/bench_families.py

# the synthetic shop next to the reference's figures, for three seeds (about 15 minutes)
fidelity: setup
	python scripts/fidelity.py --seeds 42 7 2024

# The HTTP service on 127.0.0.1:$PORT (8000) over $BUNDLE_DIR (models/bundle); `exec` so that
# `kill -HUP` reaches the server itself and reloads the bundle.
serve: setup
	exec python -m recsys.service

bench-service: setup
	python scripts/bench_service.py

clean-venv:
	rm -rf $(VENV)
