# Every install step lives here: `make serve` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP_RUNTIME := $(VENV)/.stamp-runtime
STAMP_DEV := $(VENV)/.stamp-dev
DEMO_BUNDLE ?= models/sdedge-shapes
PORT ?= 7860

.PHONY: serve test test-fast test-slow bench bench-full lint export demo proto clean fuzz

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"

# Runtime + export + test extras. Torch is named in the same pip call as its dependants so the CPU
# build on disk is taken (see shared build notes).
$(STAMP_DEV): pyproject.toml $(VENV)/bin/python
	$(PIP) install -q -e ".[export,test]"
	# A1111's colour-correction blend (tests' reference): blendmodes 2022 as A1111 pins it. Its own pins (numpy<2,
	# Pillow<10) are stale, and it runs on ours, so it is installed without them.
	$(PIP) install -q --no-deps "blendmodes==2022" "aenum==3.1.17"
	touch $@

$(STAMP_RUNTIME): pyproject.toml $(VENV)/bin/python
	$(PIP) install -q -e .
	touch $@

# The default model: the shapes model trained in the repo (export/weights/shapes-sd), exported through the
# normal exporter the first time (needs the export extra); serving it needs only the runtime.
$(DEMO_BUNDLE)/manifest.json: $(STAMP_DEV) export/weights/shapes-sd/unet.safetensors $(wildcard export/*.py)
	$(PY) -m export shapes --out $(DEMO_BUNDLE)

# The LoRA trained in the repo on the shapes model (export/train_lora.py): `<lora:purple:1>` in a prompt.
DEMO_LORA := $(dir $(DEMO_BUNDLE))Lora/purple.safetensors
$(DEMO_LORA): export/weights/loras/purple.safetensors
	mkdir -p $(dir $@) && cp $< $@

# OpenVINO for serving (the `openvino` extra, same pin): `sdedge serve`'s default `--backend auto` runs the demo model
# on it once its gate is recorded. An extra, not a base dependency: GPU and Jetson installs never load it, and auto
# falls back to ONNX Runtime fp32 where it is missing (docs/architecture.md).
STAMP_OPENVINO := $(VENV)/.stamp-openvino
$(STAMP_OPENVINO): pyproject.toml $(STAMP_DEV)
	$(PIP) install -q -e ".[openvino]"
	touch $@

# The demo model's quality gate for OpenVINO fp32 and bf16, recorded once in its manifest (`sdedge gate`, 15–60 s
# on 2 shared cores): auto then serves the fastest variant that passed and runs on this CPU (bf16 only with
# avx512_bf16/AMX). A failed gate is a result, not a build error: auto then keeps ONNX Runtime fp32. Redone after a
# re-export (a new manifest).
DEMO_GATE := $(DEMO_BUNDLE)/.stamp-gate
$(DEMO_GATE): $(DEMO_BUNDLE)/manifest.json | $(STAMP_OPENVINO)
	for precision in fp32 bf16; do \
		$(VENV)/bin/sdedge gate --model $(DEMO_BUNDLE) --backend openvino --precision $$precision > /dev/null \
			|| echo "gate: openvino $$precision did not pass on $(DEMO_BUNDLE) (recorded; not served)"; \
	done
	touch $@

demo: $(DEMO_BUNDLE)/manifest.json $(DEMO_LORA)

serve: $(DEMO_BUNDLE)/manifest.json $(DEMO_LORA) $(DEMO_GATE)
	mkdir -p $(dir $(DEMO_BUNDLE))embeddings
	$(VENV)/bin/sdedge serve --model $(DEMO_BUNDLE) --port $(PORT) $(ARGS)

test: $(STAMP_DEV)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not fullsize" $(PYTEST_ARGS)

# The quick loop while editing: everything but `slow`/`fullsize` tests and the suites that start a real server
# (tests/server/); under a minute once the demo bundles are cached.
test-fast: $(STAMP_DEV)
	$(PY) -m pytest -q -m "not slow and not fullsize" --ignore=tests/server $(PYTEST_ARGS)

# Full-size and multi-minute checks (marker `fullsize`: large images, full-size random-weight models), kept out of
# `make test` so CI stays well under its limit.
test-slow: $(STAMP_DEV)
	$(PY) -m pytest -q -m fullsize $(PYTEST_ARGS)

bench: $(STAMP_DEV)
	$(PY) -m benchmarks.run $(ARGS)

# Full-size random-weight SD 1.5 (built once into .cache/bench-full/, ~4 GB): sdedge per backend/precision vs
# diffusers fp32/bf16 at 256 and 512 px, each in its own process; ~10 GiB peak, tens of minutes on 2 cores.
# Updates the full-size section of benchmarks/RESULTS.md. Never part of `make test`.
bench-full: $(STAMP_DEV)
	$(PIP) install -q -e ".[openvino]"
	$(PY) -m benchmarks.full --write benchmarks/RESULTS.md $(ARGS)

# On a machine with an NVIDIA GPU: export variants, TensorRT engines, the gate and a 512 px 20-step image per GPU
# backend, one table (benchmarks/gpu_check.py; docs/gpu.md). Swaps onnxruntime for onnxruntime-gpu + TensorRT in the
# venv first (x86 wheels; on Jetson install per docs/gpu.md and run `python -m benchmarks.gpu_check`). Without a GPU
# it says so and exits 2 before installing anything.
.PHONY: gpu-check
STAMP_GPU := $(VENV)/.stamp-gpu
$(STAMP_GPU): $(STAMP_DEV)
	$(PIP) uninstall -q -y onnxruntime onnxruntime-gpu
	$(PIP) install -q "onnxruntime-gpu[cuda,cudnn]==1.31.1" "tensorrt-cu13==10.16.1.11"  # versions: pyproject [gpu]
	touch $@

gpu-check:
	@nvidia-smi -L >/dev/null 2>&1 || { echo "gpu-check: skipped, no NVIDIA GPU on this machine (nvidia-smi missing or lists none); nothing was checked (docs/gpu.md)." >&2; exit 2; }
	$(MAKE) $(DEMO_BUNDLE)/manifest.json $(STAMP_GPU)
	$(PY) -m benchmarks.gpu_check --model $(DEMO_BUNDLE) $(ARGS)

lint: $(STAMP_DEV)
	$(VENV)/bin/ruff check .

# Export a checkpoint: make export SRC=path/to/diffusers-or-safetensors OUT=models/name
export: $(STAMP_DEV)
	$(PY) -m export convert "$(SRC)" --out "$(OUT)"

# gRPC stubs: committed in service/generated/ (a runtime install has no grpcio-tools); regenerate after editing
# proto/. tests/server/test_grpc.py checks that regenerating gives the committed bytes.
proto: $(STAMP_DEV)
	$(PY) proto/generate.py

# schemathesis against every /sdapi route with many more cases than `make test` runs (no 5xx allowed), and the
# prompt-parser and tokenizer properties with fresh random examples (`make test` replays fixed ones).
FUZZ_EXAMPLES ?= 100
fuzz: $(STAMP_DEV)
	SDEDGE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) SDEDGE_HYPOTHESIS=explore $(PY) -m pytest -q tests/server/test_fuzz_sdapi.py \
		tests/engine/test_prompt_parser.py tests/engine/test_tokenizer.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) models/sdedge-shapes .pytest_cache
