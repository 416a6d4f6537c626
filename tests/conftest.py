"""Fixtures shared by all test suites."""

from tests.cluster.fixtures import control_plane  # noqa: F401 - a fixture, used by name
