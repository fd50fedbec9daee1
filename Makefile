# `make train` and `make test` set up .venv on first use (and again when pyproject.toml or
# constraints.txt change), then run. Overrides go in ARGS: make train ARGS="optim.lr=2e-6".
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: train test lint test-versions

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

train: $(VENV)/.installed
	$(BIN)/python train.py $(ARGS)

test: $(VENV)/.installed
	$(BIN)/python -m pytest $(ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The declared version ranges, tested: the fast tests (parity included) with the lowest versions that
# pyproject.toml allows (.ci/lowest.txt), in their own venv beside the pinned torch; .venv is left
# alone. The newest releases need no venv of their own in CI: .ci/run builds .venv afresh, where pip
# takes the newest release of everything but the pinned torch, and `make test` runs there.
# `make test-newest` does the same in .venv-newest, for a machine whose .venv is older.
.PHONY: test-newest versions
VERSIONS := pip list --format=freeze | grep -iE '^(torch|lightning|torchmetrics|hydra-core|numpy)=='

versions: $(VENV)/.installed
	$(BIN)/python -m $(VERSIONS)

test-versions: .venv-lowest/.installed
	.venv-lowest/bin/python -m $(VERSIONS)
	.venv-lowest/bin/python -m pytest -q -m "not slow" -p no:cacheprovider $(ARGS)

test-newest: .venv-newest/.installed
	.venv-newest/bin/python -m $(VERSIONS)
	.venv-newest/bin/python -m pytest -q -m "not slow" -p no:cacheprovider $(ARGS)

.venv-lowest/.installed: pyproject.toml constraints.txt .ci/lowest.txt
	rm -rf .venv-lowest
	$(PYTHON) -m venv .venv-lowest
	.venv-lowest/bin/python -m pip install -q -c constraints.txt -c .ci/lowest.txt -e ".[test]"
	touch $@

.venv-newest/.installed: pyproject.toml constraints.txt
	rm -rf .venv-newest
	$(PYTHON) -m venv .venv-newest
	.venv-newest/bin/python -m pip install -q --upgrade --upgrade-strategy eager -c constraints.txt -e ".[test]"
	touch $@
