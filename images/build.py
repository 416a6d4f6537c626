"""Build modelfleet's container images from :mod:`images.recipe`, caching every layer.

``python -m images.build [IMAGE...]`` (``make images``) builds them; see
:mod:`images.cli` for its options and docs/images.md for the whole story.

Every layer is cached outside the repository, in
``${MODELFLEET_CACHE:-~/.cache}/modelfleet/images/``, under a key that hashes what goes
into it: the base under the Debian suite, sources, packages and users; deps under the
requirements file, the base and uv's version; app under the wheel's contents and the
base; all three under the code of ``images/recipe.py`` and ``images/oci.py`` (the
recipe's source; comments, docstrings and formatting do not count, and neither does
this module, which only caches). A layer is rebuilt only when its key changes, so
changing modelfleet's code rebuilds only the small app layer, and the images are then
assembled from the cached layers in a moment.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from images import oci, recipe
from images.recipe import (
    DEFAULT_RECIPES,
    RECIPES,
    REQUIREMENTS,
    ROOT,
    VENV,
    VERSION,
    BuildError,
    Recipe,
)

__all__ = [
    "DEFAULT_RECIPES",
    "RECIPES",
    "VENV",
    "VERSION",
    "BuildError",
    "Builder",
    "Built",
    "Recipe",
    "cache_dir",
    "recipe_digest",
]

log = logging.getLogger(__name__)

# The files whose code is the recipe: a change to what either does rebuilds every layer.
RECIPE_FILES = (Path(recipe.__file__).resolve(), Path(oci.__file__).resolve())


def cache_dir() -> Path:
    """``${MODELFLEET_CACHE:-${XDG_CACHE_HOME:-~/.cache}}/modelfleet/images``."""
    base = os.environ.get("MODELFLEET_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "modelfleet" / "images"


def recipe_digest(paths: Sequence[Path] = RECIPE_FILES) -> str:
    """A digest of the recipe's code: its syntax trees, without docstrings.

    Editing a comment, a docstring or the layout of the recipe's files rebuilds nothing;
    any change to what the code does rebuilds every layer.
    """
    digest = hashlib.sha256()
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (
                isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
        digest.update(ast.dump(tree).encode() + b"\0")
    return digest.hexdigest()


@dataclass
class Built:
    """One built image: where it is, and what the build did."""

    recipe: Recipe
    image: oci.Image
    store: oci.Store
    seconds: float
    # Per layer (base, deps, app): True when it came from the cache.
    reused: dict[str, bool]
    layer_seconds: dict[str, float]

    @property
    def cached(self) -> bool:
        """Whether every layer came from the cache."""
        return all(self.reused.values())


class Builder:
    """Builds images from :data:`RECIPES` into the cache at ``cache`` (default: :func:`cache_dir`).

    One builder builds one wheel, shared by every image it builds. Builds are serialised
    across processes by a file lock in the cache.
    """

    def __init__(self, cache: Path | None = None) -> None:
        """Open the cache (creating it); nothing is built yet."""
        self.cache = cache or cache_dir()
        self.store = oci.Store(self.cache / "store")
        (self.cache / "layers").mkdir(parents=True, exist_ok=True)
        (self.cache / "refs").mkdir(exist_ok=True)
        self._work = self.cache / "work"
        self._work.mkdir(exist_ok=True)
        self._wheel: tuple[Path, str] | None = None
        self._recipe_digest = recipe_digest()
        self._uv_version: str | None = None

    # ----------------------------------------------------------------------- images

    def build(self, image_recipe: Recipe) -> Built:
        """Build ``image_recipe`` (reusing every cached layer); record it as the latest."""
        started = time.monotonic()
        reused: dict[str, bool] = {}
        seconds: dict[str, float] = {}
        layers: list[oci.Descriptor] = []

        def step(kind: str, make: Callable[[], tuple[oci.Descriptor, bool]]) -> None:
            step_started = time.monotonic()
            descriptor, reused[kind] = make()
            seconds[kind] = time.monotonic() - step_started
            layers.append(descriptor)

        with self._locked():
            step("base", lambda: self._base(image_recipe))
            step("deps", lambda: self._deps(image_recipe, layers[0]))
            step("app", lambda: self._app(layers[0]))
            image = self.store.add_image(
                image_recipe.name,
                layers,
                image_recipe.config,
                history=image_recipe.history(self.wheel()[0].name),
            )
            ref = {"name": image.name, "manifest": image.manifest.to_json()}
            _write_json(self.cache / "refs" / f"{image_recipe.key}.json", ref)
        elapsed = time.monotonic() - started
        log.info(
            "%s: %s, %.1f MB, %.1f s (%s)",
            image_recipe.key,
            image.name,
            image.size / 1e6,
            elapsed,
            ", ".join(f"{k} {'cached' if reused[k] else f'{seconds[k]:.0f} s'}" for k in reused),
        )
        return Built(image_recipe, image, self.store, elapsed, reused, seconds)

    def latest(self, key: str) -> oci.Image | None:
        """The image last built from the recipe ``key`` into this cache, if complete."""
        path = self.cache / "refs" / f"{key}.json"
        if not path.is_file():
            return None
        ref = json.loads(path.read_text())
        image = self.store.image(ref["name"], oci.Descriptor.from_json(ref["manifest"]))
        return image if self.store.complete(image) else None

    def prune(self) -> int:
        """Delete the blobs no latest image uses, and the layer records of deleted blobs.

        Returns the bytes freed. Layers of recipes never built into this cache count as
        unused.
        """
        with self._locked():
            keep: set[str] = set()
            for key in RECIPES:
                image = self.latest(key)
                if image is not None:
                    keep |= {d.digest for d in (image.manifest, image.config, *image.layers)}
            freed = 0
            for blob in (self.store.root / "blobs" / "sha256").iterdir():
                if f"sha256:{blob.name}" not in keep:
                    freed += blob.stat().st_size
                    blob.unlink()
            for record in (self.cache / "layers").glob("*.json"):
                descriptor = oci.Descriptor.from_json(json.loads(record.read_text()))
                if not self.store.has(descriptor):
                    record.unlink()
        return freed

    def wheel(self) -> tuple[Path, str]:
        """modelfleet's wheel, built once per builder, and a digest of its contents."""
        if self._wheel is None:
            out = self._work / "wheel"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            recipe.uv("build", "--quiet", "--wheel", "--out-dir", str(out), str(ROOT))
            wheels = sorted(out.glob("*.whl"))
            if len(wheels) != 1:
                raise BuildError(f"uv build wrote {wheels or 'no wheel'} into {out}")
            self._wheel = (wheels[0], _wheel_digest(wheels[0]))
        return self._wheel

    # ----------------------------------------------------------------------- layers

    def _base(self, image_recipe: Recipe) -> tuple[oci.Descriptor, bool]:
        base = image_recipe.base
        key = self._key("base", **base.inputs())
        cached = self._cached_layer(key)
        if cached is not None:
            return cached, True
        with self._scratch("base-") as scratch:
            log.info("base: mmdebstrap + %s (about a minute)", ",".join(base.packages))
            return self._save_layer(key, recipe.make_base(base, scratch / "rootfs")), False

    def _deps(self, image_recipe: Recipe, base: oci.Descriptor) -> tuple[oci.Descriptor, bool]:
        requirements = REQUIREMENTS / image_recipe.requirements
        key = self._key(
            "deps",
            base=base.digest,
            requirements=hashlib.sha256(requirements.read_bytes()).hexdigest(),
            uv=self._uv(),
        )
        cached = self._cached_layer(key)
        if cached is not None:
            return cached, True
        with self._scratch("deps-") as scratch, self._rootfs(base) as rootfs:
            log.info("deps: uv pip sync requirements/%s", image_recipe.requirements)
            spec = recipe.make_deps(requirements, rootfs, scratch / "layer")
            return self._save_layer(key, spec), False

    def _app(self, base: oci.Descriptor) -> tuple[oci.Descriptor, bool]:
        wheel, wheel_digest = self.wheel()
        key = self._key("app", base=base.digest, wheel=wheel_digest, uv=self._uv())
        cached = self._cached_layer(key)
        if cached is not None:
            return cached, True
        with self._scratch("app-") as scratch, self._rootfs(base) as rootfs:
            return self._save_layer(key, recipe.make_app(wheel, rootfs, scratch / "layer")), False

    # ---------------------------------------------------------------------- helpers

    def _key(self, kind: str, **inputs: object) -> str:
        text = json.dumps({"kind": kind, "recipe": self._recipe_digest, **inputs}, sort_keys=True)
        return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"

    def _uv(self) -> str:
        if self._uv_version is None:
            self._uv_version = subprocess.run(
                [recipe.tool("uv", "uv"), "--version"], capture_output=True, text=True, check=True
            ).stdout.strip()
        return self._uv_version

    def _cached_layer(self, key: str) -> oci.Descriptor | None:
        record = self.cache / "layers" / f"{key}.json"
        if not record.is_file():
            return None
        descriptor = oci.Descriptor.from_json(json.loads(record.read_text()))
        return descriptor if self.store.has(descriptor) else None

    def _save_layer(self, key: str, spec: oci.LayerSpec) -> oci.Descriptor:
        started = time.monotonic()
        descriptor = self.store.add_layer(spec)
        log.info(
            "%s: layer %s, %.1f MB written in %.1f s",
            key,
            descriptor.digest[:19],
            descriptor.size / 1e6,
            time.monotonic() - started,
        )
        _write_json(self.cache / "layers" / f"{key}.json", descriptor.to_json())
        return descriptor

    @contextlib.contextmanager
    def _scratch(self, prefix: str) -> Iterator[Path]:
        # In the cache, on the same filesystem as uv's cache (usually), so that uv can
        # hard-link the installed files instead of copying gigabytes.
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=self._work))
        try:
            yield path
        finally:
            # An interrupted mmdebstrap may leave /proc, /sys and /dev mounted in its
            # root filesystem; removing files through those must never be tried.
            _unmount_under(path)
            shutil.rmtree(path, ignore_errors=True)

    @contextlib.contextmanager
    def _rootfs(self, base: oci.Descriptor) -> Iterator[Path]:
        """The base layer unpacked, for its Python interpreter."""
        with self._scratch("rootfs-") as rootfs:
            tar = recipe.tool("tar", "GNU tar")
            command = [tar, "-x", "-f", str(self.store.blob(base.digest)), "-C", str(rootfs)]
            recipe.run(command, "tar")
            yield rootfs

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.cache / "build.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def _unmount_under(path: Path) -> None:
    """Detach every mount at or below ``path``, deepest first."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Field 5 is the mount point, with spaces and the like as octal escapes.
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split(" ")[4])
        if point == str(path) or point.startswith(f"{path}/"):
            points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


def _wheel_digest(wheel: Path) -> str:
    """A digest of the wheel's member names and contents (not of its zip metadata)."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as archive:
        for member in sorted(archive.namelist()):
            digest.update(member.encode() + b"\0")
            digest.update(hashlib.sha256(archive.read(member)).digest())
    return digest.hexdigest()


def _write_json(path: Path, data: object) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


if __name__ == "__main__":
    from images.cli import main

    sys.exit(main())
