# lumi_jax Make targets. Every target bootstraps its own environment: when .venv is missing, or
# pyproject.toml is newer than the install stamp, it creates the venv and installs -e .[dev].
# So on a fresh clone `make test` alone installs and tests.

PYTHON_SYSTEM ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
CONFIG ?= config/architectures/tiny.json

.DEFAULT_GOAL := help

$(STAMP): pyproject.toml
	@$(PYTHON_SYSTEM) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "lumi_jax needs Python >= 3.11; set PYTHON_SYSTEM=python3.11 (or newer)")'
	@test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

.PHONY: help install test lint validate-architecture clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-24s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install lumi_jax with its dev tools

test: $(STAMP) ## run the test suite
	$(PY) -m pytest

lint: $(STAMP) ## ruff over the package, tests and benchmarks
	$(VENV)/bin/ruff check lumi_jax tests benchmarks

validate-architecture: $(STAMP) ## counts, memory and LLaMA checks for CONFIG (default tiny)
	$(PY) -m lumi_jax.cli architecture $(CONFIG)

clean: ## remove caches and temporary files (never data, runs, checkpoints or session logs)
	find . -path ./$(VENV) -prune -o -type d \( -name __pycache__ -o -name .pytest_cache -o -name .ruff_cache \) -print | xargs rm -rf
	rm -rf build dist *.egg-info .tmp
