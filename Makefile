# consent-ledger: `make run` starts the product on SQLite, `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export CONSENT_LEDGER_HOME ?= $(CURDIR)/.consent-ledger
PORT ?= 8000

.PHONY: install run test lint format bench clean

# The client is its own distribution (client/): installed next to the server for
# the tests that run it against the real API.
$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet -e ./client
	@touch $@

install: $(STAMP)

# Initialise a ledger in .consent-ledger on SQLite (once: that prints the admin
# API key), then serve the API on http://127.0.0.1:8000 (OpenAPI at /docs).
run: install
	@test -f "$(CONSENT_LEDGER_HOME)/keys/signing.pem" || $(BIN)/consent-ledger init
	$(BIN)/consent-ledger serve --host 127.0.0.1 --port $(PORT)

# The whole suite on SQLite and PostgreSQL (PostgreSQL cases skip, saying so,
# when no server is reachable; CI sets CONSENT_LEDGER_REQUIRE_POSTGRES=1).
test: install
	$(BIN)/pytest -n 2 -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict ledger client/consent_ledger_client client/generate_kernel.py
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
