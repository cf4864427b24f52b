"""The service's log lines, uvicorn's among them: as text in uvicorn's form, or as one JSON
object a line (``PREDICTOR_LOG_FORMAT=json``) for a log pipeline to read without patterns,
each naming the request it was written for (see request_ids.py).

The entry points that run the service set up uvicorn's logging with
:func:`uvicorn_log_config` and the service's own with :func:`log_beside_uvicorn`; the
training worker process writes its lines with :func:`stderr_handler`, in the service's form.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

import orjson
import uvicorn.config
import uvicorn.logging

from .request_ids import RequestIdFilter
from .settings import LogFormat

# The fields of uvicorn's access line, in the order of its message's arguments
# ('%s - "%s %s HTTP/%s" %d': client, method, path with its query, HTTP version, status).
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


class JsonFormatter(logging.Formatter):
    """A record as one JSON object on one line: ``time`` (UTC, ISO 8601 to the millisecond),
    ``level``, ``logger``, ``pid``, ``message``, ``request_id`` (null outside a request; needs
    :class:`~.request_ids.RequestIdFilter` on the handler), uvicorn's access line's parts
    (``client``, ``method``, ``path``, ``http_version``, ``status``), and ``exception`` with
    the traceback where there is one. A line break in a message stays inside its string, so
    a record is always one line."""

    def __init__(self, use_colors: bool | None = None):
        # (use_colors: uvicorn passes its --use-colors to the formatter it is given; JSON has none)
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage().rstrip("\n"),  # ("Exception in ASGI application\n")
            # (The filter's "-" outside a request, a request's own id of "-" apart: the tag tells them.)
            "request_id": getattr(record, "for_request", None) or (
                record.request_id if getattr(record, "request_tag", "") else None),
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == len(_ACCESS_FIELDS):
            entry.update(zip(_ACCESS_FIELDS, record.args))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(entry, default=str).decode()
        except orjson.JSONEncodeError:
            # A string UTF-8 cannot encode (a lone surrogate from a request's path): escaped.
            return json.dumps(entry, default=str, ensure_ascii=True, separators=(",", ":"))


class TaggedDefaultFormatter(uvicorn.logging.DefaultFormatter):
    """uvicorn's formatter of its own lines, with the request's tag (``request_tag``, see
    :class:`~.request_ids.RequestIdFilter`) at the end of the message's line: uvicorn ends some
    messages with a line break ("Exception in ASGI application\\n", its traceback after it),
    where a tag added by the format would stand on a line of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        tag = getattr(record, "request_tag", "")
        return text.rstrip("\n") + tag if tag else text


def write_json_line(level: int, message: str, logger: str = "swarmpilot_predictor") -> None:
    """Write ``message`` to stderr as one JSON log line (:class:`JsonFormatter`) of ``logger``
    at ``level``: for the lines an entry point writes before logging is set up (a start
    refused, metric files an earlier run left), so that with ``PREDICTOR_LOG_FORMAT=json``
    they are JSON too."""
    record = logging.LogRecord(logger, level, __file__, 0, "%s", (message,), None)
    RequestIdFilter().filter(record)
    print(JsonFormatter().format(record), file=sys.stderr, flush=True)


def stderr_handler(log_format: LogFormat = "text") -> logging.Handler:
    """A handler writing lines to stderr as uvicorn's are written: as text, each ending with its
    request's tag (``WARNING:  ... (request sched-42)``), or as JSON. For the service's own
    lines, where the process set up no logging of its own, and its training worker's."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         uvicorn.logging.DefaultFormatter("%(levelprefix)s %(message)s%(request_tag)s"))
    handler.addFilter(RequestIdFilter())
    return handler


def uvicorn_log_config(log_format: LogFormat = "text") -> dict[str, Any]:
    """uvicorn's logging configuration, for the entry points that run uvicorn: as text, with
    the request's id at the end of each access line (``"GET /ping HTTP/1.1" 200 (request
    3f0c...)``) and of each of uvicorn's own lines written for a request; or as JSON
    (:class:`JsonFormatter`), the id in ``request_id``.

    uvicorn writes an access line as the answer starts, from the request's own task, where
    :data:`~.request_ids.current` holds its id; so is its "Exception in ASGI application" and
    traceback of a 500 (the error Starlette raises on to it once the answer is sent), which
    named no request beside the service's own line and traceback of it. Its other lines are
    as they were (the tag is empty outside a request).
    """
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config.setdefault("filters", {})["request_id"] = {"()": RequestIdFilter}
    if log_format == "json":
        config["formatters"] = {name: {"()": JsonFormatter} for name in ("default", "access")}
    else:
        config["formatters"]["access"]["fmt"] += "%(request_tag)s"
        config["formatters"]["default"]["()"] = TaggedDefaultFormatter
    for name in ("access", "default"):
        config["handlers"][name].setdefault("filters", []).append("request_id")
    return config


def log_beside_uvicorn(level: str, log_format: LogFormat = "text") -> None:
    """Write the service's own log lines to stderr in ``log_format``, as uvicorn writes its, at
    uvicorn's level where uvicorn set one (a ``uvicorn`` command's ``--log-level``), else at
    ``level`` (``PREDICTOR_LOG_LEVEL``), where the process set up no logging of its own.

    For the entry points that run the service (``serve``, the seed's commands). Without it
    Python shows warnings only: every info line (a client that left, a default table loaded,
    upload folders removed at start) was lost.
    """
    package = logging.getLogger(__package__)
    if package.handlers or logging.getLogger().handlers:
        return
    package.addHandler(stderr_handler(log_format))
    package.setLevel(logging.getLogger("uvicorn.error").level or uvicorn.config.LOG_LEVELS[level])
    package.propagate = False
