"""Prefect task wrappers around driftloop's core functions: retries, artifacts, no ML logic."""
