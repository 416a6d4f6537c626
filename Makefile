# The two commands of the README's quick start. Each installs what it needs first.
.PHONY: setup serve test lint

setup:
	./scripts/setup.sh

# The main job: serve the embedded default (local Ray, vLLM on CPU, a generated tiny model).
serve: setup
	.venv/bin/modelfleet serve manifests/examples/tiny-cpu.yaml

# The whole test suite: lint and type checks, then unit, integration and e2e tests
# against the real control plane, engines and Prometheus.
test: setup lint
	.venv/bin/python -m pytest -p no:cacheprovider

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
