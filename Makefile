# The two set-up commands of the README: `make test` and `make demo`.
SHELL   := /bin/bash
PY      ?= python3.11
VENV    := .venv
PIP     := $(VENV)/bin/pip
STAMP   := $(VENV)/.installed

.PHONY: test demo setup clean

setup: $(STAMP) voices chromium

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	$(PIP) install --quiet -e '.[test,whisper]' 2>&1 | grep -v '^WARNING: Location' ; test $${PIPESTATUS[0]} -eq 0
	touch $(STAMP)

# The built-in corpus's engines and text (espeak-ng, flite, festival + two diphone voices, the
# KJV) and the Asterisk prompts (recordings of a person, with their transcripts) to test on.
DEBS := espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k bible-kjv \
        asterisk-core-sounds-en asterisk-core-sounds-en-g722
.PHONY: voices
voices:
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

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
