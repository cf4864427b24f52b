"""Single predictions that arrive together, evaluated together: the one-trace route's
dispatch (a lookup table, a version by number, a model still to load) and its batcher."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.concurrency import run_in_threadpool

from .identity import IdentityPattern, names_a_model
from .schemas import PredictSingleRequest
from .service import Prediction, PredictorService


class SingleRequestBatcher:
    """Coalesces single predictions that arrive together into one vectorised evaluation.

    Under concurrent load many requests reach their prediction in the same turn
    of the event loop. The first of a turn is answered at once (a lone client
    never waits for the loop); the others are queued and evaluated together
    after that turn's other callbacks, at little more than the cost of one.
    Requests are grouped by model pattern, confidence level, levels and deadline,
    so each gets exactly the answer it would have had alone.
    """

    def __init__(self, service: PredictorService):
        self.service = service
        self._pending: dict[tuple, list[tuple[dict[str, Any], asyncio.Future]]] = {}
        self._scheduled = False
        self._turn_busy = False

    async def answer(self, pattern: IdentityPattern, req: PredictSingleRequest) -> Prediction:
        """The prediction of one ``/predict/single`` request: off the event loop where it may
        load something (a table, a version asked for by number, a model not yet in memory),
        else coalesced with the others of its event-loop turn."""
        service = self.service
        if req.lookup_table:
            return await run_in_threadpool(service.predict, pattern, [req.trace], req.confidence_level, req.quantiles,
                                           lookup_table=True, lookup_table_name=req.lookup_table_name,
                                           deadline_ms=req.deadline_ms)
        if req.version is not None:
            # Alone: a batch is of one version, the serving one.
            return await run_in_threadpool(service.predict, pattern, [req.trace], req.confidence_level, req.quantiles,
                                           version=req.version, deadline_ms=req.deadline_ms)
        if names_a_model([req.trace]):
            # Where the URL's '*' parts match several models, the trace's identity fields pick one.
            pattern = service.resolve_for(pattern, [req.trace])
        if service.is_cold(pattern):  # a model's first load takes seconds
            await run_in_threadpool(service.load_if_cold, pattern)
        return await self.predict(pattern, req.trace, req.confidence_level, req.quantiles, req.deadline_ms)

    def _turn_over(self) -> None:
        self._turn_busy = False

    async def predict(self, pattern: IdentityPattern, trace: dict[str, Any], confidence_level: float,
                      quantiles: list[float] | None, deadline_ms: float | None = None) -> Prediction:
        loop = asyncio.get_running_loop()
        if not self._turn_busy:
            # Runs after the callbacks already queued for this turn: a request that
            # arrives before it knows others came with it, and joins a batch.
            self._turn_busy = True
            loop.call_soon(self._turn_over)
            return self.service.predict(pattern, [trace], confidence_level, quantiles, deadline_ms=deadline_ms)
        future = loop.create_future()
        key = (pattern.as_tuple(), confidence_level, tuple(quantiles) if quantiles else None, deadline_ms)
        self._pending.setdefault(key, []).append((trace, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for (parts, confidence_level, levels, deadline_ms), items in pending.items():
            pattern, wanted = IdentityPattern(*parts), list(levels) if levels else None
            try:
                preds = self.service.predict_each(pattern, [t for t, _ in items], confidence_level, wanted, deadline_ms)
            except Exception:  # noqa: BLE001 - each request is answered alone below
                # One request's failure must not become its neighbours': each is evaluated
                # alone and gets its own answer or error (a missing model fails them all alike).
                for trace, future in items:
                    try:
                        pred = self.service.predict_each(pattern, [trace], confidence_level, wanted, deadline_ms)[0]
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
