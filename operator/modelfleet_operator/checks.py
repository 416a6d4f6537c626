"""Checks of a ModelDeployment that the CRD schema cannot express.

The apiserver already refuses what the schema and CEL rules catch. What reaches the
operator may still be unworkable; these checks turn that into `Validated=False` with a
message a person can act on, instead of an exception in a handler.

Pure: no Kubernetes, Kopf or Ray imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from modelfleet_operator.api.v1alpha1 import EngineKind, ModelDeployment
from modelfleet_operator.engine_flags import lint_extra_args
from modelfleet_operator.translate import serving_config


@dataclass(frozen=True)
class Checked:
    """A parsed ModelDeployment (None when it could not be parsed) and its problems."""

    md: ModelDeployment | None
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """True when the object parsed and no check found a problem."""
        return self.md is not None and not self.problems


def _describe(error: ValidationError) -> list[str]:
    """One line per pydantic error, located by the wire (camelCase) path."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "object"
        lines.append(f"{where}: {item['msg']}")
    return lines


def problems(md: ModelDeployment) -> list[str]:
    """What makes a schema-valid ModelDeployment unable to run, each with its fix.

    Engine flags the engine does not know are among them: the replica's argument
    parser would refuse them on a GPU node minutes later.
    """
    engine = md.spec.engine
    found = lint_extra_args(engine.kind, engine.extra_args)
    if engine.kind is not EngineKind.VLLM and (
        md.spec.model.adapters or engine.max_loras is not None
    ):
        found.append(
            f"model.adapters and engine.maxLoras need engine.kind: vllm (this one is "
            f"{engine.kind}); remove them, or serve the adapters' merged weights as a model"
        )
    gpus = engine.tensor_parallel_size * engine.pipeline_parallel_size
    for pool in md.spec.node_pools:
        if pool.gpu is None and gpus > 1:
            found.append(
                f"pool {pool.name!r} has no gpu, but engine.tensorParallelSize "
                f"{engine.tensor_parallel_size} x pipelineParallelSize "
                f"{engine.pipeline_parallel_size} asks for {gpus} GPUs per replica; "
                "give the pool a gpu or set both sizes to 1"
            )
        kv = engine.cpu_kv_cache_gib
        memory = pool.memory_gib
        if pool.gpu is None and kv is not None and memory is not None and memory <= kv:
            found.append(
                f"pool {pool.name!r}: memoryGiB {memory:g} cannot hold "
                f"engine.cpuKVCacheGiB {kv:g} of KV cache plus the model; raise "
                f"memoryGiB above {kv:g} or lower cpuKVCacheGiB"
            )
    return found


def check(obj: dict[str, Any]) -> Checked:
    """Parse a ModelDeployment as read from the API and run every check on it.

    Parsing can fail although the apiserver accepted the object, for values the
    schema leaves open (engine.extraArgs takes any value there); that is reported as
    a problem too.
    """
    try:
        md = ModelDeployment.from_object(obj)
    except ValidationError as error:
        return Checked(md=None, problems=_describe(error))
    found = problems(md)
    if not found:
        # The ServingConfig has its own rules; a spec that breaks them cannot be served.
        try:
            serving_config(md, in_cluster=True)
        except ValidationError as error:
            found = _describe(error)
    return Checked(md=md, problems=found)
