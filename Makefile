# Two commands on a fresh clone: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo lint test serve bench-quality bench-quality-quick bench-serve tools clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/thalamus demo

# Lint and type-check the packages (scope and rules: [tool.ruff] and [tool.mypy] in pyproject.toml).
lint: setup
	$(BIN)/ruff check
	$(BIN)/mypy

# The load generator of `thalamus bench serve` (its quick test runs in `make test`): Debian's wrk 4.1.
tools:
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)

test: lint tools
	$(BIN)/pytest -q

serve: setup
	$(BIN)/thalamus up

bench-quality: setup
	$(BIN)/thalamus bench quality --dataset ../shared/data/dcrouter --json var/bench-quality.json --plot var/pareto.png

bench-serve: setup tools
	$(BIN)/thalamus bench serve --dataset ../shared/data/dcrouter --json var/bench-serve.json --plot var/serve.png

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
