# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

system-deps:
	./scripts/install-system-deps.sh

run: $(STAMP)
	$(VENV)/bin/connhealth serve --demo --web.listen-address 127.0.0.1:9115

test: $(STAMP) system-deps
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
