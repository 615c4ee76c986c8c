# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SPARK_STAMP := $(VENV)/.installed-spark
# Airflow lives in its own virtualenv: the DAG test loads deploy/airflow with it.
AIRFLOW_VENV  ?= .airflow-venv
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed

.PHONY: demo test lint format install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,test]'
	touch $(STAMP)

# The Spark engine's extra: the tests need it, the demo does not.
$(SPARK_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,spark]'
	touch $(SPARK_STAMP)

$(AIRFLOW_STAMP):
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install --quiet 'apache-airflow>=2.7,<4'
	touch $(AIRFLOW_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/clickstream demo

test: $(SPARK_STAMP) $(AIRFLOW_STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/python -m pytest

format: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) build *.egg-info .pytest_cache .ruff_cache
