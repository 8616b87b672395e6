# gitlab2trello: `make run` runs the service, `make test` runs the tests.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV   := .venv
PORT   ?= 8080
BIN    := $(VENV)/bin

.PHONY: run demo test lint unit bench bench-soak soak nginx postgres wrk clean

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
	exec $(BIN)/uwsgi --ini deploy/uwsgi-base.ini --http11-socket 127.0.0.1:$(PORT)

## demo: the bridge with the Trello and GitLab emulators on loopback, playing a short story
demo: $(VENV)/.run-deps
	$(BIN)/python demo.py

## nginx: install Debian's nginx-light when it is missing (needs root)
nginx:
	@command -v nginx >/dev/null 2>&1 || command -v /usr/sbin/nginx >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light; }

## postgres: install Debian's postgresql when it is missing (needs root)
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## test: lint, then every test (unit, integration under uWSGI, deployment behind nginx)
test: $(VENV)/.dev-deps nginx postgres lint
	$(BIN)/pytest -n 2

unit: $(VENV)/.dev-deps
	$(BIN)/pytest -m "not integration"

## wrk: install Debian's wrk (the benchmarks' load generator) when it is missing (needs root)
wrk:
	@command -v wrk >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }

## bench: measured figures, written to bench/results.md (`make bench ARGS=--quick`)
bench: $(VENV)/.dev-deps nginx wrk postgres
	$(BIN)/python -m bench $(ARGS)

## bench-soak: memory of every process under 50 deliveries/s for $(MINUTES) minutes
MINUTES ?= 30
bench-soak: $(VENV)/.dev-deps nginx wrk
	$(BIN)/python -m bench soak --minutes $(MINUTES)

## soak: the long fault campaign, then the $(MINUTES)-minute memory soak
soak: $(VENV)/.dev-deps nginx wrk
	$(BIN)/pytest tests/test_faults.py --soak
	$(BIN)/python -m bench soak --minutes $(MINUTES)

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .hypothesis
