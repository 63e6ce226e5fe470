# The two commands of a fresh machine: `make demo` and `make test`.
# Both create .venv on first use (scripts/setup.sh) and reuse it afterwards.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
SETUP_INPUTS := pyproject.toml constraints.txt requirements-cellprofiler.txt \
	scripts/setup.sh scripts/zeroc_ice_wheel.py

.PHONY: demo test pytest lint setup clean

$(STAMP): $(SETUP_INPUTS)
	scripts/setup.sh

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cellprofiler-omero demo

test: $(STAMP)
	$(PY) -m pytest
	$(MAKE) lint

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	scripts/typecheck.sh

clean:
	rm -rf $(VENV) build *.egg-info
