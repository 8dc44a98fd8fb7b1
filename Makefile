# The two commands of the README: `make test` and `make bench`.
# Both work from a fresh clone with only python3 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JAX    := $(VENV)/.jax

.PHONY: install test test-device bench bench-full gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test,bench,distributed]'
	touch $(STAMP)

# the whole suite twice: on the CPU, then on the strict CuPy stand-in device (tests/cupy_standin)
test: $(STAMP)
	$(BIN)/python -m pytest
	$(BIN)/python -m pytest --device=cuda-standin

test-device: $(STAMP)
	$(BIN)/python -m pytest --device=cuda-standin

# jax is for the compile suite's jax.jit column only: a bench extra of its own, and a
# failed install skips that column instead of failing the bench.
$(JAX): $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[jax]' || echo "jax did not install: the compile suite skips jax.jit"
	touch $(JAX)

bench: $(JAX)
	$(BIN)/python -m bench

bench-full: $(JAX)
	$(BIN)/python -m bench --full

# On a CUDA machine: uses that machine's python3 as it is (no venv, no install).
GPU_OUT ?= gpu-report
gpu-check:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) bench/gpu_check.py --out $(GPU_OUT)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis bench/results
