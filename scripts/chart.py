"""Keep the Helm chart and the plain-YAML install in step with their sources.

These files are generated, and the unit tests fail when any of them drifts from what
this module would write:

- ``helm/modelfleet/crds/``: copies of ``manifests/crds/*.yaml``, the CRDs generated from
  the operator's pydantic models. Helm installs CRDs only from a chart's ``crds/`` folder,
  and a chart cannot read files outside its own directory.
- ``helm/modelfleet/dashboards/``: copies of ``dashboards/*.json``, which the chart ships
  in a ConfigMap for Grafana's dashboard sidecar (``.Files`` only sees the chart's files).
- ``helm/modelfleet/rbac/``: copies of ``manifests/rbac/*.yaml``, the operator's
  least-privilege RBAC; the chart's Roles take their rules from them, so the chart
  grants exactly what the operator's authors grant.
- ``manifests/install/modelfleet.yaml``: the chart rendered with its default values
  (but the admission webhook, see ``INSTALL_VALUES``) by the real helm binary, for
  clusters that install with ``kubectl apply`` instead of helm.

Run ``manifests/install/generate`` (or ``python -m scripts.chart``) after changing any
source, and ``--check`` to only report drift; ``make generate`` runs it after every
other generator.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from tests.helm.binary import ensure_helm

REPO = Path(__file__).resolve().parents[1]
CHART_DIR = REPO / "helm" / "modelfleet"
INSTALL_FILE = REPO / "manifests" / "install" / "modelfleet.yaml"

# The plain-YAML install is the chart rendered as release "modelfleet" in namespace
# "modelfleet" (object names are then plain "modelfleet-…" without the release prefix).
RELEASE = "modelfleet"
NAMESPACE = "modelfleet"

# (source folder, glob, folder in the chart) of every file the chart carries as a copy.
COPIES = (
    (REPO / "manifests" / "crds", "*.yaml", CHART_DIR / "crds"),
    (REPO / "dashboards", "*.json", CHART_DIR / "dashboards"),
    (REPO / "manifests" / "rbac", "*.yaml", CHART_DIR / "rbac"),
)

_INSTALL_HEADER = f"""\
# The modelfleet operator as plain YAML: `kubectl apply -f {INSTALL_FILE.name}`.
# Generated from helm/modelfleet with its default values but webhook.enabled=false (the
# webhook needs a certificate made per install: use the chart for it): do not edit.
# Regenerate with manifests/install/generate; tests/unit/test_helm_chart.py fails when
# this file drifts. KubeRay (>= 1.5) is a prerequisite and is not included; see
# docs/install.md.
---
apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
  labels:
    app.kubernetes.io/part-of: modelfleet
"""


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the pinned helm binary; with ``check`` a failure raises with helm's output."""
    result = subprocess.run([str(ensure_helm()), *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"`helm {' '.join(args)}` exited with {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )
    return result


def expected_copies() -> dict[Path, bytes]:
    """Every copied file's path in the chart, with the content it must have."""
    files: dict[Path, bytes] = {}
    for source_dir, pattern, target_dir in COPIES:
        for source in sorted(source_dir.glob(pattern)):
            files[target_dir / source.name] = source.read_bytes()
    return files


def stale_copies() -> list[Path]:
    """Files in the chart's copy folders that no longer have a source."""
    expected = expected_copies()
    return [
        path
        for _, pattern, target_dir in COPIES
        for path in sorted(target_dir.glob(pattern))
        if path not in expected
    ]


# Values the plain-YAML install is rendered with. Without the webhook: its TLS pair is
# generated per install (helm template would write a new one on every render, and a
# committed private key would be shared by every cluster that applies the file).
INSTALL_VALUES = ("--set", "webhook.enabled=false")


def render_install() -> str:
    """The plain-YAML install: a Namespace, then the chart's CRDs and objects."""
    rendered = helm(
        "template",
        RELEASE,
        str(CHART_DIR),
        "--namespace",
        NAMESPACE,
        "--include-crds",
        *INSTALL_VALUES,
    ).stdout
    return _INSTALL_HEADER + rendered


def drift() -> list[str]:
    """What differs from the generated state, one line per file; empty when in step."""
    problems = [
        f"{path.relative_to(REPO)} differs from its source"
        for path, content in expected_copies().items()
        if not path.is_file() or path.read_bytes() != content
    ]
    problems += [f"{path.relative_to(REPO)} has no source any more" for path in stale_copies()]
    if not INSTALL_FILE.is_file() or INSTALL_FILE.read_text() != render_install():
        problems.append(f"{INSTALL_FILE.relative_to(REPO)} differs from the rendered chart")
    return problems


def generate() -> None:
    """Write the copies into the chart, then render the plain-YAML install from it."""
    for path in stale_copies():
        path.unlink()
    for path, content in expected_copies().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_bytes() != content:
            path.write_bytes(content)
    INSTALL_FILE.parent.mkdir(parents=True, exist_ok=True)
    INSTALL_FILE.write_text(render_install())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report drift (exit 1)")
    args = parser.parse_args(argv)
    if args.check:
        problems = drift()
        for line in problems:
            print(f"drift: {line}", file=sys.stderr)
        return 1 if problems else 0
    generate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
