# Two entry points for a fresh machine: `make demo` and `make test` (and `make docs`).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SPARK_STAMP := $(VENV)/.installed-spark
DOCS_STAMP  := $(VENV)/.installed-docs
# Airflow lives in its own virtualenv: the DAG test loads deploy/airflow with it.
AIRFLOW_VENV  ?= .airflow-venv
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed

.PHONY: demo test docs lint format install clean prerequisites

# What a fresh machine may lack, checked before anything is installed, each in one line.
# Debian and Ubuntu ship python3 without ensurepip, which `python3 -m venv` needs.
prerequisites:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found: install Python 3.11 or newer (Debian/Ubuntu: apt install python3 python3-venv)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "make: clickstream needs Python 3.11 or newer, $(PYTHON) is $$($(PYTHON) -V 2>&1): install one and run make PYTHON=python3.11"; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { echo "make: $(PYTHON) cannot create a virtualenv (no ensurepip): install python3-venv (Debian/Ubuntu: apt install python3-venv)"; exit 1; }

$(STAMP): pyproject.toml | prerequisites
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,test]'
	touch $(STAMP)

# The Spark engine's extra: the tests need it, the demo does not.
$(SPARK_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,spark]'
	touch $(SPARK_STAMP)

# The documentation site's generator: `make docs` serves it, the suite builds it strictly.
$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

$(AIRFLOW_STAMP): | prerequisites
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install --quiet 'apache-airflow>=2.7,<4'
	touch $(AIRFLOW_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/clickstream demo

test: $(SPARK_STAMP) $(DOCS_STAMP) $(AIRFLOW_STAMP)
	@command -v java >/dev/null 2>&1 || echo "make: no java: the Spark engine's tests need Java 17 or 21 (Debian/Ubuntu: apt install default-jre-headless)"
	$(BIN)/ruff check src tests docs/hooks
	$(BIN)/ruff format --check src tests docs/hooks
	$(BIN)/python -m pytest

# The documentation site on http://127.0.0.1:8001, rebuilt on every change.
docs: $(DOCS_STAMP)
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

format: $(STAMP)
	$(BIN)/ruff format src tests docs/hooks
	$(BIN)/ruff check --fix src tests docs/hooks

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) build site *.egg-info .pytest_cache .ruff_cache
