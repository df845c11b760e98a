# The README's two set-up commands: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test lint bench clean lock load-report

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed-load: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[load]'
	touch $@

run: $(VENV)/.installed
	$(PY) -m app

test: $(VENV)/.installed-test
	$(PY) -m pytest -q

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check app tests bench tools examples
	$(VENV)/bin/ruff format --check app tests bench tools examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Locust at 10, 50, 100 and 200 users against a service started for it: docs/LOAD.md and docs/load/*.html
# (about 6 minutes). LOAD_ARGS="--duration 20 --users 10,50" for a shorter run, "--url URL --key KEY" for a running one.
load-report: $(VENV)/.installed-load
	$(PY) -m bench.load_report $(LOAD_ARGS)

# Hash-locked requirements for the Docker image (requirements/README.md). uv resolves for the image's Python and
# platform, whatever this machine runs (wheel-only, so a missing local 3.12 is only a warning); pins already in the
# files are kept unless LOCK_ARGS=--upgrade.
UV := $(VENV)/bin/uv
LOCK_FLAGS := --no-config --no-python-downloads --index-url https://pypi.org/simple \
	--python-platform x86_64-manylinux_2_28 --only-binary :all: --emit-build-options --generate-hashes
CPU_LOCK := --python-version 3.11 pyproject.toml requirements/build.in -o requirements/cpu.txt
GPU_LOCK := --python-version 3.12 --extra gpu --no-emit-package onnxruntime pyproject.toml requirements/build.in \
	-o requirements/gpu.txt

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "uv>=0.5"

lock: $(UV)
	$(UV) pip compile --quiet $(LOCK_FLAGS) $(LOCK_ARGS) $(CPU_LOCK) \
		--custom-compile-command "make lock, i.e. uv pip compile $(LOCK_FLAGS) $(CPU_LOCK)"
	$(UV) pip compile --quiet $(LOCK_FLAGS) $(LOCK_ARGS) $(GPU_LOCK) \
		--custom-compile-command "make lock, i.e. uv pip compile $(LOCK_FLAGS) $(GPU_LOCK)"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
