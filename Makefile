# tinyinfer — the two commands a new user needs are `make demo` and `make test`.
# Both create the virtual environment .venv on first use (Python >= 3.11 as `python3`).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
NOTEBOOKS := $(wildcard book/*.ipynb)

.PHONY: demo test test-fast conformance exercises notebooks bench book figures clean help

help:
	@echo "make demo         install tinyinfer and run an end-to-end example"
	@echo "make test         install tinyinfer[dev] and run every test, the conformance suite and the notebooks"
	@echo "make conformance  count passes over ONNX's whole backend node suite"
	@echo "make bench        time tinyinfer (reference, numba) vs ONNX Runtime on the light models and the zoo"
	@echo "make book         re-execute the notebooks in place"
	@echo "make figures      regenerate the figures under figures/"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -q -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install -q -e ".[dev]"
	@touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m tinyinfer.demo

test: $(VENV)/.installed-dev
	$(PY) -m pytest tests -q
	$(PY) -m pytest tests/exercises -q --impl=exercises --stubs-must-fail
	$(PY) -m pytest -q --nbval $(NOTEBOOKS)

test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest tests -q -m "not slow" --ignore=tests/conformance

conformance: $(VENV)/.installed-dev
	$(VENV)/bin/tinyinfer conformance

exercises: $(VENV)/.installed-dev
	$(PY) -m pytest tests/exercises -q --impl=exercises

# Benchmarks run with OpenBLAS's own CPU detection (some machines pin OPENBLAS_CORETYPE /
# OPENBLAS_L2_SIZE for old OpenBLAS builds, which slows a current NumPy); the report names the
# BLAS kernel that ran. The suite times the light models and the zoo on tinyinfer's reference
# and Numba paths and ONNX Runtime at 1 and 2 threads, batch 1 and 8 (BENCH_BUDGET seconds per
# engine and row), then the GEMM table and the dispatch cost: about 15 minutes on 2 cores.
BENCH_BUDGET ?= 1
bench: $(VENV)/.installed-dev
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(VENV)/bin/tinyinfer bench --suite all --threads 1,2 --batch 1,8 \
		--repeat 5 --budget $(BENCH_BUDGET) --gemm --dispatch --json figures/bench.json --figure figures/06_bench.png

book: $(VENV)/.installed-dev
	for nb in $(NOTEBOOKS); do $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace "$$nb" || exit 1; done

figures: book

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
