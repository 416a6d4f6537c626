"""Obtain a ``tritonserver`` binary that runs on CPU, without Docker.

NVIDIA ships Triton Inference Server inside the PyPI wheel ``nvidia-pytriton``: the
server binary, its shared libraries (in ``nvidia_pytriton.libs``), the python backend and
python-backend stubs built for several Python versions. PyTriton itself needs numpy<2,
so the wheel is never installed into the product's environment: it is downloaded with
pip (``--no-deps``) and unpacked into a cache directory outside the repository,

    ${MODELFLEET_CACHE:-${XDG_CACHE_HOME:-~/.cache}}/modelfleet/triton/<version>/

with the stub for Python 3.11 copied into ``backends/python/``. That stub embeds the
system's ``libpython3.11``, so models of the python backend import the system's packages
(Debian: ``libpython3.11`` and ``python3-numpy``).

Replicas on a Triton or TensorRT-LLM image use that image's server instead: the
``tritonserver`` on PATH, or whatever ``engine.triton.serverCommand`` starts (see
`triton_server`); this module serves local runs, images without Triton, and the tests.

Run ``python -m modelfleet_serving.engines.triton_install`` to install and print the
binary's path.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

PYTRITON_DISTRIBUTION = "nvidia-pytriton"
PYTRITON_VERSION = "0.7.0"
# The stub must match the Python whose libpython it loads: Debian 12's is 3.11.
STUB_PYTHON_VERSION = "3.11"
# Set to a downloaded nvidia-pytriton wheel to install without reaching a registry.
WHEEL_ENV = "MODELFLEET_TRITON_WHEEL"
# Environment variables that would point the embedded system Python of the python
# backend at another interpreter's packages (a virtual environment's, Ray's).
_FOREIGN_PYTHON_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
_COMPLETE_MARKER = ".complete"


class TritonInstallError(RuntimeError):
    """The binary could not be downloaded or unpacked; the message says why."""


def cache_root() -> Path:
    """``${MODELFLEET_CACHE:-${XDG_CACHE_HOME:-~/.cache}}/modelfleet``."""
    base = os.environ.get("MODELFLEET_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "modelfleet"


@dataclass(frozen=True)
class TritonInstall:
    """An unpacked ``nvidia-pytriton`` wheel, laid out as tritonserver expects."""

    root: Path

    @property
    def server_dir(self) -> Path:
        return self.root / "pytriton" / "tritonserver"

    @property
    def binary(self) -> Path:
        """The ``tritonserver`` executable."""
        return self.server_dir / "bin" / "tritonserver"

    @property
    def backend_dir(self) -> Path:
        """The value for ``--backend-directory`` (holds ``python/``)."""
        return self.server_dir / "backends"

    @property
    def lib_dir(self) -> Path:
        """Shared libraries the binary was linked against (auditwheel-renamed)."""
        return self.root / "nvidia_pytriton.libs"

    def command(self) -> list[str]:
        """The command line that starts this server, before per-run flags."""
        return [str(self.binary), f"--backend-directory={self.backend_dir}"]

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) made fit to run the binary."""
        env = dict(os.environ if base is None else base)
        for name in _FOREIGN_PYTHON_ENV:
            env.pop(name, None)
        paths = [str(self.lib_dir), *filter(None, env.get("LD_LIBRARY_PATH", "").split(":"))]
        env["LD_LIBRARY_PATH"] = ":".join(paths)
        return env

    def is_complete(self) -> bool:
        return (self.root / _COMPLETE_MARKER).is_file() and self.binary.is_file()


def install_dir(version: str = PYTRITON_VERSION, cache: Path | None = None) -> Path:
    """Where ``version`` of the wheel is (or will be) unpacked."""
    return (cache or cache_root()) / "triton" / version


def ensure_tritonserver(
    version: str = PYTRITON_VERSION, cache: Path | None = None
) -> TritonInstall:
    """Return the installed server, downloading and unpacking it on first use.

    The wheel is unpacked into a temporary directory renamed into place when complete,
    so a half-unpacked tree is never used, and a file lock makes concurrent callers
    (several replicas, parallel tests) wait for the first one instead of racing it.
    """
    install = TritonInstall(install_dir(version, cache))
    if install.is_complete():
        return install
    install.root.parent.mkdir(parents=True, exist_ok=True)
    with (install.root.parent / f"{version}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if install.is_complete():
            return install  # another process finished while we waited
        staging = Path(tempfile.mkdtemp(prefix=f"{version}.tmp-", dir=install.root.parent))
        try:
            wheel = _obtain_wheel(version, staging / "download")
            _unpack(wheel, staging / "tree")
            shutil.rmtree(install.root, ignore_errors=True)  # a tree left incomplete by hand
            (staging / "tree").rename(install.root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return install


def _obtain_wheel(version: str, into: Path) -> Path:
    """The wheel named by ``$MODELFLEET_TRITON_WHEEL``, or one pip downloads into ``into``."""
    given = os.environ.get(WHEEL_ENV)
    if given:
        path = Path(given)
        if not path.is_file():
            raise TritonInstallError(f"{WHEEL_ENV}={given} is not a file")
        return path
    into.mkdir(parents=True)
    spec = f"{PYTRITON_DISTRIBUTION}=={version}"
    command = [*_pip(), "download", "--no-deps", "--only-binary=:all:", "-d", str(into), spec]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise TritonInstallError(
            f"could not download {spec} with `{' '.join(command)}` "
            f"(exit {result.returncode}): {result.stderr.strip()[-2000:]}. "
            f"Download the wheel by other means and set {WHEEL_ENV} to its path."
        )
    return wheels[0]


def _pip() -> list[str]:
    """A pip command line: this interpreter's pip, else the first pip on PATH.

    Any pip will do, since it only downloads a file; the project's environment is
    installed by uv and may have no pip of its own.
    """
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        found = shutil.which(name)
        if found:
            return [found]
    raise TritonInstallError(
        f"no pip found to download {PYTRITON_DISTRIBUTION}; install pip or set {WHEEL_ENV}"
    )


def _unpack(wheel: Path, tree: Path) -> None:
    """Unzip ``wheel`` into ``tree`` and put the Python 3.11 stub where Triton looks."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tree)
    install = TritonInstall(tree)
    stub = install.server_dir / "python_backend_stubs" / STUB_PYTHON_VERSION
    stub = stub / "triton_python_backend_stub"
    if not install.binary.is_file() or not stub.is_file():
        raise TritonInstallError(
            f"{wheel.name} lacks bin/tritonserver or the Python {STUB_PYTHON_VERSION} stub"
        )
    shutil.copy2(stub, install.backend_dir / "python" / stub.name)
    # Zip archives do not keep the executable bit.
    for path in (install.binary, install.backend_dir / "python" / stub.name):
        path.chmod(0o755)
    (tree / _COMPLETE_MARKER).write_text(f"{wheel.name}\n")


def main() -> None:
    """Install the server if needed and print the binary's path."""
    print(ensure_tritonserver().binary)


if __name__ == "__main__":
    main()
