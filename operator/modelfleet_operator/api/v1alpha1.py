"""ModelDeployment v1alpha1: the single source of truth for the CRD and its validation.

The CRD YAML in manifests/crds/ is generated from these models, so every
description, default, enum and bound written here reaches `kubectl explain` and the
apiserver. Field names follow Kubernetes conventions (camelCase on the wire);
Python code uses the snake_case attribute names.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

# Generated from vLLM's list of methods (`make generate`); re-exported as part of the API.
from modelfleet_operator.api.quantization import Quantization as Quantization

GROUP = "modelfleet.io"
VERSION = "v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["md"]
API_VERSION = f"{GROUP}/{VERSION}"

# KubeRay refuses RayService names longer than this (its RayCluster names get a suffix),
# and the name must be a DNS-1035 label because it also names Services.
MAX_NAME_LENGTH = 47

ScalarArg = str | int | float | bool


def cel(rule: str, message: str) -> dict[str, str]:
    """One CEL rule for `x-kubernetes-validations`, checked by the apiserver.

    The message says what is wrong and how to fix it; the apiserver prefixes it with
    the path of the offending field (e.g. spec.nodePools[1]).
    """
    return {"rule": rule, "message": message}


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules into the generated schema."""
    return {"x-kubernetes-validations": list(rules)}


# Object fields whose members all have defaults get `default: {}` in the CRD, so the
# apiserver fills in the members' defaults even when the user leaves the object out.
FILL_DEFAULTS: dict[str, Any] = {"default": {}}


class _Spec(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class RoutingPolicy(StrEnum):
    """How the front door picks a replica within a pool."""

    PREFIX_AWARE = "prefix-aware"
    LEAST_LOADED = "least-loaded"


class EngineKind(StrEnum):
    """Inference engine a replica runs."""

    VLLM = "vllm"
    TRITON = "triton"


class SecretKeyRef(_Spec):
    """A key inside a Secret in the ModelDeployment's namespace."""

    name: Annotated[str, Field(min_length=1, description="Name of the Secret.")]
    key: Annotated[str, Field(min_length=1, description="Key inside the Secret.")]


class ModelShapeSpec(_Spec):
    """The model's shape, stated by the user where the operator cannot read the checkpoint.

    The capacity check reads `config.json` and the weights' size itself for hf://,
    file:// and builtin:// sources; for pvc:// and s3:// (or a hub it cannot reach)
    it uses these figures, and only without them falls back to guessing from the name.
    Give the size (parameters or weightBytes, or the architecture to sum it from) and,
    for the KV cache, layers, kvHeads and headDim (or hiddenSize and attentionHeads).
    """

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.parameters) || has(self.weightBytes) || (has(self.hiddenSize) && "
                "has(self.layers) && has(self.attentionHeads) && has(self.intermediateSize) "
                "&& has(self.vocabSize))",
                "model.shape needs the model's size: set parameters or weightBytes (or "
                "hiddenSize, layers, attentionHeads, intermediateSize and vocabSize)",
            ),
        )
    )

    hidden_size: Annotated[int | None, Field(ge=1, description="hidden_size of config.json.")] = (
        None
    )
    layers: Annotated[
        int | None, Field(ge=1, description="Decoder layers (num_hidden_layers).")
    ] = None
    attention_heads: Annotated[
        int | None, Field(ge=1, description="Attention heads (num_attention_heads).")
    ] = None
    kv_heads: Annotated[
        int | None,
        Field(
            ge=1,
            description="Key/value heads (num_key_value_heads; fewer than the attention "
            "heads with grouped-query attention). Defaults to attentionHeads.",
        ),
    ] = None
    head_dim: Annotated[
        int | None,
        Field(ge=1, description="Size of one head; defaults to hiddenSize / attentionHeads."),
    ] = None
    intermediate_size: Annotated[
        int | None, Field(ge=1, description="MLP intermediate_size (per expert for MoE).")
    ] = None
    vocab_size: Annotated[int | None, Field(ge=1, description="Vocabulary size.")] = None
    parameters: Annotated[
        int | None, Field(ge=1, description="Parameter count, e.g. 8030261248.")
    ] = None
    weight_bytes: Annotated[
        int | None,
        Field(
            ge=1,
            description="Bytes of the weights as the GPUs hold them (the checkpoint's "
            "size for a quantized checkpoint); wins over parameters for the weights.",
        ),
    ] = None

    @model_validator(mode="after")
    def _has_a_size(self) -> ModelShapeSpec:
        architecture = (
            self.hidden_size,
            self.layers,
            self.attention_heads,
            self.intermediate_size,
            self.vocab_size,
        )
        if self.parameters is None and self.weight_bytes is None and None in architecture:
            raise ValueError(
                "model.shape needs the model's size: set parameters or weightBytes (or "
                "hiddenSize, layers, attentionHeads, intermediateSize and vocabSize)"
            )
        return self


class AdapterSpec(_Spec):
    """A LoRA adapter of the model, served under a name of its own."""

    name: Annotated[
        str,
        Field(
            description='The OpenAI "model" value that selects the adapter.',
            min_length=1,
            max_length=128,
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        ),
    ]
    source: Annotated[
        str,
        Field(
            description="Where the adapter's files (adapter_config.json and weights) live: "
            "the same schemes as the model's source; builtin://tiny-llama-lora is a "
            "generated adapter of builtin://tiny-llama.",
            pattern=r"^(hf|s3|pvc|file|builtin)://.+",
        ),
    ]


class ModelSpec(_Spec):
    """The model to serve: where its weights live and the name clients use."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.adapters) || self.adapters.all(a, a.name != self.servedName)",
                "an adapter has the model's own servedName; give the adapter another name",
            ),
        )
    )

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
        default=Quantization.NONE,
        description="Weight quantization: none (vLLM reads a quantized checkpoint's own "
        "method from its config.json) or one of vLLM's methods, e.g. awq, gptq, fp8.",
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
            min_length=1,
            max_length=253,
        ),
    ] = None
    shape: ModelShapeSpec | None = Field(
        default=None,
        description="The model's shape for the capacity check, where the operator cannot "
        "read the checkpoint (pvc://, s3://) or to override what it reads.",
    )
    adapters: list[AdapterSpec] = Field(
        default_factory=list,
        max_length=64,
        description="LoRA adapters served next to the model, each under its own name. "
        "Adding or removing one loads or unloads it on the running replicas, without a "
        "restart, once the engine runs with LoRA support (adapters listed, or "
        "engine.maxLoras set, when the replicas started). vLLM only.",
        json_schema_extra=validations(
            cel(
                "self.all(a, self.filter(b, b.name == a.name).size() == 1)",
                "adapter names must be unique; rename the repeated adapter",
            )
        ),
    )


class TritonSpec(_Spec):
    """Triton server with a TensorRT-LLM model repository (engine.kind: triton)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.serverCommand) || !has(self.url)",
                "engine.triton.serverCommand starts the replica's own server, and url "
                "names a server it does not start; remove one of them",
            ),
            cel(
                "!has(self.metricsUrl) || has(self.url)",
                "engine.triton.metricsUrl is read only for the server at engine.triton.url "
                "(a replica's own server reports on its own port); set url or remove metricsUrl",
            ),
        )
    )

    model_name: Annotated[
        str, Field(description="Model in the repository: ensemble or tensorrt_llm_bls.")
    ] = "ensemble"
    repository: Annotated[
        str,
        Field(
            description="TensorRT-LLM model repository: pvc://claim/path, file:///abs/path, "
            "s3://bucket/prefix, or builtin://tiny-triton-standin (a python-backend stand-in "
            "with TensorRT-LLM's tensor names, for trying the Triton path on CPU).",
            pattern=r"^((pvc|file|s3)://.+|builtin://tiny-triton-standin)$",
        ),
    ]
    url: Annotated[
        str | None,
        Field(description="host:port of a running Triton gRPC endpoint to use instead."),
    ] = None
    server_command: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=4096)]] | None,
        Field(
            description="The command that starts Triton in the image, when it is not plain "
            "tritonserver (default: tritonserver on PATH, else the CPU build from PyPI "
            "nvidia-pytriton). modelfleet appends --model-repository and loopback "
            "--http/--grpc/--metrics address and port flags; if any argument holds "
            "{repository}, {http_port}, {grpc_port} or {metrics_port}, it substitutes those "
            "instead and appends nothing ({http_port} and {grpc_port} are then required). "
            "The command must stay in the foreground while the server runs.",
            min_length=1,
            max_length=256,
        ),
    ] = None
    metrics_url: Annotated[
        str | None,
        Field(
            description="Prometheus endpoint of the server at url, for queue depth and "
            "KV-cache usage (default: http://<url host>:8002/metrics).",
            pattern=r"^https?://.+",
        ),
    ] = None
    tokenizer: Annotated[
        str | None,
        Field(description="Tokenizer source for chat templates and usage; defaults to model."),
    ] = None


class EngineSpec(_Spec):
    """Engine settings shared by every replica."""

    # `has(self.kind)` guards: the apiserver also checks the rules against `default: {}`,
    # before the members' own defaults are filled in.
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.triton) || (has(self.kind) && self.kind == 'triton')",
                "engine.triton is only allowed with engine.kind: triton; "
                "remove engine.triton or set engine.kind: triton",
            ),
            cel(
                "!has(self.kind) || self.kind != 'triton' || has(self.triton)",
                "engine.kind: triton needs engine.triton with at least repository "
                "(pvc://claim/path, s3:// or file://)",
            ),
        )
    )

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
    tensor_parallel_size: Annotated[
        int, Field(ge=1, le=64, description="GPUs one replica splits each layer across.")
    ] = 1
    pipeline_parallel_size: Annotated[
        int, Field(ge=1, le=64, description="Pipeline stages per replica (GPUs = TP x PP).")
    ] = 1
    cpu_kv_cache_gib: Annotated[
        float | None,
        Field(
            alias="cpuKVCacheGiB",
            gt=0,
            description="KV-cache size for CPU-only pools (VLLM_CPU_KVCACHE_SPACE).",
        ),
    ] = None
    max_loras: Annotated[
        int | None,
        Field(
            ge=1,
            le=256,
            description="LoRA adapters one batch may mix (vLLM --max-loras); default 4 "
            "when model.adapters is set. Set it with no adapters to start the engine with "
            "LoRA support, so that adapters can be added later without a restart.",
        ),
    ] = None
    max_lora_rank: Annotated[
        int,
        Field(
            ge=1,
            le=512,
            description="Largest adapter rank the engine accepts (vLLM --max-lora-rank); "
            "an adapter of higher rank fails to load.",
        ),
    ] = 16
    extra_args: dict[str, ScalarArg] = Field(
        default_factory=dict,
        description="Further engine flags by name (e.g. enable-prefix-caching: true); "
        "checked against the engine's known flags. Values are strings, numbers or booleans.",
    )
    triton: TritonSpec | None = Field(default=None, description="Only with kind: triton.")


class GPUSpec(_Spec):
    """The GPUs of a node pool's nodes."""

    type: Annotated[str, Field(min_length=1, description="GPU model, e.g. L20, A100, H100.")]
    memory_gib: Annotated[
        float, Field(alias="memoryGiB", gt=0, description="Memory of one GPU in GiB.")
    ]


class Toleration(_Spec):
    """A Kubernetes toleration copied onto the pool's Ray worker pods."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.operator) || self.operator != 'Exists' || !has(self.value)",
                "a toleration with operator: Exists takes no value; remove value or use Equal",
            )
        )
    )

    key: str | None = Field(default=None, description="Taint key; empty matches all keys.")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (the default)."
    )
    value: str | None = Field(default=None, description="Taint value (with Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated."
    )


class NodePoolSpec(_Spec):
    """A group of nodes: one KubeRay worker group and one Serve deployment."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.minReplicas <= self.maxReplicas",
                "minReplicas is greater than maxReplicas: raise maxReplicas or lower minReplicas",
            )
        )
    )

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
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pool's Ray worker pods require."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations of the worker pods."
    )
    min_replicas: Annotated[
        int, Field(ge=0, le=1000, description="Replicas (worker pods) kept at least.")
    ] = 1
    max_replicas: Annotated[
        int, Field(ge=1, le=1000, description="Replicas (worker pods) the autoscaler may reach.")
    ] = 1
    priority: Annotated[
        int, Field(ge=0, le=1000, description="Lower is preferred; overflow spills to the next.")
    ] = 0


class HeadSpec(_Spec):
    """The Ray head pod: the GCS, the dashboard, the Serve controller and the front door.

    It never runs an engine, so it needs no GPU; its CPU is a request without a limit
    (it bursts into what the node has free), its memory both request and limit.
    """

    cpu: Annotated[float, Field(gt=0, description="CPU cores requested for the head pod.")] = 1.0
    memory_gib: Annotated[
        float, Field(alias="memoryGiB", gt=0, description="Memory of the head pod, GiB.")
    ] = 4.0


class AutoscalingSpec(_Spec):
    """Queue-depth autoscaling of each pool's replicas."""

    target_queue_depth: Annotated[
        float, Field(gt=0, description="Waiting requests per replica the autoscaler aims for.")
    ] = 8
    upscale_delay_seconds: Annotated[
        float, Field(ge=0, description="How long the queue must stay high before scaling up.")
    ] = 10
    downscale_delay_seconds: Annotated[
        float, Field(ge=0, description="How long the queue must stay low before scaling down.")
    ] = 120


class ServingSpec(_Spec):
    """The OpenAI-compatible endpoint."""

    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding accepted API keys, comma-separated."
    )
    max_queued_requests: Annotated[int, Field(ge=1, description="Beyond this: HTTP 429.")] = 256
    request_timeout_seconds: Annotated[
        float, Field(gt=0, description="Longest a request may take, queueing included.")
    ] = 600
    routing: RoutingPolicy = Field(
        default=RoutingPolicy.PREFIX_AWARE,
        description="How requests pick a replica within a pool: prefix-aware sends "
        "prompts that begin alike to the replica whose prefix cache holds them, within "
        "a bound on its load; least-loaded picks the replica with the fewest requests.",
    )


class MonitoringSpec(_Spec):
    """Prometheus scraping and Grafana dashboards."""

    service_monitor: bool = Field(
        default=True, description="Create a ServiceMonitor when its CRD exists."
    )
    dashboards: bool = Field(default=True, description="Create the Grafana dashboards ConfigMap.")


class ModelDeploymentSpec(_Spec):
    """A model served behind an OpenAI-compatible endpoint on one or more node pools."""

    model: ModelSpec
    engine: EngineSpec = Field(default_factory=EngineSpec, json_schema_extra=FILL_DEFAULTS)
    node_pools: list[NodePoolSpec] = Field(
        min_length=1,
        max_length=8,
        description="Node pools in order of preference (see priority).",
        json_schema_extra=validations(
            cel(
                "self.all(p, self.filter(q, q.name == p.name).size() == 1)",
                "nodePools names must be unique; rename the repeated pool",
            )
        ),
    )
    head: HeadSpec = Field(default_factory=HeadSpec, json_schema_extra=FILL_DEFAULTS)
    autoscaling: AutoscalingSpec = Field(
        default_factory=AutoscalingSpec, json_schema_extra=FILL_DEFAULTS
    )
    serving: ServingSpec = Field(default_factory=ServingSpec, json_schema_extra=FILL_DEFAULTS)
    monitoring: MonitoringSpec = Field(
        default_factory=MonitoringSpec, json_schema_extra=FILL_DEFAULTS
    )
    image: Annotated[
        str | None,
        Field(
            description="Ray container image; defaults to the operator's configured image.",
            min_length=1,
        ),
    ] = None


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(BaseModel):
    """One condition, shaped as Kubernetes' metav1.Condition."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    type: str = Field(
        description=(
            "Validated, CapacityFits, RayServiceReady, PoolsSchedulable, UpgradeBlocked or Ready."
        )
    )
    status: ConditionStatus
    reason: str = Field(description="CamelCase word for machines.")
    message: str = Field(default="", description="What happened and what to do, for people.")
    last_transition_time: str | None = Field(
        default=None, description="When status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, description="The generation of the spec this condition was computed from."
    )


class PoolStatus(BaseModel):
    """What KubeRay reports for one node pool's Serve deployment."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    name: str
    state: str = Field(
        default="Unknown", description="Serve deployment status: HEALTHY, UPDATING, UNHEALTHY."
    )
    message: str = ""
    min_replicas: int
    max_replicas: int


class CapacityStatus(BaseModel):
    """Estimated capacity of one replica in the most constrained GPU pool."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    pool: str = Field(description="The GPU pool with the fewest KV-cache tokens.")
    shape_from: str | None = Field(
        default=None,
        description="Where the model's shape came from: spec.model.shape, the checkpoint, "
        "or the model's name (then every figure is an estimate from the name).",
    )
    weights_gib_per_gpu: float = Field(
        alias="weightsGiBPerGpu", description="Model weights per GPU, GiB."
    )
    kv_cache_tokens: int | None = Field(
        default=None, description="Tokens the KV cache of one replica holds."
    )
    max_concurrent_at_max_len: int | None = Field(
        default=None, description="Sequences of maxModelLen tokens one replica holds at once."
    )


class ModelDeploymentStatus(BaseModel):
    """Written by the operator only; the CRD's status subresource."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    observed_generation: int | None = Field(
        default=None, description="The generation the operator last acted on."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    endpoint: str | None = Field(
        default=None, description="Base URL of the OpenAI-compatible API inside the cluster."
    )
    ready_replicas: int | None = Field(
        default=None, description="Ray worker pods ready (one replica each), all pools."
    )
    desired_replicas: int | None = Field(
        default=None, description="Ray worker pods KubeRay wants, all pools."
    )
    pools: list[PoolStatus] = Field(
        default_factory=list,
        description="Per node pool: its Serve deployment's state and replica bounds.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
    )
    ray_service: str | None = Field(default=None, description="Name of the owned RayService.")
    capacity: CapacityStatus | None = Field(
        default=None, description="Estimated from the spec; absent when it cannot be."
    )


class ObjectMeta(BaseModel):
    """The part of metadata the API reads; everything else is kept as it is."""

    model_config = ConfigDict(extra="allow")

    name: str
    namespace: str | None = None


# `kubectl get md` columns.
PRINTER_COLUMNS: tuple[dict[str, str], ...] = (
    {"name": "Engine", "type": "string", "jsonPath": ".spec.engine.kind"},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.servedName"},
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    },
    {
        "name": "Replicas",
        "type": "integer",
        "jsonPath": ".status.readyReplicas",
        "description": "Ready replicas, all pools.",
    },
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
)

# Rules about the object as a whole: only the root schema may read metadata.name.
ROOT_VALIDATIONS: tuple[dict[str, str], ...] = (
    cel(
        f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
        f"metadata.name must be at most {MAX_NAME_LENGTH} characters (KubeRay's limit for "
        "RayService names): choose a shorter name",
    ),
    cel(
        "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        "metadata.name must start with a letter and contain only lower-case letters, "
        "digits and '-' (a DNS-1035 label: it also names the RayService and Services)",
    ),
)


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
