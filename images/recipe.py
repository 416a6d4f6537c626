"""The recipe of modelfleet's container images: what goes into each, and how each layer is made.

Each image is three layers, written by :mod:`images.oci` (no Docker, no registry):

1. **base** (:func:`make_base`): a Debian root filesystem made by ``mmdebstrap``
   (``--variant=minbase`` plus the image's packages and its user), from Debian's own
   archive;
2. **deps** (:func:`make_deps`): the locked Python environment, ``uv pip sync`` of a
   file in ``requirements/`` into ``/opt/venv``, with its bytecode compiled;
3. **app** (:func:`make_app`): modelfleet's wheel installed into the same venv.

The images (:data:`RECIPES`):

- ``operator``, ``modelfleet/operator:<version>``: ``modelfleet operator`` and the
  libraries it needs (``requirements/operator.txt``); no Ray, vLLM or torch. User 65532,
  nothing written outside ``/tmp``, so it runs with a read-only root filesystem.
- ``ray-cpu``, ``modelfleet/modelfleet:<version>-cpu``: the Ray head and worker image
  with Ray Serve, vLLM's CPU build and the serving package (``requirements/ray-cpu.txt``),
  plus what KubeRay's pods call (bash, ``ray`` on PATH, wget for its probes). User 1000.
- ``ray-gpu``, ``modelfleet/modelfleet:<version>``: the same with vLLM's CUDA build
  (``requirements/gpu.txt``); the operator's and the chart's default Ray image.

The code of this module and of ``images/oci.py`` is part of every layer's cache key
(:mod:`images.build` caches the layers): changing what it does rebuilds every layer.
Building needs root (mmdebstrap makes the root filesystem as root, and owners must be
right), ``mmdebstrap`` and ``uv``. See docs/images.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from images import oci

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"

SUITE = "bookworm"
# Debian's archive, with the point-release and security updates of the suite.
DEBIAN_SOURCES = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
# Documentation and translations are of no use in a container; the licences stay.
DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
)
# Container runtimes mount their own /dev, /proc and /sys, and /tmp starts empty.
BASE_EXCLUDE = ("dev/*", "proc/*", "sys/*", "tmp/*")
# The image's interpreter: Debian's python3 of the suite, which the venv points at.
IMAGE_PYTHON = "/usr/bin/python3.11"
VENV = "/opt/venv"
IMAGE_PATH = f"{VENV}/bin:{oci.DEFAULT_PATH}"
# Bytecode compiled with this set is hash-checked instead of timestamp-checked, so it
# stays valid although every file in a layer gets the same fixed modification time.
SOURCE_DATE_EPOCH = str(oci.FIXED_MTIME)


class BuildError(RuntimeError):
    """An image could not be built; the message says which step failed and why."""


def project_version() -> str:
    """modelfleet's version, from pyproject.toml: the tag of the images."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        version: str = tomllib.load(f)["project"]["version"]
    return version


VERSION = project_version()


@dataclass(frozen=True)
class User:
    """A user the base layer creates, so the image's numeric user has a name and home."""

    name: str
    uid: int
    gid: int
    home: str
    # The group to create for ``gid``; None when the base already has it (Debian's
    # `users` is 100).
    group: str | None = None
    create_home: bool = True
    shell: str = "/bin/bash"

    def hooks(self) -> list[str]:
        """mmdebstrap ``--customize-hook`` arguments that create the group and user."""
        commands = []
        if self.group is not None:
            commands.append(f'chroot "$1" groupadd --gid {self.gid} {self.group}')
        home = "--create-home" if self.create_home else "--no-create-home"
        commands.append(
            f'chroot "$1" useradd --uid {self.uid} --gid {self.gid} {home} '
            f"--home-dir {self.home} --shell {self.shell} {self.name}"
        )
        return [f"--customize-hook={command}" for command in commands]


@dataclass(frozen=True)
class Base:
    """A Debian root filesystem: minbase plus ``packages``, with ``users``."""

    packages: tuple[str, ...]
    users: tuple[User, ...] = ()

    def inputs(self) -> dict[str, object]:
        """Everything that goes into the base layer, for its cache key."""
        return {
            "suite": SUITE,
            "sources": DEBIAN_SOURCES,
            "dpkg": DPKG_OPTIONS,
            "exclude": BASE_EXCLUDE,
            "packages": sorted(self.packages),
            "users": [user.hooks() for user in self.users],
        }


@dataclass(frozen=True)
class Recipe:
    """One image: its name, base, locked requirements and runtime configuration."""

    key: str
    repository: str
    tag: str
    base: Base
    requirements: str
    config: oci.ImageConfig
    description: str

    @property
    def name(self) -> str:
        """``repository:tag``, the name the chart and the operator use by default."""
        return f"{self.repository}:{self.tag}"

    def history(self, wheel: str) -> list[str]:
        """What made each layer, one line each (``docker history`` shows them)."""
        return [
            f"debian {SUITE} minbase + {' '.join(self.base.packages)} (mmdebstrap)",
            f"uv pip sync requirements/{self.requirements} into {VENV}",
            f"uv pip install {wheel}",
        ]


OPERATOR_USER = User(
    "modelfleet", 65532, 65532, "/tmp", group="modelfleet", create_home=False,
    shell="/usr/sbin/nologin",
)  # fmt: skip
RAY_USER = User("ray", 1000, 100, "/home/ray")

OPERATOR_BASE = Base(packages=("python3", "ca-certificates"), users=(OPERATOR_USER,))
# What KubeRay's pods call (bash for the container command, wget and grep for the
# probes), what vLLM's CPU kernels link (libnuma), and the compiler and headers that
# torch's inductor (CPU) and Triton (GPU) use to build kernels at run time.
RAY_BASE = Base(
    packages=(
        "python3", "python3-dev", "g++", "libnuma1", "wget", "ca-certificates", "procps",
    ),
    users=(RAY_USER,),
)  # fmt: skip

_OCI_LABELS = {
    "org.opencontainers.image.source": "https://github.com/modelfleet/modelfleet",
    "org.opencontainers.image.licenses": "Apache-2.0",
    "org.opencontainers.image.version": VERSION,
}


def _ray_config(flavour: str) -> oci.ImageConfig:
    return oci.ImageConfig(
        cmd=["/bin/bash"],
        env={
            "PATH": IMAGE_PATH,
            "VIRTUAL_ENV": VENV,
            "HOME": RAY_USER.home,
            "PYTHONUNBUFFERED": "1",
        },
        user=f"{RAY_USER.uid}:{RAY_USER.gid}",
        workdir=RAY_USER.home,
        # Ray's GCS, client server, dashboard and Serve's HTTP proxy.
        exposed_ports=["6379/tcp", "10001/tcp", "8265/tcp", "8000/tcp"],
        labels={
            **_OCI_LABELS,
            "org.opencontainers.image.title": f"modelfleet Ray image ({flavour})",
        },
    )


RECIPES: dict[str, Recipe] = {
    recipe.key: recipe
    for recipe in (
        Recipe(
            key="operator",
            repository="modelfleet/operator",
            tag=VERSION,
            base=OPERATOR_BASE,
            requirements="operator.txt",
            config=oci.ImageConfig(
                entrypoint=["modelfleet"],
                cmd=["operator"],
                env={
                    "PATH": IMAGE_PATH,
                    "VIRTUAL_ENV": VENV,
                    # The root filesystem is read-only in the chart; /tmp is an emptyDir.
                    "HOME": "/tmp",
                    "PYTHONUNBUFFERED": "1",
                    # Bytecode is compiled at build time; nothing may be written at run time.
                    "PYTHONDONTWRITEBYTECODE": "1",
                },
                user=f"{OPERATOR_USER.uid}:{OPERATOR_USER.gid}",
                workdir="/tmp",
                # Health, metrics, admission webhook.
                exposed_ports=["8080/tcp", "9090/tcp", "9443/tcp"],
                labels={**_OCI_LABELS, "org.opencontainers.image.title": "modelfleet operator"},
            ),
            description="the operator: modelfleet operator, no Ray, vLLM or torch",
        ),
        Recipe(
            key="ray-cpu",
            repository="modelfleet/modelfleet",
            tag=f"{VERSION}-cpu",
            base=RAY_BASE,
            requirements="ray-cpu.txt",
            config=_ray_config("CPU"),
            description="Ray head and workers: Ray Serve, vLLM (CPU build), modelfleet_serving",
        ),
        Recipe(
            key="ray-gpu",
            repository="modelfleet/modelfleet",
            tag=VERSION,
            base=RAY_BASE,
            requirements="gpu.txt",
            config=_ray_config("GPU"),
            description="Ray head and workers: Ray Serve, vLLM (CUDA build), modelfleet_serving",
        ),
    )
}
DEFAULT_RECIPES = ("operator", "ray-cpu")


# ------------------------------------------------------------------------------ layers


def make_base(base: Base, rootfs: Path) -> oci.Tree:
    """Make the root filesystem of ``base`` at ``rootfs`` (which must not exist yet)."""
    mmdebstrap = tool("mmdebstrap", "the Debian package mmdebstrap")
    command = [
        mmdebstrap,
        "--quiet",
        "--variant=minbase",
        f"--include={','.join(base.packages)}",
        *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
        *(hook for user in base.users for hook in user.hooks()),
        SUITE,
        str(rootfs),
        *DEBIAN_SOURCES,
    ]
    run(command, "mmdebstrap")
    return oci.Tree(rootfs, exclude=BASE_EXCLUDE)


def make_deps(requirements: Path, rootfs: Path, layer: Path) -> oci.Tree:
    """Sync ``requirements`` into a venv at ``layer``/opt/venv on the interpreter of ``rootfs``.

    ``rootfs`` is the base layer unpacked; only its interpreter is used, and the venv
    is pointed at the image's own path for it afterwards.
    """
    venv = _venv(layer, rootfs)
    uv("pip", "sync", "--python", str(venv / "bin" / "python"), str(requirements))
    _compile(rootfs, layer)
    _point_at_image_python(venv)
    return oci.Tree(layer)


def make_app(wheel: Path, rootfs: Path, layer: Path) -> oci.Tree:
    """Install ``wheel`` (no dependencies) into a venv at ``layer``/opt/venv; keep only its files.

    The venv itself belongs to the deps layer, so what ``uv venv`` made is removed
    again and the layer holds the wheel's files alone.
    """
    venv = _venv(layer, rootfs)
    skeleton = [p for p in venv.rglob("*") if not p.is_dir() or p.is_symlink()]
    uv("pip", "install", "--python", str(venv / "bin" / "python"), "--no-deps", str(wheel))
    for path in skeleton:
        path.unlink()
    _drop_build_records(venv)
    _compile(rootfs, layer)
    return oci.Tree(layer)


def _venv(layer: Path, rootfs: Path) -> Path:
    """A relocatable venv at ``layer``/opt/venv on the interpreter of ``rootfs``."""
    venv = layer / VENV.lstrip("/")
    python = rootfs / IMAGE_PYTHON.lstrip("/")
    # --relocatable: console scripts find their interpreter relative to themselves,
    # so they work at /opt/venv although they were installed under another path.
    uv("venv", "--quiet", "--relocatable", "--python", str(python), str(venv))
    return venv


def _compile(rootfs: Path, layer: Path) -> None:
    """Compile the bytecode of every module under ``layer``, as the image will find it.

    With the image's interpreter, hash-checked (valid whatever the files' times), with
    the paths it will have in the image (``-s``/``-p``: never the build directory's),
    and a fixed hash seed (sets among a module's constants are marshalled in hash
    order), so the same sources always give the same bytes. Modules that do not compile
    (templates, test data, another Python's syntax) are skipped, as pip and uv do.
    """
    python = rootfs / IMAGE_PYTHON.lstrip("/")
    command = [
        str(python), "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "checked-hash",
        "-s", str(layer), "-p", "/", str(layer / VENV.lstrip("/")),
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    # 1 means that some module did not compile; anything else is a failure of its own.
    if result.returncode not in (0, 1):
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise BuildError(f"compileall failed (exit {result.returncode}): {tail}")


def _point_at_image_python(venv: Path) -> None:
    """Make the venv use the image's /usr/bin/python3.11 instead of the unpacked base's.

    The files are replaced, not rewritten in place: uv hard-links installed files to its
    cache, and writing through such a link would change the cache too.
    """
    link = venv / "bin" / "python"
    link.unlink()
    link.symlink_to(IMAGE_PYTHON)
    config = venv / "pyvenv.cfg"
    lines = []
    for line in config.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        lines.append(f"home = {Path(IMAGE_PYTHON).parent}" if key == "home" else line)
    config.unlink()
    config.write_text("\n".join(lines) + "\n")


def _drop_build_records(venv: Path) -> None:
    """Remove what an install from a local wheel records about the build machine.

    ``direct_url.json`` names the wheel's path there and ``uv_cache.json`` the time of
    the install; both would make every build of the same wheel differ.
    """
    for dist_info in venv.glob("lib/python*/site-packages/*.dist-info"):
        dropped = [dist_info / name for name in ("direct_url.json", "uv_cache.json")]
        dropped = [path for path in dropped if path.exists()]
        if not dropped:
            continue
        record = dist_info / "RECORD"
        prefixes = tuple(f"{dist_info.name}/{path.name}," for path in dropped)
        kept = [line for line in record.read_text().splitlines() if not line.startswith(prefixes)]
        for path in dropped:
            path.unlink()
        record.unlink()  # a new file, as uv's may be a hard link
        record.write_text("\n".join(kept) + "\n")


# ------------------------------------------------------------------------------- tools


def tool(name: str, what: str) -> str:
    """The full path of ``name``; a :class:`BuildError` saying ``what`` is needed if absent."""
    path = shutil.which(name)
    if path is None:
        raise BuildError(f"`{name}` is not installed; building images needs {what}")
    return path


def uv(*args: str) -> None:
    """Run uv with the settings every image step needs."""
    environment = {
        **os.environ,
        "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH,
        # Sets among a module's constants are marshalled in hash order: a fixed seed
        # makes the compiled bytecode, and so the layer's digest, the same every time.
        "PYTHONHASHSEED": "0",
        # Only the image's interpreter, never one uv would download.
        "UV_PYTHON_DOWNLOADS": "never",
    }
    # A caller's activated venv must not become the target.
    environment.pop("VIRTUAL_ENV", None)
    run([tool("uv", "uv"), *args], "uv", env=environment, cwd=ROOT)


def run(
    command: Sequence[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> None:
    """Run ``command``; a :class:`BuildError` with the end of its output if it fails."""
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise BuildError(f"{what} failed (exit {result.returncode}): {' '.join(command)}\n{tail}")
