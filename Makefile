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

# The newest supported torch, in a venv of its own, for the quantization and export tests (.ci/run).
# Its version is pinned here so CI tests what requirements.txt's upper bound allows; PIP_CONSTRAINT
# replaces any site-wide pip constraint (some machines cap torch at the wheel they keep on disk).
NEWEST_VENV := .venv-torch-newest
NEWEST_TORCH := 2.15.0
NEWEST_PY := $(NEWEST_VENV)/bin/python
NEWEST_TESTS := tests/test_quant.py tests/test_fast_quantizers.py tests/test_onnx_export.py tests/test_torchao_engine.py

$(NEWEST_VENV)/.installed: requirements.txt
	python3 -m venv $(NEWEST_VENV)
	$(NEWEST_PY) -m pip install -q --upgrade pip
	echo "torch==$(NEWEST_TORCH)" > $(NEWEST_VENV)/constraints.txt
	PIP_CONSTRAINT=$(NEWEST_VENV)/constraints.txt $(NEWEST_PY) -m pip install -q -r requirements.txt
	touch $@

.PHONY: setup demo test test-torch-newest fuzz bench clean ablation
setup: $(VENV)/.installed

# make demo ARGS="--set data.dataset=mcr": the demo on the MCR-format stand-in (docs/datasets.md)
demo: setup
	$(PY) demo.py $(ARGS)

ablation: setup
	$(PY) ablation.py

test: setup
	$(PY) -m pytest -q tests

test-torch-newest: $(NEWEST_VENV)/.installed
	$(NEWEST_PY) -m pytest -q $(NEWEST_TESTS)
# The config fuzzer of `make test`, with many more (and new) examples: FUZZ_EXAMPLES=5000 make fuzz
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/test_config_fuzz.py

bench: setup
	$(PY) bench/data_throughput.py
	$(PY) bench/qat_step.py
	$(PY) bench/distill_step.py
	$(PY) bench/onnx_latency.py
	$(PY) bench/full_size_eval.py

clean:
	rm -rf results data/synthetic_sid

# Rerun the commands behind the docs' measured tables (demo, ablation, latency, unseen photos; about
# 40 min on 2 quiet cores) and rewrite them, with date, commit and machine (docs/README.md).
.PHONY: docs-tables docs-config
docs-tables: setup
	$(PY) -m pip install -q "scikit-learn>=1.3,<2"   # the unseen-photo table's photos; not a harness requirement
	$(PY) tools/docs_tables.py

# Regenerate docs/config.md from the config schema (tests/test_docs.py fails when it is out of date).
docs-config: setup
	$(PY) tools/config_reference.py
