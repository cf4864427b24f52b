"""Exceptions that carry an HTTP status, raised by the plain-Python service layer."""

from __future__ import annotations


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


class AmbiguousModel(PredictorError):
    status_code = 409


class NotFound(PredictorError):
    status_code = 404
