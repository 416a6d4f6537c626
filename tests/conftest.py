"""Fixtures shared by all test suites, and the one setting every test process gets."""

import os

# No test may reach beyond this machine. The operator and `modelfleet plan` read model
# shapes from the Hugging Face hub at $HF_ENDPOINT; pointed at a closed loopback port,
# every lookup fails at once and they fall back as they do offline. Tests that need a
# hub start a stand-in on 127.0.0.1 and set HF_ENDPOINT themselves. Subprocesses (the
# operator, `modelfleet serve`) inherit the setting.
os.environ.setdefault("HF_ENDPOINT", "http://127.0.0.1:9")

from tests.cluster.fixtures import (  # noqa: F401 - fixtures, used by name
    control_plane,
    kuberay_node_cluster,
    node_cluster,
    node_images,
)
from tests.prometheus_fixtures import prometheus  # noqa: F401 - a fixture, used by name
from tests.serve_fixtures import tiny_cpu_serve  # noqa: F401 - a fixture, used by name
from tests.triton_fixtures import (  # noqa: F401 - fixtures, used by name
    triton_stand_in,
    tritonserver_installed,
)
