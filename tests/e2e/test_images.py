"""The product's images (images/build.py): built without Docker, cached, and holding what
each one must and nothing it must not.

The operator image is built twice into an empty temporary cache, to show a cold build
and its reuse (the Ray image is far too large to build cold in every run); the other
tests use the images of the real cache, which later runs find ready.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from images import oci
from images.build import RECIPES, VENV, Builder

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("mmdebstrap") is None,
        reason="building the images needs root and mmdebstrap (scripts/setup.sh)",
    ),
]

SITE_PACKAGES = f"{VENV.lstrip('/')}/lib/python3.11/site-packages"
# What the operator image must not hold (pyproject's import contract says the operator
# needs none of them).
NOT_IN_OPERATOR = ("ray", "vllm", "torch", "tritonclient", "matplotlib", "transformers")


def _names(store: oci.Store, image: oci.Image) -> set[str]:
    """Every path in the image's layers (tar headers only: no file data is read)."""
    names: set[str] = set()
    for layer in image.layers:
        with tarfile.open(store.blob(layer.digest)) as tar:
            names.update(member.name for member in tar)
    return names


@pytest.fixture(scope="module")
def operator_built() -> tuple[Builder, oci.Image]:
    builder = Builder()
    return builder, builder.build(RECIPES["operator"]).image


@pytest.fixture(scope="module")
def operator_rootfs(
    operator_built: tuple[Builder, oci.Image], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The operator image's layers unpacked into a directory, as a runtime would."""
    builder, image = operator_built
    root = tmp_path_factory.mktemp("operator-rootfs")
    # The root directory of a filesystem is world-readable; pytest makes it private.
    root.chmod(0o755)
    for layer in image.layers:
        blob = builder.store.blob(layer.digest)
        subprocess.run(["tar", "-x", "-f", str(blob), "-C", str(root)], check=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_the_operator_image_builds_cold_and_is_reused_warm(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cold = Builder(cache).build(RECIPES["operator"])
    # A new builder, as a later run would make: it builds the wheel again, finds the rest.
    warm = Builder(cache).build(RECIPES["operator"])
    print(
        f"\noperator image {cold.image.name}, {cold.image.size / 1e6:.0f} MB: cold build "
        f"{cold.seconds:.1f} s ("
        + ", ".join(f"{kind} {s:.1f} s" for kind, s in cold.layer_seconds.items())
        + f"), warm {warm.seconds:.1f} s (all layers from the cache)"
    )
    assert not any(cold.reused.values()), cold.reused
    assert warm.cached, warm.reused
    assert warm.image.digest == cold.image.digest


def test_the_operator_image_holds_no_ray_vllm_or_torch(
    operator_built: tuple[Builder, oci.Image],
) -> None:
    builder, image = operator_built
    names = _names(builder.store, image)
    present = [p for p in NOT_IN_OPERATOR if f"{SITE_PACKAGES}/{p}" in names]
    assert not present, f"the operator image holds {present}"
    for needed in ("kopf", "kubernetes", "modelfleet_operator", "modelfleet_cli"):
        assert f"{SITE_PACKAGES}/{needed}" in names, needed
    assert f"{VENV.lstrip('/')}/bin/modelfleet" in names


def test_the_operator_image_runs_the_operator_as_its_user(
    operator_built: tuple[Builder, oci.Image], operator_rootfs: Path
) -> None:
    builder, image = operator_built
    config = builder.store.blob(image.config.digest).read_text()
    assert '"User":"65532:65532"' in config
    assert '"Entrypoint":["modelfleet"]' in config
    # Its own interpreter and libraries, as its user, with nothing to write to.
    command = [
        "chroot", "--userspec=65532:65532", str(operator_rootfs), "/usr/bin/env", "-i",
        f"PATH={VENV}/bin:/usr/bin:/bin", "HOME=/tmp", "PYTHONDONTWRITEBYTECODE=1",
        "python", "-c",
        "import modelfleet_cli.run_operator, modelfleet_operator.handlers, "
        "modelfleet_operator.webhook, os; print(os.getuid())",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "65532"
    help_text = subprocess.run(
        ["chroot", "--userspec=65532:65532", str(operator_rootfs), f"{VENV}/bin/modelfleet",
         "operator", "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert help_text.returncode == 0, help_text.stderr
    assert "--webhook-port" in help_text.stdout


def test_the_ray_image_has_ray_vllm_the_serving_package_and_what_kuberay_calls() -> None:
    builder = Builder()
    built = builder.build(RECIPES["ray-cpu"])
    rebuilt = [kind for kind, reused in built.reused.items() if not reused]
    print(
        f"\nRay image {built.image.name}: {built.image.size / 1e9:.2f} GB in "
        f"{built.seconds:.1f} s ({'rebuilt: ' + ', '.join(rebuilt) if rebuilt else 'cached'})"
    )
    names = _names(builder.store, built.image)
    for package in ("ray", "vllm", "torch", "modelfleet_serving", "tritonclient"):
        assert f"{SITE_PACKAGES}/{package}" in names, package
    # KubeRay's container command is /bin/bash -c; its probes call wget and grep; it
    # starts Ray with `ray start` from PATH.
    for path in ("usr/bin/bash", "usr/bin/wget", "usr/bin/grep", f"{VENV.lstrip('/')}/bin/ray"):
        assert path in names, path
    config = builder.store.blob(built.image.config.digest).read_text()
    assert '"User":"1000:100"' in config
    assert f'"PATH={VENV}/bin:' in config
