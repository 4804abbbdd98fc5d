# The two commands: `make demo` (the whole flow on local emulators) and `make test`.
# Both create or reuse the virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help venv lint format test demo up down train package package-aws bench clean

help:
	@echo "make demo    run Stream A -> function -> Stream B on local emulators"
	@echo "make test    lint and run every test"
	@echo "make up/down keep the local stack running / stop it"
	@echo "make train   train a model into the local MLflow store"
	@echo "make lint    ruff check and format check;  make format  fix them"
	@echo "make package-aws  build the AWS Lambda zip (dist/aws-lambda.zip)"

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

# The AWS Lambda variant's deployment zip: handler and core modules only (standard library
# to build, so no virtual environment needed). See docs/aws.md.
AWS_ZIP ?= dist/aws-lambda.zip
package-aws:
	$(PYTHON) aws/build_zip.py $(AWS_ZIP)

clean:
	rm -rf $(VENV) dist .stack .pytest_cache .ruff_cache

demo: $(STAMP)
	$(PY) -m devstack demo

up: $(STAMP)
	$(PY) -m devstack up

down: $(STAMP)
	$(PY) -m devstack down
