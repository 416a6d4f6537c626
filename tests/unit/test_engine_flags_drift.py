"""The committed list of vLLM flags matches the installed vLLM's engine arguments.

The operator lints `engine.extraArgs` against operator/modelfleet_operator/data/
vllm_flags.txt so that it never imports vLLM. This test regenerates the list from
`AsyncEngineArgs` where vLLM is importable (slow: vLLM imports torch) and fails on
drift. Regenerate with `MODELFLEET_UPDATE_GOLDEN=1 pytest tests/unit/test_engine_flags_drift.py`
and review the diff.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import pytest
from modelfleet_operator.engine_flags import VLLM_FLAGS_FILE

FLAGS = Path(__file__).resolve().parents[2] / "operator" / "modelfleet_operator" / "data"
UPDATE = os.environ.get("MODELFLEET_UPDATE_GOLDEN") == "1"

HEADER = """\
# vLLM {version} engine flags: the fields of vllm.engine.arg_utils.AsyncEngineArgs,
# dashed, as `vllm serve` spells them. Generated; do not edit. Regenerate with
# MODELFLEET_UPDATE_GOLDEN=1 pytest tests/unit/test_engine_flags_drift.py
"""


def generate() -> str:
    """The flag list as the installed vLLM defines it."""
    import vllm
    from vllm.engine.arg_utils import AsyncEngineArgs

    names = sorted(
        field.name.replace("_", "-")
        for field in dataclasses.fields(AsyncEngineArgs)
        # Underscored fields are vLLM's internal plumbing, not command-line flags.
        if not field.name.startswith("_")
    )
    return HEADER.format(version=vllm.__version__) + "\n".join(names) + "\n"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_vllm_flags_match_the_installed_vllm() -> None:
    path = FLAGS / VLLM_FLAGS_FILE
    generated = generate()
    if UPDATE:
        path.write_text(generated)
    assert path.read_text() == generated, (
        f"{path.name} drifted from the installed vLLM; regenerate it with "
        "MODELFLEET_UPDATE_GOLDEN=1 and review the diff"
    )
