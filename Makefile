# `make demo` and `make test` work on a fresh machine: they build .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

# `make search RUN=runs/demo/clop/seed0`: embed the demo corpus's test clips with a run, index them, serve the
# search page at http://127.0.0.1:8765/ (the demo's report names the best recipe's RUN). Rerunning reuses both.
RUN    ?= runs/demo/baseline/seed0
DATA   ?= data/structured

.PHONY: venv demo demo-quick table test bench search clean

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

# The README's results tables: the five recipes at three seeds on test and on the unseen corpus (about four
# hours on 2 CPU cores; finished runs of the same config and code are reused, so it can be run in parts), then
# the Markdown made from runs/demo (docs/results.md), which names the code revision that made every run.
table: $(STAMP)
	$(VENV)/bin/structvl demo --out runs/demo --seeds 3 --generalize
	$(PY) scripts/results_table.py runs/demo --command "make table" > docs/results.md.new && mv docs/results.md.new docs/results.md

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/decode.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/search.py

search: $(STAMP)
	$(VENV)/bin/structvl extract --checkpoint $(RUN) --data $(DATA) --out $(RUN)/search/embeddings
	$(VENV)/bin/structvl index $(RUN)/search/embeddings --out $(RUN)/search/index
	$(VENV)/bin/structvl serve $(RUN)/search/index

clean:
	rm -rf $(VENV) runs build src/*.egg-info
