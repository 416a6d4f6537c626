"""The test cluster: a real Kubernetes control plane built from pinned Go modules."""
