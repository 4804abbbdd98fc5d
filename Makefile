# The two commands: `make demo` (the whole flow on local emulators) and `make test`.
# Both create or reuse the virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help venv lint format test demo up down train package bench clean

help:
	@echo "make demo    run Stream A -> function -> Stream B on local emulators"
	@echo "make test    lint and run every test"
	@echo "make up/down keep the local stack running / stop it"
	@echo "make train   train a model into the local MLflow store"
	@echo "make lint    ruff check and format check;  make format  fix them"
	@echo "make bench   benchmark vs the tutorial's function (a few minutes; bench/results)"

$(STAMP): requirements.txt requirements-dev.txt
	@echo "… preparing $(VENV) (first run installs the dependencies, about a minute)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest

train: $(STAMP)
	$(PY) -m training.train

clean:
	rm -rf $(VENV) dist .stack .pytest_cache .ruff_cache

demo: $(STAMP)
	$(PY) -m devstack demo

up: $(STAMP)
	$(PY) -m devstack up

down: $(STAMP)
	$(PY) -m devstack down

bench: $(STAMP)
	$(PY) -m bench
