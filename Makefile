# Everything a developer or CI needs, from a fresh clone: `make test` sets up .venv, builds the
# extension and runs every check and test. Benchmarks and soaks have their own targets.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CARGO ?= cargo
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: all setup build test lint lint-rust lint-python test-rust test-python soak bench \
        bench-rust bench-python bench-oram bench-stash clean

all: test

$(VENV)/.setup: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

setup: $(VENV)/.setup

# Rebuild the extension in place after Rust changes (setup installs it the first time).
build: setup
	$(PY) -m pip install --quiet --no-deps -e .

test: lint test-rust test-python

lint: lint-rust lint-python

lint-rust:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --features python -- -D warnings

lint-python: build
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(VENV)/bin/mypy
	$(VENV)/bin/stubtest oramstore._native --allowlist .stubtest-allowlist --ignore-unused-allowlist

test-rust:
	$(CARGO) test

test-python: build
	$(PY) -m pytest -m "not soak" -q

soak: build
	$(PY) -m pytest -m soak -q

bench: bench-rust bench-python bench-oram

bench-rust:
	$(CARGO) bench --bench storage
	$(CARGO) bench --bench alloc
	$(PYTHON) benches/criterion_ratios.py

bench-python: build
	$(PY) benches/bench_storage.py
	$(PY) benches/bench_tree.py

# PyORAM 0.2.1, the pure-Python peer, in a venv of its own so that it never meets the tests.
PYORAM_VENV ?= .venv-pyoram
$(PYORAM_VENV)/.setup:
	$(PYTHON) -m venv $(PYORAM_VENV)
	$(PYORAM_VENV)/bin/python -m pip install --quiet pyoram==0.2.1
	touch $@

bench-oram: build $(PYORAM_VENV)/.setup
	$(PY) benches/bench_oram.py --pyoram-python $(PYORAM_VENV)/bin/python

bench-stash: build
	$(PY) benches/bench_stash_tail.py

clean:
	rm -rf $(VENV) $(PYORAM_VENV) target
