# The two commands a newcomer needs: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.installed
STUBS := cleanroom/v1/.stamp
PROTOS := $(wildcard proto/cleanroom/v1/*.proto)

.PHONY: all demo test check bench proof fuzz proto clean setup-demo setup-test

all: $(STUBS)

$(DEPS): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt --no-deps scikit-survival
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt --no-deps --no-build-isolation --config-settings editable_mode=compat -e .
	touch $@

$(STUBS): $(PROTOS) $(DEPS) cleanroom/codegen.py
	$(PY) -m cleanroom.codegen
	touch $@

proto: $(STUBS)

## setup-demo, setup-test: install the system tools each needs (see scripts/setup; idempotent)
setup-demo:
	scripts/setup demo

setup-test:
	scripts/setup test

## demo: start a server on a fresh state directory and run the whole flow on embedded defaults
demo: setup-demo $(STUBS)
	$(PY) -m cleanroom.cli.demo

## the Node.js client test's packages, exactly as tests/node/package-lock.json pins them
NODE_DEPS := tests/node/node_modules/.installed
$(NODE_DEPS): tests/node/package.json tests/node/package-lock.json | setup-test
	@if echo " $$CLEANROOM_TEST_WITHOUT " | tr , ' ' | grep -Eq ' (node|all) '; then echo "setup: node opted out; tests/node not installed"; \
	else npm ci --ignore-scripts --no-audit --no-fund --prefix tests/node && touch $@; fi

## check: the linter and the type checker (configured in pyproject.toml); make test runs it first
check: $(STUBS)
	$(VENV)/bin/ruff check cleanroom enclave_sim tests bench proof
	$(VENV)/bin/mypy

## test: the static checks, then the whole suite; starts a throw-away PostgreSQL for the storage tests
test: setup-test $(STUBS) $(NODE_DEPS) check
	scripts/with-services $(PY) -m pytest -q $(PYTEST_ARGS)

## bench: performance targets, each measured against its baseline in the same run
bench: setup-test $(STUBS)
	$(PY) bench/ingest.py
	scripts/with-services $(PY) bench/ledger.py
	$(PY) bench/intake.py
	$(PY) bench/dp_train.py
	$(PY) bench/job.py
	$(PY) bench/utility.py
	$(PY) bench/coverage.py
	$(PY) bench/stats.py
	$(PY) bench/streams.py --size-bytes 10e9

## proof: the evidence suite at full size (membership inference, privacy audit, fuzzing, load,
## credentials); writes PROOF.md and its figures under docs/proof/ (see proof/run.py)
proof: setup-test $(STUBS)
	scripts/with-services $(PY) proof/run.py

## fuzz: the fuzzers alone, for longer than make test gives them (FUZZ_SECONDS per target)
FUZZ_SECONDS ?= 300
fuzz: setup-test $(STUBS)
	$(PY) proof/fuzz.py --seconds-per-target $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) cleanroom/v1/*_pb2* $(STUBS) .pytest_cache .hypothesis .mypy_cache .ruff_cache
