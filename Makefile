# `make test` and `make train` set up .venv themselves on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: install test test-fast train clean test-tools

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# tests/test_launch.py lints the launch scripts with shellcheck (a Debian package).
test-tools:
	@command -v shellcheck >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck) \
	  || { echo "make test needs shellcheck: install it (apt-get install shellcheck)" >&2; exit 1; }

test: $(STAMP) test-tools
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q tests

# All but the tests marked slow (pyproject.toml): none that starts processes, runs Pallas in
# interpret mode or compiles many programs. Under 3 minutes on 2 idle cores; make test runs all.
test-fast: $(STAMP) test-tools
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q -m "not slow" tests

train: $(STAMP)
	$(PY) -m phd_jax.main --config=configs/tiny.py --workdir=workdirs/tiny

clean:
	rm -rf $(VENV) workdirs .pytest_cache
