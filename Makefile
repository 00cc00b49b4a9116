# Every target creates .venv and installs the project into it when needed,
# so on a fresh machine `make demo` or `make test` is the only command to run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint protos check-protos bench install clean chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ledger demo

# The suite mostly waits on servers and processes, so it runs in two workers
# (pytest-xdist; `make test PYTEST_WORKERS=0` runs it in one process). Each worker
# starts its own Temporal dev server; every test has its own schema or files.
PYTEST_WORKERS ?= 2

test: $(STAMP) chromium
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# Debian's Chromium, for the console's browser test (tests/test_console.py); as root
# it is installed when missing, otherwise the test says how.
chromium:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

lint: $(STAMP)
	$(BIN)/ruff check ledger projections tests bench scripts
	$(BIN)/ruff format --check ledger projections tests bench scripts
	$(BIN)/mypy ledger projections tests bench scripts
	$(BIN)/lint-imports --no-cache
	$(BIN)/python scripts/check_cycles.py
	bash scripts/check_protos.sh

protos: $(STAMP)
	bash scripts/gen_protos.sh

bench: $(STAMP)
	$(BIN)/python bench/lifecycles.py
	$(BIN)/python bench/catchup.py
	$(BIN)/python bench/soak.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/heartbeats.py
	$(BIN)/python bench/dispatch.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/instrumentation.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
