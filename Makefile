# Two commands on a fresh machine with Python 3.11:  make demo  |  make test
VENV := .venv
# DataLoader workers and torch threads share 2 cores: busy-waiting OpenMP threads would starve them.
export OMP_WAIT_POLICY ?= PASSIVE
PY := $(VENV)/bin/python

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel of torch 2.13.0 lies on these machines' disk; install it first so that the
	# requirements below do not pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	touch $@

.PHONY: setup demo test bench clean ablation
setup: $(VENV)/.installed

# make demo ARGS="--set data.dataset=mcr": the demo on the MCR-format stand-in (docs/datasets.md)
demo: setup
	$(PY) demo.py $(ARGS)

ablation: setup
	$(PY) ablation.py

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/data_throughput.py
	$(PY) bench/qat_step.py
	$(PY) bench/distill_step.py
	$(PY) bench/onnx_latency.py
	$(PY) bench/full_size_eval.py

clean:
	rm -rf results data/synthetic_sid
