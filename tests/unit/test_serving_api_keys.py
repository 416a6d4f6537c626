"""Where the front door's API keys come from, and a rotated Secret file re-read."""

from __future__ import annotations

from pathlib import Path

import pytest
from modelfleet_serving.api_keys import KeySource, parse_keys


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("", []),
        ("a", [b"a"]),
        ("a,b", [b"a", b"b"]),
        (" a , b ,", [b"a", b"b"]),
        # A Secret written with a trailing newline, or one key per line.
        ("a\n", [b"a"]),
        ("a\nb\n\n", [b"a", b"b"]),
    ],
)
def test_parse_keys(text: str, keys: list[bytes]) -> None:
    assert parse_keys(text) == keys


def test_no_source_means_no_keys_asked_for() -> None:
    assert KeySource().keys is None


def test_a_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYS_FOR_TEST", "k1,k2")
    assert KeySource(env="KEYS_FOR_TEST").keys == [b"k1", b"k2"]


def test_an_empty_or_missing_source_fails_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KEYS_FOR_TEST", raising=False)
    assert KeySource(env="KEYS_FOR_TEST").keys == []
    assert KeySource(file=str(tmp_path / "absent")).keys == []


def test_a_rotated_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("old\n")
    source = KeySource(file=str(path), env="IGNORED_WHEN_A_FILE_IS_SET")
    assert source.keys == [b"old"]
    assert source.refresh() is False
    # The kubelet swaps the mounted Secret's files atomically; here it is rewritten.
    path.write_text("new,other\n")
    assert source.refresh() is True
    assert source.keys == [b"new", b"other"]
    path.unlink()
    assert source.refresh() is True and source.keys == []
