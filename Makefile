# The two commands of the README, and the ones around them. Each sets up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv tools lint test demo bench package package-test clean

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

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
