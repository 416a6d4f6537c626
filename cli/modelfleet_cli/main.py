"""`modelfleet`: the command line of the platform.

Each subcommand imports its implementation only when it runs, so `modelfleet --help`
stays fast and a machine without vLLM can still render or run the operator.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    from modelfleet_cli.serve import serve

    return serve(args.file, host=args.host, port=args.port, verbose=args.verbose)


def _render(args: argparse.Namespace) -> int:
    from modelfleet_cli.render import render

    return render(args.file, image=args.image, namespace=args.namespace)


def _plan(args: argparse.Namespace) -> int:
    from modelfleet_cli.plan import plan

    return plan(
        args.file,
        output=args.output,
        context=args.context,
        namespace=args.namespace,
        offline=args.offline,
    )


def _operator(args: argparse.Namespace) -> int:
    from modelfleet_cli.run_operator import run_operator

    return run_operator(
        namespace=args.namespace,
        health_port=args.health_port,
        metrics_port=args.metrics_port,
        image=args.image,
        webhook_port=args.webhook_port,
        webhook_cert_dir=args.webhook_cert_dir,
    )


def _bench(args: argparse.Namespace) -> int:
    from modelfleet_cli.bench.cli import run_bench

    return run_bench(args)


def _dashboards(args: argparse.Namespace) -> int:
    from modelfleet_cli.dashboards import export, push

    if args.action == "export":
        return export(args.dir)
    return push(args.grafana_url, token=args.token, folder=args.folder)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="modelfleet",
        description="Serve large language models on Kubernetes with Ray Serve and vLLM or Triton.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run a ModelDeployment on a local Ray",
        description="Run a ModelDeployment YAML on a local Ray: the same Serve application "
        "the operator deploys, on this machine.",
    )
    serve.add_argument("file", type=Path, help="ModelDeployment YAML")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (0: a free one)")
    serve.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print Ray's and the engine's logs here as they come, instead of into a log file",
    )
    serve.set_defaults(func=_serve)

    render = sub.add_parser(
        "render",
        help="print the objects the operator would create",
        description="Print, as YAML, the Kubernetes objects the operator creates for a "
        "ModelDeployment, from the same code the operator runs.",
    )
    render.add_argument("file", type=Path, help="ModelDeployment YAML")
    render.add_argument("--image", default=None, help="default Ray image (as the operator's)")
    render.add_argument("--namespace", default="default", help="namespace when the file has none")
    render.set_defaults(func=_render)

    plan = sub.add_parser(
        "plan",
        help="check that a ModelDeployment fits, and what applying it changes",
        description="Per node pool: weights per GPU, KV-cache tokens, requests of maxModelLen "
        "at once, headroom, the engine-flag lint and the verdict with the fix. With a "
        "cluster (KUBECONFIG or --context) also the fields that change, whether KubeRay "
        "applies them in place or builds a new RayCluster, and the GPUs that needs against "
        "what each pool's nodes have free. Exit 0: fits; 1: does not fit; 2: invalid file.",
    )
    plan.add_argument("file", type=Path, help="ModelDeployment YAML")
    plan.add_argument("--output", "-o", choices=["text", "json"], default="text")
    plan.add_argument("--context", default=None, help="kubeconfig context of the cluster")
    plan.add_argument(
        "--namespace", default=None, help="namespace when the file has none (with a cluster)"
    )
    plan.add_argument(
        "--offline",
        action="store_true",
        help="do not read the model's config.json from the hub (estimate from the name)",
    )
    plan.set_defaults(func=_plan)

    op = sub.add_parser(
        "operator",
        help="run the Kubernetes operator",
        description="Reconcile ModelDeployment objects into KubeRay RayServices.",
    )
    op.add_argument(
        "--namespace",
        action="append",
        default=None,
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    op.add_argument("--health-port", type=int, default=8080, help="liveness/readiness port")
    op.add_argument("--metrics-port", type=int, default=9090, help="Prometheus metrics port")
    op.add_argument("--image", default=None, help="default Ray image for RayServices")
    op.add_argument(
        "--webhook-port",
        type=int,
        default=None,
        help="serve the validating admission webhook (HTTPS) on this port; default: off",
    )
    op.add_argument(
        "--webhook-cert-dir",
        type=Path,
        default=None,
        help="directory holding the webhook's tls.crt and tls.key",
    )
    op.set_defaults(func=_operator)

    bench = sub.add_parser(
        "bench",
        help="load-test an OpenAI-compatible endpoint",
        description="Send streaming requests to an OpenAI-compatible endpoint and report "
        "TTFT, TPOT, ITL and end-to-end latency percentiles, throughput and goodput.",
    )
    from modelfleet_cli.bench.options import add_bench_arguments

    add_bench_arguments(bench)
    bench.set_defaults(func=_bench)

    dash = sub.add_parser(
        "dashboards",
        help="export or upload the Grafana dashboards",
        description="Write the Grafana dashboards as JSON, or upload them into a Grafana folder.",
    )
    dash_sub = dash.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = dash_sub.add_parser("export", help="write the dashboards' JSON into DIR")
    export.add_argument("dir", type=Path, help="directory to write into")
    push = dash_sub.add_parser("push", help="upload the dashboards (idempotent)")
    push.add_argument("--grafana-url", required=True, help="e.g. http://127.0.0.1:3000")
    push.add_argument(
        "--token", default=None, help="service-account token (default: $GRAFANA_TOKEN)"
    )
    push.add_argument("--folder", default="modelfleet", help="Grafana folder title")
    dash.set_defaults(func=_dashboards)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `modelfleet` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    webhook_flags = (getattr(args, "webhook_port", None), getattr(args, "webhook_cert_dir", None))
    if (webhook_flags[0] is None) != (webhook_flags[1] is None):
        parser.error("--webhook-port and --webhook-cert-dir go together")
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
