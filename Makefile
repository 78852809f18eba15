# infleet developer entry points. The README's two set-up commands are `make demo` and `make test`;
# both bootstrap everything they need (virtualenv, pinned Kubernetes tools) on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,worker,gateway,sim,cluster,llamacpp
PYTEST_ARGS ?=

.PHONY: help venv tools cluster-up cluster-down cluster-delete demo demo-down test test-unit test-cluster e2e lint typecheck bench clean

help:
	@echo "make demo          local cluster + CRDs + example fleet + operator + example deployments"
	@echo "make test          lint, type-check and every test (unit, then the real local cluster)"
	@echo "make test-unit     unit tests only (no cluster)"
	@echo "make cluster-up    start the local control plane with simulated accelerator pools"
	@echo "make cluster-down  stop it (safe to repeat)"
	@echo "make demo-down     stop the demo's operator and the cluster"
	@echo "make e2e           closed-loop scenarios on a cluster of their own (real workers, real OpenAI requests)"

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

venv: $(BIN)/.installed

tools: venv
	$(BIN)/infleet-cluster build

cluster-up: venv
	$(BIN)/infleet-cluster up

cluster-down:
	@if [ -x $(BIN)/infleet-cluster ]; then $(BIN)/infleet-cluster down; fi

cluster-delete:
	@if [ -x $(BIN)/infleet-cluster ]; then $(BIN)/infleet-cluster delete; fi

demo: venv
	$(BIN)/python e2e/demo.py up

demo-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python e2e/demo.py down; fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

test-unit: venv
	$(BIN)/python -m pytest -m "not cluster" $(PYTEST_ARGS)

test-cluster: tools
	$(BIN)/python -m pytest -m cluster $(PYTEST_ARGS)

# Everything: static checks first (fast feedback), then unit tests, then the real-cluster tests
# (the session fixture brings the local control plane up and down).
test: lint typecheck tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Closed-loop scenarios (e2e/closedloop): their own cluster (.cache/e2e-cluster, ports at offset + 30), so they
# pass before or after `make demo` and `make test`. Each scenario runs the operator and an infleet-gateway --kube
# against its own namespace and sends trace load through the gateway with the openai SDK: steady, burst-warm,
# burst-cold, scale-from-zero, spot-reclaim, operator-kill, worker-kill, mixed-runtimes (llama.cpp on the CPU pool,
# infleet-worker on an nvidia-gpu pool), then sim-to-real (infleet simulate on the same load). Reports in
# .cache/e2e/<scenario>/report.json and .cache/e2e/sim-to-real.{json,png}; fails on any lost or duplicated request.
# E2E_ARGS="--length-scale 5" for the long (benchmark) variants.
E2E_ARGS ?=
e2e: tools
	PYTHONPATH=e2e$${PYTHONPATH:+:$$PYTHONPATH} $(BIN)/python -m closedloop $(E2E_ARGS)

bench: venv
	@echo "see docs/benchmarks.md for each benchmark's exact command"

clean: cluster-down
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache
