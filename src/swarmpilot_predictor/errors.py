"""Exceptions that carry an HTTP status, raised by the plain-Python service layer."""

from __future__ import annotations

import errno
import reprlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any


_SHOWN = reprlib.Repr()  # Python 3.11's takes no arguments
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxlong, _SHOWN.maxother = 3, 80, 40, 80
_SHOWN.maxtuple = _SHOWN.maxlist = _SHOWN.maxarray = _SHOWN.maxdict = _SHOWN.maxset = _SHOWN.maxfrozenset = 6


def shown(value: Any) -> str:
    """``repr(value)`` cut short, for error messages that quote what a request sent.

    A request may send a ten-megabyte string or a list nested a thousand deep (orjson
    accepts 1024 levels): quoted whole, the first made a 20 MB error body and the second
    a RecursionError, a 500.
    """
    return _SHOWN.repr(value)


def cut(text: str, most: int = 80) -> str:
    """A name a request gave (a field, a feature, an identity part), cut short where a
    message or an error's ``field`` repeats it: quoted whole, a megabyte-long key made a
    three-megabyte error body."""
    return text if len(text) <= most else f"{text[:most - 3]}..."


def loggable(text: str, most: int = 200) -> str:
    """Request input (a path, whose ``%0A`` arrives decoded) as a log line quotes it: cut short
    (:func:`cut`), its control characters escaped. Written as it came, a line break began a
    line of the sender's own ("ERROR:    forged ..."), a request id of its choosing at its end."""
    text = cut(text, most)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def too_many_digits(exc: BaseException) -> bool:
    """Whether ``exc`` is Python's refusal to read an integer from more digits than
    ``sys.get_int_max_str_digits()`` (4,300 by default), whose message advises raising
    that limit: advice for the service's operator, not for a request's sender."""
    return isinstance(exc, ValueError) and "integer string conversion" in str(exc)


def dotted(parts: Iterable[Any]) -> str:
    """A field's path (``config.params.num_leaves``) for a message, its keys cut short, and
    the whole too: a config nested a thousand deep names a field a thousand keys long."""
    return cut(".".join(cut(str(p)) for p in parts), 400)


def listed(names: Iterable[Any], most: int = 6) -> str:
    """Names for a message (``a, b and 3 more``): at most ``most`` of them, each cut short."""
    names = list(names)
    head = ", ".join(cut(str(n)) for n in names[:most])
    return head + (f" and {len(names) - most} more" if len(names) > most else "")


def json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's words ("an array", "null"), for messages about a wrong type."""
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


class PredictorError(Exception):
    status_code = 400
    # HTTP headers its answer carries; read-only where a class gives none (one dict shared
    # by every such error, which a write would have changed for all).
    headers: Mapping[str, str] = MappingProxyType({})

    def __init__(self, message: str, field: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra or {}


class Unauthorized(PredictorError):
    """A route that changes state, asked without the service's API key (or with another)."""

    status_code = 401

    def __init__(self, message: str, challenge: str = "Bearer"):
        super().__init__(message, field="authorization")
        self.headers = {"WWW-Authenticate": challenge}


class InvalidInput(PredictorError):
    status_code = 422


class ModelNotFound(PredictorError):
    status_code = 404


class PayloadTooLarge(PredictorError):
    status_code = 413


class UnsupportedMediaType(PredictorError):
    status_code = 415


class TooBusy(PredictorError):
    """The service has as much of this work queued as it takes: retry later."""

    status_code = 429
    headers = {"Retry-After": "10"}  # a queued training takes seconds to minutes


class VersionConflict(PredictorError):
    """A version meant to follow a given one, when another has been stored (or is being stored) since."""

    status_code = 409


class AmbiguousModel(PredictorError):
    status_code = 409


class NotFound(PredictorError):
    status_code = 404


class ModelUnreadable(PredictorError):
    """A stored model whose file is missing or damaged: the server's fault, not the request's."""

    status_code = 500


class InsufficientStorage(PredictorError):
    """The data directory's file system is full (or a file size or disk quota limit was hit)."""

    status_code = 507


class ServiceStopping(PredictorError):
    """The service has been told to stop (SIGTERM): work that would outlast it is not taken."""

    status_code = 503
    headers = {"Retry-After": "5"}  # a restarted instance, or another behind the balancer


class NotReady(PredictorError):
    """The service answers, but is not yet what it will be: its models are still being loaded
    (``PREDICTOR_PRELOAD_MODELS``). A readiness probe's 503: send the traffic elsewhere meanwhile."""

    status_code = 503
    headers = {"Retry-After": "1"}


class DataDirectoryGone(PredictorError):
    """A folder of the data directory is no longer there (deleted, or its volume unmounted)
    while the service runs: nothing it stores can be read or written until it is back."""

    status_code = 503


class StorageError(PredictorError):
    """Writing to the data directory failed for another reason: permissions, a read-only file system."""

    status_code = 500


_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def storage_error(exc: OSError, what: str, where: str = "in the data directory") -> PredictorError:
    """The answer to an ``OSError`` raised while writing ``what``, one an operator can act on.

    A full disk is the usual cause (507: free space, nothing is wrong with the
    request); anything else is the server's set-up (500). Callers leave no
    partial state behind: writes are atomic and cleaned up before this is raised.
    """
    reason = exc.strerror or type(exc).__name__
    if exc.errno in _NO_ROOM:
        return InsufficientStorage(f"no room to write {what} {where} ({reason}): "
                                   "it was not stored; free some space and retry")
    return StorageError(f"cannot write {what} {where} ({reason}): it was not stored")


@contextmanager
def writing(what: str) -> Iterator[None]:
    """Raise :func:`storage_error` for an ``OSError`` raised in the block."""
    try:
        yield
    except OSError as exc:
        raise storage_error(exc, what) from exc


# pydantic's error types for a value that should have been an object (a model's fields).
_NOT_AN_OBJECT = {"model_type", "model_attributes_type", "dataclass_type"}


_MOST_ERRORS = 6


def validation_message(exc: Any, prefix: tuple = ()) -> tuple[str, str]:
    """One readable line naming the offending fields (the first few: a batch of 100,000
    wrong items made a 10 MB answer), and the first field's name."""
    errors = exc.errors()
    parts, first = [], ""
    for err in errors[:_MOST_ERRORS]:
        loc = err.get("loc", ())
        if loc and loc[0] in ("query", "path"):
            loc = loc[1:]  # a URL's parameter by its name, as a body's field is (and as the service names it)
        name = dotted(p for p in (*prefix, *loc) if p != "body") or "body"
        first = first or name
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if err.get("type") in _NOT_AN_OBJECT:
            msg = "Input should be an object"  # not "... or instance of PredictSingleRequest"
        parts.append(f"{name}: {msg}")
    more = f"; and {len(errors) - _MOST_ERRORS} more" if len(errors) > _MOST_ERRORS else ""
    return "; ".join(parts) + more or "invalid request", first
