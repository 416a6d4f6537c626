"""`make generate`: write every generated file of the repository from its source.

| generated | from |
|---|---|
| `manifests/crds/*.yaml` | the pydantic models in `operator/modelfleet_operator/api/` |
| `dashboards/*.json` | the dashboards as code in `operator/modelfleet_operator/dashboards/` |
| `operator/modelfleet_operator/data/vllm_flags.txt` | the installed vLLM's engine arguments |
| `tests/golden/*.yaml` | `modelfleet render` of each file in `manifests/examples/` |
| `helm/modelfleet/{crds,dashboards,rbac}/` | copies of the CRDs, dashboards and `manifests/rbac/` |
| `manifests/install/modelfleet.yaml` | the chart rendered by the real helm (`scripts/chart.py`) |

Run `python -m scripts.generate` after changing a source and review the diff;
`--check` writes nothing and exits 1 naming each file that is out of date. The unit
tests compare each of these with its source as well, so a stale file fails `make test`
with a message that says which generator to run.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from scripts import chart

REPO = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = REPO / "manifests" / "examples"
GOLDEN_DIR = REPO / "tests" / "golden"
DASHBOARDS_DIR = REPO / "dashboards"
CRD_DIR = REPO / "manifests" / "crds"
FLAGS_FILE = REPO / "operator" / "modelfleet_operator" / "data" / "vllm_flags.txt"

VLLM_FLAGS_HEADER = """\
# vLLM {version} engine flags: the fields of vllm.engine.arg_utils.AsyncEngineArgs,
# dashed, as `vllm serve` spells them. Generated; do not edit. Regenerate with
# `make generate`.
"""


def crd_files() -> dict[Path, str]:
    """The ModelDeployment CRD, generated from its pydantic models."""
    from modelfleet_operator.api.crd import crd_yaml

    return {CRD_DIR / "modeldeployments.modelfleet.io.yaml": crd_yaml()}


def dashboard_json_files() -> dict[Path, str]:
    """Every Grafana dashboard's JSON, from the dashboards written as code."""
    from modelfleet_operator.dashboards import dashboard_files

    return {DASHBOARDS_DIR / name: text for name, text in dashboard_files().items()}


def vllm_flags() -> str:
    """vLLM's engine flags as the installed vLLM defines them.

    The operator's flag lint reads this list instead of importing vLLM, which its image
    does not carry.
    """
    import vllm
    from vllm.engine.arg_utils import AsyncEngineArgs

    names = sorted(
        field.name.replace("_", "-")
        for field in dataclasses.fields(AsyncEngineArgs)
        # Underscored fields are vLLM's internal plumbing, not command-line flags.
        if not field.name.startswith("_")
    )
    return VLLM_FLAGS_HEADER.format(version=vllm.__version__) + "\n".join(names) + "\n"


def vllm_flag_files() -> dict[Path, str]:
    """The flag list file."""
    return {FLAGS_FILE: vllm_flags()}


def golden_path(example: Path) -> Path:
    """The golden file holding `modelfleet render` of an example."""
    return GOLDEN_DIR / f"{example.stem}.yaml"


def without_dashboard_json(documents: str) -> str:
    """`documents` with each dashboards ConfigMap's JSON replaced by the file's name.

    The dashboards' JSON has its own drift check; repeating a thousand lines of it in
    every golden would only hide the render's diff. Raises ValueError when a
    ConfigMap's JSON is not the committed dashboard's.
    """
    from modelfleet_cli.render import dump
    from modelfleet_operator.monitoring import DASHBOARD_LABEL

    docs = list(yaml.safe_load_all(documents))
    for doc in docs:
        if DASHBOARD_LABEL in doc["metadata"].get("labels", {}):
            for name, text in doc["data"].items():
                if text != (DASHBOARDS_DIR / name).read_text():
                    raise ValueError(f"{name} differs from dashboards/{name}")
                doc["data"][name] = f"<the content of dashboards/{name}>"
    return dump(docs)


def golden(example: Path) -> str:
    """The golden text of one example: what `modelfleet render` prints for it."""
    from modelfleet_cli.render import render_documents

    obj = yaml.safe_load(example.read_text())
    return without_dashboard_json(render_documents(obj, image=None, namespace="default"))


def golden_files() -> dict[Path, str]:
    """The golden of every shipped example."""
    return {golden_path(e): golden(e) for e in sorted(EXAMPLES_DIR.glob("*.yaml"))}


# In order: the chart's copies are made afterwards from what these wrote.
GENERATORS: tuple[tuple[str, Callable[[], dict[Path, str]], Path, str], ...] = (
    ("CRDs", crd_files, CRD_DIR, "*.yaml"),
    ("dashboards", dashboard_json_files, DASHBOARDS_DIR, "*.json"),
    ("vLLM flags", vllm_flag_files, FLAGS_FILE.parent, FLAGS_FILE.name),
    ("goldens", golden_files, GOLDEN_DIR, "*.yaml"),
)


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO))


def out_of_date() -> list[str]:
    """One line per generated file that differs from what its generator writes."""
    problems = []
    for label, produce, folder, pattern in GENERATORS:
        wanted = produce()
        for path, text in wanted.items():
            if not path.is_file() or path.read_text() != text:
                problems.append(f"{_relative(path)} ({label}) is out of date")
        for path in sorted(folder.glob(pattern)):
            if path not in wanted:
                problems.append(f"{_relative(path)} ({label}) has no source any more")
    return problems + chart.drift()


def generate() -> list[Path]:
    """Write every generated file; the files that changed."""
    changed = []
    for _, produce, folder, pattern in GENERATORS:
        wanted = produce()
        for path in sorted(folder.glob(pattern)):
            if path not in wanted:
                path.unlink()
                changed.append(path)
        for path, text in wanted.items():
            if not path.is_file() or path.read_text() != text:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                changed.append(path)
    chart.generate()
    return changed


def main(argv: list[str] | None = None) -> int:
    """Regenerate (default) or check (`--check`) every generated file."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 on drift")
    args = parser.parse_args(argv)
    if args.check:
        problems = out_of_date()
        for line in problems:
            print(f"generate: {line}; run `make generate`", file=sys.stderr)
        return 1 if problems else 0
    for path in generate():
        print(f"generate: wrote {_relative(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
