# Two commands on a fresh machine:  `make demo` (set up + run the pipeline on the
# embedded SYNTHETIC set)  and  `make test` (set up + run the test suite).
VENV := .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export TF_USE_LEGACY_KERAS := 1

.PHONY: setup demo test lock

setup: $(VENV)/.koa-installed

$(VENV)/.koa-installed: requirements.lock requirements.txt setup.py scripts/bootstrap.sh
	scripts/bootstrap.sh

demo: setup
	@[ -f data/SYNTHETIC.md ] || koa generate-synthetic --out data
	dvc repro
	dvc metrics show

test: setup
	pytest

# Refreshes requirements.lock from the current environment (after a deliberate upgrade).
lock:
	$(BIN)/pip freeze --exclude-editable | grep -v '^koa-grading' > requirements.lock
