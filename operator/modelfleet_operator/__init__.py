"""The modelfleet operator: the ModelDeployment API, its render to KubeRay objects, and the CLI."""
