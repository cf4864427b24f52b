"""Discovery routes (``/health``, ``/ping``) and the prediction cache's (``/cache/...``)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from ..schemas import CacheCleared, CacheStats, HealthResponse, Ping, Ready
from ..service import PredictorService
from .common import NO_BODY, JSONResponse, error_responses


def add_discovery_routes(app: FastAPI, service: PredictorService, writes: list[Any]) -> None:
    # The routes below that report accuracy read the observation logs (64 MB a model at
    # most) and run the drift tests: off the event loop, so that /ping and predictions go on
    # being answered (a first /health after a restart took 3.9 s, and held every request).
    @app.get("/health", response_model=HealthResponse, tags=["discovery"], responses=error_responses())
    async def health():
        return JSONResponse(await run_in_threadpool(service.health))

    @app.get("/ping", tags=["discovery"], response_model=Ping, responses=error_responses(),
             summary="Liveness: the cheapest possible answer")
    async def ping():
        return JSONResponse({"status": "ok"})

    # A load balancer's or Kubernetes' readiness probe: a 503 until the models preloaded at
    # start are in memory, so that no request waits seconds for a model's first load.
    @app.get("/ready", tags=["discovery"], response_model=Ready, responses=error_responses(503),
             summary="Readiness: 200 once the models preloaded at start are loaded")
    async def ready():
        return JSONResponse(service.readiness())

    @app.get("/cache/stats", tags=["cache"], response_model=CacheStats, responses=error_responses(),
             summary="Prediction cache size and hit/miss counts")
    async def cache_stats():
        return JSONResponse(service.cache_stats())

    @app.post("/cache/clear", tags=["cache"], dependencies=[*writes, NO_BODY], response_model=CacheCleared,
               responses=error_responses(413, 415, 422), summary="Empty the prediction cache")
    async def cache_clear():
        return JSONResponse(service.clear_cache())
