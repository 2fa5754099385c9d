"""Errors that end a command with a one-line reason and a meaningful exit code."""

from __future__ import annotations


class DriftloopError(Exception):
    """Base error: its message is the one-line reason shown to the user."""

    exit_code = 1


class ConfigError(DriftloopError):
    """params.yaml or the environment is wrong (names the key)."""

    exit_code = 2


class IngestError(DriftloopError):
    """A batch could not be read or accepted."""

    exit_code = 3


class ValidationFailed(DriftloopError):
    """A batch failed the Great Expectations gate and was quarantined."""

    exit_code = 4


class TrainingError(DriftloopError):
    """Training or evaluation could not produce a usable candidate."""

    exit_code = 5


class RegistryError(DriftloopError):
    """The model registry is unreachable or not in the expected state."""

    exit_code = 6
