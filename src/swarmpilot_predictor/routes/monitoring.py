"""Monitoring routes: observed runtimes in (``/observe``), Prometheus metrics and the dashboard out."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from ..schemas import ObserveRequest, ObserveResponse, parse_json_body
from ..service import PredictorService
from .common import MANY_TRACES, BodyBound, JSONResponse, error_responses, openapi_body, turn_for

_OBSERVE_BODY = BodyBound(MANY_TRACES, "an /observe body", "split the traces over several requests")

_DASHBOARD = Path(__file__).parent.parent / "static" / "dashboard.html"


def add_monitoring_routes(app: FastAPI, service: PredictorService, writes: list[Any],
                          large_bodies: asyncio.Semaphore) -> None:
    @app.post("/observe", tags=["monitoring"], dependencies=writes, openapi_extra=openapi_body(ObserveRequest),
              response_model=ObserveResponse, responses=error_responses(404, 413, 415, 422),
              summary="Record measured runtimes for accuracy tracking and retraining")
    async def observe(request: Request):
        body = await _OBSERVE_BODY.read(request)

        def observed() -> dict[str, Any]:  # parsed off the event loop too, as a large batch is
            req = parse_json_body(body, ObserveRequest)
            return service.observe(req.model.model_dump(), req.traces)

        async with turn_for(body, large_bodies):  # a large one in its turn, as a large batch
            return JSONResponse(await run_in_threadpool(observed))

    # (response_class: what the schema says the answer is, Prometheus' text format or a page)
    @app.get("/metrics", tags=["monitoring"], response_class=PlainTextResponse,
             responses=error_responses(answers_json=False),
             summary="Prometheus metrics")
    async def metrics():
        body, ctype = await run_in_threadpool(service.render_metrics)
        return Response(body, media_type=ctype)

    @app.get("/dashboard", tags=["monitoring"], response_class=HTMLResponse,
             responses=error_responses(answers_json=False),
             summary="Models, accuracy and drift for people", include_in_schema=True)
    async def dashboard():
        return Response(_DASHBOARD.read_bytes(), media_type="text/html; charset=utf-8")
