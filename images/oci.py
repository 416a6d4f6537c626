"""Write container images in the OCI image format, without Docker or a registry.

Two ways to keep what is written:

- :func:`write_image` writes one image as an archive: a tar file holding an OCI image
  layout (``oci-layout``, ``index.json`` and ``blobs/sha256/...``). ``ctr images
  import``, ``skopeo copy oci-archive:``, ``crane push`` and ``docker load`` read it.
- :class:`Store` is an OCI image layout directory used as a content-addressed blob
  store: layers are written into it once, images are made of layers already there, and
  :meth:`Store.write_archive` streams any one image as an archive (into a file, or
  straight into ``ctr images import -``) without copying its blobs first.

The index entry of an archive carries the ``io.containerd.image.name`` annotation (the
full name, so ``ctr images import`` stores the image under it) and the
``org.opencontainers.image.ref.name`` annotation (the tag) that other OCI tools read.

Layers are uncompressed tar files, so a layer's digest is also its diff ID, and every
entry gets the same modification time, so the same inputs give the same digests. A
layer is streamed to its file while it is hashed, never held in memory, so a root
filesystem of gigabytes can be packed too.

Example::

    write_image(
        Path("web.tar"),
        "modelfleet.test/web:1",
        layers=[[File("/bin/web", Path("build/web"), 0o755)]],
        entrypoint=["/bin/web"],
        env={"PORT": "8080"},
        user="65532:65532",
    )
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import os
import posixpath
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

# 2000-01-01T00:00:00Z: every entry and the config's `created` get this time, so that
# building the same image twice gives the same digests.
FIXED_MTIME = 946684800
FIXED_CREATED = "2000-01-01T00:00:00Z"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Blobs are copied in pieces of this size: large enough that a layer of gigabytes is
# not copied in millions of small writes, small enough to never matter for memory.
_COPY_BUFFER = 1 << 20


@dataclass(frozen=True)
class File:
    """One regular file of a layer.

    ``path`` is the absolute path inside the image; ``content`` is the data itself or a
    file on this machine to copy (read when the layer is written). Parent directories
    are added to the layer as needed, owned by root with mode 0755.
    """

    path: str
    content: bytes | Path
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Directory:
    """An (empty) directory of a layer, for a mode or owner other than the default."""

    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Symlink:
    """A symbolic link of a layer: ``path`` points to ``target``."""

    path: str
    target: str


@dataclass(frozen=True)
class Tree:
    """A directory on this machine whose contents form a layer, rooted at ``at``.

    Owners, modes, symbolic links, hard links and device nodes are kept as they are on
    disk (so a root filesystem made as root keeps its owners); only modification times
    are replaced by the fixed one. ``exclude`` holds shell patterns matched against
    each entry's path relative to ``source`` (``dev/*`` leaves out what is in ``dev``
    but keeps the directory); an excluded directory is left out with all it holds.
    """

    source: Path
    at: str = "/"
    exclude: tuple[str, ...] = ()


Entry = File | Directory | Symlink
# A layer is a list of entries, a list of (path, content, mode) tuples, or a Tree.
LayerSpec = Tree | Sequence[Entry | tuple[str, bytes | Path, int]]


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a blob is, its digest and its size."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The descriptor as it appears in a manifest or an index."""
        data: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            data["annotations"] = dict(self.annotations)
        return data

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Descriptor:
        """The descriptor of a manifest's or an index's JSON."""
        return Descriptor(
            data["mediaType"], data["digest"], int(data["size"]), data.get("annotations", {})
        )


@dataclass(frozen=True)
class ImageConfig:
    """What a container starts with: the runtime part of an image's config."""

    entrypoint: Sequence[str] | None = None
    cmd: Sequence[str] | None = None
    env: Mapping[str, str] | None = None
    user: str | None = None
    workdir: str | None = None
    exposed_ports: Iterable[str] = ()
    labels: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``config`` object of an OCI image config; a PATH is added when missing."""
        environment = dict(self.env or {})
        # Container runtimes expect a PATH; a process started without one finds nothing.
        environment.setdefault("PATH", DEFAULT_PATH)
        data: dict[str, Any] = {"Env": [f"{k}={v}" for k, v in environment.items()]}
        if self.entrypoint is not None:
            data["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            data["Cmd"] = list(self.cmd)
        if self.user is not None:
            data["User"] = self.user
        if self.workdir is not None:
            data["WorkingDir"] = self.workdir
        ports = sorted(self.exposed_ports)
        if ports:
            data["ExposedPorts"] = {port: {} for port in ports}
        if self.labels:
            data["Labels"] = dict(self.labels)
        return data


@dataclass(frozen=True)
class Image:
    """An image written here: its name, manifest, config and layer descriptors.

    ``archive`` is the archive :func:`write_image` wrote; ``None`` for an image that
    lives in a :class:`Store` only.
    """

    name: str
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    archive: Path | None = None

    @property
    def digest(self) -> str:
        """The manifest digest, by which a runtime identifies the image."""
        return self.manifest.digest

    @property
    def size(self) -> int:
        """The bytes of all its blobs: layers, config and manifest."""
        return sum(d.size for d in (self.manifest, self.config, *self.layers))


def write_image(
    archive: Path,
    name: str,
    layers: Sequence[LayerSpec],
    *,
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    workdir: str | None = None,
    exposed_ports: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
    architecture: str = "amd64",
    os_name: str = "linux",
) -> Image:
    """Write the image ``name`` (``registry/repository:tag``) as an OCI archive.

    ``layers`` are applied bottom first. ``env`` becomes the image's ``KEY=value``
    environment; a PATH is added when it lacks one, as container runtimes expect.
    ``exposed_ports`` are strings like ``"8080/tcp"``. The archive is written to a
    temporary name and renamed into place, so a reader never sees half of it.
    """
    tag_of(name)  # refuse a name without a tag before any work
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".oci-", dir=archive.parent) as scratch:
        store = Store(Path(scratch) / "layout")
        descriptors = [store.add_layer(spec) for spec in layers]
        config = ImageConfig(entrypoint, cmd, env, user, workdir, exposed_ports, labels)
        image = store.add_image(
            name, descriptors, config, architecture=architecture, os_name=os_name
        )
        store.save_archive(image, archive)
    return Image(image.name, image.manifest, image.config, image.layers, archive)


class Store:
    """An OCI image layout directory that holds the blobs of many images.

    Blobs are files named by their digest under ``blobs/sha256/``; a blob is written
    under a temporary name in the same directory and renamed into place, so a reader
    (or a concurrent writer of the same blob) never sees half of one. The layout's own
    ``index.json`` stays empty: which images exist is for the caller to remember
    (:meth:`image` reads one back from its manifest digest).
    """

    def __init__(self, root: Path) -> None:
        """Open (creating if needed) the layout at ``root``."""
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)
        layout = root / "oci-layout"
        if not layout.exists():
            _write_atomically(layout, _canonical_json({"imageLayoutVersion": "1.0.0"}))
        index = root / "index.json"
        if not index.exists():
            _write_atomically(
                index,
                _canonical_json(
                    {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": []}
                ),
            )

    def blob(self, digest: str) -> Path:
        """The file of the blob ``digest`` (which may not exist)."""
        algorithm, hex_digest = digest.split(":", 1)
        if algorithm != "sha256" or len(hex_digest) != 64:
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / "blobs" / algorithm / hex_digest

    def has(self, descriptor: Descriptor) -> bool:
        """Whether the blob is here, whole (its size is checked, not its digest)."""
        try:
            return self.blob(descriptor.digest).stat().st_size == descriptor.size
        except FileNotFoundError:
            return False

    def add_layer(self, spec: LayerSpec) -> Descriptor:
        """Write the layer ``spec`` into the store; return its descriptor."""
        with self._scratch_file() as scratch:
            descriptor = write_layer(scratch, spec)
            self._adopt(scratch, descriptor.digest)
        return descriptor

    def add_bytes(
        self, media_type: str, data: bytes, annotations: Mapping[str, str] | None = None
    ) -> Descriptor:
        """Store ``data`` as a blob; return its descriptor."""
        descriptor = _descriptor(media_type, data, annotations)
        if not self.has(descriptor):
            with self._scratch_file() as scratch:
                scratch.write_bytes(data)
                self._adopt(scratch, descriptor.digest)
        return descriptor

    def add_image(
        self,
        name: str,
        layers: Sequence[Descriptor],
        config: ImageConfig,
        *,
        history: Sequence[str] | None = None,
        architecture: str = "amd64",
        os_name: str = "linux",
    ) -> Image:
        """Write the config and manifest of an image made of ``layers`` (already here).

        ``history`` says, one line per layer, what made each layer (``crane config``
        and ``docker history`` show it).
        """
        tag_of(name)
        missing = [layer.digest for layer in layers if not self.has(layer)]
        if missing:
            raise ValueError(f"layers not in the store: {', '.join(missing)}")
        comments = list(history or ["modelfleet images/oci.py"] * len(layers))
        if len(comments) != len(layers):
            raise ValueError("history needs one line per layer")
        config_json = _canonical_json(
            {
                "created": FIXED_CREATED,
                "architecture": architecture,
                "os": os_name,
                "config": config.to_json(),
                "rootfs": {
                    "type": "layers",
                    # Uncompressed layers: the diff ID is the layer's own digest.
                    "diff_ids": [layer.digest for layer in layers],
                },
                "history": [
                    {"created": FIXED_CREATED, "created_by": comment} for comment in comments
                ],
            }
        )
        config_descriptor = self.add_bytes(MEDIA_TYPE_CONFIG, config_json)
        manifest_json = _canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_MANIFEST,
                "config": config_descriptor.to_json(),
                "layers": [layer.to_json() for layer in layers],
            }
        )
        manifest = self.add_bytes(MEDIA_TYPE_MANIFEST, manifest_json)
        return Image(name, manifest, config_descriptor, tuple(layers))

    def image(self, name: str, manifest: Descriptor) -> Image:
        """The image whose manifest is ``manifest``, as :meth:`add_image` returned it."""
        data = json.loads(self.blob(manifest.digest).read_bytes())
        return Image(
            name,
            manifest,
            Descriptor.from_json(data["config"]),
            tuple(Descriptor.from_json(layer) for layer in data["layers"]),
        )

    def complete(self, image: Image) -> bool:
        """Whether every blob of ``image`` is in the store."""
        return all(self.has(d) for d in (image.manifest, image.config, *image.layers))

    def write_archive(self, image: Image, out: IO[bytes], name: str | None = None) -> None:
        """Stream ``image`` as an OCI archive into ``out`` (a file or a pipe).

        ``name`` (default: the image's own) is the full name the archive gives it, in
        the ``io.containerd.image.name`` annotation. Blobs are copied from the store in
        pieces, so an image of gigabytes passes through without being held in memory.
        """
        name = name or image.name
        index_entry = Descriptor(
            MEDIA_TYPE_MANIFEST,
            image.manifest.digest,
            image.manifest.size,
            {ANNOTATION_CONTAINERD_NAME: name, ANNOTATION_REF_NAME: tag_of(name)},
        ).to_json()
        config = json.loads(self.blob(image.config.digest).read_bytes())
        index_entry["platform"] = {"architecture": config["architecture"], "os": config["os"]}
        index_json = _canonical_json(
            {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [index_entry]}
        )
        # copybufsize is a TarFile argument that open() passes on; typeshed lacks it.
        with tarfile.open(  # type: ignore[call-overload]
            fileobj=out,
            mode="w|",
            format=tarfile.PAX_FORMAT,
            bufsize=_COPY_BUFFER,
            copybufsize=_COPY_BUFFER,
        ) as tar:
            _add_bytes(tar, "oci-layout", _canonical_json({"imageLayoutVersion": "1.0.0"}))
            _add_bytes(tar, "index.json", index_json)
            _add_directory(tar, "blobs")
            _add_directory(tar, "blobs/sha256")
            seen = set()
            # The small blobs first, so a reader meets the manifest before the layers.
            for descriptor in (image.manifest, image.config, *image.layers):
                if descriptor.digest in seen:
                    continue  # two identical layers are stored once
                seen.add(descriptor.digest)
                info = _tar_info(_blob_name(descriptor.digest), tarfile.REGTYPE, 0o644)
                info.size = descriptor.size
                with self.blob(descriptor.digest).open("rb") as data:
                    tar.addfile(info, data)

    def save_archive(self, image: Image, archive: Path, name: str | None = None) -> Path:
        """Write ``image`` as an OCI archive file (renamed into place when complete)."""
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_name(f".{archive.name}.partial-{os.getpid()}")
        try:
            with partial.open("wb") as out:
                self.write_archive(image, out, name)
            os.replace(partial, archive)
        finally:
            partial.unlink(missing_ok=True)
        return archive

    @contextlib.contextmanager
    def _scratch_file(self) -> Iterator[Path]:
        handle, name = tempfile.mkstemp(prefix="blob-", dir=self.root / "tmp")
        os.close(handle)
        path = Path(name)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def _adopt(self, scratch: Path, digest: str) -> None:
        """Move a finished blob into place (a blob already there is left as it is)."""
        target = self.blob(digest)
        if target.exists():
            return
        scratch.chmod(0o644)
        os.replace(scratch, target)


def tag_of(name: str) -> str:
    """The tag of ``registry/repository:tag``; a name without a tag is refused."""
    last = name.rsplit("/", 1)[-1]
    if ":" not in last or "@" in name:
        raise ValueError(f"image name {name!r} needs a tag, as in registry/repository:tag")
    return last.rsplit(":", 1)[1]


def _canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_bytes(data)
    os.replace(partial, path)


def _descriptor(
    media_type: str, data: bytes, annotations: Mapping[str, str] | None = None
) -> Descriptor:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return Descriptor(media_type, digest, len(data), annotations or {})


def _blob_name(digest: str) -> str:
    algorithm, hex_digest = digest.split(":", 1)
    return f"blobs/{algorithm}/{hex_digest}"


def _tar_info(name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = FIXED_MTIME
    return info


def _add_bytes(out: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = _tar_info(name, tarfile.REGTYPE, mode)
    info.size = len(data)
    out.addfile(info, io.BytesIO(data))


def _add_directory(out: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    out.addfile(_tar_info(name, tarfile.DIRTYPE, mode))


class _HashingWriter:
    """A write-only file that passes data on to ``target`` and hashes and counts it."""

    def __init__(self, target: IO[bytes]) -> None:
        self._target = target
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        self._target.write(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def write_layer(path: Path, spec: LayerSpec) -> Descriptor:
    """Write one layer tar to ``path``; return its descriptor."""
    with path.open("wb") as raw:
        writer = _HashingWriter(raw)
        # Stream mode ("w|") only ever calls write(), which is all the writer offers.
        with tarfile.open(  # type: ignore[call-overload]
            fileobj=writer,
            mode="w|",
            format=tarfile.PAX_FORMAT,
            bufsize=_COPY_BUFFER,
            copybufsize=_COPY_BUFFER,
        ) as out:
            if isinstance(spec, Tree):
                _add_tree(out, spec)
            else:
                _add_entries(out, [_entry(item) for item in spec])
    return Descriptor(MEDIA_TYPE_LAYER, writer.digest, writer.size)


def _entry(item: Entry | tuple[str, bytes | Path, int]) -> Entry:
    if isinstance(item, tuple):
        path, content, mode = item
        return File(path, content, mode)
    return item


def _layer_path(path: str) -> str:
    """``/usr/bin/x`` → ``usr/bin/x``: layer entries are relative to the root."""
    normal = posixpath.normpath("/" + path).lstrip("/")
    if not normal:
        raise ValueError(f"{path!r} names the root directory, not an entry")
    return normal


def _add_entries(out: tarfile.TarFile, entries: Sequence[Entry]) -> None:
    """Add ``entries`` in path order, each preceded by its missing parent directories."""
    explicit = {_layer_path(entry.path) for entry in entries if isinstance(entry, Directory)}
    written: set[str] = set()
    for entry in sorted(entries, key=lambda entry: _layer_path(entry.path)):
        name = _layer_path(entry.path)
        if name in written:
            raise ValueError(f"{entry.path!r} appears twice in one layer")
        parent = posixpath.dirname(name)
        missing = []
        while parent and parent not in written:
            missing.append(parent)
            parent = posixpath.dirname(parent)
        for directory in reversed(missing):
            if directory not in explicit:
                _add_directory(out, directory)
                written.add(directory)
        written.add(name)
        if isinstance(entry, Directory):
            out.addfile(_tar_info(name, tarfile.DIRTYPE, entry.mode, entry.uid, entry.gid))
        elif isinstance(entry, Symlink):
            info = _tar_info(name, tarfile.SYMTYPE, 0o777)
            info.linkname = entry.target
            out.addfile(info)
        elif isinstance(entry.content, bytes):
            info = _tar_info(name, tarfile.REGTYPE, entry.mode, entry.uid, entry.gid)
            info.size = len(entry.content)
            out.addfile(info, io.BytesIO(entry.content))
        else:
            info = _tar_info(name, tarfile.REGTYPE, entry.mode, entry.uid, entry.gid)
            info.size = entry.content.stat().st_size
            with entry.content.open("rb") as data:
                out.addfile(info, data)


def _add_tree(out: tarfile.TarFile, tree: Tree) -> None:
    """Add the contents of ``tree.source`` (not the directory itself) under ``tree.at``."""
    if not tree.source.is_dir():
        raise ValueError(f"{tree.source} is not a directory")
    base = posixpath.normpath("/" + tree.at).lstrip("/")
    if base:
        # The directories leading to `at`, so the layer is complete on its own.
        parts = base.split("/")
        for depth in range(1, len(parts) + 1):
            _add_directory(out, "/".join(parts[:depth]))

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        relative = info.name[len(base) :].lstrip("/") if base else info.name
        if any(fnmatch.fnmatchcase(relative, pattern) for pattern in tree.exclude):
            return None
        info.mtime = FIXED_MTIME
        info.uname = info.gname = ""
        # PAX headers would otherwise carry the files' access and change times.
        info.pax_headers = {}
        return info

    # tarfile.add walks directories in sorted order and records hard links as such.
    for child in sorted(os.listdir(tree.source)):
        arcname = posixpath.join(base, child) if base else child
        out.add(tree.source / child, arcname=arcname, recursive=True, filter=normalise)
