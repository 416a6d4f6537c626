"""The ModelDeployment API (group modelfleet.io), one module per version."""
