"""`modelfleet serve` following edits to its file (FileWatcher; no Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from modelfleet_cli.serve import FileWatcher
from modelfleet_operator.api.v1alpha1 import ModelDeployment
from modelfleet_operator.translate import serving_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "manifests" / "examples" / "tiny-cpu-lora.yaml"


def _watcher(tmp_path: Path) -> tuple[FileWatcher, Path, list[str]]:
    file = tmp_path / "md.yaml"
    file.write_text(EXAMPLE.read_text())
    md = ModelDeployment.from_object(yaml.safe_load(file.read_text()))
    watcher = FileWatcher(file, serving_config(md, in_cluster=False))
    said: list[str] = []
    watcher.say = said.append
    return watcher, file, said


def _write(file: Path, edit: Any) -> None:
    obj = yaml.safe_load(file.read_text())
    edit(obj["spec"], obj)
    file.write_text(yaml.safe_dump(obj, sort_keys=False))


def test_unchanged_file_gives_nothing(tmp_path: Path) -> None:
    watcher, file, said = _watcher(tmp_path)
    assert watcher.poll() is None
    file.write_text(file.read_text())  # touched, same content
    assert watcher.poll() is None and said == []


def test_a_new_adapter_is_applied_once(tmp_path: Path) -> None:
    watcher, file, said = _watcher(tmp_path)
    _write(
        file, lambda spec, _: spec["model"]["adapters"].append({"name": "b", "source": "hf://o/b"})
    )
    config = watcher.poll()
    assert config is not None and [a.name for a in config.adapters] == ["tiny-llama-lora", "b"]
    assert said == [f"{file} changed; applying it to the running server..."]
    assert watcher.poll() is None


def _rename(spec: dict[str, Any], obj: dict[str, Any]) -> None:
    obj["metadata"]["name"] = "other"


def _grow(spec: dict[str, Any], obj: dict[str, Any]) -> None:
    spec["nodePools"][0]["maxReplicas"] = spec["nodePools"][0]["minReplicas"] = 6


def _pvc(spec: dict[str, Any], obj: dict[str, Any]) -> None:
    spec["model"]["adapters"] = [{"name": "b", "source": "pvc://claim/b"}]


def _other(spec: dict[str, Any], obj: dict[str, Any]) -> None:
    spec["serving"]["routing"] = "least-loaded"


def _bad(spec: dict[str, Any], obj: dict[str, Any]) -> None:
    spec["engine"]["maxNumSeqs"] = "many"


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (_rename, "metadata.name changed to 'other'"),
        (_grow, "it needs 7 Ray CPUs and this Ray has 3"),
        (_pvc, "is on a PersistentVolumeClaim"),
        (_bad, "cannot be read"),
        (_other, "changes more than model.adapters"),
    ],
)
def test_a_change_that_cannot_apply_is_said_and_skipped(
    tmp_path: Path, edit: Any, says: str
) -> None:
    watcher, file, said = _watcher(tmp_path)
    before = watcher.config
    _write(file, edit)
    assert watcher.poll() is None
    assert len(said) == 1 and says in said[0] and said[0].endswith("still serving as before")
    assert watcher.config == before


def test_unreadable_yaml_is_skipped(tmp_path: Path) -> None:
    watcher, file, said = _watcher(tmp_path)
    file.write_text("spec: [unclosed")
    assert watcher.poll() is None and "cannot be read" in said[0]
