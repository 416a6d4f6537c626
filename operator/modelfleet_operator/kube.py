"""The operator's Kubernetes I/O: read, server-side apply, delete, status patches, discovery.

Objects travel as plain dicts (what `render` builds and the API returns), through the
kubernetes client's generic request path, so one code path serves Services,
RayServices and ModelDeployments alike.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from modelfleet_operator.api import v1alpha1
from modelfleet_operator.names import FIELD_MANAGER, PLURALS, RAY_API_VERSION, RAY_SERVICE_PLURAL

Object = dict[str, Any]

# Kind → plural of every kind the operator reads or writes.
_PLURALS = {**PLURALS, v1alpha1.KIND: v1alpha1.PLURAL}


def connect() -> client.ApiClient:
    """An API client from the in-cluster ServiceAccount, else from KUBECONFIG."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


def object_path(api_version: str, kind: str, namespace: str, name: str) -> str:
    """The REST path of a namespaced object."""
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{namespace}/{_PLURALS[kind]}/{name}"


def _path_of(obj: Object) -> str:
    meta = obj["metadata"]
    return object_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])


class Kube:
    """The few API calls the operator makes, as plain dicts in and out."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._api = api_client

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str | None = None,
        query: list[tuple[str, Any]] | None = None,
    ) -> Object | None:
        """One request; the decoded JSON answer, None on 404, ApiException otherwise."""
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        request = self._api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(*request, _request_timeout=30)
        data = response.read()  # type: ignore[no-untyped-call]
        if response.status == 404:
            return None
        text = data.decode() if data else ""
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=text, data=None)
        answer: Object = json.loads(text) if text else {}
        return answer

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Object | None:
        """The object, or None when it does not exist."""
        return self._call("GET", object_path(api_version, kind, namespace, name))

    def live(self, obj: Object) -> Object | None:
        """The live counterpart of a rendered object, or None."""
        return self._call("GET", _path_of(obj))

    def apply(self, obj: Object) -> Object:
        """Server-side apply `obj` as the operator's field manager, taking fields back.

        `force` re-acquires fields someone else changed (a manual edit of the
        RayService); that is the drift repair. An apply that changes nothing writes
        nothing, so repeating it every drift interval is cheap.
        """
        applied = self._call(
            "PATCH",
            _path_of(obj),
            body=obj,
            content_type="application/apply-patch+yaml",
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        )
        if applied is None:
            raise ApiException(status=404, reason=f"applying {_path_of(obj)} answered 404")
        return applied

    def delete(
        self, api_version: str, kind: str, namespace: str, name: str, *, uid: str | None = None
    ) -> None:
        """Delete an object; one already gone (404) is fine.

        With `uid` the API server deletes only the object of that uid (a precondition)
        and answers 409 for another one that took the name since it was read.
        """
        options: Object = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        self._call(
            "DELETE",
            object_path(api_version, kind, namespace, name),
            body=options,
            content_type="application/json",
        )

    def patch_status(self, namespace: str, name: str, patch: Object) -> None:
        """Merge-patch the status of a ModelDeployment (its status subresource)."""
        path = object_path(v1alpha1.API_VERSION, v1alpha1.KIND, namespace, name) + "/status"
        self._call(
            "PATCH", path, body={"status": patch}, content_type="application/merge-patch+json"
        )

    def pods(self, namespace: str, label_selector: str) -> list[Object]:
        """The pods of `namespace` that match `label_selector`."""
        answer = self._call(
            "GET",
            f"/api/v1/namespaces/{namespace}/pods",
            query=[("labelSelector", label_selector)],
        )
        return list((answer or {}).get("items") or [])

    def node_usage(self) -> tuple[list[Object], list[Object]] | None:
        """Every Node, and every bound pod of any namespace that is not done (what holds
        the nodes' GPUs); None when RBAC does not let this operator list them."""
        try:
            nodes = self._call("GET", "/api/v1/nodes")
            pods = self._call(
                "GET",
                "/api/v1/pods",
                query=[
                    (
                        "fieldSelector",
                        "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed",
                    )
                ],
            )
        except ApiException as error:
            if error.status == 403:
                return None
            raise
        return list((nodes or {}).get("items") or []), list((pods or {}).get("items") or [])

    def serves(self, api_version: str, plural: str) -> bool:
        """Whether the API server serves `plural` in `api_version` (discovery, no RBAC)."""
        resources = self._call("GET", f"/apis/{api_version}")
        return plural in {r.get("name") for r in (resources or {}).get("resources", [])}

    def kuberay_missing(self) -> str | None:
        """Why RayServices cannot be created (their CRD is not served), or None.

        Discovery is readable by every authenticated user, so this needs no RBAC rule.
        """
        resources = self._call("GET", f"/apis/{RAY_API_VERSION}")
        served = {r.get("name") for r in (resources or {}).get("resources", [])}
        if RAY_SERVICE_PLURAL in served:
            return None
        return (
            f"the API server does not serve {RAY_SERVICE_PLURAL}.{RAY_API_VERSION.split('/')[0]} "
            f"({RAY_API_VERSION}): install KubeRay (its CRDs and operator, v1.5 or later); "
            "retrying"
        )
