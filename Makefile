# consent-ledger: `make run` starts the product on SQLite, `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CLIENT_VENV := .venv-client
export CONSENT_LEDGER_HOME ?= $(CURDIR)/.consent-ledger
PORT ?= 8000

.PHONY: install run test test-client lint format bench clean

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

# The client distribution on its own: a fresh virtualenv with only it and pytest,
# where the server's packages must not import, then the client's offline tests.
test-client:
	rm -rf $(CLIENT_VENV)
	$(PYTHON) -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CLIENT_VENV)/bin/python -m pip install --quiet ./client pytest
	$(CLIENT_VENV)/bin/python -I client/tests/check_isolation.py
	cd client && ../$(CLIENT_VENV)/bin/pytest -q

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
	rm -rf $(VENV) $(CLIENT_VENV) client/build .pytest_cache .mypy_cache .ruff_cache .hypothesis
