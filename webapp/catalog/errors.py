"""Errors the catalog's services raise for bad input. Each carries the HTTP status the API and
the pages answer with, and a message a person can act on."""

from __future__ import annotations

from typing import Any


class CatalogInputError(Exception):
    """Bad input to a catalog service: answered 400 unless a subclass says otherwise."""

    status_code = 400

    def __init__(self, message: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"detail": self.message}
        if self.field:
            data["field"] = self.field
        data.update(self.extra)
        return data


class WrongFileType(CatalogInputError):
    """The file's name or first bytes say it is not a model (or a dataset zip)."""

    status_code = 415


class UploadTooLarge(CatalogInputError):
    status_code = 413


class UploadOffsetMismatch(CatalogInputError):
    """A chunk does not start where the last one ended; ``received`` tells where to resume."""

    status_code = 409


class UploadClosed(CatalogInputError):
    """The session was completed, aborted or has expired."""

    status_code = 410
