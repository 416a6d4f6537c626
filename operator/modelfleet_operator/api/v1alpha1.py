"""ModelDeployment v1alpha1: the single source of truth for the CRD and its validation.

The CRD YAML in manifests/crds/ is generated from these models, so every
description, default, enum and bound written here reaches `kubectl explain` and the
apiserver. Field names follow Kubernetes conventions (camelCase on the wire);
Python code uses the snake_case attribute names.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "modelfleet.io"
VERSION = "v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["md"]
API_VERSION = f"{GROUP}/{VERSION}"

ScalarArg = str | int | float | bool


class _Spec(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Quantization(StrEnum):
    NONE = "none"
    AWQ = "awq"
    GPTQ = "gptq"
    FP8 = "fp8"
    INT8 = "int8"
    INT4 = "int4"


class EngineKind(StrEnum):
    VLLM = "vllm"
    TRITON = "triton"


class SecretKeyRef(_Spec):
    """A key inside a Secret in the ModelDeployment's namespace."""

    name: Annotated[str, Field(min_length=1, description="Name of the Secret.")]
    key: Annotated[str, Field(min_length=1, description="Key inside the Secret.")]


class ModelSpec(_Spec):
    source: Annotated[
        str,
        Field(
            description="Where the weights live: hf://org/name, s3://bucket/prefix, "
            "pvc://claim/path (mounted read-only), file:///abs/path, or builtin://tiny-llama "
            "(a generated test model).",
            pattern=r"^(hf|s3|pvc|file|builtin)://.+",
        ),
    ]
    served_name: Annotated[
        str,
        Field(
            description='The OpenAI "model" value clients send.',
            min_length=1,
            max_length=128,
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        ),
    ]
    quantization: Quantization = Field(
        default=Quantization.NONE, description="Weight quantization of the checkpoint."
    )
    dtype: Annotated[
        str,
        Field(
            description="Activation dtype: auto, float16, bfloat16 or float32.",
            pattern=r"^(auto|float16|bfloat16|float32|half)$",
        ),
    ] = "auto"
    credentials_secret_ref: Annotated[
        str | None,
        Field(
            description="Secret whose keys become environment variables of the Ray pods "
            "(HF_TOKEN, AWS_ACCESS_KEY_ID, ...) to read the model source.",
        ),
    ] = None


class TritonSpec(_Spec):
    model_name: Annotated[
        str, Field(description="Model in the repository: ensemble or tensorrt_llm_bls.")
    ] = "ensemble"
    repository: Annotated[
        str,
        Field(
            description="TensorRT-LLM model repository: pvc://claim/path or file:///abs/path.",
            pattern=r"^(pvc|file|s3)://.+",
        ),
    ]
    url: Annotated[
        str | None,
        Field(description="host:port of a running Triton gRPC endpoint to use instead."),
    ] = None
    tokenizer: Annotated[
        str | None,
        Field(description="Tokenizer source for chat templates and usage; defaults to model."),
    ] = None


class EngineSpec(_Spec):
    kind: EngineKind = Field(default=EngineKind.VLLM, description="Inference engine.")
    max_model_len: Annotated[
        int, Field(ge=16, le=1_048_576, description="Context length in tokens.")
    ] = 8192
    max_num_seqs: Annotated[
        int, Field(ge=1, le=4096, description="Sequences batched together per replica.")
    ] = 64
    gpu_memory_utilization: Annotated[
        float, Field(gt=0, le=0.99, description="Fraction of GPU memory the engine may use.")
    ] = 0.9
    tensor_parallel_size: Annotated[int, Field(ge=1, le=64)] = 1
    pipeline_parallel_size: Annotated[int, Field(ge=1, le=64)] = 1
    cpu_kv_cache_gib: Annotated[
        float | None,
        Field(
            alias="cpuKVCacheGiB",
            gt=0,
            description="KV-cache size for CPU-only pools (VLLM_CPU_KVCACHE_SPACE).",
        ),
    ] = None
    extra_args: dict[str, ScalarArg] = Field(
        default_factory=dict,
        description="Further engine flags by name (e.g. enable-prefix-caching: true); "
        "checked against the engine's known flags.",
    )
    triton: TritonSpec | None = Field(default=None, description="Only with kind: triton.")


class GPUSpec(_Spec):
    type: Annotated[str, Field(min_length=1, description="GPU model, e.g. L20, A100, H100.")]
    memory_gib: Annotated[
        float, Field(alias="memoryGiB", gt=0, description="Memory of one GPU in GiB.")
    ]


class Toleration(_Spec):
    key: str | None = None
    operator: str | None = None
    value: str | None = None
    effect: str | None = None
    toleration_seconds: int | None = None


class NodePoolSpec(_Spec):
    name: Annotated[
        str,
        Field(
            description="Pool name; becomes a KubeRay worker group and a Serve deployment.",
            pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
            max_length=30,
        ),
    ]
    gpu: GPUSpec | None = Field(default=None, description="GPUs of the pool; absent = CPU.")
    cpu: Annotated[float, Field(gt=0, description="CPU cores per replica.")] = 1.0
    memory_gib: Annotated[
        float | None, Field(alias="memoryGiB", gt=0, description="Memory per replica, GiB.")
    ] = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    min_replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=1000)] = 1
    priority: Annotated[
        int, Field(ge=0, le=1000, description="Lower is preferred; overflow spills to the next.")
    ] = 0


class AutoscalingSpec(_Spec):
    target_queue_depth: Annotated[
        float, Field(gt=0, description="Waiting requests per replica the autoscaler aims for.")
    ] = 8
    upscale_delay_seconds: Annotated[float, Field(ge=0)] = 10
    downscale_delay_seconds: Annotated[float, Field(ge=0)] = 120


class ServingSpec(_Spec):
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding accepted API keys, comma-separated."
    )
    max_queued_requests: Annotated[int, Field(ge=1, description="Beyond this: HTTP 429.")] = 256
    request_timeout_seconds: Annotated[float, Field(gt=0)] = 600


class MonitoringSpec(_Spec):
    service_monitor: bool = Field(
        default=True, description="Create a ServiceMonitor when its CRD exists."
    )
    dashboards: bool = Field(default=True, description="Create the Grafana dashboards ConfigMap.")


class ModelDeploymentSpec(_Spec):
    model: ModelSpec
    engine: EngineSpec = Field(default_factory=EngineSpec)
    node_pools: list[NodePoolSpec] = Field(min_length=1, max_length=8)
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    image: Annotated[
        str | None,
        Field(description="Ray container image; defaults to the operator's configured image."),
    ] = None


class ObjectMeta(BaseModel):
    """The part of metadata the API reads; everything else is kept as it is."""

    model_config = ConfigDict(extra="allow")

    name: str
    namespace: str | None = None


class ModelDeployment(BaseModel):
    """A whole ModelDeployment object as written by a user (status is not read)."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    kind: str = KIND
    metadata: ObjectMeta
    spec: ModelDeploymentSpec

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> ModelDeployment:
        """Parse a dict as read from YAML or the Kubernetes API."""
        return cls.model_validate(obj)
