# The two set-up commands of the README: `make test` and `make demo`.
SHELL   := /bin/bash
PY      ?= python3.11
VENV    := .venv
PIP     := $(VENV)/bin/pip
STAMP   := $(VENV)/.installed

.PHONY: test demo setup clean

setup: $(STAMP) espeak chromium

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	$(PIP) install --quiet -e '.[test]' 2>&1 | grep -v '^WARNING: Location' ; test $${PIPESTATUS[0]} -eq 0
	touch $(STAMP)

.PHONY: espeak
espeak:
	@command -v espeak-ng >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null)

# Headless Chromium for the service page's browser test (driven over the DevTools protocol).
.PHONY: chromium
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test: setup
	$(VENV)/bin/python -m pytest -q

demo: setup
	$(VENV)/bin/seqkd demo

clean:
	rm -rf $(VENV) *.egg-info
