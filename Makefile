# Two commands on a fresh machine:
#   make demo  set up, run the pipeline on the embedded SYNTHETIC set, then bring up the
#              model server and the web UI on the pushed model (Ctrl-C stops them)
#   make test  set up and run the test suite
VENV := .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: setup demo pipeline test lock

setup: $(VENV)/.koa-installed

$(VENV)/.koa-installed: requirements.lock requirements.txt setup.py scripts/bootstrap.sh
	scripts/bootstrap.sh

demo: pipeline
	koa up

# TensorFlow frees and re-allocates its activation buffers every training step; glibc hands
# them back to the kernel each time, tcmalloc keeps them (1.37x training images/s measured
# here, benchmarks/train_throughput.py). Used when Debian's libtcmalloc-minimal4 is present.
TCMALLOC := $(wildcard /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4)
ifneq ($(TCMALLOC),)
pipeline: export LD_PRELOAD := $(TCMALLOC)
endif

# The main job alone: data -> pipeline -> blessed model in serving_model/, then metrics.
pipeline: setup
	@[ -f data/SYNTHETIC.md ] || koa generate-synthetic --out data
	dvc repro
	dvc metrics show

test: setup
	pytest

# Refreshes requirements.lock from the current environment (after a deliberate upgrade).
lock:
	$(BIN)/pip freeze --exclude-editable | grep -v '^koa-grading' > requirements.lock
