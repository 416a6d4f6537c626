"""The `modelfleet` command: the layer above the operator and the serving package.

It is the only package that imports both. Nothing imports it, so the operator's image
carries neither the benchmark client, nor the plots, nor the local Ray runner.
"""
