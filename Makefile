# The two commands: `make demo` (the whole flow on local emulators) and `make test`.
# Both create or reuse the virtual environment in .venv.
# Its interpreter: Python 3.12, the deploy runtime, when one runs here, else python3
# (tools/python_env.py; docs/testing.md, "Which Python"). Found once, when first needed;
# `make test PYTHON=python3.11` picks another (the venv is rebuilt for it).
ifeq ($(origin PYTHON),undefined)
PYTHON = $(eval PYTHON := $(shell python3 tools/python_env.py choose))$(PYTHON)
endif
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# What the Cloud Function needs at runtime: the `!/` lines of .gcloudignore, what `gcloud run
# deploy` uploads (docs/design.md, "What is deployed"); tests/test_packaging.py checks both agree.
RUNTIME_FILES := $(shell sed -n 's|^!/||p' .gcloudignore)
FUNCTION_NAME ?= ride-prediction
DIST ?= dist

.PHONY: help venv lint format test test-fast demo up down train package package-aws bench schemas clean FORCE

help:
	@echo "make demo    run Stream A -> function -> Stream B on local emulators"
	@echo "make test    lint and run every test"
	@echo "make test-fast  the tests that need no emulator, server, gcloud or Java (under a minute)"
	@echo "make up/down keep the local stack running / stop it"
	@echo "make train   train a model into the local MLflow store"
	@echo "make lint    ruff, mypy --strict, shellcheck, the CI workflow's schema;  make format  fixes"
	@echo "make package build $(DIST)/$(FUNCTION_NAME).zip: the function's source, as deployed"
	@echo "./deploy.sh  deploy to GCP (see ./deploy.sh --help and docs/deploy.md)"
	@echo "make package-aws  build the AWS Lambda zip (dist/aws-lambda.zip)"
	@echo "make bench   benchmark vs the tutorial's function, then the fast path (~20 min; bench/results)"
	@echo "make schemas regenerate schemas/*.schema.json from the declarations in ride_predictor/messages.py"

# Checked on every run: rebuilt when a requirements file changed or $(PYTHON) is not the
# interpreter the stamp records (tools/python_env.py).
$(STAMP): FORCE
	@$(PYTHON) tools/python_env.py venv $(VENV) requirements-dev.txt requirements.txt

venv: $(STAMP)

# The same checks run as pre-commit hooks (.pre-commit-config.yaml; tests/test_repository.py
# keeps the two lists equal). The CI workflow is checked offline against GitHub's workflow
# schema, which check-jsonschema ships.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/shellcheck deploy.sh monitoring/render.bash
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/ci.yml

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	@$(PY) tools/python_env.py describe
	$(PY) -m pytest

# The edit-test loop: no emulator, server, gcloud, Java, network or sleeping test
# (tests/fast_scope.py); its slowest tests listed, so that new slow ones show.
test-fast: $(STAMP)
	@$(PY) tools/python_env.py describe
	$(PY) -m pytest --fast --durations=5

train: $(STAMP)
	$(PY) -m training.train

# The published JSON Schemas of the messages, generated from ride_predictor/messages.py;
# tests/test_schemas.py fails when the committed files differ from what this writes.
schemas: $(STAMP)
	$(PY) -m schemas.generate

# The AWS Lambda variant's deployment zip: handler and core modules only (standard library
# to build, so no virtual environment needed). See docs/aws.md.
AWS_ZIP ?= dist/aws-lambda.zip
package-aws:
	$(PYTHON) aws/build_zip.py $(AWS_ZIP)

# The deployable source as a zip: what `gcloud run deploy --source .` uploads (.gcloudignore).
# Only the standard library is needed, so no virtual environment.
package: $(DIST)/$(FUNCTION_NAME).zip

# Each file at its path (`python -m zipfile -c` would flatten ride_predictor/ to its basenames).
$(DIST)/$(FUNCTION_NAME).zip: $(RUNTIME_FILES) .gcloudignore
	@mkdir -p $(DIST)
	@rm -f $@
	$(PYTHON) -c 'import sys, zipfile; archive = zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED); [archive.write(name) for name in sys.argv[2:]]; archive.close()' $@ $(RUNTIME_FILES)
	@echo "built $@"

clean:
	rm -rf $(VENV) dist .stack .pytest_cache .ruff_cache .mypy_cache

demo: $(STAMP)
	$(PY) -m devstack demo

up: $(STAMP)
	$(PY) -m devstack up

down: $(STAMP)
	$(PY) -m devstack down

# The benchmark against the tutorial's function (bench/results/), then the linear fast path
# against the pipeline's own predict, under each billing mode (bench/results/fast-path/).
bench: $(STAMP)
	$(PY) -m bench
	$(PY) -m bench.fast_path

FORCE:
