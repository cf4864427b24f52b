"""Model routes: the models stored, one model's versions, its accuracy, retraining and deletion."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..schemas import (AccuraciesResponse, AccuracyResponse, EvaluateRequest, EvaluationResponse, ModelDeleted, ModelDetailResponse,
                       ModelsResponse, RetrainDecision, parse_json_body)
from ..service import MAX_RECENT, PredictorService
from .common import (DECLARED_QUERY, IDENTITY_PATH, LARGE_BODY_BYTES, MANY_TRACES, NO_BODY, BodyBound, JSONResponse,
                     error_responses, identity_from, openapi_body, refuse_loose_numbers)
from .lean import ClientGone, ClientWatch

_EVALUATE_BODY = BodyBound(MANY_TRACES, "an evaluation's body", "split the traces over several requests")


# The bounds the service checks (in its own words), declared for /openapi.json: it said any
# integer, and a generated client's or /docs' ?recent=10000 was a 422.
RECENT = Query(description=f"the newest observations listed under `recent`, 0 to {MAX_RECENT:,}",
               json_schema_extra={"minimum": 0, "maximum": MAX_RECENT})


def add_model_routes(app: FastAPI, service: PredictorService, writes: list[Any],
                     large_bodies: asyncio.Semaphore) -> None:
    @app.get("/models", response_model=ModelsResponse, tags=["models"], responses=error_responses())
    async def models():
        return JSONResponse({"status": "success", "models": await run_in_threadpool(service.list_models)})

    # Every model's accuracy in one answer: the dashboard asked for each model's, one request
    # a model (1,003 requests and 12.7 s for a page of 1,000 models). Off the event loop.
    @app.get("/models/accuracy", tags=["monitoring"], dependencies=[DECLARED_QUERY],
             response_model=AccuraciesResponse, responses=error_responses(422),
             summary="Rolling accuracy of every model's serving version")
    async def models_accuracy(request: Request, recent: Annotated[int, RECENT] = 200):
        refuse_loose_numbers(request, "query.recent")
        return JSONResponse(await run_in_threadpool(service.accuracies, recent))

    @app.get("/models/" + IDENTITY_PATH, tags=["models"], response_model=ModelDetailResponse,
             responses=error_responses(404, 409),
             summary="One model and all its versions")
    async def model_detail(request: Request):
        pattern = identity_from(request.scope, 1)
        return JSONResponse({"status": "success", "model": await run_in_threadpool(service.model_detail, pattern)})

    @app.get("/models/" + IDENTITY_PATH + "/versions/{version}", tags=["models"], response_model=ModelDetailResponse,
             responses=error_responses(404, 409, 422), summary="One version's full metadata")
    async def model_version_detail(request: Request, version: Annotated[int, Path(ge=1)]):
        refuse_loose_numbers(request, "path.version")
        pattern = identity_from(request.scope, 1)
        return JSONResponse({"status": "success", "model": await run_in_threadpool(service.model_detail, pattern, version)})

    # Off the event loop, as /health is (see discovery.py): it reads the observation log and
    # runs the drift tests.
    @app.get("/models/" + IDENTITY_PATH + "/accuracy", tags=["monitoring"], dependencies=[DECLARED_QUERY],
             response_model=AccuracyResponse, responses=error_responses(404, 409, 422),
             summary="Rolling accuracy of the serving version against observed runtimes")
    async def model_accuracy(request: Request, version: Annotated[int | None, Query(ge=1)] = None,
                             recent: Annotated[int, RECENT] = 200):
        refuse_loose_numbers(request, "query.version", "query.recent")
        pattern = identity_from(request.scope, 1)
        return JSONResponse(await run_in_threadpool(service.accuracy, pattern, version, recent))

    # A read: it records nothing, so it needs no key (a scheduler may check a model on its
    # own traces). Parsed, predicted and scored off the event loop.
    @app.post("/models/" + IDENTITY_PATH + "/evaluate", tags=["monitoring"], dependencies=[DECLARED_QUERY],
              openapi_extra=openapi_body(EvaluateRequest), response_model=EvaluationResponse,
              responses=error_responses(404, 409, 413, 415, 422),
              summary="A version's accuracy on traces with measured runtimes, recording nothing")
    async def model_evaluate(request: Request):
        pattern = identity_from(request.scope, 1)
        body = await _EVALUATE_BODY.read(request)

        def evaluated() -> dict[str, Any]:
            req = parse_json_body(body, EvaluateRequest)
            return service.evaluate(pattern, req.traces, req.version, req.lookup_table, req.lookup_table_name)

        if len(body) <= LARGE_BODY_BYTES:
            return JSONResponse(await run_in_threadpool(evaluated))
        # A large one in its turn, as a large batch, and not at all for a client gone by then: it
        # records nothing, and the clients send it again where no answer came (each abandoned one
        # was worked on, holding a turn that large batches and the resent one waited for).
        try:
            async with ClientWatch(request.receive).in_turn(large_bodies):
                return JSONResponse(await run_in_threadpool(evaluated))
        except ClientGone:
            return Response(status_code=499)  # (nginx's "client closed request": no one reads it)

    @app.post("/models/" + IDENTITY_PATH + "/retrain", tags=["monitoring"], dependencies=[*writes, NO_BODY],
              response_model=RetrainDecision, responses=error_responses(404, 409, 413, 415, 422),
              summary="Retrain now on training data plus observations; a new version only if it is better")
    async def model_retrain(request: Request):
        pattern = identity_from(request.scope, 1)
        return JSONResponse(await run_in_threadpool(service.retrain, pattern))

    # Deleting unlinks files and writes (and fsyncs) the registry's generation: off the event
    # loop, which a slow disk held for every request meanwhile.
    @app.delete("/models/" + IDENTITY_PATH, tags=["models"], dependencies=[*writes, NO_BODY],
                response_model=ModelDeleted, responses=error_responses(404, 413, 415, 422),
                summary="Delete a model, every version")
    async def model_delete(request: Request):
        pattern = identity_from(request.scope, 1)
        return JSONResponse(await run_in_threadpool(service.delete_model, pattern))

    @app.delete("/models/" + IDENTITY_PATH + "/versions/{version}", tags=["models"],
                dependencies=[*writes, NO_BODY], response_model=ModelDeleted,
                responses=error_responses(404, 413, 415, 422), summary="Delete one version")
    async def model_version_delete(request: Request, version: Annotated[int, Path(ge=1)]):
        refuse_loose_numbers(request, "path.version")
        pattern = identity_from(request.scope, 1)
        return JSONResponse(await run_in_threadpool(service.delete_model, pattern, version))
