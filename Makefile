# Flywheel developer targets. `make install` is idempotent: it only reinstalls when
# pyproject.toml or constraints.txt changed (the stamp file tracks that).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: install protos run test test-unit test-integration test-e2e test-scale fuzz lint typecheck bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,embedded]'
	@touch $(STAMP)

protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I protos \
		--python_out=libs --grpc_python_out=libs \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --mypy_out=libs \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc --mypy_grpc_out=libs \
		protos/flywheel/v1/*.proto

run: $(STAMP)
	$(BIN)/flywheel up --demo

# The PostgreSQL TLS test needs a server built with OpenSSL (the embedded wheel's is not): Debian's.
SYSTEM_STAMP := $(VENV)/.system-installed
$(SYSTEM_STAMP):
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql)
	@touch $@

# The slowest tests are printed, so that what makes the suite slow is seen where it happens.
test: $(STAMP) $(SYSTEM_STAMP)
	$(BIN)/python -m pytest -q --durations=25

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

test-integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

test-e2e: $(STAMP)
	$(BIN)/python -m pytest -q tests/e2e

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	$(BIN)/hadolint --config .hadolint.yaml deploy/Dockerfile

# Static types of libs/ and services/ (settings in pyproject.toml [tool.mypy]); zero errors is the gate.
typecheck: $(STAMP)
	$(BIN)/mypy

# Bench-only dependencies (MLflow as a serving baseline), installed once per change of the list.
$(BENCH_STAMP): $(STAMP) tests/bench/requirements.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -r tests/bench/requirements.txt
	@touch $(BENCH_STAMP)

# Scale-out tests (replicas of every service, Ray): heavier, so outside `make test`; CI runs both.
# They need the `ray` extra (a local Ray cluster trains a search), installed once per change of the pins.
SCALE_STAMP := $(VENV)/.scale-installed
$(SCALE_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,embedded,ray]'
	@touch $(SCALE_STAMP)

test-scale: $(SCALE_STAMP)
	$(BIN)/python -m pytest -q --durations=10 tests/scale

# The fuzz suite runs bounded inside `make test`; this is the long run (examples per property).
fuzz: $(STAMP)
	FLYWHEEL_FUZZ_EXAMPLES=$${FLYWHEEL_FUZZ_EXAMPLES:-5000} $(BIN)/python -m pytest -q tests/fuzz

# MLServer, the serving bench's peer, lives in its own venv (it pins its own web and gRPC stack); this
# creates it, or recreates it when tests/bench/requirements-mlserver.txt changes.
MLSERVER_STAMP := $(VENV)/bench-mlserver/.requirements
$(MLSERVER_STAMP): $(STAMP) tests/bench/requirements-mlserver.txt
	$(BIN)/python -m tests.bench.mlserver_peer install
	@touch $@

bench: $(BENCH_STAMP) $(MLSERVER_STAMP)
	$(BIN)/python -m pytest -q -s tests/bench -p no:cacheprovider; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

clean:
	rm -rf $(VENV) var .pytest_cache
