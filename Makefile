# The two set-up commands of the README:
#   make demo   install into .venv and run the offline demo (no download)
#   make test   install into .venv (with test tools) and run the test suite (the full-size group included)
# torch/torchvision are pinned by constraints.txt (pip on Python 3.11 takes them from local disk where present).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -c constraints.txt

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP) -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/synthtl demo

# The whole suite, the full-size group included (random SD v1.5, ResNet-50, ViT-B/16 on CPU), in 2 processes with
# one test file each at a time (tests/conftest.py gives each its share of the cores): ~3 min on 2 cores.
test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n 2 --dist loadfile

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) demo_out .pytest_cache
