# tinyinfer — the two commands a new user needs are `make demo` and `make test`.
# Both create the virtual environment .venv on first use (Python >= 3.11 as `python3`).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
NOTEBOOKS := $(wildcard book/*.ipynb)

.PHONY: demo test test-fast conformance exercises notebooks bench quant-compare book figures nginx clean help

help:
	@echo "make demo         install tinyinfer and run an end-to-end example"
	@echo "make test         install tinyinfer[dev] and run every test, the conformance suite and the notebooks"
	@echo "make conformance  count passes over ONNX's whole backend node suite"
	@echo "make bench        time tinyinfer (reference, numba) vs ONNX Runtime on the light models and the zoo"
	@echo "make quant-compare  ONNX Runtime's quantizer vs tinyinfer's on every light and zoo model and the digits CNN"
	@echo "make book         re-execute the notebooks in place"
	@echo "make figures      regenerate the figures under figures/"
	@echo "make nginx        install nginx (for tinyinfer cluster and its tests) if it is missing"

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

test: $(VENV)/.installed-dev nginx
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

# The chapter 03a table: each model quantized by ONNX Runtime and by tinyinfer (SNR, size,
# latency in both runtimes, int8 / fp32); the digits CNN by held-out accuracy.
quant-compare: $(VENV)/.installed-dev
	$(VENV)/bin/tinyinfer quantize --compare light:all,zoo:all,digits --json figures/03a_compare.json

book: $(VENV)/.installed-dev
	for nb in $(NOTEBOOKS); do $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace "$$nb" || exit 1; done

figures: book

# tinyinfer cluster puts nginx in front of server replicas. Installed from the system's
# packages when missing (as root, or with sudo); if that is impossible the cluster tests skip.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
nginx:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || \
	  (export DEBIAN_FRONTEND=noninteractive; \
	   $(SUDO) apt-get install -y -q nginx-light >/dev/null 2>&1 || \
	   ($(SUDO) apt-get update -q >/dev/null 2>&1 && $(SUDO) apt-get install -y -q nginx-light >/dev/null 2>&1)) || \
	  echo "nginx could not be installed: the tests of tinyinfer cluster will skip"

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
