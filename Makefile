# Every target creates and uses the local virtual environment in .venv/.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install browser test test-fast serve lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 2>/dev/null
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# tests/test_openapi.py renders /docs in headless Chromium, Debian's package (as root);
# where it cannot be installed, that one test is skipped
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "no chromium: tests/test_openapi.py skips rendering /docs"

test: install browser
	$(BIN)/pytest -q

# the in-process tier: every test that starts no process (no Valkey, uvicorn, worker or CLI)
test-fast: install
	$(BIN)/pytest -q -m "not processes"

serve: install
	$(BIN)/pureebm serve

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install
	$(BIN)/python -m bench.engine
	$(BIN)/python -m bench.purify_quality
	$(BIN)/python -m bench.service

clean:
	rm -rf $(VENV)
