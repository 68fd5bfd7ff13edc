"""The exporter's error types (each message names the problem and the fix)."""

from __future__ import annotations

from ..errors import LanternError


class ExportError(LanternError, ValueError):
    """The export cannot start or cannot be written (bad options, output not writable)."""


class ParityError(LanternError):
    """The exported graphs disagree with the PyTorch reference."""

    def __init__(self, message: str, errors: dict[str, float]):
        super().__init__(message)
        self.errors = errors
