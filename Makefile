# Everything a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PACKAGES := her2fed site_agent coordinator

.PHONY: setup sysdeps lint test demo bench clean

# Debian packages the tests need: headless Chromium renders the HTML report; the
# PostgreSQL server (initdb, pg_ctl; Debian 12: /usr/lib/postgresql/15/bin) backs the
# database-source tests, which start their own throwaway server (no cluster service).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PG_BINS := $(wildcard /usr/lib/postgresql/*/bin/initdb)
sysdeps:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	@[ -n "$(PG_BINS)" ] || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; }

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
DEMO_NAMES := athens oslo munich
HER2FED    := $(VENV)/bin/her2fed
DEMO_STUDY := examples/her2/study.toml

# The rehearsal takes the real steps: the lead signs the study, each site makes
# its keys and its privacy officer approves the signed study; then the study
# runs over a real local federation (gRPC, TLS, secure aggregation).
demo: setup
	$(HER2FED) synth --out out/demo/sites --sites $(DEMO_SITES)
	@[ -f out/demo/lead.key ] || $(HER2FED) study keygen --out out/demo/lead.key
	$(HER2FED) study sign $(DEMO_STUDY) --key out/demo/lead.key --out out/demo/study.toml.sig
	@for s in $(DEMO_NAMES); do \
	  $(HER2FED) site keys out/demo/sites/$$s/site.toml >/dev/null && \
	  $(HER2FED) site approve out/demo/sites/$$s/site.toml $(DEMO_STUDY) --yes \
	    --signature out/demo/study.toml.sig --lead-key out/demo/lead.pub | tail -n 1 || exit 1; \
	done
	$(HER2FED) local $(DEMO_STUDY) \
	  $(foreach s,$(DEMO_NAMES),--site $(s)=out/demo/sites/$(s)/site.toml) \
	  --out out/demo --transport grpc
	@echo "open out/demo/report.html in a browser; numbers in out/demo/results.json"
	@echo "each site's signed audit log: $(HER2FED) site audit show out/demo/sites/athens/site.toml"

# Every benchmark rewrites its own sections of BENCHMARKS.md (command, machine, date in each).
# QUICK=1: small sizes, a few minutes on 2 cores.
BENCH_ARGS = $(if $(QUICK),--quick,) --markdown BENCHMARKS.md
bench: setup
	$(PY) -m bench.bench_exactness --markdown BENCHMARKS.md
	$(PY) -m bench.bench_core $(BENCH_ARGS)
	$(PY) -m bench.bench_limits $(BENCH_ARGS)
	$(PY) -m bench.bench_optimisation $(BENCH_ARGS)
	$(PY) -m bench.bench_secagg $(BENCH_ARGS)
	$(PY) -m bench.bench_scale $(BENCH_ARGS)
	$(PY) -m bench.bench_network $(BENCH_ARGS)

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache .hypothesis
