# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned and installed first. This project's machines resolve the pin to the CPU build; elsewhere
# choose the build with pip options, e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu".
TORCH ?= torch==2.13.0
DEMO_DIR ?= results/demo

.PHONY: venv demo test clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

venv: $(VENV)/.installed

# Prepare the embedded corpus, train gpt_tiny on CPU, evaluate perplexity, generate a sample.
demo: venv
	rm -rf $(DEMO_DIR)
	$(PY) main.py run_dir=$(DEMO_DIR) trainer.accelerator=cpu

# Two workers, each taking whole test files (a file's fixtures, such as the local Slurm cluster, stay in one
# process): many tests wait on subprocesses, so two workers keep both cores busy.
PYTEST_ARGS ?= -n 2 --dist loadfile

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) results
