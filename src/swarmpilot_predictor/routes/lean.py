"""Lean routes: the hot prediction paths served as bare ASGI endpoints (body bytes in, orjson
bytes out), documented through FastAPI, and the watch on a client that leaves while its
request waits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.routing import Route

from .common import BodyBound, JSONResponse, error_responses, log_client_left, openapi_body, refuse_unknown_query


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

    @asynccontextmanager
    async def in_turn(self, *turns: AbstractAsyncContextManager[Any]) -> AsyncIterator[None]:
        """Holds each of ``turns`` in order, watched meanwhile; ClientGone where the client has
        left by then (its work not done: a scheduler's own timeout, or a request the client will
        send again)."""
        with self.watched():
            async with contextlib.AsyncExitStack() as held:
                for turn in turns:
                    await held.enter_async_context(turn)
                await asyncio.sleep(0)  # the watch's turn: a client gone just now is seen gone
                if self.gone:
                    raise ClientGone
                yield


LeanHandler = Callable[[dict[str, Any], bytes, ClientWatch], Awaitable[dict[str, Any] | bytes]]


class LeanEndpoint:
    """A JSON POST endpoint as a bare ASGI app: body bytes in, orjson bytes out.

    Starlette's request/response objects and its per-route exception wrapper
    cost tens of µs a request, a sizeable share of a single prediction's. The
    handler's exceptions go to the app's exception handlers as any route's do
    (the app-level exception middleware catches them).
    """

    def __init__(self, handler: LeanHandler, path: str, bound: BodyBound):
        self.handler = handler
        self.path = path  # the route template: metrics label requests with it
        self.bound = bound

    async def __call__(self, scope, receive, send) -> None:
        scope["route"] = self  # as FastAPI's routes do; a plain Starlette route leaves it unset
        self.bound.check_declared(scope["headers"])
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                log_client_left(scope["method"], scope["path"])
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.bound.max_bytes:
                raise self.bound.too_large()
            chunks.append(chunk)
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


def lean_route(app: FastAPI, path: str, handler: LeanHandler, body: type[BaseModel], response: type[BaseModel],
               summary: str, bound: BodyBound) -> None:
    """Serve ``path`` with a bare ASGI endpoint, documented through FastAPI.

    FastAPI's per-request machinery (dependency solving, response-model
    handling) costs as much as a whole prediction. The bare route, placed
    first, answers every request; the FastAPI route on the same path is there
    for the OpenAPI schema and /docs. Both call the same handler, which takes no query
    parameters.
    """

    def checked(scope: dict[str, Any], body: bytes, client: ClientWatch) -> Awaitable[dict[str, Any] | bytes]:
        refuse_unknown_query(scope["query_string"])  # (?version=2 was answered by the latest version)
        return handler(scope, body, client)

    async def documented(request: Request) -> Response:
        try:
            answer = await checked(request.scope, await bound.read(request), ClientWatch(request.receive))
        except ClientGone:
            return Response(status_code=499)  # (nginx's "client closed request": no one reads it)
        return Response(answer, media_type="application/json") if isinstance(answer, bytes) else JSONResponse(answer)

    # Named as the handler (predict_single): the schema's operationId, and so a generated client's
    # function, was this wrapper's name, documented_predict_single_...
    app.add_api_route(path, documented, name=getattr(handler, "__name__", None), methods=["POST"],
                      response_model=response, tags=["prediction"],
                      summary=summary, openapi_extra=openapi_body(body),
                      responses=error_responses(404, 409, 413, 415, 422))
    app.router.routes.insert(0, Route(path, LeanEndpoint(checked, path, bound), methods=["POST"]))
