# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test fuzz system-deps clean

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

# The property tests with many more examples (docs/reliability.md); `make test` runs them briefly.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz HYPOTHESIS_TIMEOUT=3600 $(PY) -m pytest tests/test_properties.py -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache
