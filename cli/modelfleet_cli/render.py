"""`modelfleet render FILE`: print the objects the operator would create for a ModelDeployment."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from modelfleet_operator.capacity import capacity_fit
from modelfleet_operator.checks import check
from modelfleet_operator.hub import resolve_shape
from modelfleet_operator.monitoring import monitoring_objects
from modelfleet_operator.render import DEFAULT_IMAGE, namespace_of
from modelfleet_operator.render import render as render_objects


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (serveConfigV2) as literal blocks, readable in reviews."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(objects: list[dict[str, Any]]) -> str:
    """A YAML stream of `objects`, in the form `modelfleet render` prints."""
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, width=100)


def render_documents(obj: dict[str, Any], *, image: str | None, namespace: str) -> str:
    """The YAML stream `modelfleet render` prints for one ModelDeployment object.

    Raises ValueError with every problem found when the object cannot be rendered.
    """
    checked = check(obj)
    if checked.md is None or checked.problems:
        raise ValueError("\n".join(checked.problems))
    objects = render_objects(checked.md, image=image or DEFAULT_IMAGE, namespace=namespace)
    # Shown as on a cluster with the Prometheus Operator: there the operator also
    # creates the ServiceMonitor the spec asks for.
    objects += monitoring_objects(
        checked.md,
        namespace=namespace_of(checked.md, namespace),
        service_monitor_crd_exists=True,
        owner_uid=None,
    )
    return dump(objects)


def capacity_warnings(obj: dict[str, Any]) -> list[str]:
    """One line per GPU pool the model does not fit, for stderr.

    Read offline (spec.model.shape, a local or built-in checkpoint, else the name):
    render stays quick and network-free; `modelfleet plan` reads the hub too.
    """
    checked = check(obj)
    if checked.md is None or all(pool.gpu is None for pool in checked.md.spec.node_pools):
        return []
    lookup = resolve_shape(checked.md.spec.model, fetch=False)
    fit = capacity_fit(checked.md.spec, lookup.shape, note=lookup.note)
    estimated = " (estimated from the model's name)" if fit.estimated else ""
    return [
        f"pool {pool.pool} does not fit{estimated}: {pool.message}"
        for pool in fit.pools
        if not pool.fits
    ]


def render(file: Path, image: str | None, namespace: str) -> int:
    """Print the objects the operator creates for the ModelDeployment in `file`; 1 on errors.

    A pool the model does not fit gets a warning on stderr; the objects still print
    (the operator would not deploy them: see `modelfleet plan`).
    """
    try:
        obj = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as error:
        print(f"modelfleet render: cannot read {file}: {error}", file=sys.stderr)
        return 1
    if not isinstance(obj, dict):
        print(f"modelfleet render: {file} does not hold one object", file=sys.stderr)
        return 1
    try:
        sys.stdout.write(render_documents(obj, image=image, namespace=namespace))
        warned = capacity_warnings(obj)
        for warning in warned:
            print(f"modelfleet render: warning: {warning}", file=sys.stderr)
        if warned:
            print(
                f"modelfleet render: the operator would not deploy this; run "
                f"`modelfleet plan {file}` for the figures",
                file=sys.stderr,
            )
    except ValueError as error:
        print(f"modelfleet render: {file} is not a valid ModelDeployment:", file=sys.stderr)
        for line in str(error).splitlines():
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0
