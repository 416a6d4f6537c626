"""Installing tritonserver from an nvidia-pytriton wheel, with a small fake wheel."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from modelfleet_serving.engines import triton_install
from modelfleet_serving.engines.triton_install import (
    WHEEL_ENV,
    TritonInstallError,
    ensure_tritonserver,
)

STUB = "pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub"


def _fake_wheel(path: Path, *, with_stub: bool = True) -> Path:
    """A zip with the layout of nvidia-pytriton that ensure_tritonserver relies on."""
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("pytriton/tritonserver/bin/tritonserver", "#!/bin/sh\n")
        wheel.writestr("pytriton/tritonserver/backends/python/libtriton_python.so", "")
        wheel.writestr("nvidia_pytriton.libs/libtritonserver-0.so", "")
        if with_stub:
            wheel.writestr(STUB, "stub")
    return path


def test_unpacks_once_and_places_the_stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WHEEL_ENV, str(_fake_wheel(tmp_path / "pytriton.whl")))
    install = ensure_tritonserver("9.9.9", cache=tmp_path / "cache")
    assert install.root == tmp_path / "cache" / "triton" / "9.9.9"
    assert install.binary.stat().st_mode & 0o111
    stub = install.backend_dir / "python" / "triton_python_backend_stub"
    assert stub.read_text() == "stub" and stub.stat().st_mode & 0o111
    # A second call finds the finished tree and downloads nothing.
    monkeypatch.setenv(WHEEL_ENV, str(tmp_path / "missing.whl"))
    assert ensure_tritonserver("9.9.9", cache=tmp_path / "cache") == install
    # No staging directory is left beside the install.
    assert sorted(p.name for p in install.root.parent.iterdir()) == ["9.9.9", "9.9.9.lock"]


def test_a_wheel_without_the_stub_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WHEEL_ENV, str(_fake_wheel(tmp_path / "w.whl", with_stub=False)))
    with pytest.raises(TritonInstallError, match=r"3\.11 stub"):
        ensure_tritonserver("9.9.9", cache=tmp_path / "cache")
    assert not triton_install.install_dir("9.9.9", tmp_path / "cache").exists()


def test_environment_keeps_other_pythons_out(tmp_path: Path) -> None:
    install = triton_install.TritonInstall(tmp_path)
    env = install.environment(
        {"PYTHONPATH": "/venv/lib", "VIRTUAL_ENV": "/venv", "LD_LIBRARY_PATH": "/opt/lib"}
    )
    assert "PYTHONPATH" not in env and "VIRTUAL_ENV" not in env
    assert env["LD_LIBRARY_PATH"] == f"{tmp_path / 'nvidia_pytriton.libs'}:/opt/lib"
