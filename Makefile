# Peel — the two commands that matter are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck check bench soak clean native

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "make: could not create $(VENV); on Debian run: apt-get install python3-venv" >&2; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# The request path compiled to C by mypyc (gateway/core/native.py): a minute or two the first time
# and after a change to one of its modules, nothing when up to date; where no C compiler or Python
# headers are found it says so and Peel runs as pure Python.
native: $(STAMP)
	@$(BIN)/peel native build

demo: $(STAMP)
	$(BIN)/peel demo

test: native
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check gateway routes facade migrations tests bench
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: native
	$(BIN)/python bench/run.py $(BENCH_ARGS)

soak: native
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
