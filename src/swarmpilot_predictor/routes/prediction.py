"""Prediction routes: ``/predict/single``, ``/predict/batch`` and ``/predict/queues``, served
as lean routes (see lean.py): the service's hot path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import orjson
from fastapi import FastAPI

from ..collector import collector_paused
from ..errors import InvalidInput
from ..batching import SingleRequestBatcher
from ..identity import IdentityPattern
from ..schemas import (
    BatchPredictionResponse,
    PredictBatchRequest,
    PredictQueuesRequest,
    PredictSingleRequest,
    QueuesPredictionResponse,
    SinglePredictionResponse,
    parse_json_body,
)
from ..service import PredictorService
from ..settings import PredictorSettings
from .common import IDENTITY_PATH, LARGE_BODY_BYTES, MANY_TRACES, ONE_TRACE, BodyBound, identity_from
from .lean import ClientWatch, lean_route

# A batch of at most this many predicted values (traces times levels; where none are named,
# 8 a trace, a bound above a model's 4 default levels and its interval's 2) is predicted on
# the event loop: it costs about as much as the hop to a thread
# and back. Any longer one goes to a thread: 1,000 traces took 56-63 ms of a heteroscedastic
# model on the loop, and /ping waited 50 ms behind each.
INLINE_VALUES_MAX = 128
INLINE_DEFAULT_LEVELS = 8
# A batch of this many tasks, or a body over LARGE_BODY_BYTES, is answered with Python's cyclic
# collector paused (see collector.py).
PAUSED_COLLECTOR_TASKS = 2_000


def add_prediction_routes(app: FastAPI, service: PredictorService, settings: PredictorSettings,
                          large_bodies: asyncio.Semaphore) -> None:
    batcher = SingleRequestBatcher(service)

    async def predict_single(scope: dict[str, Any], body: bytes, client: ClientWatch) -> dict[str, Any]:
        pred = await batcher.answer(identity_from(scope, 2), parse_json_body(body, PredictSingleRequest))
        if not pred.ok[0]:
            raise InvalidInput(f"trace: {pred.errors[0]}", field="trace")
        return pred.single_response()

    def batch_answer(pattern: IdentityPattern, req: PredictBatchRequest) -> dict[str, Any]:
        return service.predict(pattern, req.trace, req.confidence_level, req.quantiles, with_total=True,
                               version=req.version, lookup_table=req.lookup_table, lookup_table_name=req.lookup_table_name,
                               shared_factor=req.shared_factor, total_distribution=req.total_distribution,
                               deadline_ms=req.deadline_ms).batch_response(req.total_distribution)

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
        async with client.in_turn(first or contextlib.nullcontext(), batch_turns):
            if not batch_threads:
                batch_threads.append(anyio.CapacityLimiter(settings.batch_threads))
            return await anyio.to_thread.run_sync(work, limiter=batch_threads[0])

    async def predict_batch(scope: dict[str, Any], body: bytes, client: ClientWatch) -> dict[str, Any] | bytes:
        pattern = identity_from(scope, 2)
        if len(body) > LARGE_BODY_BYTES:
            # A batch of 100,000 traces takes a second to parse, predict and write out, and much
            # memory while it does: all of it off the event loop, which goes on answering
            # others, and only a few such batches at a time (the rest wait their turn).
            def whole() -> bytes:
                with collector_paused():
                    return orjson.dumps(batch_answer(pattern, parse_json_body(body, PredictBatchRequest)),
                                        option=orjson.OPT_SERIALIZE_NUMPY)

            return await in_batch_thread(whole, client, large_bodies)
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
        pattern = identity_from(scope, 2)

        def answer() -> bytes:  # each queue's total is a convolution: off the event loop
            with collector_paused(len(body) > LARGE_BODY_BYTES):  # (as a large batch's)
                req = parse_json_body(body, PredictQueuesRequest)
                return orjson.dumps(service.predict_queues(pattern, req.queues, req.confidence_level, req.quantiles,
                                                           req.shared_factor, req.version, req.lookup_table,
                                                           req.lookup_table_name, req.deadline_ms,
                                                           req.completion_times),
                                    option=orjson.OPT_SERIALIZE_NUMPY)

        return await in_batch_thread(answer, client, large_bodies if len(body) > LARGE_BODY_BYTES else None)

    lean_route(app, "/predict/single/" + IDENTITY_PATH, predict_single, PredictSingleRequest,
               SinglePredictionResponse, "Predict the runtime distribution of one task",
               BodyBound(ONE_TRACE, "a single prediction's body", "it holds one trace (send the features "
                                                                 "the model was trained on)"))
    lean_route(app, "/predict/batch/" + IDENTITY_PATH, predict_batch, PredictBatchRequest,
               BatchPredictionResponse, "Predict a batch of tasks and the distribution of their total",
               BodyBound(MANY_TRACES, "a batch's body", "split the traces over several batches"))
    lean_route(app, "/predict/queues/" + IDENTITY_PATH, predict_queues, PredictQueuesRequest,
               QueuesPredictionResponse, "The wait of each of several queues of tasks (a scheduler's instances)",
               BodyBound(MANY_TRACES, "a queues request's body", "split the queues over several requests"))
