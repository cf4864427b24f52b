"""Monitoring routes: observed runtimes in (``/observe``), Prometheus metrics and the dashboard out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..schemas import ObserveRequest
from ..service import PredictorService
from .common import JSONResponse, json_body, openapi_body

_DASHBOARD = Path(__file__).parent.parent / "static" / "dashboard.html"


def add_monitoring_routes(app: FastAPI, service: PredictorService, writes: list[Any]) -> None:
    @app.post("/observe", tags=["monitoring"], dependencies=writes, openapi_extra=openapi_body(ObserveRequest),
              summary="Record measured runtimes for accuracy tracking and retraining")
    async def observe(request: Request):
        req = await json_body(request, ObserveRequest)
        result = await run_in_threadpool(service.observe, req.model.model_dump(), req.traces)
        return JSONResponse(result)

    @app.get("/metrics", tags=["monitoring"], summary="Prometheus metrics")
    async def metrics():
        body, ctype = await run_in_threadpool(service.render_metrics)
        return Response(body, media_type=ctype)

    @app.get("/dashboard", tags=["monitoring"], summary="Models, accuracy and drift for people", include_in_schema=True)
    async def dashboard():
        return Response(_DASHBOARD.read_bytes(), media_type="text/html; charset=utf-8")
