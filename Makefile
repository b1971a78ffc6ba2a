# Two commands for a newcomer with nothing but Python 3.11: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run demo test fuzz lint bench-speed clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/unlearnd serve

demo: $(VENV)/.installed
	$(BIN)/unlearnd demo

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/pytest -q

# schemathesis against a live API from its OpenAPI document: no 5xx, nothing off the documented schema
fuzz: $(VENV)/.installed
	PYTHONPATH=. $(BIN)/python scripts/fuzz_api.py

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench-speed: $(VENV)/.installed
	$(BIN)/unlearnd bench --suite speed --out docs/results/speed

clean:
	rm -rf $(VENV) var bench-out
