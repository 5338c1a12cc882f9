# The README's two commands: `make demo` and `make test`. Both create .venv and install everything on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-quick test-cuda lint bench weights clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

# `zoo warmup` first: the runtime's kernels compiled and cached once (about a minute on 2 cores), so that the
# demo's and every later process's first inference loads them (seconds when already cached).
demo: $(STAMP)
	$(BIN)/zoo warmup
	$(BIN)/zoo demo --out runs/demo

# Two pytest processes: the CUDA simulator is chosen when numba is first imported, so the tests that run the
# CUDA kernels under NUMBA_ENABLE_CUDASIM=1 need a process of their own. Both must run tests (exit 5 fails).
test: $(STAMP)
	$(BIN)/pytest -m "not cuda and not slow"
	NUMBA_ENABLE_CUDASIM=1 $(BIN)/pytest -m "cuda and not slow"

test-quick: $(STAMP)
	$(BIN)/pytest -m "not cuda and not slow" -x -q

# On a machine with an NVIDIA GPU: the same CUDA tests on the real device.
test-cuda: $(STAMP)
	$(BIN)/pytest -m cuda

# Retrain and republish every shipped model with the commands on its card (LeNet first: the generators'
# figures use it; dcgan-mnist-no-phases before dcgan-mnist, whose card shows it as its ablation). Estimated at
# 75-90 minutes on 2 cores from the shipped runs (1 thread each, three runs sharing 2 cores): dcgan-mnist and
# dcgan-mnist-no-phases 38 and 40 min, deconvnet-digits 47, cdcgan-mnist 21 (tests/test_cards.py checks that
# each card's training settings are what this trains).
SHIPPED := lenet-mnist:lenet-mnist sparse-ae:sparse-ae-mnist sparse-ae-digits8:sparse-ae-digits8 cgen-mnist:cgen-mnist dcgan-mnist-no-phases:dcgan-mnist-no-phases dcgan-mnist:dcgan-mnist cdcgan-mnist:cdcgan-mnist deconvnet-digits:deconvnet-digits
weights: $(STAMP)
	set -e; for pair in $(SHIPPED); do model=$${pair%%:*}; name=$${pair##*:}; \
	  $(BIN)/zoo train $$model --seed 0 --out runs/$$name --force --quiet; \
	  $(BIN)/zoo publish runs/$$name --name $$name --force; done

bench: $(STAMP)
	$(BIN)/zoo bench --batch 1,64 --json runs/bench.json

lint: $(STAMP)
	$(BIN)/ruff check zoo runtime cli tests tools
	$(BIN)/ruff format --check zoo runtime cli tests tools

clean:
	rm -rf runs .pytest_cache .ruff_cache
