"""`modelfleet serve FILE`: run a ModelDeployment on a local Ray.

The YAML goes through the same translation the operator uses (`serving_config`), so
what runs here is what a cluster runs, minus the per-pool node pinning.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import yaml
from modelfleet_operator.api.v1alpha1 import ModelDeployment
from modelfleet_operator.translate import serving_config


def serve(file: Path, host: str, port: int) -> int:
    """Serve the ModelDeployment in `file` on `host:port` (0: a free port) until Ctrl-C."""
    from pydantic import ValidationError

    try:
        md = ModelDeployment.from_object(yaml.safe_load(file.read_text()))
        config = serving_config(md, in_cluster=False)
    except (OSError, yaml.YAMLError, ValidationError) as e:
        print(f"modelfleet serve: {file}: {e}", file=sys.stderr)
        return 2

    from modelfleet_serving.local import run_local

    def ready(base_url: str) -> None:
        body = (
            f'{{"model": "{config.model.served_name}", '
            '"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}'
        )
        auth = ""
        if config.api_keys_env:
            auth = f' -H "Authorization: Bearer ${config.api_keys_env}"'
        print(f"modelfleet: serving {config.model.served_name!r} at {base_url}/v1", flush=True)
        print(
            f"curl -s {base_url}/v1/chat/completions -H 'Content-Type: application/json'"
            f"{auth} -d {shlex.quote(body)}",
            flush=True,
        )
        print("Press Ctrl-C to stop.", flush=True)

    return run_local(config, host, port, on_ready=ready)
