# Two commands for a fresh clone: `make run` and `make test`.
# Both create .venv on first use and reinstall when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test samples bench bench-calibrate bench-detect bench-serve bench-batch clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "nii needs Python 3.11+; found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

# The main job: the operator service on localhost (viewer, API, DICOM SCP on
# 11112), with the sample scans analysed. It prints where to open the viewer
# and how to log in; Ctrl-C stops it. Its data stays in runs/service.
run: $(STAMP)
	$(BIN)/nii serve --data runs/service --samples sample_scans

# pytest exits 5 when it collects no test; that is not a failure of the code.
test: $(STAMP)
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

# Remake sample_scans/ and calibration/ with the simulator (fixed seeds).
samples: $(STAMP)
	$(BIN)/python sample_scans/make_samples.py

# Data-engine throughput: dual-energy 1024x768 bags per second on 1 and 2 workers.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_simulate.py

# Calibrate-and-render time for a 2x1024x768 scan, against float64 NumPy and the bandwidth floor.
bench-calibrate: $(STAMP)
	$(BIN)/python benchmarks/bench_calibrate.py

# Contraband detector time per 1024x768 scan, on 2 and 1 threads.
bench-detect: $(STAMP)
	$(BIN)/python benchmarks/bench_detect.py

# The service under 20 lanes of baggage uploads for 60 s, capacity, and kill -9 mid-load.
bench-serve: $(STAMP)
	$(BIN)/python benchmarks/bench_serve.py

# Batch re-analysis: local and ray engines against the single-scan pipeline rate.
bench-batch: $(STAMP)
	$(BIN)/python benchmarks/bench_batch.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
