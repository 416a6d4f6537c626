"""The committed list of vLLM flags matches the installed vLLM's engine arguments.

The operator lints `engine.extraArgs` against operator/modelfleet_operator/data/
vllm_flags.txt so that it never imports vLLM. This test regenerates the list from
`AsyncEngineArgs` where vLLM is importable (slow: vLLM imports torch) and fails on
drift. Regenerate with `make generate` and review the diff.
"""

from __future__ import annotations

import importlib.util

import pytest
from modelfleet_operator.engine_flags import VLLM_FLAGS_FILE

from scripts.generate import FLAGS_FILE, vllm_flags


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_vllm_flags_match_the_installed_vllm() -> None:
    assert FLAGS_FILE.name == VLLM_FLAGS_FILE
    assert FLAGS_FILE.read_text() == vllm_flags(), (
        f"{FLAGS_FILE.name} drifted from the installed vLLM; regenerate it with "
        "`make generate` and review the diff"
    )
