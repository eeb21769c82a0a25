"""Errors the library raises. Each one carries a message a person can act on."""

from __future__ import annotations


class CompressionError(Exception):
    """Base class for every error this library raises on purpose."""


class ConfigError(CompressionError, ValueError):
    """A config, recipe or parameter is invalid. ``field`` names where, e.g. ``stages[1].config.ratio``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownMethodError(CompressionError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we don't want that
        return str(self.args[0])


class UnsafeModelError(CompressionError):
    """A model file is refused: a pickle, TorchScript, torch.package, .pt2, or hostile ONNX."""


class InvalidModelError(CompressionError):
    """A model file is not what it claims, or does not fit the chosen architecture."""


class UnsafeArchiveError(CompressionError):
    """An archive is refused: zip slip, symlinks, nested archives, or a cap tripped."""


class DatasetError(CompressionError):
    """A dataset is unusable, or does not match the model."""


class StageScopeError(CompressionError):
    """A stage does not fit the model (wrong format or task)."""


class Cancelled(CompressionError):
    """Raised by a cancel check between batches; the pipeline stops cleanly."""


class MacTargetError(CompressionError):
    """A stage's MAC-reduction target was not reached (and the recipe allows no shortfall).

    ``reached`` and ``target`` are "times fewer MACs" factors, e.g. 2.71 and 3.0.
    """

    def __init__(self, reached: float, target: float, hint: str) -> None:
        super().__init__(
            f"reached {reached:.2f}x fewer MACs, target {target:.2f}x; {hint}; "
            "set allow_mac_shortfall: true to accept"
        )
        self.reached = reached
        self.target = target
