# The README's commands. `make setup` builds .venv/ at the repository root (editable install; `make test` adds the
# test extras: pytest, tensorboard and the transformers / ONNX exporters).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/superclip demo

# two workers (pytest-xdist), whole files to a worker so a file's shared runs are made once; each worker one thread
PYTEST_WORKERS ?= 2
# then the tests whose bits depend on the CPU's kernels (-m arithmetic) once more, under another CPU setting: torch's
# portable kernels and oneDNN's oldest ISA, so a test that holds only with this machine's AVX-512 (or AVX2) fails here
SECOND_CPU_SETTING ?= ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41
test: $(TEST_STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile
	env $(SECOND_CPU_SETTING) $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile -m arithmetic

bench: $(TEST_STAMP)
	$(BIN)/pip install --quiet pandas webdataset  # open_clip_train's CSV loader; the baseline of data_throughput
	$(BIN)/python bench/loss_memory.py
	$(BIN)/python bench/cls_overhead.py
	$(BIN)/python bench/trainer_throughput.py
	$(BIN)/python bench/data_throughput.py
	$(BIN)/python bench/resume_cost.py

clean:
	rm -rf $(VENV) runs
