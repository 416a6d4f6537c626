"""`ServingConfig`: everything the Ray Serve application needs to run one model.

The operator builds it from a `ModelDeployment` and ships it inside the RayService's
`serveConfigV2`; `modelfleet serve` builds it from the same YAML and hands it to a
local Ray. It therefore never holds a secret: API keys and storage credentials reach
the replicas as environment variables, and the config only names those variables.

This module is pure: it imports nothing from Ray, vLLM, Kubernetes or Kopf.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The environment variable that holds the accepted API keys (comma-separated) when
# a deployment asks for keys; the operator fills it from the user's Secret.
DEFAULT_API_KEYS_ENV = "MODELFLEET_API_KEYS"
# Where the operator mounts the API-key Secret in the Ray pods, and the file in it.
API_KEYS_DIR = "/etc/modelfleet/api-keys"
API_KEYS_FILE = f"{API_KEYS_DIR}/keys"

# Where the operator mounts the PersistentVolumeClaims of `pvc://claim/path` sources
# (read-only) inside the Ray pods, one folder per claim. It lives here, in the serving
# package, because both sides need it: the operator mounts the claims there and
# rewrites the sources to it, and the replicas read the files from it.
PVC_MOUNT_ROOT = "/mnt/modelfleet"

ScalarArg = str | int | float | bool

# What a Serve config's application imports to build the application (app.py).
APP_IMPORT_PATH = "modelfleet_serving.app:app_builder"

# Adapters one engine batch may mix when the spec lists adapters but not maxLoras.
DEFAULT_MAX_LORAS = 4
DEFAULT_MAX_LORA_RANK = 16


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


class AdapterConfig(_Frozen):
    """A LoRA adapter served next to the base model under a name of its own."""

    name: str = Field(description='The OpenAI "model" value that selects the adapter.')
    source: str = Field(description="Same schemes as the model's source.")


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
    max_loras: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description="LoRA adapters one batch may mix; set, the engine starts with LoRA "
        "support, so adapters can be added later without a restart.",
    )
    max_lora_rank: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description=f"Largest adapter rank; {DEFAULT_MAX_LORA_RANK} when unset."
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


def _require_unique(what: str, names: list[str]) -> None:
    """Raise naming the repeated entries when `names` has any."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(repeated)}")


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
    adapters: list[AdapterConfig] = Field(
        default_factory=list,
        description="LoRA adapters. They reach the LLM replicas as their deployments' "
        "user_config, not in the application's arguments (app_args), so adding or "
        "removing one reconfigures the running replicas instead of restarting them.",
    )
    api_keys_env: str | None = Field(
        default=None,
        description="Environment variable holding accepted API keys (read once).",
    )
    api_keys_file: str | None = Field(
        default=None,
        description="File holding accepted API keys (a mounted Secret), re-read when it "
        "changes; wins over api_keys_env. Neither set: no keys are asked for.",
    )

    @model_validator(mode="after")
    def _unique_pools(self) -> ServingConfig:
        _require_unique("pool", [p.name for p in self.pools])
        return self

    @model_validator(mode="after")
    def _adapters(self) -> ServingConfig:
        names = [a.name for a in self.adapters]
        _require_unique("adapter", names)
        if self.model.served_name in names:
            raise ValueError(
                f"adapter {self.model.served_name!r} has the model's own servedName; "
                "give the adapter another name"
            )
        return self

    @property
    def lora_enabled(self) -> bool:
        """Whether the engine starts with LoRA support: adapters are listed, or
        `engine.max_loras` is set so that they can be added later without a restart."""
        return bool(self.adapters) or self.engine.max_loras is not None

    def app_args(self) -> dict[str, object]:
        """The Serve application's arguments: everything but the adapters (which a
        running replica takes through `adapters_user_config`, without a restart), with
        `engine.max_loras` filled in when LoRA is on, so that the arguments, and hence
        the replicas, stay the same as adapters come and go."""
        engine = self.engine
        if self.lora_enabled and engine.max_loras is None:
            engine = engine.model_copy(update={"max_loras": DEFAULT_MAX_LORAS})
        args = self.model_copy(update={"engine": engine})
        return args.model_dump(mode="json", exclude_none=True, exclude={"adapters"})

    def adapters_user_config(self) -> dict[str, object]:
        """The LLM deployments' `user_config`: the adapters they should have loaded."""
        return {"adapters": [a.model_dump(mode="json") for a in self.adapters]}

    def pools_by_preference(self) -> list[PoolConfig]:
        """Pools ordered from most to least preferred (lowest priority first, stable)."""
        return sorted(self.pools, key=lambda p: p.priority)


def application_config(config: ServingConfig, name: str) -> dict[str, Any]:
    """One application of a Serve config file (Ray's `ServeDeploySchema`) serving
    `config` under `name`: the import path, the arguments (`ServingConfig.app_args`),
    and with LoRA on each LLM deployment's `user_config` holding the adapters. Serve
    derives the deployments' versions from this document, so a change of the adapters
    alone reconfigures the running replicas instead of replacing them."""
    application: dict[str, Any] = {
        "name": name,
        "route_prefix": "/",
        "import_path": APP_IMPORT_PATH,
        # Unset (None) fields are left out: the app fills in the same defaults, and
        # the RayService does not churn when the config gains a field.
        "args": {"config": config.app_args()},
    }
    if config.lora_enabled:
        application["deployments"] = [
            {"name": pool.name, "user_config": config.adapters_user_config()}
            for pool in config.pools
        ]
    return application
