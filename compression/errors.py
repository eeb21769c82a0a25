"""Errors the library raises. Each one carries a message a person can act on."""

from __future__ import annotations

import reprlib
from typing import Any

# Errors quote what they were given, but only a short prefix of it: a recipe value can be a
# deeply nested structure (or, before aliases were refused, a YAML "billion laughs" expansion)
# whose full repr runs to megabytes.
QUOTE_CHARS = 80
MAX_FIELD_CHARS = 200
MAX_MESSAGE_CHARS = 2000
_short_repr = reprlib.Repr()
_short_repr.maxstring = QUOTE_CHARS
_short_repr.maxother = QUOTE_CHARS
_short_repr.maxlist = _short_repr.maxtuple = _short_repr.maxset = 6
_short_repr.maxdict = 4
_short_repr.maxlevel = 3


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """A short ``repr`` of ``value`` for an error message: at most ``limit`` characters (and a
    bounded amount of work however large the value is), an ellipsis where it was cut."""
    text = _short_repr.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class CompressionError(Exception):
    """Base class for every error this library raises on purpose."""


class ConfigError(CompressionError, ValueError):
    """A config, recipe or parameter is invalid. ``field`` names where, e.g. ``stages[1].config.ratio``."""

    def __init__(self, field: str, message: str) -> None:
        # Field paths carry the keys a recipe used, and messages may quote values: both capped.
        field, message = _cap(field, MAX_FIELD_CHARS), _cap(message, MAX_MESSAGE_CHARS)
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
