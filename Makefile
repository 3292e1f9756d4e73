# `make demo` and `make test` work on a fresh machine: they create .venv, install boothkit and its pinned
# dependencies (torch==2.13.0, the CPU build), then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test test-all setup clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/boothkit demo --out demo-out

test: $(STAMP)
	-./scripts/setup-browser.sh
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" -q

test-all: $(STAMP)
	-./scripts/setup-browser.sh
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo-out .pytest_cache .browser
