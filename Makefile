# The obvious targets. `make demo` and `make test` do all set-up on a fresh machine (a venv in .venv).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench proto cluster clean

$(BIN)/rankshard: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/rankshard
	$(BIN)/rankshard demo

test: $(BIN)/rankshard
	$(BIN)/pytest

lint: $(BIN)/rankshard
	BIN=$(BIN) scripts/lint

bench: $(BIN)/rankshard
	$(BIN)/rankshard bench --profile 500m-dau --duration 60 --out bench-results

cluster: $(BIN)/rankshard
	$(BIN)/rankshard cluster up

proto: $(BIN)/rankshard
	PATH=$(CURDIR)/$(BIN):$$PATH scripts/gen_proto.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build
