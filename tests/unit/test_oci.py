"""The OCI writer (images/oci.py): what an archive holds, its digests, and determinism.

Every image the project ships and every test image of the node cluster is written by
it, and containerd, registries and `crane` trust its digests, so each digest is
recomputed here from the bytes it names.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from images import oci

NAME = "modelfleet.test/unit/web:1.2"


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {
            m.name: (tar.extractfile(m).read() if m.isfile() else b"")  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


def _blob(members: dict[str, bytes], digest: str) -> bytes:
    data = members[f"blobs/sha256/{digest.removeprefix('sha256:')}"]
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest, "a blob is not its digest"
    return data


def _layer(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def _write(path: Path, source: Path) -> oci.Image:
    return oci.write_image(
        path,
        NAME,
        [
            [
                oci.File("/bin/web", b"#!/bin/sh\necho hi\n", 0o755),
                ("/etc/web.conf", source / "web.conf", 0o600),
                oci.Directory("/data", 0o700, 65532, 65532),
                oci.Symlink("/usr/bin/web", "/bin/web"),
            ],
            oci.Tree(source, at="/srv", exclude=("skip*",)),
        ],
        entrypoint=["/bin/web"],
        cmd=["serve"],
        env={"PORT": "8080"},
        user="65532:65532",
        workdir="/srv",
        exposed_ports=["8080/tcp"],
        labels={"org.opencontainers.image.title": "web"},
    )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "web.conf").write_text("port = 8080\n")
    (tree / "sub" / "a.txt").write_text("a\n")
    os.link(tree / "sub" / "a.txt", tree / "sub" / "b.txt")
    (tree / "skip.me").write_text("left out\n")
    (tree / "link").symlink_to("sub/a.txt")
    return tree


def test_archive_layout_index_and_digests(tmp_path: Path, source: Path) -> None:
    image = _write(tmp_path / "web.tar", source)
    members = _members(tmp_path / "web.tar")

    assert json.loads(members["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(members["index.json"])
    assert index["mediaType"] == oci.MEDIA_TYPE_INDEX
    [entry] = index["manifests"]
    # ctr images import names the image after this annotation; other tools read the tag.
    assert entry["annotations"] == {
        "io.containerd.image.name": NAME,
        "org.opencontainers.image.ref.name": "1.2",
    }
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    assert entry["digest"] == image.digest
    manifest_bytes = _blob(members, entry["digest"])
    assert entry["size"] == len(manifest_bytes)

    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == oci.MEDIA_TYPE_MANIFEST
    config = json.loads(_blob(members, manifest["config"]["digest"]))
    layer_digests = [layer["digest"] for layer in manifest["layers"]]
    for layer in manifest["layers"]:
        assert layer["mediaType"] == oci.MEDIA_TYPE_LAYER
        assert layer["size"] == len(_blob(members, layer["digest"]))
    # Uncompressed layers: the diff IDs are the layers' own digests.
    assert config["rootfs"] == {"type": "layers", "diff_ids": layer_digests}
    assert config["config"] == {
        "Entrypoint": ["/bin/web"],
        "Cmd": ["serve"],
        "Env": ["PORT=8080", f"PATH={oci.DEFAULT_PATH}"],
        "User": "65532:65532",
        "WorkingDir": "/srv",
        "ExposedPorts": {"8080/tcp": {}},
        "Labels": {"org.opencontainers.image.title": "web"},
    }
    assert config["created"] == oci.FIXED_CREATED
    assert len(config["history"]) == len(layer_digests)
    assert image.size == sum(len(_blob(members, d)) for d in [image.digest, *layer_digests]) + len(
        _blob(members, manifest["config"]["digest"])
    )


def test_layers_hold_entries_with_parents_owners_links_and_fixed_times(
    tmp_path: Path, source: Path
) -> None:
    image = _write(tmp_path / "web.tar", source)
    members = _members(tmp_path / "web.tar")
    entries, tree = (_layer(_blob(members, layer.digest)) for layer in image.layers)

    assert list(entries) == [
        "bin", "bin/web", "data", "etc", "etc/web.conf", "usr", "usr/bin", "usr/bin/web",
    ]  # fmt: skip
    assert entries["bin"].isdir() and entries["bin"].mode == 0o755
    assert entries["bin/web"].mode == 0o755 and entries["etc/web.conf"].mode == 0o600
    assert (entries["data"].uid, entries["data"].gid, entries["data"].mode) == (65532, 65532, 0o700)
    assert entries["usr/bin/web"].issym() and entries["usr/bin/web"].linkname == "/bin/web"

    assert "srv/skip.me" not in tree, "excluded by pattern"
    assert tree["srv"].isdir()
    assert tree["srv/link"].issym() and tree["srv/link"].linkname == "sub/a.txt"
    # A hard link stays one: the second name points at the first.
    assert tree["srv/sub/b.txt"].islnk() and tree["srv/sub/b.txt"].linkname == "srv/sub/a.txt"
    for info in [*entries.values(), *tree.values()]:
        assert info.mtime == oci.FIXED_MTIME
        assert info.uname == info.gname == ""
        assert not info.pax_headers, f"{info.name} carries PAX headers (access times?)"


def test_the_same_inputs_give_the_same_bytes(tmp_path: Path, source: Path) -> None:
    first = _write(tmp_path / "one.tar", source)
    # Other times on disk must not matter: only the fixed one is recorded.
    os.utime(source / "sub" / "a.txt", (1, 1))
    second = _write(tmp_path / "two.tar", source)
    assert first.digest == second.digest
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()


def test_store_shares_blobs_and_streams_an_archive(tmp_path: Path, source: Path) -> None:
    store = oci.Store(tmp_path / "store")
    base = store.add_layer(oci.Tree(source))
    again = store.add_layer(oci.Tree(source))
    assert again == base and store.has(base)
    app = store.add_layer([oci.File("/app", b"app")])
    config = oci.ImageConfig(entrypoint=["/app"])
    one = store.add_image("modelfleet.test/unit/one:1", [base, app], config)
    two = store.add_image("modelfleet.test/unit/two:1", [base], config, history=["base"])
    blobs = sorted((tmp_path / "store" / "blobs" / "sha256").iterdir())
    # Two layers, two configs, two manifests: the shared layer is stored once.
    assert len(blobs) == 6
    assert store.image(one.name, one.manifest) == one
    assert store.complete(two)

    class Pipe(io.RawIOBase):
        """A non-seekable sink, like the stdin of ctr images import."""

        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            self.data += bytes(b)
            return len(b)

    pipe = Pipe()
    store.write_archive(one, pipe, name="registry.test:5000/unit/one:2")  # type: ignore[arg-type]
    with tarfile.open(fileobj=io.BytesIO(bytes(pipe.data))) as tar:
        names = tar.getnames()
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    assert names[:4] == ["oci-layout", "index.json", "blobs", "blobs/sha256"]
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == (
        "registry.test:5000/unit/one:2"
    )
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "2"
    assert len(names) == 4 + 4  # manifest, config and both layers


def test_a_name_needs_a_tag_and_a_layer_needs_its_blob(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a tag"):
        oci.write_image(tmp_path / "x.tar", "modelfleet.test/untagged", [[]])
    with pytest.raises(ValueError, match="needs a tag"):
        oci.tag_of("registry.test:5000/repo")
    assert oci.tag_of("registry.test:5000/repo:v1") == "v1"
    store = oci.Store(tmp_path / "store")
    missing = oci.Descriptor(oci.MEDIA_TYPE_LAYER, "sha256:" + "0" * 64, 10)
    with pytest.raises(ValueError, match="not in the store"):
        store.add_image("modelfleet.test/x:1", [missing], oci.ImageConfig())
    with pytest.raises(ValueError, match="twice"):
        oci.write_image(tmp_path / "y.tar", "modelfleet.test/y:1", [[("/a", b"1", 0o644)] * 2])
