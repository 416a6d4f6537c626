"""The modelfleet operator: the ModelDeployment API, its render to KubeRay objects, and the CLI."""

__version__ = "0.1.0"
