# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test fuzz system-deps node-deps stack clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

system-deps:
	./scripts/install-system-deps.sh

# The Prometheus Operator's schemas (Probe, ServiceMonitor, PrometheusRule) for tests/test_kubernetes.py.
K8S_NODE := tests/k8s/node_modules/.installed
$(K8S_NODE): tests/k8s/package.json tests/k8s/package-lock.json
	npm ci --prefix tests/k8s --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $(K8S_NODE)

node-deps: system-deps $(K8S_NODE)

# The compose loop without Docker: exporter (demo) -> Prometheus -> Alertmanager -> a webhook receiver that prints.
stack: $(STAMP) system-deps
	$(PY) scripts/stack.py

run: $(STAMP)
	$(VENV)/bin/connhealth serve --demo --web.listen-address 127.0.0.1:9115

test: $(STAMP) system-deps node-deps
	$(PY) -m pytest

# The property tests with many more examples (docs/reliability.md); `make test` runs them briefly.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz HYPOTHESIS_TIMEOUT=3600 $(PY) -m pytest tests/test_properties.py -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache tests/k8s/node_modules
