# make demo: set up .venv and run the demo.  make test: set up .venv and run the whole test suite.
VENV ?= .venv
PYTHON ?= python3.11
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and pinned: the CPU wheel on this disk; anything unpinned would pull a CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: $(STAMP)
	$(BIN)/python -m oldphoto.demo

test: $(STAMP)
	.ci/browser
	$(BIN)/python -m pytest -q -ra --durations=15

bench: $(STAMP)
	$(BIN)/python benchmarks/synth.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/restore.py

clean:
	rm -rf $(VENV) .oldphoto out
