"""Request ids: one per HTTP request, answered in ``X-Request-ID`` and written on the service's
own log lines while the request is worked on, so that a caller's failed request (a 500, a 503)
can be found in the service's log.

A caller's own ``X-Request-ID`` (a gateway's, a scheduler's) is kept where it is 1 to
:data:`MAX_LENGTH` printable ASCII characters without spaces, so that the one id follows the
request through every hop; otherwise the service makes one (32 hex digits). A value of any
other form is replaced rather than refused: it must never cost the request, nor reach a log
line as the caller wrote it (a line break there would forge the next line).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


HEADER = b"x-request-id"
MAX_LENGTH = 128
_ACCEPTED = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_LENGTH)

# The request being worked on in this task or thread (None outside a request). The threads
# a request's work goes to (anyio's, as Starlette's run_in_threadpool and the batch threads
# use them) run in a copy of its context.
current: ContextVar[str | None] = ContextVar("swarmpilot_request_id", default=None)


@contextmanager
def working_for(rid: str | None) -> Iterator[None]:
    """Work done for the request ``rid`` (None: for none) outside its own task and threads: a
    training job's, in the threads that end it, so that its log lines name the request that
    started it as that request's own lines do."""
    token = current.set(rid)
    try:
        yield
    finally:
        current.reset(token)


def accepted(value: bytes) -> str | None:
    """``value``, a request's ``X-Request-ID``, as the id to use, or None where it has another form."""
    return value.decode("ascii") if _ACCEPTED.fullmatch(value) else None


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The id of a request with these (ASGI, lower-cased) headers: the caller's, or a new one."""
    for name, value in headers:
        if name == HEADER:
            given = accepted(value)
            if given is not None:
                return given
            break
    return new_request_id()


def new_request_id() -> str:
    """An id the service makes: 32 hex digits."""
    return os.urandom(16).hex()  # 1.0 µs; a uuid4's hex digits took 5.7 µs, for 6 bits less


class RequestIdMiddleware:
    """Give each HTTP request its id: in ``current`` while it is worked on, in its answer's
    ``X-Request-ID`` header, and in ``scope["request_id"]``."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope["headers"])
        scope["request_id"] = rid
        header = (HEADER, rid.encode("ascii"))

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", ()), header])
            await send(message)

        token = current.set(rid)
        await self.app(scope, receive, send_with_id)
        # Not reset where the app raised: Starlette's outermost middleware logs that error
        # after this, and its line should name the request. (uvicorn works on each request in
        # a task of its own; an app called in the caller's task, as httpx's ASGITransport
        # calls it, would otherwise leave the id set after it.)
        current.reset(token)


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id`` (``-`` outside a request) and ``record.request_tag`` (`` (request
    ID)``, empty outside a request) on each record, for a handler's format to write. A line
    written outside its request's work that names the request in its message (``extra=
    {"for_request": rid}``: the 431 answered before the app sees a request) gets that id, and
    no tag (its message says it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        given = getattr(record, "for_request", None)
        rid = given or current.get()
        record.request_id = rid or "-"
        record.request_tag = f" (request {rid})" if rid and not given else ""
        return True
