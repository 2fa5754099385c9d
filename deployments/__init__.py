"""Prefect deployment definitions (prefect.yaml) and the one-process serve mode."""
