"""Training routes: ``/train`` (a JSON body, or a multipart config and trace files) and its jobs."""

from __future__ import annotations

import asyncio
import shutil
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..errors import InvalidInput, PayloadTooLarge, ServiceStopping, shown, validation_message
from ..schemas import TrainAccepted, TrainConfig, TrainJob, TrainRequest, TrainResult, config_from_text
from ..service import PredictorService
from ..settings import PredictorSettings
from .common import MANY_TRACES, BodyBound, JSONResponse, error_responses, is_multipart, openapi_body
from .uploads import UploadedTraceFiles, read_form, save_upload, upload_dir

# A multipart training's config part (its traces belong in trace files beside it).
MAX_CONFIG_BYTES = MANY_TRACES


def _train_body_schema() -> dict[str, Any]:
    """/train's body for the OpenAPI schema: JSON, or a multipart form (which the route reads
    itself, so FastAPI saw the JSON alone) of a config part and the trace files it names."""
    schema = openapi_body(TrainRequest)
    schema["requestBody"]["content"]["multipart/form-data"] = {"schema": {
        "type": "object", "required": ["config"],
        # trace_file named, so that /docs (which shows no additionalProperties) can send one.
        "properties": {"config": {"type": "string", "format": "binary",
                                  "description": "the training config, JSON or YAML ({\"config\": {...}} or the config itself)"},
                       "trace_file": {"type": "string", "format": "binary",
                                      "description": "a trace file (.json, .jsonl, .csv, optionally .gz), named by the "
                                                     "config's traces by its file name or 'trace_file'; more under "
                                                     "other part names"}},
        "additionalProperties": {"type": "string", "format": "binary",
                                 "description": "a trace file, named by the config's traces (by its file name or its part's)"},
    }}
    return schema


TRAIN_BODY_SCHEMA = _train_body_schema()


def add_training_routes(app: FastAPI, service: PredictorService, settings: PredictorSettings, writes: list[Any]) -> None:
    @app.post("/train", response_model=TrainResult, tags=["training"], dependencies=writes,
              openapi_extra=TRAIN_BODY_SCHEMA,
              responses={202: {"model": TrainAccepted, "description": "?background=true: the job, queued"},
                         **error_responses(400, 409, 413, 415, 422, 429, described={
                             409: "The model was deleted while this training stored its version: the version is "
                                  "not stored"})},
              summary="Train (in a separate worker process); ?background=true answers 202 with a job id")
    async def train(request: Request, background: bool = False):
        # Queuing prunes old job records and writes (and fsyncs) the new one, and a first
        # training starts the worker process: off the event loop.
        if is_multipart(request):
            config, uploads, tmpdir = await _read_multipart(request, settings)

            def submit() -> tuple[str, Future]:
                # Cleaned up here, in the thread: a client gone meanwhile (the request cancelled)
                # must neither leave the uploads of a job not queued nor remove those of one queued.
                try:
                    return service.jobs.submit(config, uploads, cleanup=lambda: shutil.rmtree(tmpdir, ignore_errors=True))
                except BaseException:  # not queued: nothing else will remove the uploads
                    shutil.rmtree(tmpdir, ignore_errors=True)
                    raise

            job_id, future = await run_in_threadpool(submit)
        else:
            # The body is parsed and validated in the worker too: a 100k-trace
            # request never holds the event loop (or the GIL) of this process.
            job_id, future = await run_in_threadpool(service.jobs.submit_raw, await _TRAIN_BODY.read(request))
        if background:
            # Where the client finds the job: under the root path the service is mounted at (a
            # gateway's prefix, uvicorn's --root-path), which the route's own path leaves out.
            status_url = f"{request.scope.get('root_path', '').rstrip('/')}/train/jobs/{job_id}"
            return JSONResponse({"status": "accepted", "job_id": job_id, "status_url": status_url}, status_code=202)
        try:
            result = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # The server gave up waiting for it (uvicorn's --timeout-graceful-shutdown ran out),
            # and its stop cuts the training short, as its job's record says: a 503 saying so,
            # not uvicorn's bare 500 with a traceback in the log.
            raise ServiceStopping("the service stopped before the job finished") from None
        return JSONResponse(result)

    # (job_id read from the path, not a parameter FastAPI checks: any text is a job's id or a
    # 404, and FastAPI documented a 422 in its own shape for it)
    @app.get("/train/jobs/{job_id}", tags=["training"], response_model=TrainJob, responses=error_responses(404),
             summary="Status and result of a training job")
    async def train_job(request: Request):
        # A record is read from disk (up to megabytes), and a job cut short is settled there.
        return JSONResponse(await run_in_threadpool(service.jobs.get, request.path_params["job_id"]))


async def _read_multipart(request: Request, settings: PredictorSettings) -> tuple[TrainConfig, dict[str, Path], Path]:
    # A text part may be the config (JSON or YAML as a form field): as large as a config file.
    # Past 64 file parts the form as a whole is refused: no one part is at fault.
    form = await read_form(request, "body", text_field="config", max_files=64, max_part_size=MAX_CONFIG_BYTES)
    tmpdir = None
    try:
        # In here: a folder that cannot be made (a full disk) still closes the form's spooled files.
        tmpdir = upload_dir(settings.data_dir)
        config_field = form.get("config")
        if config_field is None:
            raise InvalidInput("multipart training needs a 'config' part (JSON or YAML)", field="config")
        if len(form.getlist("config")) > 1:
            raise InvalidInput("multipart training takes one 'config' part, got several", field="config")
        if isinstance(config_field, UploadFile):
            if (config_field.size or 0) > MAX_CONFIG_BYTES:
                raise PayloadTooLarge(f"the 'config' part is {config_field.size:,} bytes, more than "
                                      f"{MAX_CONFIG_BYTES:,}: send the traces as trace files", field="config")
            raw = await config_field.read()
            try:
                # Strictly, as the CLI reads a config file: bytes of another encoding read with
                # replacement characters named a model "GH200 \ufffd" without a word.
                config_text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"the 'config' part is not UTF-8 text (byte {exc.start}): save the config as "
                                   "UTF-8", field="config") from None
        else:
            config_text = str(config_field)
        # Parsing YAML costs seconds per megabyte: not on the event loop.
        config = await run_in_threadpool(_parse_config, config_text)
        files = UploadedTraceFiles(tmpdir)
        for key, value in form.multi_items():
            if key != "config" and not isinstance(value, UploadFile):
                # Read as a setting ("algorithm=linear") it would have been ignored without a word.
                raise InvalidInput(f"multipart field {shown(key)} is not read: training settings go in the "
                                   "'config' part, and trace files are file parts", field=key)
            if key == "config":
                continue
            name, dest = files.place(key, value.filename)
            await run_in_threadpool(save_upload, value, dest, name, key, settings.max_upload_mb)
        uploads = files.by_name(config.traces)
        return config, uploads, tmpdir
    except BaseException:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    finally:
        await form.close()


# As a multipart config part is: its traces are parsed whole into Python objects, where a trace
# file is read as a stream. A 138 MB body of 4 million traces took 3.6 GB across the service and
# its worker.
_TRAIN_BODY = BodyBound(MAX_CONFIG_BYTES, "a JSON training body",
                        "send the traces as a trace file (a multipart upload beside the config, or a file in "
                        "the data directory), which is read as a stream")


def _parse_config(text: str) -> TrainConfig:
    data = config_from_text(text)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        msg, field = validation_message(exc, prefix=("config",))
        raise InvalidInput(msg, field=field) from None
