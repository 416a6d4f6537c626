"""Triton's Prometheus metrics → the scheduler state our dashboards show for every engine.

Pure: parses the text of Triton's ``/metrics`` with prometheus_client's parser; no Ray,
vLLM or tritonclient imports.

Mapping (the same gauges as the vLLM engine reports, so one dashboard serves both):

* ``requests_waiting``: ``nv_inference_pending_request_count`` summed over the server's
  models (an ensemble's request queues in whichever composing model it has reached),
  plus TensorRT-LLM's own queue, ``nv_trt_llm_request_metrics{request_type="waiting"}``,
  where the backend reports it.
* ``requests_running``: ``nv_trt_llm_request_metrics{request_type="active"}`` (the
  in-flight batch); servers without TensorRT-LLM do not know it, and the engine counts
  its own open streams instead.
* ``kv_cache_usage_ratio``: ``nv_trt_llm_kv_cache_block_metrics`` used blocks over max
  blocks, where present.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

PENDING = "nv_inference_pending_request_count"
TRTLLM_REQUESTS = "nv_trt_llm_request_metrics"
TRTLLM_KV_BLOCKS = "nv_trt_llm_kv_cache_block_metrics"


@dataclass(frozen=True)
class TritonLoad:
    """What Triton's metrics say about load; None where the server does not report it."""

    waiting: int
    running: int | None
    kv_cache_usage: float | None


def parse_triton_metrics(text: str) -> TritonLoad:
    """Read queue depth, in-flight requests and KV-cache usage from ``/metrics`` text."""
    pending = 0.0
    trt_requests: dict[str, float] = {}
    kv_blocks: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == PENDING:
                pending += sample.value
            elif sample.name == TRTLLM_REQUESTS:
                kind = sample.labels.get("request_type", "")
                trt_requests[kind] = trt_requests.get(kind, 0.0) + sample.value
            elif sample.name == TRTLLM_KV_BLOCKS:
                kind = sample.labels.get("kv_cache_block_type", "")
                kv_blocks[kind] = kv_blocks.get(kind, 0.0) + sample.value
    running = trt_requests.get("active")
    kv_usage = None
    if kv_blocks.get("max"):
        kv_usage = min(1.0, kv_blocks.get("used", 0.0) / kv_blocks["max"])
    return TritonLoad(
        waiting=int(pending + trt_requests.get("waiting", 0.0)),
        running=None if running is None else int(running),
        kv_cache_usage=kv_usage,
    )
