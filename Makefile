# gitlab2trello: `make run` runs the service, `make test` runs the tests.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV   := .venv
PORT   ?= 8080
BIN    := $(VENV)/bin

.PHONY: run test lint unit bench soak nginx clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-deps: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev-deps: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@ $(VENV)/.run-deps

## run: the whole service (web + worker) in the foreground on 127.0.0.1:$(PORT)
run: $(VENV)/.run-deps
	exec $(BIN)/uwsgi --ini deploy/uwsgi-base.ini --http-socket 127.0.0.1:$(PORT)

## nginx: install Debian's nginx-light when it is missing (needs root)
nginx:
	@command -v nginx >/dev/null 2>&1 || command -v /usr/sbin/nginx >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light; }

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## test: lint, then every test (unit, integration under uWSGI, deployment behind nginx)
test: $(VENV)/.dev-deps nginx lint
	$(BIN)/pytest

unit: $(VENV)/.dev-deps
	$(BIN)/pytest -m "not integration"

## bench: measured figures, written to bench/results.md
bench: $(VENV)/.dev-deps nginx
	$(BIN)/python -m bench

## soak: the long fault campaign
soak: $(VENV)/.dev-deps nginx
	$(BIN)/pytest tests/test_faults.py --soak

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .hypothesis
