# The two commands of the README's quick start. Each installs what it needs first.
.PHONY: setup serve test lint generate check-generated

setup:
	./scripts/setup.sh

# The main job: serve the embedded default (local Ray, vLLM on CPU, a generated tiny model).
serve: setup
	.venv/bin/modelfleet serve manifests/examples/tiny-cpu.yaml

# The whole test suite: lint, type checks and generated files, then unit and e2e tests
# against the real control plane, engines and Prometheus.
test: setup lint check-generated
	.venv/bin/python -m pytest -p no:cacheprovider --durations=25

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

# Every generated file (CRDs, dashboards JSON, vLLM's flag list, render goldens, the
# chart's copies and the plain-YAML install) from its source: scripts/generate.py.
generate: setup
	.venv/bin/python -m scripts.generate

# Fails, naming the files, when a generated file is out of date with its source.
check-generated:
	.venv/bin/python -m scripts.generate --check

# The product's container images, built without Docker from images/recipe.py (root, for
# mmdebstrap): the operator and the Ray image (CPU); GPU=1 adds the GPU flavour.
# Cached outside the repository; see docs/images.md.
.PHONY: images
images: setup
	.venv/bin/python -m images.build $(if $(GPU),--gpu,)
