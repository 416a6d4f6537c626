"""`modelfleet serve FILE`: run a ModelDeployment on a local Ray.

The YAML goes through the same translation the operator uses (`serving_config`), so
what runs here is what a cluster runs, minus the per-pool node pinning.

What a person sees is a few lines of our own: where the logs go, Ray started, the
model loading (with the engine's own progress, read back from the log), the engine
ready, then the endpoint and a curl line to paste. Ray's and the engine's output goes
to a log file instead of the terminal (`--verbose` prints it as it comes). A start-up
failure ends in one line that says what to change, and a non-zero exit:

* before Ray starts, a manifest that needs a cluster (`cluster_needs`) and what this
  machine lacks (`preflight`: a taken port, a missing model path) are refused at once;
* after, the exception and the log are matched against `FAILURES`, a table of the
  failures a newcomer meets (memory for the KV cache, a model that cannot be found,
  tritonserver refusing its repository, ...).

While it serves, it follows edits to the file (`FileWatcher`): a change is deployed
over the running application, and Serve keeps what did not change.

Everything but `serve` itself is pure or nearly so (`preflight` binds a socket and
looks at paths), and tested with tables in tests/unit/test_serve_*.py.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import yaml
from modelfleet_operator.api.v1alpha1 import ModelDeployment
from modelfleet_operator.translate import serving_config
from modelfleet_serving.config import EngineKind, ServingConfig

if TYPE_CHECKING:
    from modelfleet_serving.local import Phase, Terminal

PREFIX = "modelfleet serve"
# The tail of the log searched for the cause of a failure the exception does not name
# (vLLM's engine process reports its error there, and the replica only "failed").
LOG_TAIL_BYTES = 256 * 1024
# The longest cause quoted from an unrecognised error.
QUOTE_CHARS = 240
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


# ------------------------------------------------------------------ cluster only


def cluster_needs(md: ModelDeployment) -> list[str]:
    """What in `md` exists only on a cluster, each with what to change; [] if none.

    A PersistentVolumeClaim (a pvc:// model source or Triton repository) is mounted by
    the operator into Ray pods, and GPU pools are KubeRay worker groups on GPU nodes;
    `modelfleet serve` runs one Ray on this machine's CPUs and has neither.
    """
    needs = []
    source = md.spec.model.source
    if source.startswith("pvc://"):
        needs.append(
            f"model.source {source} is on a PersistentVolumeClaim (point it at "
            "file:///abs/path, hf://org/name or builtin://tiny-llama)"
        )
    for adapter in md.spec.model.adapters:
        if adapter.source.startswith("pvc://"):
            needs.append(
                f"adapter {adapter.name!r} source {adapter.source} is on a "
                "PersistentVolumeClaim (point it at file:///abs/path or hf://org/name)"
            )
    triton = md.spec.engine.triton
    if triton is not None and triton.repository.startswith("pvc://"):
        needs.append(
            f"engine.triton.repository {triton.repository} is on a PersistentVolumeClaim "
            "(point it at file:///abs/path or builtin://tiny-triton-standin)"
        )
    gpu_pools = [p for p in md.spec.node_pools if p.gpu is not None]
    if gpu_pools:
        names = ", ".join(f"{p.name!r} ({p.gpu.type})" for p in gpu_pools if p.gpu)
        pools = "node pool" if len(gpu_pools) == 1 else "node pools"
        needs.append(
            f"{pools} {names} ask{'s' if len(gpu_pools) == 1 else ''} for GPUs (remove "
            "gpu: from the pools; replicas here run on this machine's CPUs)"
        )
    return needs


def cluster_refusal(file: Path, md: ModelDeployment) -> str | None:
    """The one line refusing to serve `md` here, or None when it can run locally."""
    needs = cluster_needs(md)
    if not needs:
        return None
    return (
        f"{file} needs a cluster: {'; '.join(needs)}. Apply it to one with "
        f"`kubectl apply -f {file}`, or change that to serve it here"
    )


# ------------------------------------------------------------------ preflight


def _local_path(source: str | None) -> str | None:
    """The path of a file:// source, else None."""
    if source and source.startswith("file://"):
        return urlparse(source).path
    return None


def port_problem(host: str, port: int) -> str | None:
    """Why `modelfleet serve` could not listen on `host:port`, or None if it can.

    The port is bound for a moment with SO_REUSEADDR, as the HTTP proxy binds it, so a
    port still in TIME_WAIT after a previous run does not count as taken.
    """
    ctx = FailureContext(host=host, port=port)
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except socket.gaierror:
        return _not_local(ctx)
    except OSError as e:
        failure = classify_failure(str(e))
        if failure is None:
            return f"cannot listen on {host}:{port}: {e.strerror}; pass another --host or --port"
        return explain_failure(str(e), "", ctx)
    return None


def model_problems(config: ServingConfig) -> list[str]:
    """Local paths the config names that are missing here, or lack what it expects."""
    problems = []
    path = _local_path(config.model.source)
    if path is not None and not Path(path).exists():
        problems.append(
            f"model.source {config.model.source}: {path} does not exist on this machine; "
            "point model.source at a model directory (file:///abs/path), a Hugging Face "
            "model (hf://org/name) or builtin://tiny-llama"
        )
    triton = config.engine.triton
    if config.engine.kind == EngineKind.TRITON and triton is not None and not triton.url:
        repository = _local_path(triton.repository)
        if repository is not None and not Path(repository).is_dir():
            problems.append(
                f"engine.triton.repository {triton.repository}: {repository} is not a "
                "directory on this machine; point it at a Triton model repository "
                "(file:///abs/path) or builtin://tiny-triton-standin"
            )
        elif repository is not None and not (Path(repository) / triton.model_name).is_dir():
            found = sorted(p.name for p in Path(repository).iterdir() if p.is_dir())
            fix = (
                f"set engine.triton.modelName to one it holds ({', '.join(found)})"
                if found
                else "it holds no model directories: point it at a Triton model repository"
            )
            problems.append(
                f"engine.triton.repository {triton.repository} holds no model "
                f"{triton.model_name!r}; {fix}"
            )
        tokenizer = _local_path(triton.tokenizer)
        if tokenizer is not None and not Path(tokenizer).exists():
            problems.append(
                f"engine.triton.tokenizer {triton.tokenizer}: {tokenizer} does not exist "
                "on this machine; point it at the model's tokenizer or remove it (the "
                "tokenizer of model.source is the default)"
            )
    return problems


def preflight(config: ServingConfig, host: str, port: int) -> str | None:
    """The first reason `config` cannot start here, found before Ray starts, or None."""
    problem = port_problem(host, port)
    if problem:
        return problem
    problems = model_problems(config)
    return problems[0] if problems else None


# ------------------------------------------------------------------ failures


@dataclass(frozen=True)
class FailureContext:
    """What a failure message may name: the command's flags and the spec's values."""

    host: str = "127.0.0.1"
    port: int = 8000
    model_source: str = ""
    max_model_len: int = 0
    cpu_kv_cache_gib: float | None = None
    triton_repository: str | None = None
    triton_server_command: bool = False
    triton_model: str = "ensemble"
    log_path: Path | None = None

    @classmethod
    def of(
        cls, config: ServingConfig, host: str, port: int, log_path: Path | None
    ) -> FailureContext:
        """The context of serving `config` on `host:port`, logging to `log_path`."""
        triton = config.engine.triton
        return cls(
            host=host,
            port=port,
            model_source=config.model.source,
            max_model_len=config.engine.max_model_len,
            cpu_kv_cache_gib=config.engine.cpu_kv_cache_gib,
            triton_repository=triton.repository if triton else None,
            triton_server_command=bool(triton and triton.server_command),
            triton_model=triton.model_name if triton else "ensemble",
            log_path=log_path,
        )

    def kv_cache(self) -> str:
        """engine.cpuKVCacheGiB as set, or its default, for a message."""
        if self.cpu_kv_cache_gib is not None:
            return f"engine.cpuKVCacheGiB: {self.cpu_kv_cache_gib:g}"
        from modelfleet_serving.engines.vllm_engine import DEFAULT_CPU_KV_CACHE_GIB

        return f"engine.cpuKVCacheGiB unset, so {DEFAULT_CPU_KV_CACHE_GIB:g}"

    def see_log(self) -> str:
        """Where the details are, for a message that cannot give them all."""
        return f"; the details are in {self.log_path}" if self.log_path else ""


@dataclass(frozen=True)
class Failure:
    """One class of start-up failure: how to recognise it and what to tell the person."""

    name: str
    pattern: re.Pattern[str]
    message: Callable[[re.Match[str], FailureContext], str]


def _rule(
    name: str, pattern: str, message: Callable[[re.Match[str], FailureContext], str]
) -> Failure:
    return Failure(name, re.compile(pattern, re.IGNORECASE | re.MULTILINE), message)


def _free_memory(match: re.Match[str]) -> str:
    found = re.search(r"Available memory on node \d+ \(([\d.]+)/[\d.]+ GiB\)", match.string)
    return f" ({found.group(1)} GiB)" if found else ""


def _estimated_len(match: re.Match[str]) -> str:
    found = re.search(r"estimated maximum model length is (\d+)", match.string)
    return f" (at most {found.group(1)} fits)" if found else ""


def _triton_cause(match: re.Match[str]) -> str:
    """Triton's own error line from the log tail quoted in the exception, if any."""
    for line in match.string[match.end() :].splitlines():
        line = _ANSI.sub("", line).strip()
        # Triton's error lines start with E and the date (E0101 12:00:00.000 ...).
        error = re.search(r"\bE\d{4} [\d:.]+ +\d+ \S+\] (.+)$", line)
        if error:
            return error.group(1)[:QUOTE_CHARS]
        if line.startswith("error: "):
            return line.removeprefix("error: ")[:QUOTE_CHARS]
    return ""


def _not_local(ctx: FailureContext) -> str:
    return (
        f"cannot listen on {ctx.host}: it is not an address of this machine; pass "
        "--host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every interface)"
    )


def _tritonserver_exit(match: re.Match[str], ctx: FailureContext) -> str:
    cause = _triton_cause(match)
    because = f": {cause}" if cause else ""
    command = " and engine.triton.serverCommand" if ctx.triton_server_command else ""
    return (
        f"tritonserver exited while starting (code {match.group(1)}){because}; check "
        f"engine.triton.repository ({ctx.triton_repository}){command}{ctx.see_log()}"
    )


# Checked in order, first against the exception and then against the log: the more
# specific a rule, the earlier it comes. The network rules come late because Triton's
# and Ray's own ports can clash too, and those are not the --port of the command.
FAILURES: tuple[Failure, ...] = (
    _rule(
        "kv-cache-over-free-memory",
        r"on kv cache allocation is less than requested memory for kv",
        lambda m, c: (
            f"the KV cache ({c.kv_cache()} GiB) does not fit in this machine's "
            f"free memory{_free_memory(m)}; lower engine.cpuKVCacheGiB, or stop other work "
            "to free memory"
        ),
    ),
    _rule(
        "kv-cache-below-one-request",
        r"KV cache is needed, which is larger than the available KV cache memory",
        lambda m, c: (
            f"the KV cache ({c.kv_cache()} GiB) cannot hold one request of "
            f"engine.maxModelLen {c.max_model_len} tokens; raise engine.cpuKVCacheGiB or "
            f"lower engine.maxModelLen{_estimated_len(m)}"
        ),
    ),
    _rule(
        "no-memory-for-kv-cache",
        r"No available memory for the cache blocks",
        lambda m, c: (
            "no memory is left for the KV cache once the model is loaded; raise "
            "engine.cpuKVCacheGiB, or serve a smaller model"
        ),
    ),
    _rule(
        "out-of-memory",
        r"node running low on memory|OutOfMemoryError|CUDA out of memory|"
        r"Cannot allocate memory|\bMemoryError\b",
        lambda m, c: (
            "the machine ran out of memory while the engine started; serve a "
            "smaller model, lower engine.cpuKVCacheGiB or engine.maxNumSeqs, or stop other work"
        ),
    ),
    _rule(
        "model-gated",
        r"gated repo|401 Client Error|403 Client Error|Access to model \S+ is restricted",
        lambda m, c: (
            f"Hugging Face refused {c.model_source}: the model is gated or "
            "private; export HF_TOKEN with a token that may read it"
        ),
    ),
    _rule(
        "model-offline",
        r"couldn't connect to 'https://huggingface\.co'|"
        r"host='huggingface\.co'.*Max retries exceeded|offline mode is enabled",
        lambda m, c: (
            f"{c.model_source} could not be downloaded (Hugging Face cannot be "
            "reached); check the network, or download the model and point model.source at "
            "file:///abs/path"
        ),
    ),
    _rule(
        "model-not-found",
        r"Invalid repository ID or local directory|Repository Not Found|"
        r"is not a local folder and is not a valid model identifier|"
        r"does not appear to have a file named config\.json",
        lambda m, c: (
            f"model {c.model_source} was not found; point model.source at a model "
            "directory with a config.json (file:///abs/path), a Hugging Face model "
            "(hf://org/name) or builtin://tiny-llama"
        ),
    ),
    _rule(
        "triton-download",
        r"could not download nvidia-pytriton|no pip found to download nvidia-pytriton|"
        r"MODELFLEET_TRITON_WHEEL=\S+ is not a file",
        lambda m, c: (
            "tritonserver (PyPI nvidia-pytriton) could not be obtained; download "
            "the wheel and set MODELFLEET_TRITON_WHEEL to its path, or set engine.triton.url "
            "to a running server"
        ),
    ),
    _rule(
        "triton-python-backend",
        r"libpython3\.\d+\S*: cannot open shared object file|No module named 'numpy'",
        lambda m, c: (
            "tritonserver's python backend needs the system's Python libraries; "
            "install them (Debian: apt-get install libpython3.11 python3-numpy)"
        ),
    ),
    _rule(
        "triton-server-command",
        r"engine\.triton\.serverCommand uses placeholders but lacks .*",
        lambda m, c: m.group(0).strip(),
    ),
    _rule(
        "triton-not-ensemble",
        r"Triton model '[^']+' lacks the TensorRT-LLM inputs.*",
        lambda m, c: m.group(0).strip(),
    ),
    _rule(
        "triton-exited",
        r"tritonserver exited with code (-?\d+) while starting",
        _tritonserver_exit,
    ),
    _rule(
        "triton-unreachable",
        r"Triton at (\S+) did not become ready|is not ready on Triton at (\S+)",
        lambda m, c: (
            f"no Triton server serves model {c.triton_model!r} at "
            f"{m.group(1) or m.group(2)}; start it, or fix engine.triton.url and "
            "engine.triton.modelName"
        ),
    ),
    _rule(
        "triton-not-ready",
        r"tritonserver was not ready after (\d+) s",
        lambda m, c: (
            f"tritonserver did not load its models in {m.group(1)} s; check "
            f"engine.triton.repository ({c.triton_repository}){c.see_log()}"
        ),
    ),
    _rule(
        "port-in-use",
        r"address already in use|\[Errno 98\]|EADDRINUSE",
        lambda m, c: (
            f"port {c.port} on {c.host} is already in use; stop what listens "
            "there, or pass another --port (--port 0 picks a free one)"
        ),
    ),
    _rule(
        "host-not-local",
        r"cannot assign requested address|\[Errno 99\]",
        lambda m, c: _not_local(c),
    ),
    _rule(
        "port-needs-root",
        # Only a bind's refusal: the log has other files a process may not open.
        r"^\[Errno 13\] Permission denied$|"
        r"error while attempting to bind on address .*: permission denied",
        lambda m, c: (
            f"port {c.port} needs root privileges; pass a port above 1023 "
            "(--port 0 picks a free one)"
        ),
    ),
    _rule(
        "ray-start-timeout",
        r"timed out during startup",
        lambda m, c: (
            "Ray did not start in time (the machine is busy); try again once "
            "other work has finished"
        ),
    ),
)

# The last line of a Python exception, as a replica's traceback quotes it.
_EXCEPTION_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$", re.MULTILINE)


def _last_cause(text: str) -> str:
    """The innermost error a traceback names, or the last non-empty line."""
    found = _EXCEPTION_LINE.findall(_ANSI.sub("", text))
    if found:
        kind, message = found[-1]
        return f"{kind}: {message.strip()}"[:QUOTE_CHARS]
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return lines[-1][:QUOTE_CHARS] if lines else "unknown error"


def classify_failure(text: str) -> Failure | None:
    """The first rule of `FAILURES` that matches `text`, or None."""
    for failure in FAILURES:
        if failure.pattern.search(text):
            return failure
    return None


def explain_failure(error: str, log: str, ctx: FailureContext) -> str:
    """The one line that says why serving failed and what to change.

    `error` is the exception's text (with its causes), `log` the tail of the log; the
    exception is trusted first, since a log also holds warnings of things that went on
    to work.
    """
    for text in (error, log):
        for failure in FAILURES:
            match = failure.pattern.search(text)
            if match:
                return failure.message(match, ctx)
    return f"start-up failed: {_last_cause(error)}{ctx.see_log()}"


def exception_text(exc: BaseException) -> str:
    """`exc` and the exceptions it was raised from, as text."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


# ------------------------------------------------------------------ progress


def _seconds(text: str) -> str:
    """A duration the engine logged, rounded for a person (0.01 stays visible)."""
    value = float(text)
    return f"{value:.2f} s" if value < 1 else f"{value:.1f} s"


# Lines of the replicas' logs worth a line of ours: (key, pattern, message). A key is
# told once, so a second replica loading the same model adds nothing. A replica's own
# tritonserver writes to a log file of its own, which the replica names.
_PROGRESS: tuple[tuple[str, re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (
        "weights",
        re.compile(r"Loading weights took ([\d.]+) seconds"),
        lambda m: f"weights loaded in {_seconds(m.group(1))}",
    ),
    (
        "weights",
        re.compile(r"Model loading took ([\d.]+) GiB(?: memory)? and ([\d.]+) seconds"),
        lambda m: f"weights loaded: {m.group(1)} GiB in {_seconds(m.group(2))}",
    ),
    (
        "compile",
        re.compile(r"Warming up model for the compilation|Compiling a graph for"),
        lambda m: "compiling and warming up the model (a minute or more on a first start)",
    ),
    (
        "kv-cache",
        re.compile(
            r"(?:CPU|GPU) KV cache size: ([\d,]+) tokens"
            r"(?:.*Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x)?"
        ),
        lambda m: (
            f"KV cache: {m.group(1)} tokens"
            + (
                f" (enough for {float(m.group(3)):g} requests of {m.group(2)} tokens)"
                if m.group(3)
                else ""
            )
        ),
    ),
    (
        "engine",
        re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s"),
        lambda m: f"engine initialised in {_seconds(m.group(1))}",
    ),
    (
        "tritonserver",
        re.compile(r"tritonserver \(pid \d+\) serves \S+ and logs to (\S+)"),
        lambda m: f"tritonserver started; its own log is {m.group(1)}",
    ),
)
_SHARDS = re.compile(
    r"Loading (?:safetensors )?checkpoint shards:\s+(\d+)% Completed \| (\d+)/(\d+)"
)


class ProgressParser:
    """Turns engine log lines into the few progress lines a person wants to see.

    Weight shards are reported at each quarter (a 70B checkpoint has dozens of them);
    every other event once (see `_PROGRESS`).
    """

    def __init__(self) -> None:
        self._told: set[str] = set()
        self._shard_quarter = 0

    def feed(self, line: str) -> str | None:
        """The progress line for this log line, or None."""
        line = _ANSI.sub("", line)
        shards = _SHARDS.search(line)
        if shards and "weights" not in self._told:
            done, total = int(shards.group(2)), int(shards.group(3))
            quarter = 4 * done // total if total else 0
            if done == 0 or quarter <= self._shard_quarter:
                return None
            self._shard_quarter = quarter
            return f"loading weights: {done}/{total} checkpoint shards"
        for key, pattern, message in _PROGRESS:
            if key in self._told:
                continue
            match = pattern.search(line)
            if match:
                self._told.add(key)
                return message(match)
        return None


# ------------------------------------------------------------------ the command


def log_path_for(name: str, now: datetime | None = None) -> Path:
    """A new log file for serving deployment `name`, in the temporary directory.

    The time and the process id keep two runs of the same deployment apart.
    """
    import os
    import tempfile

    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    name = f"serve-{name}-{stamp}-{os.getpid()}.log"
    return Path(tempfile.gettempdir()) / "modelfleet" / name


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _replicas(config: ServingConfig) -> str:
    count = sum(p.min_replicas for p in config.pools)
    return f"{count} replica{'' if count == 1 else 's'}"


def _engine_name(config: ServingConfig) -> str:
    return "Triton" if config.engine.kind == EngineKind.TRITON else "vLLM"


def _needs_cpu_tritonserver(config: ServingConfig) -> bool:
    """Whether replicas will run the CPU tritonserver, which may need downloading."""
    triton = config.engine.triton
    return (
        config.engine.kind == EngineKind.TRITON
        and triton is not None
        and not triton.url
        and not triton.server_command
        and shutil.which("tritonserver") is None
    )


# Locally the API keys come from MODELFLEET_API_KEYS, read once; with this variable
# naming a file they come from that file instead, re-read twice a second as in a
# cluster, so keys can be rotated while it serves.
API_KEYS_FILE_ENV = "MODELFLEET_API_KEYS_FILE"


def local_config(md: ModelDeployment) -> ServingConfig:
    """The ServingConfig `modelfleet serve` runs for `md` (see API_KEYS_FILE_ENV)."""
    config = serving_config(md, in_cluster=False)
    keys_file = os.environ.get(API_KEYS_FILE_ENV)
    if config.api_keys_env and keys_file:
        config = config.model_copy(update={"api_keys_env": None, "api_keys_file": keys_file})
    return config


def serve(file: Path, host: str, port: int, *, verbose: bool = False) -> int:
    """Serve the ModelDeployment in `file` on `host:port` (0: a free port) until Ctrl-C.

    Returns 0 after Ctrl-C once serving, 2 for a manifest that cannot be served here, 1
    for a failure to start, 130 for Ctrl-C while starting.
    """
    from pydantic import ValidationError

    try:
        md = ModelDeployment.from_object(yaml.safe_load(file.read_text()))
        config = local_config(md)
    except (OSError, yaml.YAMLError, ValidationError) as e:
        print(f"{PREFIX}: {file}: {e}", file=sys.stderr)
        return 2
    refusal = cluster_refusal(file, md)
    if refusal:
        print(f"{PREFIX}: {refusal}", file=sys.stderr)
        return 2
    problem = preflight(config, host, port)
    if problem:
        print(f"{PREFIX}: {problem}", file=sys.stderr)
        return 1

    from modelfleet_serving.local import Terminal, output_to_file

    watcher = FileWatcher(file, config)
    if verbose:
        terminal = Terminal(sys.stdout, sys.stderr)
        return _serve(config, host, port, terminal, log_path=None, watcher=watcher)
    log_path = log_path_for(config.name)
    with output_to_file(log_path) as terminal:
        return _serve(config, host, port, terminal, log_path, watcher=watcher)


class FileWatcher:
    """Follows edits to the served file while it serves (`poll`, once a second).

    A change of `model.adapters` comes back as the new config, to deploy over the
    running one: the replicas load and unload adapters without a restart. Anything
    else (a parse error, a new name, more CPUs than the local Ray has, what only a
    cluster has, any other field) is said in one line and the server keeps the config
    it runs: locally the one front door owns the port, so it cannot be rolled over.
    """

    def __init__(self, file: Path, config: ServingConfig) -> None:
        self.file = file
        self.config = config
        self.say: Callable[[str], None] = lambda text: None
        self._seen = self._read()

    def _read(self) -> str | None:
        try:
            return self.file.read_text()
        except OSError:
            return None

    def poll(self) -> ServingConfig | None:
        """The file's new config when it changed and can be applied, else None."""
        from modelfleet_serving.local import logical_cpus
        from pydantic import ValidationError

        text = self._read()
        if text is None or text == self._seen:
            return None
        self._seen = text
        try:
            md = ModelDeployment.from_object(yaml.safe_load(text))
            config = local_config(md)
        except (yaml.YAMLError, ValidationError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.say(f"{self.file} changed but cannot be read ({first}); still serving as before")
            return None
        problem = None
        if config.name != self.config.name:
            problem = f"metadata.name changed to {config.name!r} (restart to serve a new name)"
        elif logical_cpus(config) > logical_cpus(self.config):
            problem = (
                f"it needs {logical_cpus(config)} Ray CPUs and this Ray has "
                f"{logical_cpus(self.config)} (restart to serve it)"
            )
        elif cluster_needs(md):
            problem = "; ".join(cluster_needs(md))
        elif _without_adapters(config) != _without_adapters(self.config):
            problem = (
                "it changes more than model.adapters, the one thing applied while serving "
                "(restart to apply the rest)"
            )
        if problem:
            self.say(f"{self.file} changed but {problem}; still serving as before")
            return None
        if config == self.config:
            return None
        self.config = config
        self.say(f"{self.file} changed; applying it to the running server...")
        return config


def _without_adapters(config: ServingConfig) -> ServingConfig:
    return config.model_copy(update={"adapters": []})


def _serve(
    config: ServingConfig,
    host: str,
    port: int,
    terminal: Terminal,
    log_path: Path | None,
    watcher: FileWatcher | None = None,
) -> int:
    """Start and run the server, telling `terminal` how it goes (see the module doc)."""
    from modelfleet_serving.local import LogFollower, Phase, logical_cpus, run_local

    started = time.monotonic()
    engine = _engine_name(config)
    ctx = FailureContext.of(config, host, port, log_path)

    def say(text: str) -> None:
        print(f"modelfleet: {text}", file=terminal.out, flush=True)
        if log_path is not None:
            # The same line in the log, so that the log reads as the whole story.
            print(f"modelfleet: {text}", flush=True)

    def on_log_line(line: str) -> None:
        if line.startswith("modelfleet: "):
            return
        progress = parser.feed(line)
        if progress:
            say(progress)

    def on_phase(phase: Phase) -> None:
        if phase is Phase.RAY_STARTED:
            say(
                f"Ray started; loading {config.model.served_name!r} with {engine} "
                f"({_replicas(config)})..."
            )
        elif phase is Phase.STOPPING:
            say("stopping Serve and Ray...")
        elif phase is Phase.RELOADED:
            say("the changed file is applied")

    def ready(base_url: str) -> None:
        say(f"{engine} engine ready after {_duration(time.monotonic() - started)}")
        body = (
            f'{{"model": "{config.model.served_name}", '
            '"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}'
        )
        auth = ""
        if config.api_keys_env or config.api_keys_file:
            auth = ' -H "Authorization: Bearer $KEY"'
        say(f"serving {config.model.served_name!r} at {base_url}/v1")
        print(
            f"curl -s {base_url}/v1/chat/completions -H 'Content-Type: application/json'"
            f"{auth} -d {shlex.quote(body)}",
            file=terminal.out,
            flush=True,
        )
        print("Press Ctrl-C to stop.", file=terminal.out, flush=True)

    parser = ProgressParser()
    reload = None
    if watcher is not None:
        watcher.say = say
        reload = watcher.poll
    if log_path is not None:
        say(f"Ray's and {engine}'s logs go to {log_path} (--verbose prints them here)")
    try:
        if _needs_cpu_tritonserver(config):
            _ensure_cpu_tritonserver(say)
        say(f"starting Ray ({logical_cpus(config)} CPUs)...")
        run = functools.partial(
            run_local, config, host, port, on_ready=ready, on_phase=on_phase, reload=reload
        )
        if log_path is None:
            status = run()
        else:
            with LogFollower(log_path, on_log_line):
                status = run()
    except KeyboardInterrupt:
        status = 130
    except Exception as e:
        # The whole story goes to the log (or, with --verbose, the terminal), and the
        # person gets one line.
        traceback.print_exc()
        sys.stderr.flush()
        message = explain_failure(exception_text(e), _log_tail(log_path), ctx)
        print(f"{PREFIX}: {message}", file=terminal.err, flush=True)
        return 1
    say("stopped" if status == 0 else "stopped before it was ready")
    return status


def _ensure_cpu_tritonserver(say: Callable[[str], None]) -> None:
    """Install the CPU tritonserver now, in sight, rather than silently in a replica."""
    from modelfleet_serving.engines.triton_install import TritonInstall, ensure_tritonserver
    from modelfleet_serving.engines.triton_install import install_dir as triton_dir

    if not TritonInstall(triton_dir()).is_complete():
        say("downloading tritonserver's CPU build (PyPI nvidia-pytriton, once)...")
    ensure_tritonserver()


def _log_tail(log_path: Path | None) -> str:
    """The end of the log, where a failing engine reported why."""
    if log_path is None:
        return ""
    try:
        with log_path.open("rb") as log:
            log.seek(0, 2)
            size = log.tell()
            log.seek(max(0, size - LOG_TAIL_BYTES))
            return log.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
