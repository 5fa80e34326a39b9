# Two entry points for a fresh machine: `make demo` and `make test`.
# Each makes the virtual environment if it is absent, installs, then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= ../shared/data
# torch first and pinned: on machines that cap torch, this is the build that is on disk.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test]'
	@# The heads' CPU kernels, built once per machine (~30 s). Without a C++ compiler it says why and
	@# goes on: the hierarchical head then uses batched matmuls (heads/speed/kernels.py).
	-$(PY) -c 'import heads.speed.kernels as k; raise SystemExit(k.main())'
	touch $@

.PHONY: install demo test test-fast train-smoke bench study study-gpu gpu-check browser
install: $(VENV)/.installed

# The main job on a small default: the `smoke` search on generated data, then the retrain of
# the best config per head (2 seeds) and the report. Replaces the previous experiments/demo.
demo: install
	rm -rf experiments/demo
	$(PY) -m tuning.search --space smoke --storage ./experiments --name demo
	$(PY) -m analysis.retrain experiments/demo --seeds 2
	$(PY) -m analysis.report experiments/demo

# The headline study (results/study-cpu/): search -> retrain (3 seeds) -> budget curve -> the pairs again at
# the budget the curve picked (converge) -> report of airnet_s
# x every head on CIFAR-100 plus airnet_s + softmax on Fashion-MNIST: hours on 2 CPU cores (the README says
# how many). Run it again after a stop, here or on a fresh clone: the committed stages are skipped, the
# search resumes and the retrain runs only the (config, seed) runs without a file.
study: install
	OMP_WAIT_POLICY=PASSIVE $(PY) -m analysis.study --scale cpu --data-dir $(DATA_DIR)

# The same at GPU scale (resnet18, vit_tiny, efficientnet_b0 x every head, 30 epochs): results/study-gpu/.
study-gpu: install
	$(PY) -m analysis.study --scale gpu --data-dir $(DATA_DIR)

# The full suite: what CI runs. Two test files at a time (pytest-xdist; a file's tests stay together, so a
# module's fixture runs once): most of the slow tier waits on subprocess and Ray start-ups, not on the CPU.
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile

# The edit-test loop (93 s measured on 2 CPUs): no Ray start, no CLI subprocess, no real-data training.
# HEADSWEEP_FAST_TIER makes a test that starts Ray anyway fail, so the tier stays fast.
test-fast: install
	HEADSWEEP_FAST_TIER=1 $(PY) -m pytest -q -m "not slow"

# Headless Chromium for the live page's browser test (tests/test_views.py skips it, saying so, without it).
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

train-smoke: install
	$(PY) -m training.train --smoke

bench: install
	$(PY) -m tools.train_bench --data-dir $(DATA_DIR) --arch cnn_base
	$(PY) -m tools.heads_bench --classes 100,1000,10000,100000,1000000 --dim 512 --batch 256 --with-dense

# On a lent GPU machine: the CUDA test, the training benchmark of resnet18 / vit_tiny / airnet, packing
# and a 2-epoch vit_heads search, under 8 minutes, into results/gpu-check/gpu-check.json. Refuses without CUDA.
gpu-check: install
	$(PY) -m tools.gpu_check --out results/gpu-check
