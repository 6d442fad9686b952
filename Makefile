# Every target sets up its own virtualenv, so a fresh machine needs only Python 3.11 and git.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

PIP_LOG := $(VENV)/pip.log
# pip's and setuptools' chatter goes to a log file, shown only when an install fails.
QUIET   = >>$(1) 2>&1 || { cat $(1); echo "install failed; log: $(1)"; exit 1; }

.PHONY: run test test-agents agent-clis lint fmt procfile bench clean lock

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=/path/to/python3.11)"; exit 1; }
	@$(PYTHON) -m venv $(VENV)

# Every package, linters included, comes from constraints.txt: a new release cannot
# change a run without a commit (`make lock` re-resolves and rewrites the pins).
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	@: >$(PIP_LOG)
	@$(BIN)/python -m pip install --quiet -c constraints.txt pip $(call QUIET,$(PIP_LOG))
	@$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]' $(call QUIET,$(PIP_LOG))
	@touch $(STAMP)

## lock: re-resolve .[dev] in a scratch venv and pin every package in constraints.txt
lock:
	@rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	@.lock-venv/bin/python -m pip install --quiet --upgrade pip $(call QUIET,.lock-venv/pip.log)
	@.lock-venv/bin/python -m pip install --quiet -e '.[dev]' $(call QUIET,.lock-venv/pip.log)
	@{ echo "# Exact pins of .[dev] and everything it pulls in; regenerate with \`make lock\`."; \
	  .lock-venv/bin/python -m pip freeze --all --exclude-editable \
	  | grep -v -e '^setuptools==' -e '^wheel=='; } >constraints.txt
	@rm -rf .lock-venv
	@echo "constraints.txt: $$(grep -c '==' constraints.txt) pins"

## run: start Conveyor on its embedded defaults and drive one demo work item to done
run: $(STAMP)
	@mkdir -p .demo
	@cd .demo && ../$(BIN)/conveyor run "Add a greeting feature"

## agent-clis: install the pinned agent CLIs (npm, and a venv for Aider), cached in ~/.cache/conveyor-agent-clis
agent-clis:
	@scripts/install-agent-clis >/dev/null

## test: the whole suite (unit, integration with a real nats-server, end-to-end, real agent CLIs)
test: $(STAMP) agent-clis
	@scripts/install-system-tools
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
	rm -rf .demo .conveyor .lock-venv .pytest_cache .mypy_cache .ruff_cache
