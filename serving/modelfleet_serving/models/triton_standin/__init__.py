"""The Triton model repository behind `builtin://tiny-triton-standin`.

A decoupled python-backend model named ``ensemble`` that takes and returns the tensors
of TensorRT-LLM's ensemble (``text_input``, ``max_tokens``, ``stream``, ...,
``text_output``) and answers with deterministic words instead of running a model (see
``repository/ensemble/1/model.py``). It lets `modelfleet serve
manifests/examples/tiny-triton.yaml` run the whole Triton path (tokenizer, gRPC
streaming, cancellation, metrics) on the CPU build of tritonserver, with no GPU and no
TensorRT-LLM engine build.

The files ship inside the package; a replica serves a copy of them from the cache,
because the python backend writes ``__pycache__`` next to ``model.py`` and the
installed package may be read-only or shared by several servers.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from modelfleet_serving.models.tiny_llama import cache_root

# The repository as shipped in the package (never served from here, see above).
PACKAGED_REPOSITORY = Path(__file__).parent / "repository"


def _files(root: Path) -> list[Path]:
    """The repository's files, in a stable order, without Python's byte-code caches."""
    return sorted(
        p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.relative_to(root).parts
    )


def content_digest(root: Path = PACKAGED_REPOSITORY) -> str:
    """A short hash of the repository's file names and contents.

    The cached copy is named after it, so an upgraded stand-in is copied afresh and an
    older copy is never served by mistake.
    """
    digest = hashlib.sha256()
    for path in _files(root):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def repository_dir(root: Path | None = None) -> Path:
    """Where the copy of the current stand-in lives (it may not exist yet)."""
    return (root or cache_root()) / f"triton-standin-{content_digest()}"


def ensure_triton_standin(root: Path | None = None) -> Path:
    """Return a served copy of the stand-in repository, copying it there first if needed.

    The copy is made in a temporary directory next to the target and renamed into
    place, so two replicas starting together never see half a repository.
    """
    target = repository_dir(root)
    if (target / "ensemble" / "config.pbtxt").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        shutil.copytree(
            PACKAGED_REPOSITORY,
            staging / "repository",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        try:
            (staging / "repository").rename(target)
        except OSError:
            # Another process renamed its copy into place first; theirs is the same.
            if not (target / "ensemble" / "config.pbtxt").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
