"""pytest fixtures around the test control plane (imported by tests/conftest.py)."""

from collections.abc import Iterator

import pytest

from tests.cluster.controlplane import ControlPlane, install_kuberay_crds


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """One control plane for the whole session, with the KubeRay CRDs installed.

    It offers ``.kubeconfig``, ``.kubectl``, ``.api_client`` and ``.kubectl_run(*args)``.
    Tests share it: give objects unique names or use a namespace of your own.
    """
    with ControlPlane() as cp:
        install_kuberay_crds(cp.kubeconfig, cp.kubectl)
        yield cp
