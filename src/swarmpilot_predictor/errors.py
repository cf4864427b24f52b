"""Exceptions that carry an HTTP status, raised by the plain-Python service layer."""

from __future__ import annotations

from typing import Any


class PredictorError(Exception):
    status_code = 400

    def __init__(self, message: str, field: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra or {}


class InvalidInput(PredictorError):
    status_code = 422


class ModelNotFound(PredictorError):
    status_code = 404


class PayloadTooLarge(PredictorError):
    status_code = 413


class AmbiguousModel(PredictorError):
    status_code = 409


class NotFound(PredictorError):
    status_code = 404


class ModelUnreadable(PredictorError):
    """A stored model whose file is missing or damaged: the server's fault, not the request's."""

    status_code = 500


def validation_message(exc: Any, prefix: tuple = ()) -> tuple[str, str]:
    """One readable line naming each offending field, and the first field's name."""
    parts, first = [], ""
    for err in exc.errors():
        loc = [str(p) for p in (*prefix, *err.get("loc", ())) if p != "body"]
        name = ".".join(loc) or "body"
        first = first or name
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{name}: {msg}")
    return "; ".join(parts) or "invalid request", first
