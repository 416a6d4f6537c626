"""pytest fixtures around the test clusters (imported by tests/conftest.py)."""

from collections.abc import Iterator

import pytest

from images.build import Builder
from tests.cluster import kuberay
from tests.cluster.controlplane import ControlPlane, install_kuberay_crds
from tests.cluster.node import NodeCluster, ProductImages, provide_product_images


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """One control plane for the whole session, with the KubeRay CRDs installed.

    It offers ``.kubeconfig``, ``.kubectl``, ``.api_client`` and ``.kubectl_run(*args)``.
    Tests share it: give objects unique names or use a namespace of your own.
    """
    with ControlPlane() as cp:
        install_kuberay_crds(cp.kubeconfig, cp.kubectl)
        yield cp


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[NodeCluster]:
    """One node cluster for the whole session: pods run as real containers on it.

    It offers what ``control_plane`` does plus ``.images`` (the imported test images),
    ``.import_image(archive)``, ``.push_image(store, image)`` (to the node's registry)
    and ``.rss_bytes()``. Tests share it: use a namespace of your own. Its teardown
    fails the session if a process, mount, cgroup or the network namespace is left
    behind.
    """
    cluster = NodeCluster()
    with cluster:
        yield cluster
    assert not cluster.leftovers, f"the node cluster left behind: {cluster.leftovers}"


@pytest.fixture(scope="session")
def node_images(node_cluster: NodeCluster) -> ProductImages:
    """The operator image and the Ray image (CPU), built or cached, in the node's registry.

    ``.operator`` and ``.ray`` are the names pods use; ``.chart_set()`` gives the helm
    arguments that point the chart at them. The first build of the Ray image takes
    minutes (see docs/images.md); later sessions find both in the cache.
    """
    images = provide_product_images(node_cluster)
    print(
        f"\nproduct images: {images.operator}, {images.ray}: build or cache lookup "
        f"{images.timings['build']:.1f} s, push {images.timings['push']:.1f} s"
    )
    return images


@pytest.fixture(scope="session")
def kuberay_node_cluster(node_cluster: NodeCluster) -> NodeCluster:
    """The session's node cluster with the KubeRay operator running, watching every namespace.

    KubeRay (tests/cluster/kuberay.py) is installed once, on first use, and stays for
    the rest of the session: a RayCluster or RayService any test creates afterwards is
    reconciled into pods.
    """
    timings = kuberay.install(node_cluster, Builder().store)
    print(
        f"\nKubeRay operator: image {timings['image']:.1f} s, "
        f"applied to Ready {timings['ready']:.1f} s"
    )
    install_kuberay_crds(node_cluster.kubeconfig, node_cluster.kubectl)
    return node_cluster
