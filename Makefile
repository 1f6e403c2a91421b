# cyberhost — `make help` lists the targets.
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q -c requirements/constraints.txt
RAW ?= data_prep/samples
OUT ?= data/sample_clips
WORKERS ?= 2
RUNS ?= runs
CONFIG ?=
ARGS ?=
STAGE1_CONFIG ?= --config conf/stage1.yaml --config conf/debug/tiny.yaml
STAGE2_CONFIG ?= --config conf/stage2.yaml --config conf/debug/tiny.yaml --config conf/debug/tiny_stage2.yaml

.DEFAULT_GOAL := help
.PHONY: help setup test test-slow test-gpu lint demo samples prepare-data train-stage1 train-stage2 \
        tensorboard generate evaluate bench-prep bench-gpu probe lock clean

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: setup.cfg requirements/constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev,dwpose]'
	touch $@

setup: $(VENV)/.installed ## create .venv and install the package with pinned dependencies

test: setup ## run the default test suite (CPU, a few minutes)
	$(BIN)/python -m pytest -q

test-slow: setup ## run the slow end-to-end checks too
	$(BIN)/python -m pytest -q -m "(slow or not slow) and not gpu and not probe"

test-gpu: setup ## run the GPU tests (needs CUDA)
	$(BIN)/python -m pytest -q -m gpu

lint: setup ## run ruff
	$(BIN)/ruff check cyberhost data_prep tests benchmarks

demo: setup ## sample data -> prepare -> stage 1 -> stage 2 -> generate (tiny models, CPU)
	$(BIN)/python -m cyberhost.demo --output $(RUNS)/demo

samples: setup ## re-make the committed sample videos (data_prep/samples)
	$(BIN)/python -m data_prep.make_samples --output data_prep/samples

prepare-data: setup ## raw videos -> clip shards: RAW=<dir> OUT=<dir> [WORKERS=N]
	$(BIN)/python -m data_prep --input $(RAW) --output $(OUT) --workers $(WORKERS) $(ARGS)

# The default (tiny) runs read the sample dataset and stage 2 starts from the tiny stage-1 checkpoint:
# each is made once when missing (manifest.json is the last file data prep writes).
SAMPLE_CLIPS := data/sample_clips
TINY_STAGE1 := runs/stage1/tiny/checkpoints/last.ckpt

$(SAMPLE_CLIPS)/manifest.json: | $(VENV)/.installed
	$(BIN)/python -m data_prep --input data_prep/samples --output $(SAMPLE_CLIPS) --workers $(WORKERS)

$(TINY_STAGE1): | $(SAMPLE_CLIPS)/manifest.json
	$(BIN)/cyberhost fit $(STAGE1_CONFIG)

train-stage1: setup $(if $(CONFIG),,$(SAMPLE_CLIPS)/manifest.json) ## stage 1 (tiny on the sample data by default): [CONFIG="--config ..."] [ARGS=...]
	$(BIN)/cyberhost fit $(if $(CONFIG),$(CONFIG),$(STAGE1_CONFIG)) $(ARGS)

train-stage2: setup $(if $(CONFIG),,$(TINY_STAGE1)) ## stage 2 (tiny, after tiny stage 1, by default): [CONFIG="--config ..."] [ARGS=...]
	$(BIN)/cyberhost fit $(if $(CONFIG),$(CONFIG),$(STAGE2_CONFIG)) $(ARGS)

tensorboard: setup ## serve the TensorBoard logs under RUNS=runs on 127.0.0.1:PORT (default 6006)
	$(BIN)/tensorboard --logdir $(RUNS) --host 127.0.0.1 --port $(or $(PORT),6006)

generate: setup ## image + audio -> mp4 (H.264 + the input audio as AAC): ARGS="--image ... --audio ... --checkpoint ... --output ..."
	$(BIN)/cyberhost generate $(ARGS)

evaluate: setup ## metrics of generated vs ground-truth videos: ARGS="--generated DIR --ground-truth DIR [--weights-dir DIR] --output DIR"
	$(BIN)/cyberhost evaluate $(ARGS)

bench-prep: setup ## data-prep throughput with 1 and 2 workers (numbers go to BENCHMARKS.md)
	$(BIN)/python -m benchmarks.prep $(ARGS)

bench-gpu: ## GPU tests + benchmarks of BENCHMARKS.md (CUDA machine): BENCH_OUT=<dir> [WHAT="tests model train generate profile"]
	benchmarks/gpu.sh $(or $(BENCH_OUT),bench-out) $(WHAT)

probe: setup ## condition probes on CPU (tiny, 3 seeds): table printed, JSON in $(RUNS)/probe/probes.json (PROBES.md)
	OMP_NUM_THREADS=2 $(BIN)/python -m benchmarks.probes.run --device cpu --size tiny --seeds 3 --out $(RUNS)/probe $(ARGS)

lock: ## re-resolve requirements/constraints.txt in a scratch venv
	rm -rf /tmp/cyberhost-lock && $(PY) -m venv /tmp/cyberhost-lock
	/tmp/cyberhost-lock/bin/python -m pip install -q torch==2.13.0
	/tmp/cyberhost-lock/bin/python -m pip install -q -e '.[dev,dwpose]' torch==2.13.0
	/tmp/cyberhost-lock/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$$//' > requirements/constraints.txt

clean: ## remove the venv, caches and generated data (not runs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache data *.egg-info
