"""HTTP layer: the app that translates requests to :class:`PredictorService` calls and back.

:func:`create_app` builds it from the middleware below, the error handlers and the routes of
each group (:mod:`.routes`); :func:`app_from_env` builds it from the environment, for
``uvicorn --factory`` and the workers of ``serve --workers N``.
"""

from __future__ import annotations

import gc
import hmac
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from . import __version__
from .errors import PayloadTooLarge, PredictorError, Unauthorized, UnsupportedMediaType, cut, loggable, validation_message
from .metrics import CLIENT_CLOSED, MetricsMiddleware
from .logs import log_beside_uvicorn
from .request_ids import RequestIdMiddleware
from .routes.common import (DECLARED_QUERY, HEAD_ONLY, declare_path_parameters, declare_request_id, declare_too_large,
                            declare_unauthorized, declared_length, error_response, generates_table, hoist_definitions,
                            large_body_turns, log_client_left, table_failure)
from .routes.discovery import add_discovery_routes
from .routes.models import add_model_routes
from .routes.monitoring import add_monitoring_routes
from .routes.prediction import add_prediction_routes
from .routes.tables import add_table_routes
from .routes.training import add_training_routes
from .routes.uploads import upload_bytes
from .service import PredictorService, predict_on_one_blas_thread
from .settings import PredictorSettings, settings_problem, startup_problem, unknown_variables
from .workers import when_parent_dies

log = logging.getLogger(__name__)


class EncodedSlashMiddleware:
    """Keep ``%2F`` inside its path segment for routing.

    Servers hand Starlette a percent-decoded path, which would turn
    ``Qwen%2FQwen2.5-7B`` into two segments; re-derive it from the raw path with
    only the slashes left encoded. Handlers read identities from the raw path.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            raw = scope.get("raw_path")
            if raw and b"%2f" in raw.lower():
                path = raw.decode("latin-1").split("?", 1)[0]
                scope = dict(scope)
                scope["path"] = "/".join(unquote(seg).replace("/", "%2F") for seg in path.split("/"))
        await self.app(scope, receive, send)


class HeadAsGetMiddleware:
    """Answer ``HEAD`` wherever ``GET`` is served: the same status and headers, no body.

    Load balancers and uptime checks probe with ``HEAD``; FastAPI routes a ``GET``
    endpoint for ``GET`` only, so they would get a 405 from a healthy service.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message):
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        # HEAD_ONLY tells a route that streams a file (a table) to leave the body unread.
        as_get = dict(scope, method="GET", **{HEAD_ONLY: True})
        try:
            await self.app(as_get, receive, headers_only)
        finally:
            # The metrics middleware outside labels the request by the route matched here.
            for key in ("route", "endpoint"):
                if key in as_get:
                    scope[key] = as_get[key]


def allowed_methods(request: Request) -> list[str]:
    """The methods a 405's ``Allow`` lists (RFC 9110: every method the path takes): those of
    every route on the path, and ``HEAD`` beside ``GET`` (HeadAsGetMiddleware). Starlette
    names the first route's alone: ``GET`` for ``/tables/{name}``, whose ``DELETE`` it left out."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if route.matches(request.scope)[0] is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


class ExpectContinueMiddleware:
    """Close the connection after an answer to a request that asked ``Expect: 100-continue``
    and whose body was never asked for (refused unread: a 413 for its declared length, a 415
    for its encoding, a 401 without the key).

    uvicorn sends ``100 Continue`` when the app first reads the body, so such a client has
    sent none of it, and the connection is then in no state to carry another request:
    uvicorn waits for the declared bytes as the refused request's, so a client that sends
    its next request there (RFC 9110 leaves it free to) had it swallowed as that body, and
    waited for an answer that never came. RFC 9110 (10.1.1) asks a server answering before
    the body to say whether it will read it or close; this says close, with no body in
    flight to be reset by it. A body refused unread without the expectation is being sent
    already: closing on it could reset the connection before the client read the answer, so
    uvicorn reads it away as before."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not _expects_continue(scope["headers"]):
            await self.app(scope, receive, send)
            return
        asked = False

        async def asking_receive():
            nonlocal asked
            asked = True
            return await receive()

        async def closing_send(message):
            if message["type"] == "http.response.start" and not asked:
                message = dict(message, headers=[*message.get("headers", ()), (b"connection", b"close")])
            await send(message)

        await self.app(scope, asking_receive, closing_send)


def _expects_continue(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request asks ``Expect: 100-continue`` and declares a body (a length of 0 has none
    to wait for, nor has a request with neither ``Content-Length`` nor ``Transfer-Encoding``)."""
    if not any(name == b"expect" and value.strip().lower() == b"100-continue" for name, value in headers):
        return False
    if not any(name in (b"content-length", b"transfer-encoding") for name, _ in headers):
        return False
    return declared_length(headers) != 0


class BodySizeLimitMiddleware:
    """Refuse request bodies larger than ``max_bytes`` with a 413, before they fill memory,
    and compressed ones (``Content-Encoding``) with a 415.

    A declared ``Content-Length`` over the limit is refused at once; a chunked
    body is counted as it arrives and refused when it passes the limit.
    """

    def __init__(self, app, max_mb: float):
        self.app = app
        self.max_mb = max_mb
        self.max_bytes = upload_bytes(max_mb)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal: UnsupportedMediaType | None = None
        for name, value in scope["headers"]:
            if (name == b"content-encoding" and value.strip().lower() not in (b"", b"identity")
                    and scope["method"] in ("POST", "PUT", "PATCH", "DELETE")):
                # Read as JSON, a gzip body was "not valid UTF-8: surrogates not allowed" (the
                # deletions read theirs too: none, or {}). Refused as the route first reads the
                # body, none of which is taken: after the route's API key is checked (refused at
                # once, a request without the key was told of its body's encoding, not a 401) and
                # only where a route reads it (a path no route serves was a 415, not its 404).
                refusal = UnsupportedMediaType(
                    f"Content-Encoding {value.decode('latin-1')!r} is not supported: send the body uncompressed "
                    "(a trace file may be uploaded as .gz)", field="body")
                break

        reading = receive if refusal is None else _refusing(refusal)
        if self.max_bytes <= 0:
            await self.app(scope, reading, send)
            return
        length = declared_length(scope["headers"])
        if length is not None:
            if length > self.max_bytes:
                await self._refuse(PayloadTooLarge(self._message(), field="body"), scope, receive, send)
                return
            await self.app(scope, reading, send)  # (the server reads no more than it declares)
            return
        seen = 0  # chunked, or a length that is no number: counted as it arrives

        async def counting_receive():
            nonlocal seen
            message = await reading()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise PayloadTooLarge(self._message(), field="body")
            return message

        await self.app(scope, counting_receive, send)

    @staticmethod
    async def _refuse(exc: PredictorError, scope, receive, send) -> None:
        if generates_table(scope):  # that route's own answer shape
            await table_failure(exc)(scope, receive, send)
        else:
            await error_response(exc.status_code, exc.message, exc.field)(scope, receive, send)

    def _message(self) -> str:
        return (f"request body larger than {self.max_mb:g} MB "
                "(PREDICTOR_MAX_UPLOAD_MB); split the traces over several requests")


def _refusing(exc: PredictorError) -> Callable[[], Any]:
    """An ASGI ``receive`` that raises ``exc`` when a route reads the body, reading none of it."""
    async def receive() -> Any:
        raise exc
    return receive


def api_key_guard(key: SecretStr | None) -> list[Any]:
    """The dependencies of the routes that change state: the check of ``key``, or none when
    no key is set (and then /docs shows no lock on them either).

    Checked before the route reads its body, so an upload without the key is refused
    before it is read; compared in constant time, so that the answer's timing does not
    tell how much of a guess was right.
    """
    if key is None:
        return []
    expected = key.get_secret_value().encode()
    bearer = HTTPBearer(auto_error=False, scheme_name="PREDICTOR_API_KEY",
                        description="Routes that change state (training, deletion, observations, retraining, "
                                    "lookup-table generation and deletion, cache clearing) need the service's key.")

    async def require_api_key(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if credentials is None:
            raise Unauthorized("this route changes the service's state and needs its API key: "
                               "send the header 'Authorization: Bearer <PREDICTOR_API_KEY>'")
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise Unauthorized("the API key sent is not this service's", 'Bearer error="invalid_token"')

    return [Depends(require_api_key)]


def _refuse_trainings_once_told_to_stop(service: PredictorService) -> None:
    """From SIGTERM (or SIGINT) on, refuse new trainings, then let the server's own handler
    begin its graceful stop: the server finishes the requests it holds, a slow upload among
    them, and a training taken then was answered (202, for one in the background) only to be
    cut short by the stop. The server (uvicorn) installs its handlers before the app starts
    and puts back the ones it found when it stops, so this one goes with them. Signals are
    the main thread's: an app served from another thread (a test's) keeps the server's."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        server_handler = signal.getsignal(sig)
        if not callable(server_handler):  # no server listening for it: the default stays
            continue

        def told_to_stop(signum: int, frame: Any, server_handler: Callable[..., Any] = server_handler) -> None:
            service.jobs.stop_accepting()
            # A requested retraining under way holds its request, which the server waits for
            # (up to PREDICTOR_TRAINING_TIMEOUT_S): its worker is stopped now, so it answers a
            # 503, storing nothing, as one asked for from now on does. In a thread: the handler
            # runs between the main thread's bytecodes, and the stop waits for the worker's end.
            threading.Thread(target=service.retrainer.shutdown, name="retraining-stop", daemon=True).start()
            server_handler(signum, frame)

        signal.signal(sig, told_to_stop)


def create_app(settings: PredictorSettings | None = None) -> FastAPI:
    settings = settings or PredictorSettings()
    service = PredictorService(settings)
    predict_on_one_blas_thread()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        _remove_stale_uploads(settings.data_dir)
        summary, unwritable = service.startup_report()
        log.info(summary)
        for problem in unwritable:
            log.warning(problem)
        # Everything allocated at start-up lives as long as the process: keep the
        # garbage collector from walking it again and again (p99 of big batches).
        gc.collect()
        gc.freeze()
        if settings.preload_models:
            # In the background: the service answers (and is healthy) meanwhile, loading on demand.
            service.start_preload()
        _refuse_trainings_once_told_to_stop(service)
        yield
        service.close()

    app = FastAPI(
        title="SwarmPilot Predictor",
        version=__version__,
        description="Runtime distributions (quantiles, mean, std, queue totals) for ML inference tasks.",
        lifespan=lifespan,
        # A trailing slash is a 404 in the service's JSON, not a bodiless 307 to follow.
        redirect_slashes=False,
        telemetry=None if settings.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_mb=settings.max_upload_mb)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    app.add_middleware(EncodedSlashMiddleware)
    app.add_middleware(RequestIdMiddleware)  # every answer the middlewares inside make carries its id
    # Outermost of ours: it must see every read of the body, whichever layer makes it.
    app.add_middleware(ExpectContinueMiddleware)
    app.state.service = service
    app.state.settings = settings

    async def data_dir_present() -> None:
        # A route that changes state, while a folder of the data directory is gone: a 503
        # before it writes, not a training stored in folders made again, empty, in its place.
        gone = service.data_dir_gone()
        if gone is not None:
            raise gone

    # (The query check after the key's: a request without the key learns nothing more.)
    writes = [*api_key_guard(settings.api_key), Depends(data_dir_present), DECLARED_QUERY]
    _add_exception_handlers(app, service)

    # Starlette tries routes in the order they were added: keep this one (the lean prediction
    # routes put themselves before all others, see routes/lean.py).
    add_discovery_routes(app, service, writes)
    # Requests with large bodies (batches, queues, observations, evaluations) take turns, a few at a time.
    large_bodies = large_body_turns()
    add_model_routes(app, service, writes, large_bodies)
    add_training_routes(app, service, settings, writes)
    add_prediction_routes(app, service, settings, large_bodies)
    add_table_routes(app, service, settings, writes)
    add_monitoring_routes(app, service, writes, large_bodies)
    openapi = app.openapi

    def openapi_with_path_parameters() -> dict[str, Any]:
        # FastAPI builds the schema once and keeps it (app.openapi_schema): completed then, in place.
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = declare_unauthorized(declare_path_parameters(openapi()))
        if settings.max_upload_mb > 0:  # (0: no limit, no 413 but the routes' own)
            spec = declare_too_large(spec)
        return declare_request_id(hoist_definitions(spec))

    app.openapi = openapi_with_path_parameters  # type: ignore[method-assign]
    return app


def _add_exception_handlers(app: FastAPI, service: PredictorService) -> None:
    @app.exception_handler(PredictorError)
    async def _predictor_error(request: Request, exc: PredictorError):
        if exc.status_code in (404, 500):
            # Not found where nothing stored can be read (a table not loaded yet, another
            # worker's job): unknown, not absent. A client gives up on a 404, not on a 503.
            # A write that failed as the folder went (past the route's check) is that outage too.
            gone = service.data_dir_gone()
            if gone is not None:
                exc = gone
        if generates_table(request.scope):
            # Refused before the route ran (its key, a query parameter it does not take, the
            # data directory gone): in the answer shape of its own failures, as the seed's.
            response = table_failure(exc)
        else:
            response = error_response(exc.status_code, exc.message, exc.field, **exc.extra)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # The router's own 404 and 405 (no such path, wrong method), in the service's error format.
        path = cut(request.url.path, 200)
        message, field = {404: (f"no endpoint {request.method} {path} (see /docs)", "path"),
                          405: (f"method {request.method} is not allowed on {path}", "method")
                          }.get(exc.status_code, (str(exc.detail), None))
        response = error_response(exc.status_code, message, field)
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            response.headers["allow"] = ", ".join(allowed_methods(request))
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        msg, field = validation_message(exc)
        return error_response(422, msg, field)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect):
        # The client left while its body was read (/observe, /train, an upload): nothing went
        # wrong here, and no one is there to answer. Not the server error (and two logged
        # tracebacks) the catch-all below would make of it; /metrics counts it as 499.
        log_client_left(request.method, request.scope["path"])
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError):
        gone = service.data_dir_gone()
        if gone is None:
            raise exc  # to the catch-all below
        # A 503 said in one line, not a 500 and two tracebacks a request: the cause is the
        # directory's (deleted, or its volume unmounted), the same for every request.
        log.error("%s %s: %s", request.method, loggable(request.scope["path"]), gone.message)
        return error_response(gone.status_code, gone.message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # The path as sent (request.url's drops its line breaks and tabs: 'a%0Ab' read 'ab').
        log.exception("unexpected error on %s %s", request.method, loggable(request.scope["path"]))
        response = error_response(500, f"internal error: {type(exc).__name__}")
        # Made by Starlette's outermost middleware, outside RequestIdMiddleware's reach: the id
        # the log line above gave it, for the caller to quote.
        if "request_id" in request.scope:
            response.headers["x-request-id"] = request.scope["request_id"]
        # Starlette raises the error on to the server once this is sent, and uvicorn then
        # closes the connection: said here, a keep-alive client does not send its next
        # request into a closing socket (it got "connection reset by peer").
        response.headers["connection"] = "close"
        return response

# An upload folder this old belongs to no request in flight, nor to a training job waiting
# in a queue: a process that received it was killed (a request, or the job it queued,
# removes its own folder, even when it fails). So does one dated this much in the future (a
# host's clock ahead, or this one's set back: it stayed, start after start, until the clock
# caught up with it).
STALE_UPLOAD_SECONDS = 24 * 3600


def _remove_stale_uploads(data_dir: Path) -> None:
    now = time.time()
    try:
        folders = [p for p in Path(data_dir).glob("upload-*")
                   if p.is_dir() and abs(now - p.stat().st_mtime) > STALE_UPLOAD_SECONDS]
    except OSError:
        return
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
        log.info("removed %s, left by a service process that was killed", folder)


SUPERVISOR_ENV = "SWARMPILOT_PREDICTOR_SUPERVISOR"


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and multi-worker serving: settings from the environment
    (a bad one is one line and exit status 1, as ``serve`` says it: pydantic's own message
    quotes the values, a key's too; so is a data directory that cannot be made, or an unusable
    ``PROMETHEUS_MULTIPROC_DIR``)."""
    _stop_with_supervisor()
    try:
        settings = PredictorSettings()
    except ValidationError as exc:
        print(f"error: {settings_problem(exc)}", file=sys.stderr)
        raise SystemExit(1) from None
    if problem := startup_problem(settings):  # a data directory that cannot be made: one line too, not a traceback
        if settings.log_format == "json":
            from .logs import write_json_line

            write_json_line(logging.ERROR, problem, __name__)
        else:
            print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(1)
    log_beside_uvicorn(settings.log_level, settings.log_format)
    if not _serve_worker():  # (`serve` said it once, not once a worker)
        warn_of_unknown_variables()
    return create_app(settings)


def warn_of_unknown_variables() -> None:
    """Log a warning for each ``PREDICTOR_`` variable that is no setting (see
    :func:`~.settings.unknown_variables`); for the entry points that start the service."""
    for line in unknown_variables(os.environ):
        log.warning(line)


def _serve_worker() -> bool:
    """Whether this process is a worker of ``swarmpilot-predictor serve --workers N``."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    return bool(supervisor) and str(os.getppid()) == supervisor


def _stop_with_supervisor() -> None:
    """In a worker process of ``swarmpilot-predictor serve --workers N``: stop (gracefully) if
    the supervising process dies, killed with SIGKILL say; otherwise the workers would go on
    serving the port, and a new service could not bind it."""
    if _serve_worker():  # a single process has no supervisor to outlive
        when_parent_dies(lambda: os.kill(os.getpid(), signal.SIGTERM))
