# Two entry points on a fresh machine: `make demo` and `make test`. Each builds the virtual
# environment from this repo's files first (pyproject.toml + constraints.txt, the exact versions tested together).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install demo test test-fast lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

demo: install
	$(BIN)/spp-cls demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check spp_cls tests benchmarks

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not slurm"

clean:
	rm -rf $(VENV) runs demo
