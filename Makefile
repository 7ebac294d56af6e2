# Every target creates .venv and installs the project into it when needed,
# so a fresh clone needs nothing but python3 (>= 3.11) and make.
SHELL   := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The package's folders (each one subpackage of privacy_pipeline, see pyproject.toml).
CODE_DIRS    := processors streams cli demo embedded_broker sink
PACKAGE_DIRS := $(CODE_DIRS) schemas policies
# A strict editable install links each file into build/, so a file added or removed
# needs a reinstall: the stamp depends on the list of files, rewritten only when it changes.
FILE_LIST := $(VENV)/.package-files

.PHONY: demo run test lint typecheck wheel-check unit integration bench bench-sink bench-evaluate clean

$(FILE_LIST): FORCE
	@mkdir -p $(VENV)
	@find $(PACKAGE_DIRS) -type f ! -path '*/__pycache__/*' | sort > $@.new
	@cmp -s $@.new $@ && rm $@.new || mv $@.new $@

$(STAMP): pyproject.toml $(FILE_LIST)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
	touch $(STAMP)

.PHONY: FORCE
FORCE:

demo: $(STAMP)          ## live pipeline on the embedded broker with demo traffic and metrics
	$(BIN)/privacy-pipeline demo

run: $(STAMP)           ## the live worker alone
	$(BIN)/privacy-pipeline run

test: lint typecheck wheel-check    ## everything CI runs
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check $(CODE_DIRS) tests bench

# mypy reads the installed tree (build/__editable__…); paths are shown as in the repository.
typecheck: $(STAMP)
	$(BIN)/mypy $(addprefix -p privacy_pipeline.,$(CODE_DIRS)) | sed 's#build/__editable__[^/]*/privacy_pipeline/##'

wheel-check: $(STAMP)  ## a built wheel, installed non-editable in a fresh venv, works outside the checkout
	bash .ci/wheel-check

unit: $(STAMP)
	$(BIN)/pytest -q -m "not integration"

integration: $(STAMP)
	$(BIN)/pytest -q -m integration

bench-evaluate: $(STAMP)  ## evaluate vs. bare JSON read-and-write, 200k events
	$(BIN)/python bench/bench_evaluate.py

bench: $(STAMP)           ## pipeline vs. passthrough on the embedded broker
	$(BIN)/python bench/bench_pipeline.py

bench-sink: $(STAMP)      ## sink vs. a bare loop of the same SQL, on SQLite and PostgreSQL
	$(BIN)/python bench/bench_sink.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
