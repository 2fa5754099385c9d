"""Prefect flows: wiring and branching only."""
