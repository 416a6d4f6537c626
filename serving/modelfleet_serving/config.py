"""`ServingConfig`: everything the Ray Serve application needs to run one model.

The operator builds it from a `ModelDeployment` and ships it inside the RayService's
`serveConfigV2`; `modelfleet serve` builds it from the same YAML and hands it to a
local Ray. It therefore never holds a secret: API keys and storage credentials reach
the replicas as environment variables, and the config only names those variables.

This module is pure: it imports nothing from Ray, vLLM, Kubernetes or Kopf.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The environment variable that holds the accepted API keys (comma-separated) when
# a deployment asks for keys; the operator fills it from the user's Secret.
DEFAULT_API_KEYS_ENV = "MODELFLEET_API_KEYS"

# Where the operator mounts the PersistentVolumeClaims of `pvc://claim/path` sources
# (read-only) inside the Ray pods, one folder per claim. It lives here, in the serving
# package, because both sides need it: the operator mounts the claims there and
# rewrites the sources to it, and the replicas read the files from it.
PVC_MOUNT_ROOT = "/mnt/modelfleet"

ScalarArg = str | int | float | bool


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EngineKind(StrEnum):
    """Which inference engine a replica runs."""

    VLLM = "vllm"
    TRITON = "triton"


class RoutingPolicy(StrEnum):
    """How the front door orders the replicas of a pool (routing.py)."""

    PREFIX_AWARE = "prefix-aware"
    LEAST_LOADED = "least-loaded"


class ModelConfig(_Frozen):
    """Where the weights come from and the name clients use for them."""

    source: str = Field(
        description="hf://org/name, s3://bucket/prefix, pvc://claim/path, file:///abs/path "
        "or builtin://tiny-llama (a generated test model)."
    )
    served_name: str = Field(description='The OpenAI "model" value clients send.')
    quantization: str | None = Field(default=None, description="awq, gptq, fp8, ... or None.")
    dtype: str = "auto"


class TritonConfig(_Frozen):
    """How a replica reaches its Triton server holding a TensorRT-LLM repository."""

    model_name: str = "ensemble"
    repository: str | None = Field(
        default=None, description="Model repository path the replica's server loads."
    )
    url: str | None = Field(
        default=None,
        description="host:port of an already running Triton gRPC endpoint; when unset the "
        "replica starts its own server.",
    )
    server_command: list[str] | None = Field(
        default=None, description="Command that starts tritonserver, before the added flags."
    )
    metrics_url: str | None = Field(
        default=None,
        description="Prometheus endpoint of the server at `url` (default: its host, port "
        "8002); unused when the replica starts its own server.",
    )
    tokenizer: str | None = Field(
        default=None, description="Tokenizer path for chat templates and usage counts."
    )


class EngineConfig(_Frozen):
    """Engine settings shared by every replica of the deployment."""

    kind: EngineKind = EngineKind.VLLM
    max_model_len: Annotated[int, Field(gt=0)] = 8192
    max_num_seqs: Annotated[int, Field(gt=0)] = 64
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.9
    tensor_parallel_size: Annotated[int, Field(ge=1)] = 1
    pipeline_parallel_size: Annotated[int, Field(ge=1)] = 1
    extra_args: dict[str, ScalarArg] = Field(
        default_factory=dict, description="Further engine flags, already checked by name."
    )
    triton: TritonConfig | None = None
    cpu_kv_cache_gib: Annotated[float, Field(gt=0)] | None = Field(
        default=None,
        description="KV-cache size on CPU-only replicas (VLLM_CPU_KVCACHE_SPACE).",
    )

    @property
    def gpus_per_replica(self) -> int:
        """GPUs one replica occupies: tensor × pipeline parallelism."""
        return self.tensor_parallel_size * self.pipeline_parallel_size


class PoolConfig(_Frozen):
    """One node pool: a Serve deployment whose replicas land on that pool's nodes."""

    name: str
    min_replicas: Annotated[int, Field(ge=0)] = 1
    max_replicas: Annotated[int, Field(ge=1)] = 1
    priority: int = Field(default=0, description="Lower is preferred; overflow spills over.")
    num_gpus: Annotated[int, Field(ge=0)] = 0
    num_cpus: Annotated[float, Field(gt=0)] = 1.0
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources that pin replicas to the pool's worker group.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> PoolConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"pool {self.name!r}: minReplicas {self.min_replicas} is greater than "
                f"maxReplicas {self.max_replicas}; raise maxReplicas or lower minReplicas"
            )
        return self


class AutoscalingConfig(_Frozen):
    """Queue-depth autoscaling of each pool's replicas."""

    target_queue_depth: Annotated[float, Field(gt=0)] = 8
    upscale_delay_s: Annotated[float, Field(ge=0)] = 10
    downscale_delay_s: Annotated[float, Field(ge=0)] = 120


class ServingConfig(_Frozen):
    """The whole serving application for one model."""

    name: str = Field(description="Deployment name, used in metric labels and Serve names.")
    model: ModelConfig
    engine: EngineConfig = Field(default_factory=EngineConfig)
    pools: list[PoolConfig] = Field(min_length=1)
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)
    max_queued_requests: Annotated[int, Field(gt=0)] = 256
    request_timeout_s: Annotated[float, Field(gt=0)] = 600
    routing: RoutingPolicy = RoutingPolicy.PREFIX_AWARE
    api_keys_env: str | None = Field(
        default=None,
        description="Environment variable holding accepted API keys; None disables keys.",
    )

    @model_validator(mode="after")
    def _unique_pools(self) -> ServingConfig:
        names = [p.name for p in self.pools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"pool names must be unique; repeated: {', '.join(duplicates)}")
        return self

    def pools_by_preference(self) -> list[PoolConfig]:
        """Pools ordered from most to least preferred (lowest priority first, stable)."""
        return sorted(self.pools, key=lambda p: p.priority)
