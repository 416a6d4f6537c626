"""The vLLM command line built from a ServingConfig (pure: vLLM is not imported)."""

from __future__ import annotations

from modelfleet_serving.config import ServingConfig
from modelfleet_serving.engines.vllm_engine import engine_cli_args


def _config(**engine: object) -> ServingConfig:
    return ServingConfig.model_validate(
        {
            "name": "t",
            "model": {"source": "hf://org/m", "served_name": "m", "quantization": "awq"},
            "engine": {"max_model_len": 4096, "max_num_seqs": 16, **engine},
            "pools": [{"name": "gpu", "num_gpus": 2}],
        }
    )


def test_engine_settings_become_vllm_flags() -> None:
    args = engine_cli_args(_config(tensor_parallel_size=2), "/models/m")

    def value(flag: str) -> str:
        return args[args.index(flag) + 1]

    assert value("--model") == "/models/m"
    assert value("--served-model-name") == "m"
    assert value("--max-model-len") == "4096"
    assert value("--max-num-seqs") == "16"
    assert value("--tensor-parallel-size") == "2"
    assert value("--quantization") == "awq"
    assert "--disable-log-stats" in args


def test_extra_args_follow_vllm_spelling() -> None:
    args = engine_cli_args(
        _config(
            extra_args={"enable_prefix_caching": True, "enforce-eager": False, "block-size": 32}
        ),
        "/m",
    )
    assert "--enable-prefix-caching" in args
    assert "--no-enforce-eager" in args
    assert args[args.index("--block-size") + 1] == "32"
