# `make demo` and `make test` work on a fresh machine: they build .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: venv demo demo-quick test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	# timm and open_clip build the source models of the checkpoint-format tests. Both import torchvision, of
	# which PyPI has only CUDA builds: beside the CPU torch one would break `import transformers`. So they go,
	# without their dependencies, into a folder only those tests put on sys.path (tests/conftest.py).
	$(PIP) install --quiet --no-deps --target $(VENV)/interop torchvision==0.28.0 timm==1.0.31 \
		open-clip-torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/structvl demo --out runs/demo

demo-quick: $(STAMP)
	$(VENV)/bin/structvl demo --out runs/demo-quick --quick

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/decode.py
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
