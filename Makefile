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

# Retrain and republish every shipped model with the commands on its card, two at a time, each on the number of
# threads its card records (torch's CPU kernels split their sums by the thread count: LeNet trained on 1 thread
# instead of its card's 2 ends with other weights, and every figure measured with it moves). LeNet comes first,
# alone: the generators' figures and DeconvNet's baseline use it. Every other training (train-NAME) waits for it;
# its publishing (retrain-NAME) waits for its training, and dcgan-mnist's also for its ablation's, whose card
# figures its card shows. DeconvNet (the longest, about 34 min) starts first, then dcgan-mnist-no-phases and
# cdcgan-mnist (about 21 min each) one after the other beside it, and dcgan-mnist (19 min) after it: about 55 min on
# 2 cores where the longest-first order (dcgan-mnist then its ablation beside DeconvNet, cdcgan-mnist after it) ends
# at about 57. The small 2-thread runs come last, beside one 1-thread run. Idle OpenMP threads sleep instead of
# spinning (OMP_WAIT_POLICY=PASSIVE; the sums are split as before, the weights are the same): beside a 1-thread run,
# LeNet's training took 79 s spinning and 40 s so (32 s alone); beside a 2-thread run, spinning, 163 s.
# tests/test_cards.py checks that each card's training settings and thread count are what this trains. Each run's
# log: runs/NAME.log.
SHIPPED := lenet-mnist:lenet-mnist sparse-ae:sparse-ae-mnist sparse-ae-digits8:sparse-ae-digits8 cgen-mnist:cgen-mnist dcgan-mnist-no-phases:dcgan-mnist-no-phases dcgan-mnist:dcgan-mnist cdcgan-mnist:cdcgan-mnist deconvnet-digits:deconvnet-digits
SHIPPED_NAMES := $(foreach pair,$(SHIPPED),$(lastword $(subst :, ,$(pair))))
model_of = $(firstword $(subst :, ,$(filter %:$(1),$(SHIPPED))))
threads_of = $(shell $(BIN)/python -c "import json, sys; print(json.load(open(sys.argv[1])).get('threads', 1))" weights/$(1).card.json 2>/dev/null || echo 1)
IN_ORDER := deconvnet-digits dcgan-mnist-no-phases cdcgan-mnist dcgan-mnist cgen-mnist sparse-ae-digits8 sparse-ae-mnist

weights: $(STAMP)
	$(MAKE) --no-print-directory -j2 $(addprefix retrain-,$(IN_ORDER))

$(addprefix train-,$(SHIPPED_NAMES)): train-%: $(STAMP)
	@mkdir -p runs
	OMP_NUM_THREADS=$(call threads_of,$*) OMP_WAIT_POLICY=PASSIVE $(BIN)/zoo train $(call model_of,$*) --seed 0 --out runs/$* --force --quiet > runs/$*.log 2>&1 \
	  || { tail -n 20 runs/$*.log; exit 1; }

$(addprefix retrain-,$(SHIPPED_NAMES)): retrain-%: train-%
	$(BIN)/zoo publish runs/$* --name $* --force

$(addprefix train-,$(filter-out lenet-mnist,$(SHIPPED_NAMES))): retrain-lenet-mnist
retrain-dcgan-mnist: retrain-dcgan-mnist-no-phases
.PHONY: $(addprefix train-,$(SHIPPED_NAMES)) $(addprefix retrain-,$(SHIPPED_NAMES))

bench: $(STAMP)
	$(BIN)/zoo bench --batch 1,64 --json runs/bench.json

lint: $(STAMP)
	$(BIN)/ruff check zoo runtime cli tests tools
	$(BIN)/ruff format --check zoo runtime cli tests tools

clean:
	rm -rf runs .pytest_cache .ruff_cache
