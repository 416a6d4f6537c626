"""Fixtures shared by all test suites."""

from tests.cluster.fixtures import control_plane  # noqa: F401 - a fixture, used by name
from tests.prometheus_fixtures import prometheus  # noqa: F401 - a fixture, used by name
from tests.serve_fixtures import tiny_cpu_serve  # noqa: F401 - a fixture, used by name
from tests.triton_fixtures import (  # noqa: F401 - fixtures, used by name
    triton_stand_in,
    tritonserver_installed,
)
