"""modelfleet's container images, written without Docker: the recipe (``build``), the
OCI writer (``oci``) and a push over the registry HTTP API (``registry``).
See docs/images.md."""
