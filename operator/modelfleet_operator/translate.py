"""The one translation both the operator and `modelfleet serve` use:
ModelDeployment spec → ServingConfig.

In the cluster the translation also decides where the files of pvc:// sources appear:
`pvc_mounts` names the claims the worker pods mount, and `serving_config(md,
in_cluster=True)` points the sources at them, so both follow the one path rule below.

Pure: no Kubernetes, Kopf or Ray imports.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelfleet_serving.config import (
    API_KEYS_FILE,
    DEFAULT_API_KEYS_ENV,
    PVC_MOUNT_ROOT,
    AdapterConfig,
    AutoscalingConfig,
    EngineConfig,
    EngineKind,
    ModelConfig,
    PoolConfig,
    RoutingPolicy,
    ServingConfig,
    TritonConfig,
)

from modelfleet_operator.api.v1alpha1 import ModelDeployment, NodePoolSpec, Quantization


def pool_resource_name(pool: str) -> str:
    """The custom Ray resource a pool's worker group advertises and its replicas request.

    Pinning replicas by a custom resource (rather than by GPU type) keeps each pool's
    Serve deployment on that pool's KubeRay worker group even when two pools carry the
    same GPU model.
    """
    return f"modelfleet_pool_{pool.replace('-', '_')}"


_PVC_SCHEME = "pvc://"


@dataclass(frozen=True)
class PVCMount:
    """One PersistentVolumeClaim mounted read-only into the Ray workers."""

    claim: str
    volume: str

    @property
    def mount_path(self) -> str:
        """Where the claim's files appear inside the containers."""
        return _mount_path(self.claim)


def _mount_path(claim_and_path: str) -> str:
    """The path rule: `claim/path` of a pvc:// source lies at this path in the pods."""
    return f"{PVC_MOUNT_ROOT}/{claim_and_path}"


def _is_pvc(source: str) -> bool:
    return source.startswith(_PVC_SCHEME)


def _in_cluster_source(source: str) -> str:
    """pvc://claim/path → the file:// URL of the same files under the mount; others as-is."""
    if not _is_pvc(source):
        return source
    return f"file://{_mount_path(source.removeprefix(_PVC_SCHEME))}"


def _pvc_sources(md: ModelDeployment) -> list[str]:
    """The pvc:// sources of `md`, among its weights, adapters and Triton repository."""
    sources = [md.spec.model.source, *(a.source for a in md.spec.model.adapters)]
    if md.spec.engine.triton is not None:
        sources.append(md.spec.engine.triton.repository)
    return [s for s in sources if _is_pvc(s)]


def pvc_mounts(md: ModelDeployment) -> list[PVCMount]:
    """The claims named by pvc:// sources (model weights, Triton repository), sorted."""
    claims = sorted({s.removeprefix(_PVC_SCHEME).split("/", 1)[0] for s in _pvc_sources(md)})
    return [PVCMount(claim=claim, volume=f"pvc-{i}") for i, claim in enumerate(claims)]


def _pool(pool: NodePoolSpec, gpus_per_replica: int, *, in_cluster: bool) -> PoolConfig:
    return PoolConfig(
        name=pool.name,
        min_replicas=pool.min_replicas,
        max_replicas=pool.max_replicas,
        priority=pool.priority,
        num_gpus=gpus_per_replica if pool.gpu is not None else 0,
        num_cpus=pool.cpu,
        resources={pool_resource_name(pool.name): 1.0} if in_cluster else {},
    )


def serving_config(md: ModelDeployment, *, in_cluster: bool) -> ServingConfig:
    """Build the Serve application's config from a ModelDeployment.

    `in_cluster` is the config the operator ships in the RayService: it adds the
    per-pool custom resources that only exist on the RayCluster the operator renders
    (a local Ray has one node and no such resources), and it rewrites pvc:// sources
    to the files the workers see under the mounts of `pvc_mounts`, so the serving app
    reads local files and never needs Kubernetes access.
    """
    spec = md.spec
    engine = spec.engine
    keys = spec.serving.api_key_secret_ref is not None

    def source(value: str) -> str:
        return _in_cluster_source(value) if in_cluster else value

    triton = None
    if engine.triton is not None:
        triton = TritonConfig(
            model_name=engine.triton.model_name,
            repository=source(engine.triton.repository),
            url=engine.triton.url,
            server_command=engine.triton.server_command,
            metrics_url=engine.triton.metrics_url,
            tokenizer=engine.triton.tokenizer,
        )
    engine_config = EngineConfig(
        kind=EngineKind(engine.kind.value),
        max_model_len=engine.max_model_len,
        max_num_seqs=engine.max_num_seqs,
        gpu_memory_utilization=engine.gpu_memory_utilization,
        tensor_parallel_size=engine.tensor_parallel_size,
        pipeline_parallel_size=engine.pipeline_parallel_size,
        extra_args=dict(engine.extra_args),
        triton=triton,
        cpu_kv_cache_gib=engine.cpu_kv_cache_gib,
        max_loras=engine.max_loras,
        # Only with LoRA on: the arguments of deployments without it stay as they were.
        max_lora_rank=engine.max_lora_rank
        if spec.model.adapters or engine.max_loras is not None
        else None,
    )
    quantization = spec.model.quantization
    return ServingConfig(
        name=md.metadata.name,
        model=ModelConfig(
            source=source(spec.model.source),
            served_name=spec.model.served_name,
            quantization=None if quantization is Quantization.NONE else quantization.value,
            dtype=spec.model.dtype,
        ),
        engine=engine_config,
        pools=[
            _pool(p, engine_config.gpus_per_replica, in_cluster=in_cluster) for p in spec.node_pools
        ],
        autoscaling=AutoscalingConfig(
            target_queue_depth=spec.autoscaling.target_queue_depth,
            upscale_delay_s=spec.autoscaling.upscale_delay_seconds,
            downscale_delay_s=spec.autoscaling.downscale_delay_seconds,
        ),
        max_queued_requests=spec.serving.max_queued_requests,
        request_timeout_s=spec.serving.request_timeout_seconds,
        routing=RoutingPolicy(spec.serving.routing.value),
        # In a cluster the Secret is a mounted file, re-read when it changes (no restart
        # for a rotated key); `modelfleet serve` reads a variable.
        api_keys_env=None if in_cluster or not keys else DEFAULT_API_KEYS_ENV,
        api_keys_file=API_KEYS_FILE if in_cluster and keys else None,
        adapters=[AdapterConfig(name=a.name, source=source(a.source)) for a in spec.model.adapters],
    )
