"""HTTP layer: translates requests to :class:`PredictorService` calls and back.

Identity segments are read from the *raw* request path and unquoted one by one,
so an encoded slash (``Qwen%2FQwen2.5-7B``) stays inside its segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import gzip
import hmac
import logging
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import anyio
import anyio.to_thread
import orjson
import uvicorn.config
import uvicorn.logging
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, SecretStr, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from . import __version__
from .errors import (InvalidInput, NotFound, PayloadTooLarge, PredictorError, Unauthorized, UnsupportedMediaType, cut, shown,
                     storage_error, validation_message, writing)
from .identity import IdentityPattern, names_a_model
from .schemas import (
    parse_json_body,
    BatchPredictionResponse,
    HealthResponse,
    ModelsResponse,
    ObserveRequest,
    PredictBatchRequest,
    PredictQueuesRequest,
    PredictSingleRequest,
    QueuesPredictionResponse,
    RetrainRequest,
    SinglePredictionResponse,
    TrainConfig,
    TrainRequest,
    TrainResult,
    config_from_text,
)
from .collector import collector_paused
from .metrics import CLIENT_CLOSED, MetricsMiddleware
from .service import PredictorService, predict_on_one_blas_thread
from .settings import PredictorSettings, settings_problem, unknown_variables
from .workers import when_parent_dies
from .traces import TRACE_FILE_KINDS, TRACE_FILE_SUFFIXES, finite_number_in_text

log = logging.getLogger(__name__)
IDENTITY_PATH = "{model_type}/{model_name}/{hardware}/{software_name}/{software_version}"
# A multipart training's config part (its traces belong in trace files beside it).
MAX_CONFIG_BYTES = 64 * 1024 * 1024
# A batch of at most this many predicted values (traces times levels, 8 levels where none
# are named) is predicted on the event loop: it costs about as much as the hop to a thread
# and back. Any longer one goes to a thread: 1,000 traces took 56-63 ms of a heteroscedastic
# model on the loop, and /ping waited 50 ms behind each.
INLINE_VALUES_MAX = 128
INLINE_DEFAULT_LEVELS = 8
# A batch request body over this many bytes is parsed, predicted and answered off the event
# loop, at most LARGE_BATCHES_AT_ONCE at a time (each holds its traces, distributions and
# answer in memory: any number at once made the server's memory grow with them).
LARGE_BODY_BYTES = 1 << 20
# A batch of this many tasks, or a body over LARGE_BODY_BYTES, is answered with Python's cyclic
# collector paused (see collector.py).
PAUSED_COLLECTOR_TASKS = 2_000
LARGE_BATCHES_AT_ONCE = 2


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
        except orjson.JSONEncodeError:
            # A string that UTF-8 cannot encode (a lone surrogate echoed from a request):
            # escape it rather than fail the answer, an error message above all.
            return orjson.dumps(_encodable(content), option=orjson.OPT_SERIALIZE_NUMPY)


def _encodable(value: Any) -> Any:
    """``value`` with every string (and dict key) made encodable: unencodable characters as ``\\uXXXX``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_encodable(str(k)): _encodable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encodable(v) for v in value]
    return value


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

        as_get = dict(scope, method="GET")
        try:
            await self.app(as_get, receive, headers_only)
        finally:
            # The metrics middleware outside labels the request by the route matched here.
            for key in ("route", "endpoint"):
                if key in as_get:
                    scope[key] = as_get[key]


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
        length = None
        for name, value in scope["headers"]:
            if (name == b"content-encoding" and value.strip().lower() not in (b"", b"identity")
                    and scope["method"] in ("POST", "PUT", "PATCH")):
                # Read as JSON, a gzip body was "not valid UTF-8: surrogates not allowed".
                await self._refuse(UnsupportedMediaType(
                    f"Content-Encoding {value.decode('latin-1')!r} is not supported: send the body uncompressed "
                    "(a trace file may be uploaded as .gz)", field="body"), scope, receive, send)
                return
            if name == b"content-length":
                length = value
        if self.max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await self._refuse(PayloadTooLarge(self._message(), field="body"), scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise PayloadTooLarge(self._message(), field="body")
            return message

        await self.app(scope, counting_receive, send)

    @staticmethod
    async def _refuse(exc: PredictorError, scope, receive, send) -> None:
        if scope["path"].startswith("/predict/table/"):  # that route's own answer shape
            await table_failure(exc)(scope, receive, send)
        else:
            await error_response(exc.status_code, exc.message, exc.field)(scope, receive, send)

    def _message(self) -> str:
        return (f"request body larger than {self.max_mb:g} MB "
                "(PREDICTOR_MAX_UPLOAD_MB); split the traces over several requests")


def table_failure(exc: PredictorError) -> JSONResponse:
    """The seed's answer shape for ``/predict/table``: ``{"status": "failed", "path", "message"}``,
    with the HTTP status of the error."""
    message = cut(exc.message, _MOST_MESSAGE)
    body: dict[str, Any] = {"status": "failed", "path": None, "message": message, "detail": message}
    if exc.field:
        body["field"] = cut(exc.field, _MOST_FIELD)
    return JSONResponse({**body, **exc.extra}, status_code=exc.status_code)


# Messages cut what they quote from a request (errors.shown, cut, listed); this bounds the
# answer all the same, should one message be missed.
_MOST_MESSAGE, _MOST_FIELD = 4000, 400


def error_response(status: int, message: str, field: str | None = None, **extra: Any) -> JSONResponse:
    message = cut(message, _MOST_MESSAGE)
    body: dict[str, Any] = {"status": "error", "message": message, "detail": message}
    if field is not None:  # a part named "" is named too
        body["field"] = cut(field, _MOST_FIELD)
    body.update(extra)
    return JSONResponse(body, status_code=status)


def _raw_segments(scope: dict[str, Any], skip: int) -> list[str]:
    return _segments(scope.get("raw_path") or scope["path"].encode(), skip)


def _segments(raw: bytes, skip: int) -> list[str]:
    path = raw.decode("latin-1").split("?", 1)[0]
    segments = path.strip("/").split("/")
    return [unquote(s) for s in segments[skip:]]


def _identity_from(scope: dict[str, Any], skip: int) -> IdentityPattern:
    """The five identity segments after the first ``skip`` path segments (the route checked the shape)."""
    raw = scope.get("raw_path") or scope["path"].encode()
    # Only paths of a few KB are kept (a model's five parts are at most 200 characters each;
    # a longer path is parsed each time): 4,096 paths of 60 KB, each a 404, held 470 MB in
    # every worker.
    return _pattern_of(raw, skip) if len(raw) <= _CACHED_PATH_BYTES else _parse_pattern(raw, skip)


_CACHED_PATH_BYTES = 4096


async def _train_body(request: Request) -> bytes:
    """A JSON training body, of at most MAX_CONFIG_BYTES (as a multipart config part is): its
    traces are parsed whole into Python objects, where a trace file is read as a stream. A
    138 MB body of 4 million traces took 3.6 GB across the service and its worker."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_CONFIG_BYTES:
        raise PayloadTooLarge(_TRAIN_BODY_TOO_LARGE, field="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_CONFIG_BYTES:
            raise PayloadTooLarge(_TRAIN_BODY_TOO_LARGE, field="body")
        chunks.append(chunk)
    return b"".join(chunks)


_TRAIN_BODY_TOO_LARGE = (f"a JSON training body is at most {MAX_CONFIG_BYTES:,} bytes: send the traces as a trace "
                         "file (a multipart upload beside the config, or a file in the data directory), which is "
                         "read as a stream")


# Schedulers ask about the same few models again and again: parse each path once.
@functools.lru_cache(maxsize=4096)
def _pattern_of(raw: bytes, skip: int) -> IdentityPattern:
    return _parse_pattern(raw, skip)


def _parse_pattern(raw: bytes, skip: int) -> IdentityPattern:
    segs = _segments(raw, skip)
    if len(segs) < 5:
        raise NotFound(
            "the path needs five identity segments: model_type/model_name/hardware/software_name/software_version",
            field="identity",
        )
    return IdentityPattern.from_segments(*segs[:5])


async def _json_body(request: Request, schema: type[BaseModel]) -> Any:
    return parse_json_body(await request.body(), schema)


def _openapi_body(schema: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema.model_json_schema(ref_template="#/components/schemas/{model}")}},
        }
    }


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
            threading.Thread(target=service.preload, name="preload-models", daemon=True).start()
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
    app.state.service = service
    app.state.settings = settings
    async def data_dir_present() -> None:
        # A route that changes state, while a folder of the data directory is gone: a 503
        # before it writes, not a training stored in folders made again, empty, in its place.
        gone = service.data_dir_gone()
        if gone is not None:
            raise gone

    writes = [*api_key_guard(settings.api_key), Depends(data_dir_present)]

    @app.exception_handler(PredictorError)
    async def _predictor_error(request: Request, exc: PredictorError):
        if exc.status_code in (404, 500):
            # Not found where nothing stored can be read (a table not loaded yet, another
            # worker's job): unknown, not absent. A client gives up on a 404, not on a 503.
            # A write that failed as the folder went (past the route's check) is that outage too.
            gone = service.data_dir_gone()
            if gone is not None:
                exc = gone
        response = error_response(exc.status_code, exc.message, exc.field, **exc.extra)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # The router's own 404 and 405 (no such path, wrong method), in the service's error format.
        path = cut(request.url.path, 200)
        message = {404: f"no endpoint {request.method} {path} (see /docs)",
                   405: f"method {request.method} is not allowed on {path}"}.get(exc.status_code, str(exc.detail))
        response = error_response(exc.status_code, message)
        response.headers.update(exc.headers or {})
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
        log.info("client left during %s %s before its body was read", request.method, cut(request.url.path, 200))
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError):
        gone = service.data_dir_gone()
        if gone is None:
            raise exc  # to the catch-all below
        # A 503 said in one line, not a 500 and two tracebacks a request: the cause is the
        # directory's (deleted, or its volume unmounted), the same for every request.
        log.error("%s %s: %s", request.method, cut(request.url.path, 200), gone.message)
        return error_response(gone.status_code, gone.message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        response = error_response(500, f"internal error: {type(exc).__name__}")
        # Starlette raises the error on to the server once this is sent, and uvicorn then
        # closes the connection: said here, a keep-alive client does not send its next
        # request into a closing socket (it got "connection reset by peer").
        response.headers["connection"] = "close"
        return response

    # ------------------------------------------------------------------ discovery

    # The routes below that report accuracy read the observation logs (64 MB a model at
    # most) and run the drift tests: off the event loop, so that /ping and predictions go on
    # being answered (a first /health after a restart took 3.9 s, and held every request).
    @app.get("/health", response_model=HealthResponse, tags=["discovery"])
    async def health():
        return JSONResponse(await run_in_threadpool(service.health))

    @app.get("/ping", tags=["discovery"], summary="Liveness: the cheapest possible answer")
    async def ping():
        return JSONResponse({"status": "ok"})

    @app.get("/cache/stats", tags=["cache"], summary="Prediction cache size and hit/miss counts")
    async def cache_stats():
        return JSONResponse(service.cache_stats())

    @app.post("/cache/clear", tags=["cache"], dependencies=writes, summary="Empty the prediction cache")
    async def cache_clear():
        return JSONResponse(service.clear_cache())

    @app.get("/models", response_model=ModelsResponse, tags=["models"])
    async def models():
        return JSONResponse({"status": "success", "models": await run_in_threadpool(service.list_models)})

    @app.get("/models/" + IDENTITY_PATH, tags=["models"], summary="One model and all its versions")
    async def model_detail(request: Request):
        pattern = _identity_from(request.scope, 1)
        return JSONResponse({"status": "success", "model": await run_in_threadpool(service.model_detail, pattern)})

    @app.get("/models/" + IDENTITY_PATH + "/versions/{version}", tags=["models"], summary="One version's full metadata")
    async def model_version_detail(request: Request, version: int):
        _refuse_loose_numbers(request, "path.version")
        pattern = _identity_from(request.scope, 1)
        return JSONResponse({"status": "success", "model": await run_in_threadpool(service.model_detail, pattern, version)})

    @app.get("/models/" + IDENTITY_PATH + "/accuracy", tags=["monitoring"],
             summary="Rolling accuracy of the serving version against observed runtimes")
    async def model_accuracy(request: Request, version: int | None = None, recent: int = 200):
        _refuse_repeated_query(request)
        _refuse_loose_numbers(request, "query.version", "query.recent")
        pattern = _identity_from(request.scope, 1)
        return JSONResponse(await run_in_threadpool(service.accuracy, pattern, version, recent))

    @app.post("/models/" + IDENTITY_PATH + "/retrain", tags=["monitoring"], dependencies=writes,
              summary="Retrain now on training data plus observations; a new version only if it is better")
    async def model_retrain(request: Request):
        pattern = _identity_from(request.scope, 1)
        raw = await request.body()
        if raw.strip():
            parse_json_body(raw, RetrainRequest)  # it takes no options: {} or nothing; a key is refused, named
        return JSONResponse(await run_in_threadpool(service.retrain, pattern))

    @app.delete("/models/" + IDENTITY_PATH, tags=["models"], dependencies=writes, summary="Delete a model, every version")
    async def model_delete(request: Request):
        pattern = _identity_from(request.scope, 1)
        return JSONResponse(service.delete_model(pattern))

    @app.delete("/models/" + IDENTITY_PATH + "/versions/{version}", tags=["models"], dependencies=writes, summary="Delete one version")
    async def model_version_delete(request: Request, version: int):
        _refuse_loose_numbers(request, "path.version")
        pattern = _identity_from(request.scope, 1)
        return JSONResponse(service.delete_model(pattern, version))

    # ------------------------------------------------------------------ training

    @app.post("/train", response_model=TrainResult, tags=["training"], dependencies=writes,
              openapi_extra=_openapi_body(TrainRequest),
              summary="Train (in a separate worker process); ?background=true answers 202 with a job id")
    async def train(request: Request, background: bool = False):
        _refuse_repeated_query(request)
        if _is_multipart(request):
            config, uploads, tmpdir = await _read_multipart(request)
            try:
                job_id, future = service.jobs.submit(config, uploads,
                                                     cleanup=lambda: shutil.rmtree(tmpdir, ignore_errors=True))
            except BaseException:  # not queued: nothing else will remove the uploads
                shutil.rmtree(tmpdir, ignore_errors=True)
                raise
        else:
            # The body is parsed and validated in the worker too: a 100k-trace
            # request never holds the event loop (or the GIL) of this process.
            job_id, future = service.jobs.submit_raw(await _train_body(request))
        if background:
            return JSONResponse({"status": "accepted", "job_id": job_id, "status_url": f"/train/jobs/{job_id}"},
                                status_code=202)
        return JSONResponse(await asyncio.wrap_future(future))

    @app.get("/train/jobs/{job_id}", tags=["training"], summary="Status and result of a training job")
    async def train_job(job_id: str):
        return JSONResponse(service.jobs.get(job_id))

    async def _read_multipart(request: Request) -> tuple[TrainConfig, dict[str, Path], Path]:
        # A text part may be the config (JSON or YAML as a form field): as large as a config file.
        # Past 64 file parts the form as a whole is refused: no one part is at fault.
        form = await _read_form(request, "body", text_field="config", max_files=64, max_part_size=MAX_CONFIG_BYTES)
        tmpdir = _upload_dir(settings.data_dir)
        try:
            config_field = form.get("config")
            if config_field is None:
                raise InvalidInput("multipart training needs a 'config' part (JSON or YAML)", field="config")
            if len(form.getlist("config")) > 1:
                raise InvalidInput("multipart training takes one 'config' part, got several", field="config")
            if isinstance(config_field, UploadFile):
                if (config_field.size or 0) > MAX_CONFIG_BYTES:
                    raise PayloadTooLarge(f"the 'config' part is {config_field.size:,} bytes, more than "
                                          f"{MAX_CONFIG_BYTES:,}: send the traces as trace files", field="config")
                config_text = (await config_field.read()).decode("utf-8", "replace")
            else:
                config_text = str(config_field)
            # Parsing YAML costs seconds per megabyte: not on the event loop.
            config = await run_in_threadpool(_parse_config, config_text)
            uploads: dict[str, Path] = {}
            by_part: dict[str, list[Path]] = {}
            for key, value in form.multi_items():
                if key != "config" and not isinstance(value, UploadFile):
                    # Read as a setting ("algorithm=linear") it would have been ignored without a word.
                    raise InvalidInput(f"multipart field {shown(key)} is not read: training settings go in the "
                                       "'config' part, and trace files are file parts", field=key)
                if key == "config":
                    continue
                name = Path(value.filename or key).name
                if name in uploads:
                    # The config names files by name: two parts of one name would leave it to chance.
                    raise InvalidInput(f"two uploaded files are named {shown(name)}; the config names files by name",
                                       field=key)
                lower = name.lower().removesuffix(".gz")
                if not lower.endswith(TRACE_FILE_SUFFIXES):
                    raise InvalidInput(f"uploaded file {shown(name)} must be {TRACE_FILE_KINDS}", field=key)
                # Stored under a generated name: the client's file name never touches the disk.
                dest = tmpdir / f"{len(uploads)}{_suffix(name)}"
                await run_in_threadpool(_save_upload, value, dest, name, key, settings.max_upload_mb)
                uploads[name] = dest
                by_part.setdefault(key, []).append(dest)
            # A file may be named by its part too, where that is not another file's name (file
            # names come first) and only one file was sent as that part: else it would be chance.
            for key, dests in by_part.items():
                if key in uploads:
                    continue
                if len(dests) == 1:
                    uploads[key] = dests[0]
                elif config.traces == key:
                    raise InvalidInput(f"{len(dests)} uploaded files were sent as part {shown(key)}, which the config "
                                       "names: name one of them by its file name", field="config.traces")
            return config, uploads, tmpdir
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        finally:
            await form.close()

    # ------------------------------------------------------------------ prediction

    batcher = SingleRequestBatcher(service)

    async def predict_single(scope: dict[str, Any], body: bytes, client: ClientWatch) -> dict[str, Any]:
        pattern = _identity_from(scope, 2)
        req = parse_json_body(body, PredictSingleRequest)
        if req.lookup_table:  # a table may need loading first: off the event loop
            pred = await run_in_threadpool(service.predict, pattern, [req.trace], req.confidence_level, req.quantiles,
                                           lookup_table=True, lookup_table_name=req.lookup_table_name)
        elif req.version is not None:  # a version asked for by number (it may need loading): alone, off the loop
            pred = await run_in_threadpool(service.predict, pattern, [req.trace], req.confidence_level, req.quantiles,
                                           version=req.version)
        else:
            if names_a_model([req.trace]):
                # Where the URL's '*' parts match several models, the trace's identity fields pick one.
                pattern = service.resolve_for(pattern, [req.trace])
            if service.is_cold(pattern):  # a model's first load takes seconds: not on the event loop
                await run_in_threadpool(service.load_if_cold, pattern)
            pred = await batcher.predict(pattern, req.trace, req.confidence_level, req.quantiles)
        if not pred.ok[0]:
            raise InvalidInput(f"trace: {pred.errors[0]}", field="trace")
        return pred.single_response()

    def batch_answer(pattern: IdentityPattern, req: PredictBatchRequest) -> dict[str, Any]:
        return service.predict(pattern, req.trace, req.confidence_level, req.quantiles, with_total=True,
                               version=req.version, lookup_table=req.lookup_table, lookup_table_name=req.lookup_table_name,
                               shared_factor=req.shared_factor, total_distribution=req.total_distribution,
                               ).batch_response(req.total_distribution)

    large_batches = asyncio.Semaphore(LARGE_BATCHES_AT_ONCE)
    # Batches are predicted in threads of their own, settings.batch_threads at once (the others
    # wait their turn without a thread): in the thread pool that /health, /models, /observe and
    # model loading use, 60 clients' batches held its 40 threads and /health took 18 s.
    batch_turns = asyncio.Semaphore(settings.batch_threads)
    batch_threads: list[anyio.CapacityLimiter] = []  # made in the event loop, on first use

    async def in_batch_thread(work: Callable[[], Any], client: ClientWatch,
                              first: asyncio.Semaphore | None = None) -> Any:
        """``work()`` in a batch thread, in its turn (after one of ``first``'s, where given);
        not at all for a client gone meanwhile (a scheduler's own timeout: eight abandoned
        100,000-trace batches were all predicted, and the one still waiting took 14 s instead of 3)."""
        with client.watched():
            async with first or contextlib.nullcontext(), batch_turns:
                await asyncio.sleep(0)  # the watch's turn: a client gone just now is seen gone
                if client.gone:
                    raise ClientGone
                if not batch_threads:
                    batch_threads.append(anyio.CapacityLimiter(settings.batch_threads))
                return await anyio.to_thread.run_sync(work, limiter=batch_threads[0])

    async def predict_batch(scope: dict[str, Any], body: bytes, client: ClientWatch) -> dict[str, Any] | bytes:
        pattern = _identity_from(scope, 2)
        if len(body) > LARGE_BODY_BYTES:
            # A batch of 100,000 traces takes a second to parse, predict and write out, and much
            # memory while it does: all of it off the event loop, which goes on answering
            # others, and only a few such batches at a time (the rest wait their turn).
            def whole() -> bytes:
                with collector_paused():
                    return orjson.dumps(batch_answer(pattern, parse_json_body(body, PredictBatchRequest)),
                                        option=orjson.OPT_SERIALIZE_NUMPY)

            return await in_batch_thread(whole, client, large_batches)
        req = parse_json_body(body, PredictBatchRequest)
        # A longer batch takes milliseconds to tens of them, a model's first load seconds, and a
        # table may need loading: off the event loop (numpy releases the GIL for most of the
        # work), its answer written there too.
        values = len(req.trace) * (len(req.quantiles) if req.quantiles else INLINE_DEFAULT_LEVELS)
        if req.lookup_table or req.version is not None or values > INLINE_VALUES_MAX or service.is_cold(pattern):
            def answer() -> bytes:
                with collector_paused(len(req.trace) >= PAUSED_COLLECTOR_TASKS):
                    return orjson.dumps(batch_answer(pattern, req), option=orjson.OPT_SERIALIZE_NUMPY)

            return await in_batch_thread(answer, client)
        return batch_answer(pattern, req)

    async def predict_queues(scope: dict[str, Any], body: bytes, client: ClientWatch) -> bytes:
        pattern = _identity_from(scope, 2)

        def answer() -> bytes:  # each queue's total is a convolution: off the event loop
            with collector_paused(len(body) > LARGE_BODY_BYTES):  # (as a large batch's)
                req = parse_json_body(body, PredictQueuesRequest)
                return orjson.dumps(service.predict_queues(pattern, req.queues, req.confidence_level, req.quantiles,
                                                           req.shared_factor, req.version, req.lookup_table,
                                                           req.lookup_table_name), option=orjson.OPT_SERIALIZE_NUMPY)

        return await in_batch_thread(answer, client, large_batches if len(body) > LARGE_BODY_BYTES else None)

    _lean_route(app, "/predict/single/" + IDENTITY_PATH, predict_single, PredictSingleRequest,
                SinglePredictionResponse, "Predict the runtime distribution of one task")
    _lean_route(app, "/predict/batch/" + IDENTITY_PATH, predict_batch, PredictBatchRequest,
                BatchPredictionResponse, "Predict a batch of tasks and the distribution of their total")
    _lean_route(app, "/predict/queues/" + IDENTITY_PATH, predict_queues, PredictQueuesRequest,
                QueuesPredictionResponse, "The wait of each of several queues of tasks (a scheduler's instances)")

    # ------------------------------------------------------------------ lookup tables

    @app.post("/predict/table/" + IDENTITY_PATH, tags=["lookup tables"], dependencies=writes,
              summary="Predict every trace of an uploaded file and write a lookup table")
    async def predict_table(request: Request):
        pattern = _identity_from(request.scope, 2)
        try:
            if not _is_multipart(request):
                raise InvalidInput("send multipart/form-data with a 'trace_file' part and a 'confidence_level' field",
                                   field="trace_file")
            form = await _read_form(request, "trace_file", max_files=1, max_fields=16, max_part_size=64 * 1024)
            tmpdir = _upload_dir(settings.data_dir)
            try:
                _check_table_form(form)
                upload = form.get("trace_file")
                if not isinstance(upload, UploadFile):
                    raise InvalidInput("multipart part 'trace_file' (a .json, .jsonl or .csv file, optionally .gz) is required",
                                       field="trace_file")
                name = Path(upload.filename or "traces.json").name
                if not name.lower().removesuffix(".gz").endswith(TRACE_FILE_SUFFIXES):
                    raise InvalidInput(f"trace_file {shown(name)} must be {TRACE_FILE_KINDS}", field="trace_file")
                confidence = _form_float(form.get("confidence_level"), 0.95, "confidence_level")
                # Given but blank is the service's to refuse (it would name no table), not a default.
                raw_name = form.get("table_name")
                table_name = None if raw_name is None or isinstance(raw_name, UploadFile) else str(raw_name)
                fmt = _form_str(form.get("format"))
                dest = tmpdir / f"traces{_suffix(name)}"  # the client's file name never touches the disk
                await run_in_threadpool(_save_upload, upload, dest, name, "trace_file", settings.max_upload_mb)
                result = await run_in_threadpool(service.generate_table, pattern, dest, confidence, table_name, fmt,
                                                 None, name)
            finally:
                await form.close()
                shutil.rmtree(tmpdir, ignore_errors=True)
        except PredictorError as exc:
            return table_failure(exc)
        return JSONResponse(result)

    @app.get("/tables", tags=["lookup tables"], summary="Lookup tables in the table directory")
    async def tables_list():
        tables = await run_in_threadpool(service.list_tables)
        default = service.tables.default_name if service.tables.default_table is not None else None
        return JSONResponse({"status": "success", "tables": tables, "default": default})

    @app.get("/tables/{name}", tags=["lookup tables"], summary="Download a lookup table file")
    async def tables_download(request: Request):
        name = _table_name_from(request)
        fh, size = await run_in_threadpool(service.tables.open_table, name)

        async def content() -> AsyncIterator[bytes]:
            # From the file opened above: a table renamed over or deleted meanwhile is still
            # sent whole, as it was, never a body longer or shorter than its Content-Length.
            try:
                while chunk := await run_in_threadpool(fh.read, 1 << 20):
                    yield chunk
            finally:
                fh.close()

        # FileResponse's header, which cannot be had without FileResponse opening the path again.
        quoted = quote(name)
        disposition = (f'attachment; filename="{name}"' if quoted == name
                       else f"attachment; filename*=utf-8''{quoted}")
        return StreamingResponse(content(), media_type=_TABLE_MEDIA.get(_table_media_key(name), "application/octet-stream"),
                                 headers={"content-length": str(size), "content-disposition": disposition})

    @app.delete("/tables/{name}", tags=["lookup tables"], dependencies=writes, summary="Delete a lookup table")
    async def tables_delete(request: Request):
        return JSONResponse(service.tables.delete(_table_name_from(request)))

    # ------------------------------------------------------------------ monitoring

    @app.post("/observe", tags=["monitoring"], dependencies=writes, openapi_extra=_openapi_body(ObserveRequest),
              summary="Record measured runtimes for accuracy tracking and retraining")
    async def observe(request: Request):
        req = await _json_body(request, ObserveRequest)
        result = await run_in_threadpool(service.observe, req.model.model_dump(), req.traces)
        return JSONResponse(result)

    @app.get("/metrics", tags=["monitoring"], summary="Prometheus metrics")
    async def metrics():
        body, ctype = await run_in_threadpool(service.render_metrics)
        return Response(body, media_type=ctype)

    @app.get("/dashboard", tags=["monitoring"], summary="Models, accuracy and drift for people", include_in_schema=True)
    async def dashboard():
        return Response(_DASHBOARD.read_bytes(), media_type="text/html; charset=utf-8")

    return app


_DASHBOARD = Path(__file__).with_name("static") / "dashboard.html"


_TABLE_MEDIA = {"json": "application/json", "jsonl": "application/x-ndjson", "csv": "text/csv", "gz": "application/gzip"}


def _table_media_key(name: str) -> str:
    from .lookup import table_format

    return "gz" if name.lower().endswith(".gz") else (table_format(name) or "")


def _table_name_from(request: Request) -> str:
    """The table name from the raw path, so that an encoded '/' is seen (and refused), not routed."""
    segs = _raw_segments(request.scope, 1)
    return "/".join(segs)


def _is_multipart(request: Request) -> bool:
    # Media types are case-insensitive (RFC 9110): "Multipart/Form-Data" was read as JSON.
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


def _refuse_loose_numbers(request: Request, *params: str) -> None:
    """A 422 for a number of the URL's ``params`` ("path.version", "query.recent") not
    written in digits: read as the routes declare them (integers, loosely), "1.0" and " 1"
    were version 1, on a route that deletes it too, where a body's ``version`` must be a
    JSON whole number."""
    for param in params:
        where, name = param.split(".")
        raw = (request.path_params if where == "path" else request.query_params).get(name)
        if raw is not None and re.fullmatch(r"-?[0-9]+", raw) is None:
            raise InvalidInput(f"{param}: must be a whole number, written in digits, got {shown(raw)}", field=param)


def _refuse_repeated_query(request: Request) -> None:
    """A query parameter given twice is a 422: the last one won, without a word (an invalid first one too)."""
    seen: set[str] = set()
    for key, _ in request.query_params.multi_items():
        if key in seen:
            raise InvalidInput(f"query parameter {shown(key)} is given more than once", field=key)
        seen.add(key)


class _WholeMultiPartParser(MultiPartParser):
    """Starlette's parser, refusing a body that ends before the closing boundary.

    Without it a form cut short lost its last part without a word (a table written under
    the default name, over another table, when its 'table_name' part was cut off).
    """

    ended = False

    def on_end(self) -> None:
        self.ended = True
        super().on_end()

    async def parse(self) -> FormData:
        form = await super().parse()
        if not self.ended:
            await form.close()
            raise MultiPartException("the body ends before the form's closing boundary (it was cut short)")
        return form


async def _read_form(request: Request, files_field: str, text_field: str = "body", **limits: int) -> FormData:
    """The request's multipart form; a body Starlette cannot parse, or one past ``limits``, is a PredictorError
    (a text part past its size names ``text_field``).

    Starlette reports those as a bare ``HTTPException(400)``, which would bypass the
    routes' own error answers (the table route's ``{"status": "failed", ...}``).
    """
    try:
        async with aclosing(request.stream()) as stream:
            return await _WholeMultiPartParser(request.headers, stream, **limits).parse()
    except OSError as exc:
        # Starlette spools file parts over 1 MB to the system's temporary directory.
        raise storage_error(exc, "the uploaded form", f"in the temporary directory {tempfile.gettempdir()}") from None
    except (StarletteHTTPException, MultiPartException) as exc:
        reason = str(getattr(exc, "detail", None) or getattr(exc, "message", None) or exc)
        message = f"the multipart form cannot be read: {reason}"
        if "exceeded maximum size" in reason:
            # Starlette does not say which part: on /train the one text part taken is the config.
            said = "only file parts may be larger" if text_field == "body" else (
                f"a text part, such as '{text_field}', is at most that; only file parts may be larger")
            raise PayloadTooLarge(f"{message} ({said})", field=text_field) from None
        if "Too many files" in reason:
            raise PredictorError(message, field=files_field) from None
        raise PredictorError(message, field="body") from None


# An upload folder this old belongs to no request in flight, nor to a training job waiting
# in a queue: a process that received it was killed (a request, or the job it queued,
# removes its own folder, even when it fails).
STALE_UPLOAD_SECONDS = 24 * 3600


def _remove_stale_uploads(data_dir: Path) -> None:
    cutoff = time.time() - STALE_UPLOAD_SECONDS
    try:
        folders = [p for p in Path(data_dir).glob("upload-*") if p.is_dir() and p.stat().st_mtime < cutoff]
    except OSError:
        return
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
        log.info("removed %s, left by a service process that was killed", folder)


def upload_bytes(max_mb: float) -> int:
    """``PREDICTOR_MAX_UPLOAD_MB`` in bytes, rounded up: a positive limit under a byte is one
    byte, not 0, which means no limit."""
    return math.ceil(max_mb * 2**20)


def _upload_dir(data_dir: Path) -> Path:
    """A fresh folder for one request's uploaded files, inside the data directory (the caller removes it)."""
    with writing("an uploaded file"):
        return Path(tempfile.mkdtemp(prefix="upload-", dir=data_dir))


def _save_upload(upload: UploadFile, dest: Path, name: str, field: str, max_mb: float) -> None:
    with writing(f"the uploaded file {shown(name)}"), dest.open("wb") as fh:
        shutil.copyfileobj(upload.file, fh, 1 << 20)
    if max_mb and name.lower().endswith(".gz"):
        _check_expanded_size(dest, name, field, upload_bytes(max_mb))


def _check_expanded_size(path: Path, name: str, field: str, limit: int) -> None:
    """Refuse a gzip upload that expands past the size limit a plain upload has.

    Otherwise compression is a way around it: a 99 KB file of a million identical
    traces made a 518 MB lookup table. (A file that is not gzip, or is cut short, is
    left to the trace reader, whose message names what is wrong with it.)
    """
    total = 0
    try:
        with gzip.open(path, "rb") as gz:
            while chunk := gz.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLarge(f"{field} {shown(name)} expands to more than {limit / 2**20:g} MB "
                                          "(PREDICTOR_MAX_UPLOAD_MB, which a plain upload has too)", field=field)
    except (OSError, EOFError, zlib.error):
        return


TABLE_FORM_FIELDS = ("trace_file", "confidence_level", "table_name", "format")


def _check_table_form(form: FormData) -> None:
    """Each field of a table generation at most once, none other: a misspelt one
    (``confidence=0.5``) was ignored, and the table made at the default."""
    seen: set[str] = set()
    for key, _ in form.multi_items():
        if key not in TABLE_FORM_FIELDS:
            raise InvalidInput(f"unknown multipart field {shown(key)}; the fields are {', '.join(TABLE_FORM_FIELDS)}",
                               field=key)
        if key in seen:
            raise InvalidInput(f"multipart field {shown(key)} is given more than once", field=key)
        seen.add(key)


def _form_str(value: Any) -> str | None:
    if value is None or isinstance(value, UploadFile):
        return None
    value = str(value).strip()
    return value or None


def _form_float(value: Any, default: float, field: str) -> float:
    if value is None:
        return default
    text = _form_str(value)
    if text is None:  # blank, or a file: not the default without a word
        raise InvalidInput(f"{field} must be a number (leave the field out for {default})", field=field)
    number = finite_number_in_text(text)  # as a number in a trace is read: "0.5_0" and "٠.٩" are not
    if number is None:
        raise InvalidInput(f"{field} must be a number, got {shown(text)}", field=field)
    if not 0.0 < number < 1.0:
        raise InvalidInput(f"{field} must lie strictly between 0 and 1, got {number}", field=field)
    return number


class SingleRequestBatcher:
    """Coalesces single predictions that arrive together into one vectorised evaluation.

    Under concurrent load many requests reach their prediction in the same turn
    of the event loop. The first of a turn is answered at once (a lone client
    never waits for the loop); the others are queued and evaluated together
    after that turn's other callbacks, at little more than the cost of one.
    Requests are grouped by model pattern, confidence level and levels, so each
    gets exactly the answer it would have had alone.
    """

    def __init__(self, service: PredictorService):
        self.service = service
        self._pending: dict[tuple, list[tuple[dict[str, Any], asyncio.Future]]] = {}
        self._scheduled = False
        self._turn_busy = False

    def _turn_over(self) -> None:
        self._turn_busy = False

    async def predict(self, pattern: IdentityPattern, trace: dict[str, Any], confidence_level: float,
                      quantiles: list[float] | None):
        loop = asyncio.get_running_loop()
        if not self._turn_busy:
            # Runs after the callbacks already queued for this turn: a request that
            # arrives before it knows others came with it, and joins a batch.
            self._turn_busy = True
            loop.call_soon(self._turn_over)
            return self.service.predict(pattern, [trace], confidence_level, quantiles)
        future = loop.create_future()
        key = (pattern.as_tuple(), confidence_level, tuple(quantiles) if quantiles else None)
        self._pending.setdefault(key, []).append((trace, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for (parts, confidence_level, levels), items in pending.items():
            pattern, wanted = IdentityPattern(*parts), list(levels) if levels else None
            try:
                preds = self.service.predict_each(pattern, [t for t, _ in items], confidence_level, wanted)
            except Exception:  # noqa: BLE001 - each request is answered alone below
                # One request's failure must not become its neighbours': each is evaluated
                # alone and gets its own answer or error (a missing model fails them all alike).
                for trace, future in items:
                    try:
                        pred = self.service.predict_each(pattern, [trace], confidence_level, wanted)[0]
                    except Exception as exc:  # noqa: BLE001 - delivered to that request
                        if not future.done():
                            future.set_exception(exc)
                    else:
                        if not future.done():
                            future.set_result(pred)
                continue
            for (_, future), pred in zip(items, preds):
                if not future.done():
                    future.set_result(pred)


class ClientGone(Exception):
    """The client of a request left before its work began: there is no one to answer."""


class ClientWatch:
    """Notices the client of a request, whose body is read, leaving while it waits.

    A task awaits the request's next ASGI message, which is ``http.disconnect`` when the
    client goes, from when the request starts waiting. A single look when its turn came
    missed a client gone most of a second before (its 5,000-trace batch was predicted).
    """

    def __init__(self, receive: Callable[[], Awaitable[dict[str, Any]]]):
        self._receive = receive
        self.gone = False

    async def _wait(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            await asyncio.sleep(0.01)  # (a server that answers at once with nothing new: no spin)
        self.gone = True

    @contextmanager
    def watched(self) -> Iterator[None]:
        task = asyncio.ensure_future(self._wait())
        try:
            yield
        finally:
            task.cancel()


LeanHandler = Callable[[dict[str, Any], bytes, ClientWatch], Awaitable[dict[str, Any] | bytes]]


class LeanEndpoint:
    """A JSON POST endpoint as a bare ASGI app: body bytes in, orjson bytes out.

    Starlette's request/response objects and its per-route exception wrapper
    cost tens of µs a request, a sizeable share of a single prediction's. The
    handler's exceptions go to the app's exception handlers as any route's do
    (the app-level exception middleware catches them).
    """

    def __init__(self, handler: LeanHandler, path: str):
        self.handler = handler
        self.path = path  # the route template: metrics label requests with it

    async def __call__(self, scope, receive, send) -> None:
        scope["route"] = self  # as FastAPI's routes do; a plain Starlette route leaves it unset
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        del chunks  # a body waiting for its turn (see the batch limit) was held twice
        try:
            answer = await self.handler(scope, body, ClientWatch(receive))  # bytes: already written (off the loop)
        except ClientGone:
            return  # nobody to answer
        payload = answer if isinstance(answer, bytes) else orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def _lean_route(app: FastAPI, path: str, handler: LeanHandler, body: type[BaseModel], response: type[BaseModel],
                summary: str) -> None:
    """Serve ``path`` with a bare ASGI endpoint, documented through FastAPI.

    FastAPI's per-request machinery (dependency solving, response-model
    handling) costs as much as a whole prediction. The bare route, placed
    first, answers every request; the FastAPI route on the same path is there
    for the OpenAPI schema and /docs. Both call the same handler.
    """

    async def documented(request: Request) -> Response:
        try:
            answer = await handler(request.scope, await request.body(), ClientWatch(request.receive))
        except ClientGone:
            return Response(status_code=499)  # (nginx's "client closed request": no one reads it)
        return Response(answer, media_type="application/json") if isinstance(answer, bytes) else JSONResponse(answer)

    app.add_api_route(path, documented, methods=["POST"], response_model=response, tags=["prediction"],
                      summary=summary, openapi_extra=_openapi_body(body))
    app.router.routes.insert(0, Route(path, LeanEndpoint(handler, path), methods=["POST"]))


def _suffix(name: str) -> str:
    lower = name.lower()
    gz = lower.endswith(".gz")
    base = lower.removesuffix(".gz")
    for s in TRACE_FILE_SUFFIXES:
        if base.endswith(s):
            return s + (".gz" if gz else "")
    return ""


def _parse_config(text: str) -> TrainConfig:
    data = config_from_text(text)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        msg, field = validation_message(exc, prefix=("config",))
        raise InvalidInput(msg, field=field) from None


SUPERVISOR_ENV = "SWARMPILOT_PREDICTOR_SUPERVISOR"


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and multi-worker serving: settings from the environment
    (a bad one is one line and exit status 1, as ``serve`` says it: pydantic's own message
    quotes the values, a key's too)."""
    _stop_with_supervisor()
    try:
        settings = PredictorSettings()
    except ValidationError as exc:
        print(f"error: {settings_problem(exc)}", file=sys.stderr)
        raise SystemExit(1) from None
    log_beside_uvicorn(settings.log_level)
    if not _serve_worker():  # (`serve` said it once, not once a worker)
        warn_of_unknown_variables()
    return create_app(settings)


def warn_of_unknown_variables() -> None:
    """Log a warning for each ``PREDICTOR_`` variable that is no setting (see
    :func:`~.settings.unknown_variables`); for the entry points that start the service."""
    for line in unknown_variables(os.environ):
        log.warning(line)


def log_beside_uvicorn(level: str) -> None:
    """Write the service's own log lines to stderr as uvicorn writes its, at uvicorn's level
    where uvicorn set one (a ``uvicorn`` command's ``--log-level``), else at ``level``
    (``PREDICTOR_LOG_LEVEL``), where the process set up no logging of its own.

    For the entry points that run the service (``serve``, the seed's commands). Without it
    Python shows warnings only: every info line (a client that left, a default table loaded,
    upload folders removed at start) was lost.
    """
    package = logging.getLogger(__package__)
    if package.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(uvicorn.logging.DefaultFormatter("%(levelprefix)s %(message)s"))
    package.addHandler(handler)
    package.setLevel(logging.getLogger("uvicorn.error").level or uvicorn.config.LOG_LEVELS[level])
    package.propagate = False


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
