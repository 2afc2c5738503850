# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch: a bare `torch` requirement would pull the multi-GB CUDA build.
TORCH ?= torch==2.13.0
DEMO_DIR ?= results/demo

.PHONY: venv demo test clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

venv: $(VENV)/.installed

# Prepare the embedded corpus, train gpt_tiny on CPU, evaluate perplexity, generate a sample.
demo: venv
	rm -rf $(DEMO_DIR)
	$(PY) main.py run_dir=$(DEMO_DIR) trainer.accelerator=cpu

test: venv
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) results
