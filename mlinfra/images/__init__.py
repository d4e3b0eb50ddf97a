"""Daemonless, reproducible OCI image builds for scoring images (layers in code, pushed over the registry API)."""
