# Two jobs, each of which sets itself up on a fresh machine:
#   make demo  - the main job on the offline default (Fashion-MNIST)
#   make test  - ruff and the test suite (installs Chromium for the demo page test)
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO_OUT ?= runs/demo

.PHONY: setup data browser demo test lint clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

data:
	@test -f $(FASHION) || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }

# Headless Chromium and its driver, for the demo page's browser test.
browser:
	@test -x /usr/bin/chromedriver || { apt-get update -qq && \
		apt-get install -y -qq chromium chromium-driver; }

demo: setup data
	bash scripts/demo.sh $(DEMO_OUT)

lint: setup
	$(VENV)/bin/ruff check .

test: setup data browser lint
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) runs
