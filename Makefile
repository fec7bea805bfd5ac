# The two commands of the README: `make demo` and `make test`. Each sets up what
# it needs on a machine that has only Python 3.11 and pip.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

export AIRFLOW_HOME := $(CURDIR)/.airflow
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__UNIT_TEST_MODE := False
export PYTHONPATH := $(CURDIR)/include:$(CURDIR)/dags
# Python clients honour AWS_CA_BUNDLE; the local cloud is plain HTTP on loopback.
unexport AWS_PROFILE

.PHONY: demo ui test unit bench install airflow-db clean

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	@touch $@

install: $(VENV)/.installed

$(AIRFLOW_HOME)/airflow.db: $(VENV)/.installed
	@mkdir -p $(AIRFLOW_HOME)
	$(BIN)/airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 || (cat $(AIRFLOW_HOME)/db-migrate.log; exit 1)

airflow-db: $(AIRFLOW_HOME)/airflow.db

# `make demo EXECUTOR=celery`: the same migration on the CeleryExecutor with two workers
# (Redis on 127.0.0.1:6379 as the broker; metadata, results and ledger on the machine's PostgreSQL).
EXECUTOR ?= local
demo: install airflow-db
	$(BIN)/python scripts/demo.py --executor $(EXECUTOR)

# The Airflow UI on the local cloud with the demo estate, until Ctrl-C; `make ui UI_ARGS=--trigger` also starts a run.
ui: install airflow-db
	$(BIN)/python scripts/ui.py $(UI_ARGS)

test: install airflow-db
	$(BIN)/python -m pytest

# Copy benchmark (engine vs rclone vs raw SDK loop, and the DAG on case (a) S3): a table, PASS/MISS
# lines and a final JSON line. `make bench BENCH_ARGS=--quick` for a smoke run.
bench: install airflow-db
	$(BIN)/python benchmarks/bench_copy.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_memory.py --gib 1 --route 's3->gs'
	$(BIN)/python benchmarks/bench_progress.py --rows 1000000

unit: install
	$(BIN)/python -m pytest tests/unit

clean:
	rm -rf $(AIRFLOW_HOME) demo-output .localcloud .pytest_cache
