"""The generated `builtin://tiny-llama` model (no vLLM: files only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from modelfleet_serving.config import PVC_MOUNT_ROOT
from modelfleet_serving.models import resolve_model_source
from modelfleet_serving.models.tiny_llama import VERSION, ensure_tiny_llama
from tokenizers import Tokenizer


def test_generated_model_is_complete_and_deterministic(tmp_path: Path) -> None:
    first = ensure_tiny_llama(tmp_path / "a")
    second = ensure_tiny_llama(tmp_path / "b")
    assert first.name == f"tiny-llama-{VERSION}"
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    config = json.loads((first / "config.json").read_text())
    # vLLM's CPU attention kernels need head_dim 64, not 16.
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    assert config["num_hidden_layers"] == 2
    tokenizer = Tokenizer.from_file(str(first / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == config["vocab_size"]
    assert "chat_template" in json.loads((first / "tokenizer_config.json").read_text())
    # No temporary directories are left behind.
    assert [p.name for p in (tmp_path / "a").iterdir()] == [first.name]


def test_existing_model_is_reused(tmp_path: Path) -> None:
    path = ensure_tiny_llama(tmp_path)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_llama(tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_builtin_source_uses_the_cache_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELFLEET_CACHE", str(tmp_path))
    path = resolve_model_source("builtin://tiny-llama")
    assert path == str(tmp_path / "modelfleet" / "models" / f"tiny-llama-{VERSION}")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("hf://Qwen/Qwen2-7B-Instruct-AWQ", "Qwen/Qwen2-7B-Instruct-AWQ"),
        ("file:///models/qwen", "/models/qwen"),
        ("pvc://weights/qwen/7b", f"{PVC_MOUNT_ROOT}/weights/qwen/7b"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
    ],
)
def test_resolve_model_source(source: str, expected: str) -> None:
    assert resolve_model_source(source) == expected


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError):
        resolve_model_source("ftp://x/y")
