# Two commands set everything up on a fresh machine:
#   make repro   create/reuse .venv from requirements.txt, then run the pipeline (dvc repro)
#   make test    create/reuse .venv from requirements.txt, then run the test suite (about 3 min on 2 cores)
# Both install the `recsys` command (recsys --help) into .venv.
#   make docs    serve the docs site on http://127.0.0.1:8001 (mkdocs, live reload)
#   make serve   the HTTP service over models/bundle (docs: Deploy)
VENV ?= .venv
# The interpreter the venv is made with: PYTHON if set; else, on Linux, the system's python3
# if it is 3.11 (the version requirements.txt is locked for); else python3 on PATH.
# Distribution builds are compiled with profile-guided optimisation, and the test suite is
# mostly Python starting up and running DVC: on 2 cores it used about a sixth less CPU than
# on a Python built from source without --enable-optimizations (docs/testing.md, "The
# interpreter"). Not on macOS, where /usr/bin/python3 is a stub that may offer to install
# the developer tools.
SYSTEM_PYTHON := $(if $(filter Linux,$(shell uname -s 2>/dev/null)),/usr/bin/python3)
PYTHON_CANDIDATES := $(or $(PYTHON),$(SYSTEM_PYTHON) python3)
BIN := $(CURDIR)/$(VENV)/bin
# Stages run as `python -m stages.X` through dvc: put the venv first so they find its packages.
export PATH := $(BIN):$(PATH)
export VIRTUAL_ENV := $(CURDIR)/$(VENV)
# pytest workers: one per core (at least two); --dist loadgroup keeps the tests of a
# module-scoped fixture on one worker (tests/conftest.py). More workers only fight for the
# cores: on 2 cores, 636 tests (as they were then) took 157 and 169 s on 2 workers, 160 and 174 s on 3 (with 10%
# more CPU) and 169 s on 4 (`python scripts/bench_tests.py --workers N`, docs/testing.md);
# `make test WORKERS=1` runs serially.
CORES := $(shell nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)
WORKERS ?= $(shell echo $$(( $(CORES) > 2 ? $(CORES) : 2 )))

.PHONY: setup repro test test-all docs docs-build lint format bench bench-tests bench-families \
	bench-service fidelity serve clean-venv

setup: $(VENV)/.installed

# pip's own output is the progress: one line per package it collects and installs.
$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(BIN)/python || for py in $(PYTHON_CANDIDATES); do \
		$$py -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || continue; \
		if $$py -m venv $(VENV) >/dev/null 2>&1; then \
			echo "==> created $(VENV) with $$($$py --version) ($$py)"; break; fi; \
		rm -rf $(VENV); \
	done; \
	test -x $(BIN)/python || { echo "error: no Python 3.11 that can make a venv among: \
	$(PYTHON_CANDIDATES); install python3.11 (and python3.11-venv) or set PYTHON=..." >&2; exit 2; }
	@echo "==> installing the pinned requirements.txt into $(VENV) (first time: about 2 minutes)"
	@$(BIN)/python -m pip install --disable-pip-version-check --progress-bar on -r requirements.txt
	@echo "==> installing the recsys command (editable)"
	@$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	@# implicit's compiled part links the system's GNU OpenMP runtime, which minimal images lack
	@why=$$($(BIN)/python -c 'import implicit.cpu._als' 2>&1) || { \
		echo "error: implicit does not load ($$(echo "$$why" | tail -1)); install the GNU OpenMP runtime: \
	sudo apt-get install -y libgomp1 (libgomp on Amazon Linux and RHEL)" >&2; exit 2; }
	@touch $@
	@echo "==> $(VENV) ready: recsys --help lists the commands"

repro: setup
	@echo "==> dvc repro: generate -> confidence -> matrix -> mask -> train -> evaluate -> export"
	dvc repro

# About 3 minutes on 2 cores: 634 tests in 170 to 201 s in fresh clones (docs/testing.md), the
# Spark standalone cluster included (so it checks for Java first); the slow ones (Spark
# local[2] checks, the two-day loop) are in test-all.
test: java setup
	@echo "==> pytest on $(WORKERS) workers (about 3 minutes on 2 cores)"
	python -m pytest -n $(WORKERS) --dist loadgroup --no-loadscope-reorder

test-all: java setup
	python -m pytest -n $(WORKERS) --dist loadgroup --no-loadscope-reorder -m "slow or not slow"

docs: setup
	mkdocs serve -a 127.0.0.1:8001

docs-build: setup
	mkdocs build --strict

lint: setup
	ruff check .
	ruff format --check .

format: setup
	ruff check --fix .
	ruff format .

bench: setup
	python scripts/benchmark.py

# Where the test suite's time goes: CPU seconds per test module (docs/testing.md).
bench-tests: setup
	python scripts/bench_tests.py

bench-families: setup
	python scripts/bench_families.py

# the synthetic shop next to the reference's figures, for three seeds (about 15 minutes)
fidelity: setup
	recsys fidelity --seeds 42 7 2024

# The HTTP service on 127.0.0.1:$PORT (8000) over $BUNDLE_DIR (models/bundle); `exec` so that
# `kill -HUP` reaches the server itself and reloads the bundle.
serve: setup
	exec recsys serve

bench-service: setup
	python scripts/bench_service.py

clean-venv:
	rm -rf $(VENV)

# One retraining cycle, the steps of .github/workflows/retrain.yml (tests/test_retrain_loop.py
# checks they are the same commands): new daily events from S3, reproduce, publish, then the
# champion/challenger gate promotes with GTO only when params.yaml's `gate:` rule holds
# (exit 3 = champion kept, not a failure). Needs events/daily.dvc (docs/retrain-loop.md),
# the DVC remote's credentials and a git remote `origin` to push to.
.PHONY: retrain
retrain:
	dvc update events/daily.dvc
	dvc repro
	git add dvc.lock metrics events/daily.dvc
	git diff --cached --quiet || git commit -qm "retrain: new events"
	dvc push
	recsys gate --promote --summary "$${GITHUB_STEP_SUMMARY:-.dvc/tmp/gate.md}" || test $$? -eq 3
	git push -q origin HEAD --tags

# The retraining loop rehearsed on this machine in one command: local S3 server, a temporary
# clone of HEAD, synthetic daily files, `make retrain` for day 1 and again for day 2.
.PHONY: rehearse
rehearse: setup
	python scripts/rehearse_loop.py

# pyspark (engine.name: spark, model.type: spark_als and their tests) needs Java 17 or 21.
.PHONY: java bench-engines bench-spark-als
java:
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); \
	case "$$v" in 17|18|19|20|21) ;; *) echo "error: pyspark needs Java 17 or 21 (found: $${v:-none}); install it: sudo apt-get install -y openjdk-17-jre-headless" >&2; exit 2;; esac

# the confidence stage per engine at 1x and 10x (docs/scale-out.md); about 10 minutes on 2 cores
bench-engines: setup java
	python scripts/bench_engines.py --scale 1 10

# implicit ALS vs Spark MLlib ALS at the same rank on the default shop (docs/scale-out.md)
bench-spark-als: setup java
	python scripts/bench_spark_als.py
