"""`modelfleet dashboards export|push`: the Grafana dashboards as files or in a Grafana."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from modelfleet_operator.dashboards import dashboard_files, dashboards

TOKEN_ENV = "GRAFANA_TOKEN"


def export(directory: Path) -> int:
    """Write every dashboard's JSON into `directory` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in dashboard_files().items():
        (directory / name).write_text(text, encoding="utf-8")
        print(directory / name)
    return 0


def folder_uid(title: str) -> str:
    """The folder uid `push` uses for a folder title: stable, so reruns find the folder."""
    slug = re.sub(r"[^a-z0-9-]+", "-", title.lower()).strip("-")
    # Grafana caps uids at 40 characters.
    return slug[:40] or "modelfleet"


def push(grafana_url: str, token: str | None = None, folder: str = "modelfleet") -> int:
    """Upload every dashboard into the Grafana folder titled `folder`.

    Idempotent: the folder is created only when no folder has that title, and each
    dashboard overwrites the one with its uid, so a second push changes nothing but
    Grafana's version counter. `token` defaults to $GRAFANA_TOKEN; without either,
    credentials in the URL (http://user:password@host) are used.
    """
    # Imported here so `export` and the operator do not pay for the HTTP client.
    from grafana_client.api import GrafanaApi
    from grafana_client.client import GrafanaException

    token = token or os.environ.get(TOKEN_ENV) or None
    api = GrafanaApi.from_url(grafana_url, credential=token)
    try:
        target = _ensure_folder(api, folder)
        for name, dashboard in dashboards().items():
            api.dashboard.update_dashboard(
                {
                    "dashboard": dashboard,
                    "folderUid": target,
                    "overwrite": True,
                    "message": "modelfleet dashboards push",
                }
            )
            print(f"{name} → {grafana_url.rstrip('/')} folder {folder!r}")
    except GrafanaException as exc:
        print(f"error: Grafana answered {exc.status_code}: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _ensure_folder(api: Any, title: str) -> str:
    """The uid of the folder titled `title`, creating it when there is none."""
    for existing in api.folder.get_all_folders():
        if existing.get("title") == title:
            return str(existing["uid"])
    created = api.folder.create_folder(title, uid=folder_uid(title))
    return str(created["uid"])
