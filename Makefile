# Every target creates .venv if missing and (re)installs the package with its dev extra only
# when pyproject.toml changed. pytest's exit code 5 ("no tests collected") is reported, not
# swallowed silently: for the marker targets it means that marker has no tests yet.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST := $(PY) -m pytest
# Runs pytest; exit code 5 (nothing collected) becomes 0 with a message for marker targets.
run_pytest = $(PYTEST) $(1); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests matched ($(1))"; rc=$(2); fi; exit $$rc

.PHONY: install demo test test-all test-faults bench lint typecheck doctest ci format clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) recipes/demo.py

test: $(STAMP)
	@$(call run_pytest,-q,1)

test-all: $(STAMP)
	@$(call run_pytest,-q -m "",1)

test-faults: $(STAMP)
	@$(call run_pytest,-q -m faults,0)

BENCH_STAMP := $(VENV)/.installed-bench-stamp
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m recipes.benchmarks $(BENCH_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check src tests recipes
	$(PY) -m ruff format --check src tests recipes

typecheck: $(STAMP)
	$(PY) -m mypy

# The docstring examples of the package: fast, offline (HF_HUB_OFFLINE=1), deterministic.
# The path is passed explicitly (testpaths is tests/); no marker filter applies to doctests.
doctest: $(STAMP)
	@HF_HUB_OFFLINE=1 $(call run_pytest,-q -p no:cacheprovider --doctest-modules -o addopts= --timeout=300 --durations=5 src/hub_cutinit,1)

# What .ci/run runs, in this order.
ci: lint typecheck doctest test

format: $(STAMP)
	$(PY) -m ruff check --fix src tests recipes
	$(PY) -m ruff format src tests recipes

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .mypy_cache
