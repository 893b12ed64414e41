# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# checkov (tests/unit/test_deploy.py) pins packages that clash with the project's: its own venv.
CHECKOV_VENV ?= .venv-checkov

.PHONY: setup backends demo test

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --editable '.[test,bench,deploy]'
	touch $@

$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet 'checkov>=3.2'
	touch $@

setup: $(VENV)/.installed

# Triton's own DALI and ONNX Runtime backends for the pip-installed server (about a minute
# once, then cached). Where they cannot be built, the demo and tests fall back to the
# Python-hosted models and the native tests skip, saying why; in CI (CI=true) that fails.
backends: setup
	$(PY) tools/build_backends.py || { [ "$$CI" != true ] && echo "native backends not built: using the Python-hosted fallback"; }

demo: backends
	$(PY) tools/demo.py

# Lint, format and the import floors first (seconds), then the tests.
test: backends $(CHECKOV_VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
	CHECKOV=$(CHECKOV_VENV)/bin/checkov $(PY) -m pytest
