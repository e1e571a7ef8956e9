# Two commands for a fresh clone:  make repro  (run the pipeline)  and  make test.
# Both create .venv from the pinned requirements.txt the first time and install the project
# into it (pip install -e .), which puts the `transferline` command on its PATH.
# make check [REV=...]: re-run REV (default HEAD) in a clean clone, compare with its commit.
# make lint: ruff's checks and its formatter over the tree (.ci/run runs it before the tests).
REV    ?= HEAD
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-12)
# `dvc plots show/diff` page template with Vega inlined (.dvc/config points at it); git-ignored
TEMPLATE := .dvc/plots.html

export DVC_NO_ANALYTICS := 1

.PHONY: install repro test check lint

install: $(STAMP) $(TEMPLATE)

# Last step: the project itself, editable, so `transferline` is on the venv's PATH
# (--no-build-isolation: the venv's own setuptools builds it, nothing is downloaded).
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-* && touch $@

$(TEMPLATE): $(STAMP) transferline/tools/plots_template.py
	$(BIN)/transferline plots-template --out $@

# validate first: on a params.yaml DVC cannot read, its message names the file and the key
repro: $(STAMP) $(TEMPLATE)
	$(BIN)/transferline validate
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: $(STAMP) $(TEMPLATE)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

check: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/transferline check --rev $(REV)
