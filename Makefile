# Two commands do the whole set-up on a fresh machine: `make run` and `make test`.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup run consumer demo test lint unit

setup:
	@bash scripts/setup.sh

## Run the bridge (DICOM port 11112, AE title DICOM-BRIDGE, broker on 127.0.0.1).
run: setup
	$(BIN)/dicom-bridge serve

## Run the example consumer: a small archive that stores, finds and retrieves (docs/consumers.md).
consumer: setup
	$(BIN)/dicom-bridge example-consumer

## Both in one terminal: the consumer in the background, the bridge in front.
demo: setup
	@$(BIN)/dicom-bridge example-consumer & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null' EXIT INT TERM; \
	$(BIN)/dicom-bridge serve

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Lint, type-check and the whole test suite against the real broker and DCMTK.
test: lint
	$(BIN)/pytest

## The tests that need no broker, start no process and are not slow: under 30 s.
## Needs only .venv; a test that reaches the broker or starts a process fails (tests/unit_run.py).
unit: $(BIN)/pytest
	BRIDGE_TEST_UNIT=1 $(BIN)/pytest -q -m "not needs_broker and not process and not slow"

# The Python environment alone (setup also installs DCMTK, RabbitMQ and Node).
$(BIN)/pytest:
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
