# The two commands of a fresh machine: `make demo` and `make test`.
# Both create .venv on first use (scripts/setup.sh) and reuse it afterwards.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
SETUP_INPUTS := pyproject.toml constraints.txt requirements-cellprofiler.txt \
	scripts/setup.sh scripts/zeroc_ice_wheel.py

.PHONY: demo test test-real real-server-vars pytest lint setup clean

$(STAMP): $(SETUP_INPUTS)
	scripts/setup.sh

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cellprofiler-omero demo

test: $(STAMP)
	$(PY) -m pytest
	$(MAKE) lint

# The real_server tests against your own OMERO server (README: "Testing against your own
# server"). The variables are checked before anything else runs; the password is read by
# the tests from the environment and never appears on a command line.
REAL_SERVER_VARS := CELLPROFILER_OMERO_TEST_SERVER CELLPROFILER_OMERO_TEST_USER \
	CELLPROFILER_OMERO_TEST_PASSWORD CELLPROFILER_OMERO_TEST_DATASET
REAL_SERVER_MISSING = $(strip $(foreach v,$(REAL_SERVER_VARS),$(if $(strip $(value $(v))),,$(v))))

test-real: real-server-vars $(STAMP)
	$(PY) -m pytest -m real_server

real-server-vars:
	@if [ -n "$(REAL_SERVER_MISSING)" ]; then \
	  echo "make test-real: set $(REAL_SERVER_MISSING) first (server as host:port, your" \
	    "user, password and a Dataset id you may write to; see README.md, 'Testing against" \
	    "your own server')." >&2; \
	  exit 2; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	scripts/typecheck.sh

clean:
	rm -rf $(VENV) build *.egg-info
