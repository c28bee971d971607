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

# Local nodes run on jemalloc when their server was built with libc malloc (docs/operations.md): one is unpacked
# here when the machine has none. Best effort: without it, they run on their server's own allocator.
MALLOC := $(VENV)/lib/rankshard/.fetched
$(MALLOC): | $(BIN)/rankshard
	scripts/fetch_jemalloc $(VENV)/lib/rankshard
	touch $@

demo: $(BIN)/rankshard $(MALLOC)
	$(BIN)/rankshard demo

test: $(BIN)/rankshard $(MALLOC)
	$(BIN)/pytest

lint: $(BIN)/rankshard
	BIN=$(BIN) scripts/lint

# Under four minutes; `make bench BENCH_FLAGS=--full` adds the 5M-member memory fill and extra rounds.
bench: $(BIN)/rankshard $(MALLOC)
	$(BIN)/rankshard bench --profile 500m-dau --out bench-results $(BENCH_FLAGS)

cluster: $(BIN)/rankshard $(MALLOC)
	$(BIN)/rankshard cluster up

proto: $(BIN)/rankshard
	PATH=$(CURDIR)/$(BIN):$$PATH scripts/gen_proto.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build
