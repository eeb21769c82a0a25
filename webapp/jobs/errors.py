"""Errors the jobs services raise for bad input; each carries the HTTP status and the field."""

from __future__ import annotations

from typing import Any


class JobInputError(Exception):
    """Bad input to a jobs service (answered 400 unless a subclass says otherwise).

    ``field`` names where, e.g. ``recipe.stages[1].config.ratio``, so pages and the API can
    point at it.
    """

    status_code = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.message = message
        self.field = field

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"detail": str(self)}
        if self.field:
            data["field"] = self.field
        return data


class JobStateError(JobInputError):
    """The job is in a state that does not allow this (e.g. cancelling a finished job)."""

    status_code = 409
