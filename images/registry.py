"""Push an image from an :class:`images.oci.Store` to a registry, over its HTTP API.

This is the OCI distribution API's push, as ``crane push`` or ``docker push`` do it:
each blob the registry lacks (``HEAD`` answers 404) is uploaded in one ``POST`` + ``PUT``,
streamed from the store's file, then the manifest is ``PUT`` under its tag. It speaks
HTTPS (or plain HTTP with ``insecure=True``) and answers a registry's ``Basic`` or
``Bearer`` token challenge with the credentials given, so it works with a registry of
one's own as well as with the throwaway one of the test node (``connect`` lets the
test reach a registry inside a network namespace).
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import ssl
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from images import oci

# How to open the TCP connection to (host, port); default: an ordinary one.
Connector = Callable[[tuple[str, int]], socket.socket]

_CHUNK = 1 << 20
TIMEOUT = 600.0


class PushError(RuntimeError):
    """The registry refused a step of the push; the message has its answer."""


class Registry:
    """One registry, by ``host[:port]``, and the credentials for it (if any)."""

    def __init__(
        self,
        host: str,
        *,
        insecure: bool = False,
        username: str | None = None,
        password: str | None = None,
        connect: Connector | None = None,
    ) -> None:
        """Prepare to talk to ``host``; nothing is sent before :meth:`push`."""
        self.host = host
        self.insecure = insecure
        self._credentials = (username, password) if username is not None else None
        self._connect = connect
        self._authorization: str | None = None

    def push(self, store: oci.Store, image: oci.Image, repository: str, tag: str) -> str:
        """Push ``image`` as ``repository:tag``; return the manifest digest it has there.

        Blobs already in the repository are not sent again, so a second push of the
        same image sends only the manifest.
        """
        for blob in (*image.layers, image.config):
            if not self._has_blob(repository, blob):
                self._upload(repository, blob, store)
        manifest = store.blob(image.manifest.digest).read_bytes()
        response, _ = self._request(
            "PUT",
            f"/v2/{repository}/manifests/{tag}",
            body=manifest,
            headers={"Content-Type": image.manifest.media_type},
            expect=(201,),
            scope=repository,
        )
        digest = response.getheader("Docker-Content-Digest") or image.manifest.digest
        if digest != image.manifest.digest:
            raise PushError(f"the registry stored the manifest as {digest}, not {image.digest}")
        return digest

    def manifest(self, repository: str, reference: str) -> dict[str, Any]:
        """The manifest of ``repository:reference`` as the registry serves it."""
        accept = f"{oci.MEDIA_TYPE_MANIFEST}, {oci.MEDIA_TYPE_INDEX}"
        _, body = self._request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": accept},
            expect=(200,),
            scope=repository,
        )
        data: dict[str, Any] = json.loads(body)
        return data

    # ------------------------------------------------------------------------ steps

    def _has_blob(self, repository: str, blob: oci.Descriptor) -> bool:
        response, _ = self._request(
            "HEAD", f"/v2/{repository}/blobs/{blob.digest}", expect=(200, 404), scope=repository
        )
        return response.status == 200

    def _upload(self, repository: str, blob: oci.Descriptor, store: oci.Store) -> None:
        response, _ = self._request(
            "POST", f"/v2/{repository}/blobs/uploads/", expect=(202,), scope=repository
        )
        location = response.getheader("Location")
        if not location:
            raise PushError(f"the registry gave no upload location for {blob.digest}")
        url = urllib.parse.urlsplit(location)
        query = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
        query.append(("digest", blob.digest))
        path = f"{url.path}?{urllib.parse.urlencode(query)}"
        with store.blob(blob.digest).open("rb") as data:
            self._request(
                "PUT",
                path,
                body=data,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(blob.size),
                },
                expect=(201,),
                scope=repository,
            )

    # ------------------------------------------------------------------------- HTTP

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | Any = None,
        headers: Mapping[str, str] | None = None,
        expect: tuple[int, ...],
        scope: str,
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """Send one request (once more after answering an auth challenge)."""
        for attempt in range(2):
            connection = self._connection()
            try:
                all_headers = dict(headers or {})
                if self._authorization:
                    all_headers["Authorization"] = self._authorization
                if isinstance(body, bytes):
                    all_headers.setdefault("Content-Length", str(len(body)))
                connection.request(method, path, body=body, headers=all_headers)
                response = connection.getresponse()
                content = b"" if method == "HEAD" else response.read()
            finally:
                connection.close()
            if response.status == 401 and attempt == 0 and self._authorize(response, scope):
                if hasattr(body, "seek"):
                    body.seek(0)
                continue
            if response.status not in expect:
                raise PushError(
                    f"{method} {self.host}{path.split('?')[0]} answered {response.status}: "
                    f"{content[:2000].decode(errors='replace')}"
                )
            return response, content
        raise PushError(f"{method} {self.host}{path}: still unauthorized after logging in")

    def _connection(self) -> http.client.HTTPConnection:
        host, _, port_text = self.host.partition(":")
        port = int(port_text) if port_text else (80 if self.insecure else 443)
        connector = self._connect
        connection: http.client.HTTPConnection
        if self.insecure:
            connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT, blocksize=_CHUNK)
        else:
            connection = http.client.HTTPSConnection(
                host, port, timeout=TIMEOUT, blocksize=_CHUNK, context=ssl.create_default_context()
            )
        if connector is not None:
            # The connection's own connect() would dial from this network namespace.
            plain = connector((host, port))
            plain.settimeout(TIMEOUT)
            if isinstance(connection, http.client.HTTPSConnection):
                context = ssl.create_default_context()
                connection.sock = context.wrap_socket(plain, server_hostname=host)
            else:
                connection.sock = plain
        return connection

    def _authorize(self, response: http.client.HTTPResponse, scope: str) -> bool:
        """Answer a 401's challenge; False when there is nothing to answer it with."""
        challenge = response.getheader("WWW-Authenticate") or ""
        scheme, _, params_text = challenge.partition(" ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', params_text))
        basic = None
        if self._credentials is not None:
            user, password = self._credentials
            basic = "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        if scheme.lower() == "basic":
            if basic is None:
                return False
            self._authorization = basic
            return True
        if scheme.lower() != "bearer" or "realm" not in params:
            return False
        query = {"scope": f"repository:{scope}:pull,push"}
        if "service" in params:
            query["service"] = params["service"]
        request = urllib.request.Request(f"{params['realm']}?{urllib.parse.urlencode(query)}")
        if basic is not None:
            request.add_header("Authorization", basic)
        with urllib.request.urlopen(request, timeout=60) as answer:
            token = json.loads(answer.read())
        value = token.get("token") or token.get("access_token")
        if not value:
            raise PushError(f"the token service {params['realm']} gave no token")
        self._authorization = f"Bearer {value}"
        return True
