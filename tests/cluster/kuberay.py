"""The KubeRay operator on the test node, as a cluster admin installs it.

KubeRay is a prerequisite of modelfleet, not part of it (docs/install.md). On the node
cluster it runs as its own pod: the ``ray-operator`` command of the pinned KubeRay Go
module (the same module and version the CRDs come from, ``KUBERAY_VERSION`` in
``tests/cluster/controlplane.py``), built once and cached, packed into an image by
``images/oci.py`` the way upstream's Dockerfile packs it (``/manager``, user 65532), pushed
to the node's registry, and installed from the module's own kustomize manifests
(``config/default``: CRDs, RBAC, the Deployment and its Service), rendered with
``kubectl kustomize`` with only the image name and the namespace changed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from images import oci
from tests.cluster.controlplane import (
    KUBERAY_MODULE,
    KUBERAY_VERSION,
    ControlPlaneError,
    _go,
    build_cached,
    cache_root,
)
from tests.cluster.node import NodeCluster

log = logging.getLogger(__name__)

NAMESPACE = "kuberay-system"
DEPLOYMENT = "kuberay-operator"
IMAGE_REPOSITORY = "kuberay/operator"
# The image config/default names (its `images:` rewrite of `kuberay/operator`).
UPSTREAM_IMAGE = "quay.io/kuberay/operator"
ROLLOUT_TIMEOUT = 300

# What upstream's image (distroless, nonroot) has besides the binary: a passwd entry
# for its user, and a writable /tmp.
_PASSWD = (
    b"root:x:0:0:root:/root:/sbin/nologin\n"
    b"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
)
_GROUP = b"root:x:0:\nnonroot:x:65532:\n"


def module_dir() -> Path:
    """The pinned KubeRay module in the Go module cache (downloaded on first use)."""
    command = [_go(), "mod", "download", "-json", f"{KUBERAY_MODULE}@{KUBERAY_VERSION}"]
    # Outside any module, so no go.mod around the caller's directory interferes.
    result = subprocess.run(
        command, cwd=tempfile.gettempdir(), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ControlPlaneError(f"`{' '.join(command)}` failed:\n{result.stdout}{result.stderr}")
    return Path(json.loads(result.stdout)["Dir"])


def ensure_kuberay_binary() -> Path:
    """The KubeRay operator's binary (``ray-operator``, upstream's ``/manager``).

    Built on first use with ``go install MODULE@VERSION`` (its go.mod has no replace
    lines, so no wrapper module is needed), static, into the cache beside the node's
    other binaries: about 2 minutes on a cold Go build cache, nothing later.
    """

    def build(staging: Path) -> None:
        command = [
            _go(),
            "install",
            "-trimpath",
            "-ldflags=-s -w",
            f"{KUBERAY_MODULE}@{KUBERAY_VERSION}",
        ]
        log.info("building the KubeRay operator %s (minutes on a cold Go cache)", KUBERAY_VERSION)
        result = subprocess.run(
            command,
            cwd=tempfile.gettempdir(),
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "GOBIN": str(staging), "CGO_ENABLED": "0"},
        )
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
            raise ControlPlaneError(f"`{' '.join(command)}` failed:\n{tail}")
        (staging / "ray-operator").rename(staging / "manager")

    target = cache_root() / "node" / f"kuberay-{KUBERAY_VERSION}"
    return build_cached(target, ("manager",), build) / "manager"


def kuberay_image(store: oci.Store) -> oci.Image:
    """The KubeRay operator image in ``store``: ``/manager`` as user 65532, like upstream's."""
    binary = ensure_kuberay_binary()
    layer = store.add_layer(
        [
            oci.File("/manager", binary, 0o755),
            oci.File("/etc/passwd", _PASSWD),
            oci.File("/etc/group", _GROUP),
            oci.Directory("/tmp", 0o1777),
            oci.Directory("/home/nonroot", 0o755, 65532, 65532),
        ]
    )
    return store.add_image(
        f"{IMAGE_REPOSITORY}:{KUBERAY_VERSION}",
        [layer],
        oci.ImageConfig(entrypoint=["/manager"], user="65532:65532", workdir="/"),
        history=[f"go install {KUBERAY_MODULE}@{KUBERAY_VERSION}"],
    )


def manifests(cluster: NodeCluster, image: str, namespace: str = NAMESPACE) -> str:
    """KubeRay's ``config/default`` rendered by ``kubectl kustomize``, pointed at ``image``.

    An overlay beside a copy of the module's ``config/`` (kustomize refuses a base
    given by an absolute path) names ``config/default`` as its base and changes only
    the operator's image and the namespace.
    """
    name, _, tag = image.rpartition(":")
    with tempfile.TemporaryDirectory(prefix="modelfleet-kuberay-") as scratch:
        config = Path(scratch) / "config"
        shutil.copytree(module_dir() / "config", config, copy_function=shutil.copyfile)
        # The module cache is read-only; the copy must be removable afterwards.
        for directory in (config, *(p for p in config.rglob("*") if p.is_dir())):
            directory.chmod(0o755)
        overlay = Path(scratch) / "overlay"
        overlay.mkdir()
        (overlay / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "namespace": namespace,
                    "resources": ["../config/default"],
                    "images": [{"name": UPSTREAM_IMAGE, "newName": name, "newTag": tag}],
                }
            )
        )
        return cluster.kubectl_run("kustomize", str(overlay)).stdout


def install(cluster: NodeCluster, store: oci.Store, namespace: str = NAMESPACE) -> dict[str, float]:
    """Build, push and install the KubeRay operator; wait until its pod is Ready.

    Returns timings in seconds: ``image`` (build or cache lookup and push) and
    ``ready`` (manifests applied to the operator's Deployment available).
    """
    started = time.monotonic()
    image = cluster.push_image(store, kuberay_image(store))
    pushed = time.monotonic()
    rendered = manifests(cluster, image, namespace)
    cluster.kubectl_run("apply", "--filename=-", input=_namespace(namespace))
    # The CRDs are megabytes each, over client-side apply's annotation limit; they may
    # already be there from install_kuberay_crds, under another field manager.
    cluster.kubectl_run(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=modelfleet-tests",
        "--filename=-",
        input=rendered,
    )
    cluster.kubectl_run(
        "rollout",
        "status",
        f"deployment/{DEPLOYMENT}",
        f"--namespace={namespace}",
        f"--timeout={ROLLOUT_TIMEOUT}s",
        timeout=ROLLOUT_TIMEOUT + 30,
    )
    ready = time.monotonic()
    log.info(
        "KubeRay %s running in %s: image %.1f s, ready %.1f s",
        KUBERAY_VERSION,
        namespace,
        pushed - started,
        ready - pushed,
    )
    return {"image": pushed - started, "ready": ready - pushed}


def _namespace(name: str) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
