# nanollm's set-up lives here: every target creates the virtual environment it needs from nothing.
#   make run PROMPT="..."   generate text            make test            the whole test suite
#   make bench              model speed vs transformers      make bench-tokenizer   tokenizer speed vs tiktoken
#   make kernels            compile every .cu with nvcc      make bench-kernels     kernel speed (GPU only)

VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
PROMPT ?= The meaning of life is
MODEL ?=
RUN_ARGS ?= --max-new-tokens 40

.PHONY: run test bench bench-tokenizer bench-kernels kernels clean

# Runtime environment: numpy and regex only.
$(VENV)/.runtime: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# Test environment: adds pytest, hypothesis and the reference libraries (torch pinned to the local CPU build).
$(VENV)/.test: $(VENV)/.runtime
	$(PY) -m pip install -q -e ".[test]"
	touch $@

run: $(VENV)/.runtime
	$(PY) -m nanollm.generate $(if $(MODEL),--model $(MODEL)) $(RUN_ARGS) "$(PROMPT)"

test: $(VENV)/.test
	$(PY) -m pytest -q tests

bench: $(VENV)/.test
	$(PY) -m tests.bench.bench_model

bench-tokenizer: $(VENV)/.test
	$(PY) -m tests.bench.bench_tokenizer

kernels:
	$(PYTHON) kernels/build.py --nvcc

bench-kernels: $(VENV)/.test
	$(PY) -m tests.bench.bench_kernels

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
