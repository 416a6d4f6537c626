"""Reading a model's shape where it lives: the I/O half of the capacity check.

`resolve_shape` answers, for a `spec.model`, the shape the capacity maths uses and a
note on how it was found:

1. `spec.model.shape`, when the user stated it;
2. the checkpoint itself: `config.json` and the weights' size, read from
   - `builtin://tiny-llama`: the generated model's directory when it exists, else the
     definition it is generated from;
   - `file:///abs/path`: the directory (safetensors headers, or the index's total);
   - `hf://org/name`: the hub's HTTP API (`/api/models/{repo}` gives the parameters
     per dtype; `config.json` and `model.safetensors.index.json` come from resolve
     URLs, else the first safetensors file's header through a range request), at
     `$HF_ENDPOINT` as huggingface_hub does, with a token when one is given;
   - `s3://bucket/prefix`: the same files by anonymous HTTPS at
     `$AWS_ENDPOINT_URL_S3`, `$AWS_ENDPOINT_URL` or s3.amazonaws.com (a public
     bucket; a private one answers 403 and falls back);
   - `pvc://`: not readable from the operator (the claim is mounted only in the Ray
     pods), so it falls back;
3. the table of well-known names (model_shape.shape_from_name): the figures are then
   estimates, and the note says why the checkpoint could not be read.

Every network read shares one short deadline (`HUB_TIMEOUT_S`), well inside the
admission webhook's timeout, and answers are cached for a while so that the drift
timer does not ask the hub every minute.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import httpx

from modelfleet_operator.api.v1alpha1 import ModelSpec
from modelfleet_operator.model_shape import (
    ModelShape,
    Weights,
    builtin_shape,
    display_name,
    parse_safetensors_header,
    safetensors_header_length,
    shape_from_config,
    shape_from_name,
    shape_from_spec,
    weights_from_headers,
    weights_from_hub_parameters,
    weights_from_index,
)

# All hub requests for one model together must finish within this; the webhook's
# timeout (helm value webhook.timeoutSeconds, 10 s by default) must stay above it.
HUB_TIMEOUT_S = 4.0
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
S3_DEFAULT_ENDPOINT = "https://s3.amazonaws.com"
# How long an answer is reused: a found shape changes only with a new checkpoint, a
# failure (hub down, no token yet) is worth retrying sooner.
FOUND_TTL_S = 3600.0
FAILED_TTL_S = 300.0
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class ShapeLookup:
    """The shape to use (None: unknown) and how it was found, for status messages.

    `note` is empty when the shape is exact; otherwise it says why the checkpoint
    could not be read (the figures are then estimated from the name, or unknown).
    """

    shape: ModelShape | None
    note: str = ""


class CheckpointUnreadable(Exception):
    """The checkpoint could not be read; the message says why, for the status."""


class _Deadline:
    """One time budget shared by several requests."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise CheckpointUnreadable("timed out")
        return remaining


class _Http:
    """GETs with one deadline, as JSON or as a byte range; errors as CheckpointUnreadable."""

    def __init__(self, deadline: _Deadline, headers: Mapping[str, str], where: str) -> None:
        self.deadline = deadline
        self.headers = dict(headers)
        self.where = where

    def _get(self, url: str, extra: Mapping[str, str] | None = None) -> httpx.Response | None:
        """The response, or None for 404; other failures raise CheckpointUnreadable."""
        try:
            response = httpx.get(
                url,
                headers={**self.headers, **(extra or {})},
                timeout=self.deadline.left(),
                follow_redirects=True,
            )
        except httpx.TimeoutException as error:
            raise CheckpointUnreadable(f"{self.where} did not answer in time") from error
        except httpx.HTTPError as error:
            raise CheckpointUnreadable(f"{self.where} is unreachable ({error})") from error
        if response.status_code == 404:
            return None
        if response.status_code in (401, 403):
            raise CheckpointUnreadable(
                f"{self.where} refused access (HTTP {response.status_code}: a gated or "
                "private model needs a token)"
            )
        if response.status_code >= 400:
            raise CheckpointUnreadable(f"{self.where} answered HTTP {response.status_code}")
        return response

    def json(self, url: str) -> Any | None:
        """The JSON at `url`, or None when there is none (404)."""
        response = self._get(url)
        if response is None:
            return None
        try:
            return response.json()
        except ValueError as error:
            raise CheckpointUnreadable(f"{url} is not JSON") from error

    def head_of(self, url: str, length: int) -> bytes | None:
        """The first `length` bytes at `url` (a range request), or None (404)."""
        response = self._get(url, {"Range": f"bytes=0-{length - 1}"})
        return None if response is None else response.content[:length]

    def safetensors_header(self, url: str) -> dict[str, Any] | None:
        """The header of the safetensors file at `url`, reading only the header."""
        first = self.head_of(url, 8)
        if first is None:
            return None
        try:
            length = safetensors_header_length(first)
            data = self.head_of(url, 8 + length)
            return None if data is None else parse_safetensors_header(data)
        except ValueError as error:
            raise CheckpointUnreadable(f"{url}: {error}") from error


def _shape(name: str, config: Any, weights: Weights | None) -> ModelShape:
    if not isinstance(config, Mapping):
        raise CheckpointUnreadable("its config.json is missing or not an object")
    shape = shape_from_config(name, config, weights)
    if shape is None:
        raise CheckpointUnreadable(
            "its config.json lacks hidden_size, num_hidden_layers, num_attention_heads "
            "or vocab_size"
        )
    return shape


def read_directory(path: Path, name: str) -> ModelShape:
    """The shape of a checkpoint in a local directory (config.json + weights)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise CheckpointUnreadable(f"cannot read {path / 'config.json'}: {error}") from error
    weights: Weights | None = None
    try:
        index = path / INDEX_FILE
        if index.is_file():
            weights = weights_from_index(json.loads(index.read_text()))
        else:
            headers = []
            for file in sorted(path.glob("*.safetensors")):
                with file.open("rb") as stream:
                    # Only the header: the tensors after it may be many gigabytes.
                    first = stream.read(8)
                    length = safetensors_header_length(first)
                    headers.append(parse_safetensors_header(first + stream.read(length)))
            weights = weights_from_headers(headers) if headers else None
    except (OSError, ValueError):
        # The weights' size is a refinement; config.json alone still gives the shape.
        weights = None
    return _shape(name, config, weights)


def read_file_source(source: str) -> ModelShape:
    """The shape of a `file://` checkpoint."""
    path = Path(urlparse(source).path)
    return read_directory(path, display_name(source))


def read_builtin(source: str) -> ModelShape:
    """The shape of a built-in model: its generated files, else its definition."""
    from modelfleet_serving.models.tiny_llama import model_dir

    directory = model_dir()
    if (directory / "config.json").is_file():
        try:
            return read_directory(directory, "tiny-llama")
        except CheckpointUnreadable:
            pass
    shape = builtin_shape(source)
    if shape is None:
        raise CheckpointUnreadable(f"{source} is not a built-in model")
    return shape


def hf_endpoint() -> str:
    """The hub's base URL: `$HF_ENDPOINT`, as huggingface_hub reads it."""
    return (os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")


def read_hf(
    source: str, *, token: str | None, endpoint: str | None = None, timeout: float = HUB_TIMEOUT_S
) -> ModelShape:
    """The shape of an `hf://org/name` checkpoint, from the hub's HTTP API."""
    parsed = urlparse(source)
    repo = (parsed.netloc + parsed.path).strip("/")
    base = (endpoint or hf_endpoint()).rstrip("/")
    headers = {"User-Agent": "modelfleet-capacity"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    http = _Http(_Deadline(timeout), headers, f"the hub at {base}")
    quoted = quote(repo, safe="/")
    info = http.json(f"{base}/api/models/{quoted}")
    if info is None:
        raise CheckpointUnreadable(f"the hub at {base} has no model {repo}")
    revision = "main"
    resolve = f"{base}/{quoted}/resolve/{revision}"
    config = http.json(f"{resolve}/config.json")
    weights: Weights | None = None
    safetensors = info.get("safetensors") if isinstance(info, Mapping) else None
    if isinstance(safetensors, Mapping) and isinstance(safetensors.get("parameters"), Mapping):
        weights = weights_from_hub_parameters(safetensors["parameters"])
    files = {
        s.get("rfilename")
        for s in (info.get("siblings") or [] if isinstance(info, Mapping) else [])
        if isinstance(s, Mapping)
    }
    if weights is None and (INDEX_FILE in files or not files):
        index = http.json(f"{resolve}/{INDEX_FILE}")
        weights = weights_from_index(index) if isinstance(index, Mapping) else None
    if weights is None and "model.safetensors" in files:
        header = http.safetensors_header(f"{resolve}/model.safetensors")
        weights = weights_from_headers([header]) if header else None
    return _shape(repo, config, weights)


def s3_endpoint() -> str:
    """The S3 endpoint, from the variables the AWS SDKs read."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(name):
            return os.environ[name].rstrip("/")
    return S3_DEFAULT_ENDPOINT


def read_s3(source: str, *, timeout: float = HUB_TIMEOUT_S) -> ModelShape:
    """The shape of an `s3://bucket/prefix` checkpoint readable without credentials.

    Path-style URLs, so that any S3-compatible endpoint works; the operator holds no
    cloud credentials, so only public buckets are read and others fall back.
    """
    parsed = urlparse(source)
    base = f"{s3_endpoint()}/{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
    http = _Http(_Deadline(timeout), {"User-Agent": "modelfleet-capacity"}, s3_endpoint())
    config = http.json(f"{base}/config.json")
    if config is None:
        raise CheckpointUnreadable(f"{source} has no config.json")
    index = http.json(f"{base}/{INDEX_FILE}")
    weights = weights_from_index(index) if isinstance(index, Mapping) else None
    if weights is None:
        header = http.safetensors_header(f"{base}/model.safetensors")
        weights = weights_from_headers([header]) if header else None
    return _shape(display_name(source), config, weights)


def read_checkpoint(
    source: str,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    timeout: float = HUB_TIMEOUT_S,
) -> ModelShape:
    """The shape of the checkpoint at `source`; CheckpointUnreadable says why not."""
    scheme = urlparse(source).scheme
    if scheme == "builtin":
        return read_builtin(source)
    if scheme == "file":
        return read_file_source(source)
    if scheme == "hf":
        return read_hf(source, token=token, endpoint=endpoint, timeout=timeout)
    if scheme == "s3":
        return read_s3(source, timeout=timeout)
    if scheme == "pvc":
        raise CheckpointUnreadable(
            "a pvc:// claim is mounted only in the Ray pods, not where the check runs"
        )
    raise CheckpointUnreadable(f"{scheme}:// sources are not read")


def resolve_shape(
    model: ModelSpec,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    timeout: float = HUB_TIMEOUT_S,
    fetch: bool = True,
) -> ShapeLookup:
    """The shape for `model`: stated, read from the checkpoint, or guessed by name.

    With `fetch=False` nothing is read over the network (a local file or built-in
    model still is), for tests and offline use.
    """
    if model.shape is not None:
        stated = shape_from_spec(display_name(model.source), model.shape)
        if stated is not None:
            return ShapeLookup(stated)
    if not fetch and urlparse(model.source).scheme in ("hf", "s3"):
        return ShapeLookup(shape_from_name(model), "the checkpoint was not read (offline)")
    try:
        found = read_checkpoint(model.source, token=token, endpoint=endpoint, timeout=timeout)
        return ShapeLookup(found)
    except CheckpointUnreadable as error:
        return ShapeLookup(shape_from_name(model), f"could not read the checkpoint: {error}")


@dataclass
class _Entry:
    lookup: ShapeLookup
    expires: float


class ShapeCache:
    """`resolve_shape` with answers kept for a while, shared by every reconcile.

    The token comes from `token_for` (the operator reads HF_TOKEN from its own
    environment: it does not read Secrets, see docs/capacity.md).
    """

    def __init__(
        self,
        *,
        token_for: Callable[[ModelSpec], str | None] | None = None,
        fetch: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token_for = token_for or (lambda _model: os.environ.get("HF_TOKEN") or None)
        self._fetch = fetch
        self._clock = clock
        self._entries: dict[tuple[str, str, bool], _Entry] = {}
        self._lock = threading.Lock()

    def __call__(self, model: ModelSpec) -> ShapeLookup:
        """The shape for `model`, from the cache when a recent answer exists."""
        if model.shape is not None:
            return resolve_shape(model, fetch=False)
        token = self._token_for(model)
        key = (model.source, model.served_name, bool(token))
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.expires > now:
                return entry.lookup
        lookup = resolve_shape(model, token=token, fetch=self._fetch)
        ttl = FAILED_TTL_S if lookup.note else FOUND_TTL_S
        with self._lock:
            self._entries[key] = _Entry(lookup, now + ttl)
        return lookup
