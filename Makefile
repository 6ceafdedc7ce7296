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

# pyspark (engine.name: spark, model.type: spark_als and their tests) needs Java 17 or 21.
.PHONY: java bench-engines bench-spark-als
java:
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); \
	case "$$v" in 17|18|19|20|21) ;; *) echo "error: pyspark needs Java 17 or 21 (found: $${v:-none}); install it: sudo apt-get install -y openjdk-17-jre-headless" >&2; exit 2;; esac
test: java
test-all: java

# the confidence stage per engine at 1x and 10x (docs/scale-out.md); about 10 minutes on 2 cores
bench-engines: setup java
	python scripts/bench_engines.py --scale 1 10

# implicit ALS vs Spark MLlib ALS at the same rank on the default shop (docs/scale-out.md)
bench-spark-als: setup java
	python scripts/bench_spark_als.py
