# Every target sets up its own virtualenv, so a fresh machine needs only Python 3.11 and git.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-agents agent-clis lint fmt procfile bench clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## run: start Conveyor on its embedded defaults and drive one demo work item to done
run: $(STAMP)
	@mkdir -p .demo
	cd .demo && ../$(BIN)/conveyor run "Add a greeting feature"

## agent-clis: install the pinned agent CLIs (npm, and a venv for Aider), cached in ~/.cache/conveyor-agent-clis
agent-clis:
	@scripts/install-agent-clis >/dev/null

## test: the whole suite (unit, integration with a real nats-server, end-to-end, real agent CLIs)
test: $(STAMP) agent-clis
	$(BIN)/pytest -q -p no:cacheprovider

## test-agents: only the real agent CLIs against the fake model APIs
test-agents: $(STAMP) agent-clis
	$(BIN)/pytest -q -p no:cacheprovider -m agent_cli tests/agent_clis

## lint: ruff and mypy --strict
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## procfile: run nats, control and launcher as separate processes (honcho)
procfile: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/honcho start

bench: $(STAMP)
	$(BIN)/python bench/stage_overhead.py

clean:
	rm -rf .demo .conveyor .pytest_cache .mypy_cache .ruff_cache
