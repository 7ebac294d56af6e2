# Every target creates .venv and installs the project into it when needed,
# so a fresh clone needs nothing but python3 (>= 3.11) and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo run test lint typecheck unit integration bench bench-evaluate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)          ## live pipeline on the embedded broker with demo traffic and metrics
	$(BIN)/privacy-pipeline demo

run: $(STAMP)           ## the live worker alone
	$(BIN)/privacy-pipeline run

test: lint typecheck    ## everything CI runs
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check privacy_pipeline tests bench

typecheck: $(STAMP)
	$(BIN)/mypy privacy_pipeline/processors

unit: $(STAMP)
	$(BIN)/pytest -q -m "not integration"

integration: $(STAMP)
	$(BIN)/pytest -q -m integration

bench-evaluate: $(STAMP)  ## evaluate vs. bare JSON read-and-write, 200k events
	$(BIN)/python bench/bench_evaluate.py

bench: $(STAMP)           ## pipeline vs. passthrough on the embedded broker
	$(BIN)/python bench/bench_pipeline.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
