"""Lint of `engine.extraArgs` against the flags the engine knows.

A misspelt flag would otherwise surface only when a GPU pod starts and the engine's
argument parser exits, minutes later and far from the `kubectl apply` that caused it.
The webhook and the reconcile refuse it at once, with the closest known flag as a
suggestion; flags the spec already owns (maxModelLen, tensorParallelSize, ...) are
refused with the field to set instead, because the operator passes those itself and a
second value would conflict; and a value the flag cannot take (a value for a switch,
`false` for a flag that has no `--no-` form, a choice outside its list) is refused
with what it takes.

The flags are read from data files that `make generate` writes: vLLM's from the very
parser `vllm serve` and the replicas use (`make_arg_parser`: the OpenAI frontend's
flags such as `tool-call-parser` and `chat-template` as well as the engine's), and
Triton's from `tritonserver --help`. The operator never imports vLLM. Drift tests
(tests/unit/test_engine_flags_drift.py) regenerate them where the tools exist.

Pure: no Kubernetes, Kopf or Ray imports.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources

from modelfleet_operator.api.v1alpha1 import EngineKind, ScalarArg

VLLM_FLAGS_FILE = "vllm_flags.txt"
TRITON_FLAGS_FILE = "triton_flags.txt"

# What a flag takes, as the data files say: nothing (switch), true/false (bool), a
# value (value), or a value or nothing (optional).
SWITCH, BOOL, VALUE, OPTIONAL = "switch", "bool", "value", "optional"

# vLLM flags the operator derives from the spec or the replica's own wiring, and the
# field to set instead. The replica serves through Ray Serve, so the HTTP server's
# own address, TLS and key flags would be parsed and then ignored.
VLLM_OWNED: Mapping[str, str] = {
    "model": "model.source",
    "served-model-name": "model.servedName",
    "quantization": "model.quantization",
    "dtype": "model.dtype",
    "max-model-len": "engine.maxModelLen",
    "max-num-seqs": "engine.maxNumSeqs",
    "gpu-memory-utilization": "engine.gpuMemoryUtilization",
    "tensor-parallel-size": "engine.tensorParallelSize",
    "pipeline-parallel-size": "engine.pipelineParallelSize",
    "api-key": "serving.apiKeySecretRef",
    "disable-log-stats": "nothing: modelfleet's own metrics replace vLLM's",
    "host": "nothing: the endpoint is Ray Serve's, behind the <name>-openai Service",
    "port": "nothing: the endpoint is Ray Serve's, behind the <name>-openai Service",
    "uds": "nothing: the endpoint is Ray Serve's, behind the <name>-openai Service",
    "ssl-keyfile": "nothing: the endpoint is Ray Serve's, behind the <name>-openai Service",
    "ssl-certfile": "nothing: the endpoint is Ray Serve's, behind the <name>-openai Service",
    "headless": "nothing: each replica runs one engine of its own",
    "api-server-count": "nothing: each replica runs one engine of its own",
    "config": "nothing: write the flags themselves into engine.extraArgs",
}

TRITON_OWNED: Mapping[str, str] = {
    "model-repository": "engine.triton.repository",
    "model-store": "engine.triton.repository",
    "http-address": "nothing: the replica binds its own addresses",
    "http-port": "nothing: the replica picks its own ports",
    "grpc-address": "nothing: the replica binds its own addresses",
    "grpc-port": "nothing: the replica picks its own ports",
    "metrics-address": "nothing: the replica binds its own addresses",
    "metrics-port": "nothing: the replica picks its own ports",
    "allow-metrics": "nothing: modelfleet reads Triton's metrics itself",
    "allow-gpu-metrics": "nothing: modelfleet reads Triton's metrics itself",
    "exit-timeout-secs": "nothing: the replica sets its own shutdown timeout",
}


@dataclass(frozen=True)
class Flag:
    """One engine flag: its name, what it takes, and the values it accepts (if fixed)."""

    name: str
    takes: str
    choices: tuple[str, ...] = ()


def parse_flag_file(text: str) -> dict[str, Flag]:
    """The flags of a generated flag file (see scripts/generate.py for the format)."""
    flags = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(" ")
        takes, _, choices = rest.partition(" ")
        flags[name] = Flag(name, takes or VALUE, tuple(c for c in choices.split(",") if c))
    return flags


def _load(file: str) -> dict[str, Flag]:
    return parse_flag_file((resources.files("modelfleet_operator") / "data" / file).read_text())


@cache
def vllm_flag_table() -> dict[str, Flag]:
    """vLLM's server flags by name (dashed, without `--`), from the committed data file."""
    return _load(VLLM_FLAGS_FILE)


@cache
def triton_flag_table() -> dict[str, Flag]:
    """tritonserver's options by name, from the committed data file."""
    return _load(TRITON_FLAGS_FILE)


def vllm_flags() -> frozenset[str]:
    """vLLM's server flag names (dashed, without `--`)."""
    return frozenset(vllm_flag_table())


def triton_flags() -> frozenset[str]:
    """tritonserver's option names."""
    return frozenset(triton_flag_table())


def known_flags(kind: EngineKind) -> tuple[Mapping[str, Flag], Mapping[str, str]]:
    """The flags `kind` accepts and the ones the spec owns (flag → field to set)."""
    if kind is EngineKind.TRITON:
        return triton_flag_table(), TRITON_OWNED
    return vllm_flag_table(), VLLM_OWNED


def _check_value(name: str, flag: Flag, value: ScalarArg) -> str | None:
    """The problem with giving `value` to `flag`, or None."""
    where = f"engine.extraArgs {name!r}"
    if flag.takes == SWITCH:
        if value is True:
            return None
        if value is False:
            return f"{where} is off unless given; remove it instead of writing false"
        return f"{where} takes no value; write true to give it"
    if flag.takes == BOOL:
        if isinstance(value, bool):
            return None
        return f"{where} is on or off; write true or false, not {value!r}"
    if value is True and flag.takes == OPTIONAL:
        return None
    if isinstance(value, bool):
        return f"{where} needs a value, not {str(value).lower()}"
    if flag.choices and str(value) not in flag.choices:
        close = difflib.get_close_matches(str(value), flag.choices, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{where}: {value!r} is not one of {', '.join(flag.choices)}{hint}"
    return None


def _check_one(
    kind: EngineKind,
    name: str,
    value: ScalarArg,
    known: Mapping[str, Flag],
    owned: Mapping[str, str],
) -> str | None:
    """The problem with one extraArgs entry, or None when it is fine."""
    if name.startswith("-"):
        return f"engine.extraArgs {name!r}: write the flag without leading dashes"
    # The engine command line is built with dashes, so both spellings name one flag.
    flag = name.replace("_", "-")
    if flag in owned:
        instead = owned[flag]
        if instead.startswith("nothing"):
            return f"engine.extraArgs {name!r} is set by modelfleet; remove it ({instead})"
        return f"engine.extraArgs {name!r} is owned by the spec; set {instead} instead"
    if flag in known:
        return _check_value(name, known[flag], value)
    negated = flag.removeprefix("no-")
    if negated != flag and negated in known:
        return f"engine.extraArgs {name!r}: write {negated}: false instead"
    close = difflib.get_close_matches(flag, sorted(set(known) | set(owned)), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"engine.extraArgs {name!r} is not a known {kind.value} flag{hint}"


def lint_extra_args(kind: EngineKind, extra_args: Mapping[str, ScalarArg]) -> list[str]:
    """One message per unusable extraArgs entry, each saying how to fix it."""
    known, owned = known_flags(kind)
    found = (_check_one(kind, name, value, known, owned) for name, value in extra_args.items())
    return [problem for problem in found if problem is not None]
