"""Triton /metrics text → our scheduler gauges."""

from __future__ import annotations

import pytest
from modelfleet_serving.engines.triton_metrics import TritonLoad, parse_triton_metrics

# What the python-backend stand-in's server reports (no TensorRT-LLM metrics).
PYTHON_BACKEND = """\
# HELP nv_inference_pending_request_count Instantaneous number of pending requests.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="ensemble",version="1"} 3
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.5
"""

# A TensorRT-LLM server: an ensemble of three models plus the in-flight batcher's metrics.
TRTLLM = """\
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="ensemble",version="1"} 0
nv_inference_pending_request_count{model="preprocessing",version="1"} 1
nv_inference_pending_request_count{model="tensorrt_llm",version="1"} 2
# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="context",version="1"} 1
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="scheduled",version="1"} 5
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 64
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 5
# TYPE nv_trt_llm_kv_cache_block_metrics gauge
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="tokens_per",model="tensorrt_llm"} 64
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="tensorrt_llm"} 30
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="free",model="tensorrt_llm"} 90
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="tensorrt_llm"} 120
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", TritonLoad(waiting=0, running=None, kv_cache_usage=None)),
        (PYTHON_BACKEND, TritonLoad(waiting=3, running=None, kv_cache_usage=None)),
        (TRTLLM, TritonLoad(waiting=3, running=5, kv_cache_usage=0.25)),
    ],
)
def test_parse(text: str, expected: TritonLoad) -> None:
    assert parse_triton_metrics(text) == expected
