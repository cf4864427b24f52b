"""What every route group shares: the JSON answers and the error shapes, identities read
from the raw path, and the checks of a URL's parameters and of a request's body type.

Identity segments are read from the *raw* request path and unquoted one by one,
so an encoded slash (``Qwen%2FQwen2.5-7B``) stays inside its segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson
from fastapi import Depends, Request
from fastapi.responses import Response
from starlette.datastructures import QueryParams
from pydantic import BaseModel

from ..errors import InvalidInput, NotFound, PayloadTooLarge, PredictorError, cut, loggable, shown
from ..identity import IdentityPattern
from ..request_ids import MAX_LENGTH as MAX_ID_LENGTH
from ..schemas import ErrorResponse, NoOptions, parse_json_body

IDENTITY_PATH = "{model_type}/{model_name}/{hardware}/{software_name}/{software_version}"
# Set in the scope of a HEAD request that the app (api.HeadAsGetMiddleware) serves as a GET:
# a route that streams a file answers its headers without reading it.
HEAD_ONLY = "swarmpilot.head_only"


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


def _mounted_root(scope: Any) -> str:
    """The ``root_path`` the service is mounted under (a proxy's ``/api``, uvicorn's
    ``--root-path``) where the router reads the path past it, as Starlette's get_route_path
    does: where ``path`` begins with it; else "" (a server that hands over the path without
    the root)."""
    path, root = scope.get("path", ""), scope.get("root_path", "").rstrip("/")
    return root if root and path.startswith(root + "/") else ""


def generates_table(scope: Any) -> bool:
    """Whether a request is a table's generation (``POST /predict/table/...``), whose every
    failure answers in :func:`table_failure`'s shape: read as the router reads the path."""
    path = scope.get("path", "")[len(_mounted_root(scope)):]
    return scope.get("method") == "POST" and path.startswith("/predict/table/")


def table_failure(exc: PredictorError) -> JSONResponse:
    """The seed's answer shape for ``/predict/table``: ``{"status": "failed", "path", "message"}``,
    with the HTTP status of the error."""
    message = cut(exc.message, _MOST_MESSAGE)
    body: dict[str, Any] = {"status": "failed", "path": None, "message": message, "detail": message}
    if exc.field is not None:  # a part named "" is named too, as error_response names it
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


def route_raw_path(scope: dict[str, Any]) -> bytes:
    """The raw path as the router reads it: past a ``root_path`` the service is mounted under.

    uvicorn's ``--root-path /predictor`` puts the root in front of both ``path`` and
    ``raw_path`` (``/predictor/models/...``); Starlette's router strips it from ``path``, and
    the identity and table name read from the raw path must skip it too, or every segment
    is read one place off (the model ``llm/m/H/s/1`` read as ``models/llm/m/H/s``: a 404)."""
    raw = scope.get("raw_path") or scope["path"].encode()
    root = _mounted_root(scope)
    if root:
        prefix = root.encode("latin-1", "replace")
        if raw.startswith(prefix) and raw[len(prefix):len(prefix) + 1] == b"/":
            return raw[len(prefix):]
    return raw


def raw_segments(scope: dict[str, Any], skip: int) -> list[str]:
    return _segments(route_raw_path(scope), skip)


def _segments(raw: bytes, skip: int) -> list[str]:
    path = raw.decode("latin-1").split("?", 1)[0]
    segments = path.strip("/").split("/")
    return [unquote(s) for s in segments[skip:]]


def identity_from(scope: dict[str, Any], skip: int) -> IdentityPattern:
    """The five identity segments after the first ``skip`` path segments (the route checked the shape)."""
    raw = route_raw_path(scope)
    # Only paths of a few KB are kept (a model's five parts are at most 200 characters each;
    # a longer path is parsed each time): 4,096 paths of 60 KB, each a 404, held 470 MB in
    # every worker.
    return pattern_of(raw, skip) if len(raw) <= _CACHED_PATH_BYTES else _parse_pattern(raw, skip)


_CACHED_PATH_BYTES = 4096


# Schedulers ask about the same few models again and again: parse each path once.
@functools.lru_cache(maxsize=4096)
def pattern_of(raw: bytes, skip: int) -> IdentityPattern:
    return _parse_pattern(raw, skip)


def _parse_pattern(raw: bytes, skip: int) -> IdentityPattern:
    segs = _segments(raw, skip)
    if len(segs) < 5:
        raise NotFound(
            "the path needs five identity segments: model_type/model_name/hardware/software_name/software_version",
            field="identity",
        )
    return IdentityPattern.from_segments(*segs[:5])


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """A request's ``Content-Length`` (among an ASGI scope's ``headers``), or None where it has
    none, one that is not a number, or a ``Transfer-Encoding`` beside it (then its body must be
    counted as it arrives).

    The whitespace around the value is no part of it (RFC 9110): uvicorn's httptools parser
    hands on the spaces and tabs after it, so ``Content-Length: 600000000 `` read as no length
    at all, and an upload that declared it passed PREDICTOR_MAX_UPLOAD_MB uncounted. A
    chunked body's length is its chunks' (RFC 9112, 6.3): h11 (``uvicorn --http h11``) takes a
    request with both headers, and one that declared 100 bytes sent a 3.7 MB form uncounted.
    Leading zeros are none of it either: httptools takes any number of them, and Python will
    not read a number of more than 4,300 digits (a ValueError: 5,000 zeros and a 5 made a 500,
    and a traceback in the log, on any route, /ping too).
    """
    length = None
    for name, value in headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            value = value.strip(b" \t")
            digits = value.lstrip(b"0") or b"0"
            # (past 20 digits, more than any server takes: 2**64 is past every bound)
            length = (int(digits) if len(digits) <= 20 else 2**64) if value.isdigit() else None
    return length


@dataclass(frozen=True)
class BodyBound:
    """The most bytes of a JSON body a route reads, where it parses the body whole in the
    service's process, and what its 413 says past them.

    A JSON body is parsed holding Python's interpreter lock, in one call: every other request
    to that worker waits meanwhile, whichever thread parses it. PREDICTOR_MAX_UPLOAD_MB (512 MB
    by default) is for trace files, which are read as streams; under it alone one
    /predict/single body of 136.5 MB, a trace of 5.6 million fields, held every other request
    8.3 s (``benchmarks/large_bodies.py``, its figures in benchmarks/README.md). A declared
    ``Content-Length`` over the bound is refused unread, a chunked body as soon as it passes it.
    """

    max_bytes: int
    what: str  # the body, as the message names it: "a single prediction's body"
    advice: str  # what to send instead

    def too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"{self.what} is at most {self.max_bytes:,} bytes: {self.advice}", field="body")

    def check_declared(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Refuse, unread, a body whose ``Content-Length`` (among an ASGI scope's ``headers``) is over the bound."""
        length = declared_length(headers)
        if length is not None and length > self.max_bytes:
            raise self.too_large()

    async def read(self, request: Request) -> bytes:
        self.check_declared(request.scope["headers"])
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_bytes:
                raise self.too_large()
            chunks.append(chunk)
        return b"".join(chunks)


# A body over this many bytes (a batch's, queues', an observation's, an evaluation's) is parsed
# and worked on off the event loop, and at most LARGE_BODIES_AT_ONCE such requests at a time in a
# worker process: each holds its traces, their distributions and its answer in memory (100,000
# observed traces of three fields peaked 490 MB), and any number at once made the server's
# memory grow with them.
LARGE_BODY_BYTES = 1 << 20
LARGE_BODIES_AT_ONCE = 2


def large_body_turns() -> asyncio.Semaphore:
    """The turns of an app's requests with large bodies (made per app: a semaphore belongs to
    the event loop it is first used in)."""
    return asyncio.Semaphore(LARGE_BODIES_AT_ONCE)


def turn_for(body: bytes, turns: asyncio.Semaphore) -> asyncio.Semaphore | contextlib.nullcontext:
    """What a request with ``body`` waits for before its work: one of ``turns`` where the body is large."""
    return turns if len(body) > LARGE_BODY_BYTES else contextlib.nullcontext()


# A request of many traces: a batch, a request's queues or an observation holds at most 100,000,
# so this is 670 bytes a trace at the most traces; the bound of a JSON training body too. Parsing
# 62 MB of short numeric fields (100,000 traces of 70) held the other requests 0.5 s.
MANY_TRACES = 64 * 1024 * 1024
# One trace: its features, and the options beside them (a trace of 40,000 short fields).
ONE_TRACE = 1024 * 1024
# A route that takes no body, or {}.
NO_OPTIONS = 64 * 1024


def openapi_body(schema: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema.model_json_schema(ref_template="#/components/schemas/{model}")}},
        }
    }


_ERRORS = {
    400: "A multipart form that cannot be read (no boundary, cut short, too many parts)",
    401: "No API key, or another, where the service has one (PREDICTOR_API_KEY)",
    404: "Not there: no model matches, no such version, table or job (`field` names which)",
    409: "Several models match a `*` in the identity (listed in `candidates`), or a retraining's version was "
         "overtaken by another stored meanwhile",
    413: "The body is larger than its route reads (a single prediction's 1 MB, a batch's, queues', an "
         "observation's, an evaluation's or a JSON training's 64 MB, a route without options' 64 kB) or PREDICTOR_MAX_UPLOAD_MB "
         "(or a table than PREDICTOR_MAX_TABLE_ROWS)",
    415: "A compressed body (Content-Encoding)",
    422: "Invalid input: a body, trace, form field or query parameter (`field` names it)",
    429: "As many trainings queued as the service takes: retry later",
    503: "Not ready: the models preloaded at start (PREDICTOR_PRELOAD_MODELS) are still loading (Retry-After: 1, "
         "the message says how many are), or a folder of the data directory is gone",
    "5XX": "The server's fault: an internal error or a model file damaged on disk (500), the data directory "
           "gone or the service stopping (503), a full disk (507)",
}


def error_responses(*codes: int, model: type[BaseModel] = ErrorResponse, answers_json: bool = True,
                    described: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route's errors: ``codes`` and any 5xx, each answered in
    ``model``'s shape. (FastAPI documented none but a 422 in the shape of its own validation
    errors, ``{"detail": [...]}``, which the service never sends.) For a route whose own
    answer is not JSON (``answers_json=False``), FastAPI would give its errors that media
    type: they name the schema instead (which a JSON route's use of ``model`` defines).
    ``described``: this route's own description of a code of ``codes``, where the shared one
    does not say why this route answers it."""
    descriptions = {code: (described or {}).get(code) or _ERRORS[code] for code in (*codes, "5XX")}
    if answers_json:
        out = {code: {"model": model, "description": text} for code, text in descriptions.items()}
    else:
        content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
        out = {code: {"description": text, "content": content} for code, text in descriptions.items()}
    for code, answer in out.items():
        if code in _RETRY_AFTER:
            answer["headers"] = {"Retry-After": {"description": _RETRY_AFTER[code], "schema": {"type": "integer"}}}
    return out


# The errors that say when to try again (errors.TooBusy, NotReady, ServiceStopping), in seconds.
_RETRY_AFTER = {429: "when a queued training may have made room (10)", 503: "when to ask again: 1 while the models "
                "load, 5 where the service is stopping", "5XX": "on a 503 of the service stopping: 5"}


_PATH_PARAMETER = re.compile(r"{(\w+)}")
# The part as it is: /docs and generated clients percent-encode a parameter's value themselves,
# so one given encoded (as this said: NVIDIA%20H100...) was sent as NVIDIA%2520H100..., a 404.
_IDENTITY_PART_DOC = ("an identity part, as it is (NVIDIA H100 80GB HBM3, Qwen/Qwen2.5-7B): percent-encoded in the "
                      "path, a '/' as %2F, as /docs and generated clients do; '*' leaves it unspecified where the "
                      "route resolves a model")
_PATH_PARAMETER_DOC = {"name": "a table's file name in the table directory",  # the others: identity parts
                       "job_id": "a training job's id, as POST /train?background=true answered it"}


def declare_path_parameters(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` (an OpenAPI schema) with every ``{name}`` of a path template declared as a path
    parameter. The routes read the identity (and a table's name) from the raw path, so FastAPI
    declared none of them: the schema was invalid OpenAPI (a template's parameters must be
    declared), and /docs sent ``{model_type}`` as it is."""
    for path, operations in spec.get("paths", {}).items():
        names = _PATH_PARAMETER.findall(path)
        for operation in operations.values():
            declared = {p["name"] for p in operation.get("parameters", []) if p.get("in") == "path"}
            missing = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"},
                        "description": _PATH_PARAMETER_DOC.get(name, _IDENTITY_PART_DOC)}
                       for name in names if name not in declared]
            if missing:
                operation["parameters"] = missing + operation.get("parameters", [])
    return spec


def hoist_definitions(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with the models that the request bodies of :func:`openapi_body` nest (pydantic's
    ``$defs``: a training's config, an observation's model) among its components, where their
    ``$ref`` points: FastAPI did not see those bodies, and the references led nowhere."""
    components = spec.setdefault("components", {}).setdefault("schemas", {})

    def hoist(node: Any) -> None:
        if isinstance(node, dict):
            for name, schema in node.pop("$defs", {}).items():
                components.setdefault(name, schema)
                hoist(schema)
            for value in node.values():
                hoist(value)
        elif isinstance(node, list):
            for value in node:
                hoist(value)

    hoist(spec.get("paths", {}))
    return spec


def declare_unauthorized(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with the 401 of every route that asks for the API key (those with ``security``,
    where the service has one), in the shape of the route's other errors (its 422's)."""
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if operation.get("security") and "422" in responses:
                responses.setdefault("401", {"description": _ERRORS[401], "content": responses["422"]["content"],
                                             "headers": {"WWW-Authenticate": {
                                                 "schema": {"type": "string"},
                                                 "description": 'Bearer; Bearer error="invalid_token" for another key'}}})
                # In the order of their codes, as /docs lists them.
                operation["responses"] = dict(sorted(responses.items()))
    return spec


def declare_too_large(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with the 413 of every route that does not list one (those that read no body):
    a body over PREDICTOR_MAX_UPLOAD_MB is refused on any route (api.BodySizeLimitMiddleware), in the
    shape of the route's other errors (its 5XX's)."""
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "413" not in responses and "5XX" in responses:
                responses["413"] = {"description": "A body larger than PREDICTOR_MAX_UPLOAD_MB (which this route does "
                                                   "not read)", "content": responses["5XX"]["content"]}
                operation["responses"] = dict(sorted(responses.items()))  # in the order of their codes
    return spec


REQUEST_ID_HEADER = {"description": "the request's id, on the service's log lines about it: the request's own "
                                     f"X-Request-ID where it is 1 to {MAX_ID_LENGTH} printable ASCII characters, "
                                     "else 32 hex digits",
                      "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}}


def declare_request_id(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with the ``X-Request-ID`` header (``request_ids.RequestIdMiddleware``) on every
    answer of every operation, as one component each refers to."""
    spec.setdefault("components", {}).setdefault("headers", {})["X-Request-ID"] = REQUEST_ID_HEADER
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                response.setdefault("headers", {})["X-Request-ID"] = {"$ref": "#/components/headers/X-Request-ID"}
    return spec


def is_multipart(request: Request) -> bool:
    # Media types are case-insensitive (RFC 9110): "Multipart/Form-Data" was read as JSON.
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


def refuse_loose_numbers(request: Request, *params: str) -> None:
    """A 422 for a number of the URL's ``params`` ("path.version", "query.recent") not
    written in digits, naming it ("version"): read as the routes declare them (integers,
    loosely), "1.0" and " 1" were version 1, on a route that deletes it too, where a body's
    ``version`` must be a JSON whole number."""
    for param in params:
        where, name = param.split(".")
        raw = (request.path_params if where == "path" else request.query_params).get(name)
        if raw is not None and re.fullmatch(r"-?[0-9]+", raw) is None:
            raise InvalidInput(f"{name}: must be a whole number, written in digits, got {shown(raw)}", field=name)


def refuse_unknown_query(query_string: bytes, known: tuple[str, ...] = ()) -> None:
    """A query parameter the route does not take, or one given twice, is a 422 naming it.

    Read as routes read a query, an unknown parameter was ignored and the later of two won,
    without a word: ``DELETE /models/...?version=3`` deleted every version, ``?verison=1``
    answered the serving version's accuracy, ``?backgroud=true`` trained while the client
    waited (the reason a body's unknown keys are refused).
    """
    if not query_string:
        return
    seen: set[str] = set()
    for key, _ in QueryParams(query_string).multi_items():
        if key not in known:
            takes = f"it takes {', '.join(map(repr, known))}" if known else "it takes none"
            raise InvalidInput(f"query parameter {shown(key)} is not one this route takes ({takes})", field=key)
        if key in seen:
            raise InvalidInput(f"query parameter {shown(key)} is given more than once", field=key)
        seen.add(key)


_NO_OPTIONS_BODY = BodyBound(NO_OPTIONS, "the body of a route that takes no options", "send none, or {}")


async def no_options_body(request: Request) -> None:
    """A dependency of the routes that take no body: nothing, or ``{}``; anything else is a
    422 naming it. Ignored, ``DELETE /models/...`` with ``{"version": 3}`` deleted every version."""
    raw = await _NO_OPTIONS_BODY.read(request)
    if raw.strip():
        parse_json_body(raw, NoOptions)


NO_BODY = Depends(no_options_body)


async def declared_query_only(request: Request) -> None:
    """A dependency: :func:`refuse_unknown_query` with the query parameters the route declares
    (async, so that FastAPI runs it on the loop rather than in a thread)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    refuse_unknown_query(request.scope["query_string"],
                         tuple(p.alias for p in dependant.query_params) if dependant is not None else ())


DECLARED_QUERY = Depends(declared_query_only)


_log = logging.getLogger(__package__.rpartition(".")[0] + ".api")  # where the app's own lines are logged


def log_client_left(method: str, path: str) -> None:
    """Note (at info level) a client that left while it sent its body: nothing went wrong
    here, and no one is there to answer (``/metrics`` counts it as 499)."""
    _log.info("client left during %s %s before its body was read", method, loggable(path))
