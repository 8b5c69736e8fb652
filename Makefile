# nanollm's set-up lives here: every target creates the virtual environment it needs from nothing.
#   make run PROMPT="..."   generate text            make test            the whole test suite
#   make bench              model speed vs transformers      make bench-tokenizer   tokenizer speed vs tiktoken
#   make kernels            compile every .cu with nvcc      make bench-kernels     kernel speed (GPU only)
#   make gpu-check          every GPU test and benchmark, one summary table (GPU only; nothing from the network)
#   make bench-serve        the server: N concurrent clients vs the same requests one at a time (continuous batching)

VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
PROMPT ?= The meaning of life is
MODEL ?=
RUN_ARGS ?= --max-new-tokens 40

.PHONY: run test bench bench-tokenizer bench-serve bench-kernels kernels gpu-check clean

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

bench-serve: $(VENV)/.test
	$(PY) -m tests.bench.bench_serve

kernels:
	$(PYTHON) kernels/build.py --nvcc

bench-kernels: $(VENV)/.test
	$(PY) -m tests.bench.bench_kernels

# The GPU check runs on a Python that already holds torch (a CUDA build), CuPy, transformers, pytest and hypothesis
# (PYTHON, python3 by default). nanollm goes into it from the checkout: editable, no index, no dependencies, no build
# isolation, so nothing is fetched. Not a venv of its own: --system-site-packages shows only the base interpreter's
# packages, and the Python holding the CUDA packages is often a venv itself (python3 on this project's GPU machines).
gpu-check:
	$(PYTHON) -m pip install -q --no-index --no-deps --no-build-isolation -e .
	$(PYTHON) -m tests.gpu.check

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
