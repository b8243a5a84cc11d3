# One-command set-up: every target creates .venv (Python 3.11) and installs the project if needed.
# Pick another PyTorch build with e.g. `make setup TORCH="torch==2.5.1 --index-url https://download.pytorch.org/whl/cpu"`.
PYTHON ?= python3.11
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.isnet-installed

.PHONY: setup test demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev,openvino]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/isnet export --weights random --seed 0 --size 320 320 --output-dir demo-out --name isnet-random-320

clean:
	rm -rf $(VENV) demo-out
