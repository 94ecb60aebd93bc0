# Two entry points: `make demo [DATA=file.txt]` runs the main job, `make test` runs the tests
# (and `make screenshots` redraws docs/*.png from the demo's run).
# Both set up .venv first; torch is installed only when missing (CPU/PyPI build: see README for CUDA).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= tinystories
RUN    ?= runs/demo
PRESET ?= cpu-10min
TIME   ?= 3m
PROMPT ?= Once upon a time
GPU_PYTHONS ?= 3.12
# tinygpt's needs that the lent GPU machine's image lacks (its package list: the device library's
# KINDS.md); everything else there (torch, numpy, tokenizers, transformers, pytest...) is used as it is.
GPU_MISSING ?= gguf fastapi starlette pydantic pydantic-core annotated-types typing-inspection opentelemetry-api uvicorn

.PHONY: setup setup-dev demo test lint screenshots gpu-wheels

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

setup: $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e .

setup-dev: $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	@# llama-cpp-python compiles llama.cpp (the GGUF tests run every export in it); pip caches the wheel for later runs.
	@# It needs a C++ compiler (cmake and ninja come from PyPI when missing).
	@command -v c++ >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null)
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || echo "building llama.cpp for the GGUF tests: about 5 minutes on 2 free cores"
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" $(BIN)/python -m pip install -q -e ".[dev,hf,serve,gguf]"
	@# The browser test drives Debian's chromium; without root or apt it skips with a reason.
	@command -v chromedriver >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium chromium-driver >/dev/null) || echo "chromium not installed: the browser test will skip"

demo: setup
	rm -rf $(RUN)
	$(BIN)/tinygpt prepare $(DATA) --out $(RUN)/data --config $(PRESET)
	$(BIN)/tinygpt train --data $(RUN)/data --out $(RUN) --config $(PRESET) --max-time $(TIME)
	$(BIN)/tinygpt sample $(RUN) --prompt "$(PROMPT)" --max-new-tokens 300 --seed 1
	$(BIN)/tinygpt inspect $(RUN) --text "$(PROMPT), there was a little girl named Lily. She loved to play with her red ball."

test: setup-dev
	$(BIN)/python -m pytest -q

lint: setup-dev
	$(BIN)/ruff check src tests bench

# The README's pictures of the playground and its Inspect view, from a trained run (make demo first).
screenshots: setup-dev
	$(BIN)/python tests/screenshots.py $(RUN) docs

# For bench/gpu_check.sh on a machine that reaches no package registry: wheels of tinygpt and of
# the packages in $(GPU_MISSING), at the versions installed here, in wheels/gpu/, and a copy of train.txt in
# bench/gpu-data/, both travelling with the repository folder. Linux x86-64, CPython $(GPU_PYTHONS):
# set it to the GPU machine's Python (every version multiplies the size).
gpu-wheels: setup-dev
	rm -rf wheels/gpu && mkdir -p wheels/gpu bench/gpu-data
	$(BIN)/python -m pip wheel -q --no-deps -w wheels/gpu .  # the `tinygpt` command, for the CLI tests
	$(BIN)/python -c "import importlib.metadata as m, sys; print(*(f'{n}=={m.version(n)}' for n in sys.argv[1:]), sep='\n')" \
		$(GPU_MISSING) > wheels/gpu/requirements.txt
	for py in $(GPU_PYTHONS); do $(BIN)/python -m pip download -q -d wheels/gpu --only-binary=:all: \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
		--python-version $$py --no-deps -r wheels/gpu/requirements.txt || exit 1; done
	cp ../shared/data/tinystories/train.txt bench/gpu-data/train.txt
