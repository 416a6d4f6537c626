"""A model's shape from where it lives: safetensors headers, config.json, the hub's HTTP API.

The hub is a real HTTP server on 127.0.0.1 that answers like huggingface.co (the
model API, resolve URLs, range requests), reached through HF_ENDPOINT as
huggingface_hub would; nothing leaves the machine.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from modelfleet_operator.api.v1alpha1 import ModelShapeSpec, ModelSpec
from modelfleet_operator.hub import (
    FAILED_TTL_S,
    FOUND_TTL_S,
    ShapeCache,
    resolve_shape,
)
from modelfleet_operator.model_shape import (
    Origin,
    builtin_shape,
    parse_safetensors_header,
    shape_from_config,
    shape_from_spec,
    weights_from_headers,
    weights_from_index,
)
from safetensors.numpy import save_file

from tests.helpers import free_port

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
    "torch_dtype": "bfloat16",
}


def tensors() -> dict[str, np.ndarray]:
    """Weights of CONFIG's shape (float16 stands in for bfloat16, same size)."""
    h, i, v = 64, 128, 100
    out = {
        "model.embed_tokens.weight": np.zeros((v, h), np.float16),
        "lm_head.weight": np.zeros((v, h), np.float16),
    }
    for layer in range(2):
        p = f"model.layers.{layer}."
        out |= {
            p + "self_attn.q_proj.weight": np.zeros((h, h), np.float16),
            p + "self_attn.k_proj.weight": np.zeros((32, h), np.float16),
            p + "self_attn.v_proj.weight": np.zeros((32, h), np.float16),
            p + "self_attn.o_proj.weight": np.zeros((h, h), np.float16),
            p + "mlp.gate_proj.weight": np.zeros((i, h), np.float16),
            p + "mlp.up_proj.weight": np.zeros((i, h), np.float16),
            p + "mlp.down_proj.weight": np.zeros((h, i), np.float16),
        }
    return out


ELEMENTS = sum(t.size for t in tensors().values())


def checkpoint(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(CONFIG))
    save_file(tensors(), str(directory / "model.safetensors"))
    return directory


def test_the_safetensors_header_gives_dtype_and_shape(tmp_path: Path) -> None:
    data = (checkpoint(tmp_path) / "model.safetensors").read_bytes()
    header = parse_safetensors_header(data)
    weights = weights_from_headers([header])
    assert weights.elements == {"F16": ELEMENTS}
    assert weights.total_bytes == ELEMENTS * 2


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01\x00\x00", (2**40).to_bytes(8, "little") + b"{}", (50).to_bytes(8, "little")],
    ids=["empty", "short", "absurd-length", "cut-short"],
)
def test_a_broken_header_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_safetensors_header(data)


def test_the_index_total_size() -> None:
    index = {"metadata": {"total_size": 16_060_522_496}, "weight_map": {}}
    weights = weights_from_index(index)
    assert weights is not None and weights.total_bytes == 16_060_522_496
    assert weights_from_index({"weight_map": {}}) is None


def test_config_and_weights_make_an_exact_shape(tmp_path: Path) -> None:
    lookup = resolve_shape(ModelSpec(source=f"file://{checkpoint(tmp_path)}", served_name="m"))
    shape = lookup.shape
    assert lookup.note == ""
    assert shape is not None and shape.origin is Origin.CHECKPOINT and not shape.estimated
    assert (shape.layers, shape.kv_heads, shape.head_dim, shape.hidden) == (2, 2, 16, 64)
    # The checkpoint's elements are the parameters (norms would count too).
    assert shape.params == ELEMENTS


def test_a_local_index_gives_the_size(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 1234}, "weight_map": {}})
    )
    shape = resolve_shape(ModelSpec(source=f"file://{tmp_path}", served_name="m")).shape
    assert shape is not None and shape.weights is not None and shape.weights.total_bytes == 1234


def test_a_missing_local_checkpoint_falls_back_to_the_name(tmp_path: Path) -> None:
    lookup = resolve_shape(ModelSpec(source=f"file://{tmp_path}/llama-2-7b", served_name="m"))
    assert lookup.shape is not None and lookup.shape.estimated
    assert "cannot read" in lookup.note and "config.json" in lookup.note


def test_the_builtin_definition_matches_the_generated_model(tmp_path: Path) -> None:
    from modelfleet_serving.models.tiny_llama import ensure_tiny_llama

    generated = json.loads((ensure_tiny_llama(tmp_path) / "config.json").read_text())
    builtin = builtin_shape("builtin://tiny-llama")
    from_files = shape_from_config("tiny-llama", generated)
    assert builtin is not None and from_files is not None
    for part in ("layers", "attention_heads", "kv_heads", "head_dim", "hidden", "vocab"):
        assert getattr(builtin, part) == getattr(from_files, part), part


def test_a_stated_shape_wins() -> None:
    stated = ModelShapeSpec(parameters=7_000_000_000, layers=32, kv_heads=8, head_dim=128)
    model = ModelSpec(source="pvc://claim/llama-3-70b", served_name="m", shape=stated)
    lookup = resolve_shape(model)
    assert lookup.shape is not None and lookup.shape.origin is Origin.SPEC
    assert lookup.shape.params == 7e9 and lookup.note == ""


def test_a_stated_architecture_sums_its_parameters() -> None:
    stated = ModelShapeSpec(
        hidden_size=4096,
        layers=32,
        attention_heads=32,
        kv_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
    )
    shape = shape_from_spec("m", stated)
    assert shape is not None and shape.params == pytest.approx(8.03e9, rel=0.01)
    assert shape.head_dim == 128


def test_stated_weight_bytes_count_as_stored() -> None:
    shape = shape_from_spec("m", ModelShapeSpec(weight_bytes=5_000_000_000))
    assert shape is not None and shape.weights is not None
    assert shape.checkpoint_quantization == "stated"


def test_a_pvc_source_says_why_it_is_not_read() -> None:
    lookup = resolve_shape(ModelSpec(source="pvc://claim/Meta-Llama-3-8B", served_name="m"))
    assert lookup.shape is not None and lookup.shape.estimated
    assert "pvc://" in lookup.note


# ----------------------------------------------------------------- a hub on 127.0.0.1


@dataclass
class Hub:
    """What the stand-in hub serves and what it was asked."""

    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    gated: set[str] = field(default_factory=set)
    delay: float = 0.0
    seen: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def hub() -> Iterator[Hub]:
    state = Hub()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            state.seen.append(
                (self.path, self.headers.get("Authorization"), self.headers.get("Range"))
            )
            time.sleep(state.delay)
            repo = next((r for r in state.gated if r in self.path), None)
            if repo is not None and self.headers.get("Authorization") != "Bearer hf_good":
                return self._send(401, b'{"error": "Access to model is restricted"}')
            if self.path.startswith("/api/models/"):
                info = state.models.get(self.path.removeprefix("/api/models/"))
                if info is None:
                    return self._send(404, b"{}")
                return self._send(200, json.dumps(info).encode())
            body = state.files.get(self.path)
            if body is None:
                return self._send(404, b"Entry not found")
            ranged = self.headers.get("Range")
            if ranged:
                start, end = (int(x) for x in ranged.removeprefix("bytes=").split("-"))
                return self._send(206, body[start : end + 1])
            return self._send(200, body)

        def _send(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def publish(hub: Hub, repo: str, tmp_path: Path, *, api_parameters: bool = True) -> None:
    """Put a checkpoint on the stand-in hub the way huggingface.co serves one."""
    files = checkpoint(tmp_path / repo.replace("/", "_"))
    info: dict[str, Any] = {"id": repo, "siblings": [{"rfilename": "config.json"}]}
    info["siblings"].append({"rfilename": "model.safetensors"})
    if api_parameters:
        info["safetensors"] = {"parameters": {"BF16": ELEMENTS}, "total": ELEMENTS}
    hub.models[repo] = info
    hub.files[f"/{repo}/resolve/main/config.json"] = (files / "config.json").read_bytes()
    hub.files[f"/{repo}/resolve/main/model.safetensors"] = (
        files / "model.safetensors"
    ).read_bytes()


def test_the_hub_api_gives_config_and_parameters(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(hub, "acme/tiny", tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    lookup = resolve_shape(ModelSpec(source="hf://acme/tiny", served_name="m"))
    assert lookup.note == ""
    assert lookup.shape is not None and lookup.shape.origin is Origin.CHECKPOINT
    assert lookup.shape.params == ELEMENTS and lookup.shape.kv_heads == 2
    paths = [path for path, _, _ in hub.seen]
    assert paths == ["/api/models/acme/tiny", "/acme/tiny/resolve/main/config.json"]


def test_without_parameters_in_the_api_the_header_is_read_by_range(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(hub, "acme/tiny", tmp_path, api_parameters=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    shape = resolve_shape(ModelSpec(source="hf://acme/tiny", served_name="m")).shape
    assert shape is not None and shape.weights is not None
    assert shape.weights.elements == {"F16": ELEMENTS}
    ranges = [r for path, _, r in hub.seen if path.endswith("model.safetensors")]
    assert ranges[0] == "bytes=0-7" and all(r is not None for r in ranges)


def test_a_sharded_checkpoint_is_sized_by_its_index(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(hub, "acme/big", tmp_path, api_parameters=False)
    hub.models["acme/big"]["siblings"] = [
        {"rfilename": "config.json"},
        {"rfilename": "model.safetensors.index.json"},
    ]
    index = {"metadata": {"total_size": 16_060_522_496}, "weight_map": {}}
    hub.files["/acme/big/resolve/main/model.safetensors.index.json"] = json.dumps(index).encode()
    shape = resolve_shape(
        ModelSpec(source="hf://acme/big", served_name="m"), endpoint=hub.url
    ).shape
    assert shape is not None and shape.weights is not None
    assert shape.weights.total_bytes == 16_060_522_496


def test_a_gated_model_needs_the_token(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(hub, "meta-llama/Meta-Llama-3-8B", tmp_path)
    hub.gated.add("meta-llama/Meta-Llama-3-8B")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    model = ModelSpec(source="hf://meta-llama/Meta-Llama-3-8B", served_name="m")
    anonymous = resolve_shape(model)
    assert anonymous.shape is not None and anonymous.shape.estimated
    assert "refused access (HTTP 401" in anonymous.note and "token" in anonymous.note
    with_token = resolve_shape(model, token="hf_good")
    assert with_token.shape is not None and with_token.shape.origin is Origin.CHECKPOINT
    assert ("/api/models/meta-llama/Meta-Llama-3-8B", "Bearer hf_good", None) in hub.seen


def test_an_unreachable_hub_falls_back_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    lookup = resolve_shape(ModelSpec(source="hf://Qwen/Qwen2-7B-Instruct", served_name="m"))
    assert time.monotonic() - started < 2
    assert lookup.shape is not None and lookup.shape.name == "Qwen2 7B"
    assert "unreachable" in lookup.note


def test_a_slow_hub_falls_back_within_the_timeout(hub: Hub, tmp_path: Path) -> None:
    publish(hub, "acme/slow", tmp_path)
    hub.delay = 1.5
    started = time.monotonic()
    model = ModelSpec(source="hf://acme/slow-7b", served_name="m")
    lookup = resolve_shape(model, endpoint=hub.url, timeout=0.5)
    assert time.monotonic() - started < 2
    assert "did not answer in time" in lookup.note
    assert lookup.shape is not None and lookup.shape.name == "a 7B model"


def test_offline_reads_nothing(hub: Hub, tmp_path: Path) -> None:
    publish(hub, "acme/tiny", tmp_path)
    lookup = resolve_shape(
        ModelSpec(source="hf://acme/tiny", served_name="m"), endpoint=hub.url, fetch=False
    )
    assert hub.seen == [] and "offline" in lookup.note


def test_a_public_s3_bucket_is_read_anonymously(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = checkpoint(tmp_path / "s3")
    hub.files["/models/tiny/config.json"] = (files / "config.json").read_bytes()
    hub.files["/models/tiny/model.safetensors"] = (files / "model.safetensors").read_bytes()
    monkeypatch.setenv("AWS_ENDPOINT_URL", hub.url)
    lookup = resolve_shape(ModelSpec(source="s3://models/tiny", served_name="m"))
    assert lookup.note == "" and lookup.shape is not None
    assert lookup.shape.weights is not None and lookup.shape.weights.elements == {"F16": ELEMENTS}


def test_answers_are_cached_for_a_while(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(hub, "acme/tiny", tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    now = [0.0]
    cache = ShapeCache(token_for=lambda _model: None, clock=lambda: now[0])
    model = ModelSpec(source="hf://acme/tiny", served_name="m")
    first = cache(model)
    asked = len(hub.seen)
    assert cache(model) == first and len(hub.seen) == asked
    now[0] += FOUND_TTL_S + 1
    cache(model)
    assert len(hub.seen) == 2 * asked
    # A failure is retried sooner than a found shape.
    gone = ModelSpec(source="hf://acme/missing-7b", served_name="m")
    cache(gone)
    asked = len(hub.seen)
    now[0] += FAILED_TTL_S + 1
    cache(gone)
    assert len(hub.seen) > asked
