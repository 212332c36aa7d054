# Two jobs, each of which sets itself up on a fresh machine:
#   make demo  - the main job on the offline default (Fashion-MNIST)
#   make test  - ruff and the test suite (installs Chromium for the demo page test)
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO_OUT ?= runs/demo

.PHONY: setup data tools demo test lint clean

NATIVE_HEADERS := build/native/include/pocketfft_hdronly.h
NATIVE_SOURCES := setup.py $(wildcard export/native/*.cpp export/native/*.hpp)

# Headers of the native lowering's build (pocketfft, onnxruntime's C API), from PyPI and
# Debian; without them the package installs without the native lowering.
$(NATIVE_HEADERS): scripts/fetch_native_deps.py
	-python3 scripts/fetch_native_deps.py build/native

$(VENV)/.installed: pyproject.toml constraints.txt $(NATIVE_SOURCES) $(NATIVE_HEADERS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

data:
	@test -f $(FASHION) || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }

# Headless Chromium and its driver (demo page test), wrk (serving benchmark).
tools:
	@test -x /usr/bin/chromedriver -a -x /usr/bin/wrk || { apt-get update -qq && \
		apt-get install -y -qq chromium chromium-driver wrk; }

demo: setup data
	bash scripts/demo.sh $(DEMO_OUT)

lint: setup
	$(VENV)/bin/ruff check .

test: setup data tools lint
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) runs build export/native/*.so
