# Everything a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PACKAGES := her2fed site_agent coordinator

.PHONY: setup sysdeps lint test demo bench clean

# Debian packages the tests need: headless Chromium renders the HTML report.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
sysdeps:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(VENV)/bin/ruff check $(PACKAGES) tests bench examples
	$(VENV)/bin/mypy --strict $(PACKAGES) bench

test: lint sysdeps
	$(PY) -m pytest

DEMO_SITES := athens:GR:400,oslo:NO:700,munich:DE:600

demo: setup
	$(VENV)/bin/her2fed synth --out out/demo/sites --sites $(DEMO_SITES)
	$(VENV)/bin/her2fed local examples/her2/study.toml \
	  --site athens=out/demo/sites/athens/site.toml \
	  --site oslo=out/demo/sites/oslo/site.toml \
	  --site munich=out/demo/sites/munich/site.toml \
	  --out out/demo --transport grpc
	@echo "open out/demo/report.html in a browser; numbers in out/demo/results.json"

# Every benchmark rewrites its own sections of BENCHMARKS.md (command, machine, date in each).
# QUICK=1: small sizes, a few minutes on 2 cores.
BENCH_ARGS = $(if $(QUICK),--quick,) --markdown BENCHMARKS.md
bench: setup
	$(PY) -m bench.bench_exactness --markdown BENCHMARKS.md
	$(PY) -m bench.bench_core $(BENCH_ARGS)
	$(PY) -m bench.bench_optimisation $(BENCH_ARGS)
	$(PY) -m bench.bench_secagg $(BENCH_ARGS)
	$(PY) -m bench.bench_scale $(BENCH_ARGS)
	$(PY) -m bench.bench_network $(BENCH_ARGS)

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache .hypothesis
