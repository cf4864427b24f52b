"""Lookup-table routes: a table generated from an uploaded trace file, and the tables listed,
downloaded and deleted."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from ..errors import InvalidInput, PredictorError, shown
from ..lookup.names import WRITABLE_FORMATS
from ..lookup.quantiles import KNOT_LIMIT, KNOT_MOST
from ..service import PredictorService
from ..schemas import TableDeleted, TableFailure, TableResult, TablesResponse
from ..settings import PredictorSettings
from ..traces import TRACE_FILE_KINDS, finite_number_in_text, trace_file_format
from .common import (HEAD_ONLY, IDENTITY_PATH, NO_BODY, JSONResponse, error_responses, identity_from, is_multipart,
                     raw_segments, table_failure)
from .uploads import read_form, save_upload, trace_suffix, upload_dir


# The form /predict/table reads, for the OpenAPI schema: the route reads the form itself, so
# FastAPI saw no body, and /docs offered no way to send the trace file.
TABLE_FORM_SCHEMA = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["trace_file"],
        "properties": {
            "trace_file": {"type": "string", "format": "binary",
                           "description": "the traces: a .json, .jsonl (.ndjson) or .csv file, optionally .gz"},
            "confidence_level": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "default": 0.95},
            "table_name": {"type": "string", "minLength": 1, "description": "a file name in the table directory (.json or .csv, "
                                                            "optionally .gz); default: the model's folder name"},
            "format": {"type": "string", "enum": list(WRITABLE_FORMATS)},
            "knots": {"type": "integer", "minimum": 0, "maximum": KNOT_LIMIT, "default": KNOT_MOST},
        },
        "additionalProperties": False,
    }}}},
}
# The fields the route reads: those the schema documents, one list of them.
TABLE_FORM_FIELDS = tuple(TABLE_FORM_SCHEMA["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"])


def add_table_routes(app: FastAPI, service: PredictorService, settings: PredictorSettings, writes: list[Any]) -> None:
    @app.post("/predict/table/" + IDENTITY_PATH, tags=["lookup tables"], dependencies=writes,
              openapi_extra=TABLE_FORM_SCHEMA, response_model=TableResult,
              responses=error_responses(400, 404, 409, 413, 415, 422, model=TableFailure),
              summary="Predict every trace of an uploaded file and write a lookup table")
    async def predict_table(request: Request):
        pattern = identity_from(request.scope, 2)
        try:
            if not is_multipart(request):
                raise InvalidInput("send multipart/form-data with a 'trace_file' part and a 'confidence_level' field",
                                   field="trace_file")
            form = await read_form(request, "trace_file", max_files=1, max_fields=16, max_part_size=64 * 1024)
            tmpdir = None
            try:
                # In here: a folder that cannot be made (a full disk) still closes the form's spooled files.
                tmpdir = upload_dir(settings.data_dir)
                _check_table_form(form)
                upload = form.get("trace_file")
                if not isinstance(upload, UploadFile):
                    raise InvalidInput("multipart part 'trace_file' (a .json, .jsonl or .csv file, optionally .gz) is required",
                                       field="trace_file")
                name = Path(upload.filename or "traces.json").name
                if trace_file_format(name) is None:
                    raise InvalidInput(f"trace_file {shown(name)} must be {TRACE_FILE_KINDS}", field="trace_file")
                confidence = _form_float(form.get("confidence_level"), 0.95, "confidence_level")
                # Given but blank is the service's to refuse (it would name no table), not a default.
                raw_name = form.get("table_name")
                table_name = None if raw_name is None or isinstance(raw_name, UploadFile) else str(raw_name)
                fmt = _form_str(raw_fmt := form.get("format"))
                if raw_fmt is not None and fmt is None:  # blank: refused as a blank level or knots is, not the default
                    raise InvalidInput(f"format must be one of {', '.join(WRITABLE_FORMATS)} (leave the field out for "
                                       "the table name's), got a blank field or a file", field="format")
                knots = _form_count(form.get("knots"), KNOT_MOST, "knots", KNOT_LIMIT)
                dest = tmpdir / f"traces{trace_suffix(name)}"  # the client's file name never touches the disk
                await run_in_threadpool(save_upload, upload, dest, name, "trace_file", settings.max_upload_mb)
                result = await run_in_threadpool(service.generate_table, pattern, dest, confidence, table_name, fmt,
                                                 None, name, knots=knots)
            finally:
                await form.close()
                if tmpdir is not None:
                    shutil.rmtree(tmpdir, ignore_errors=True)
        except PredictorError as exc:
            return table_failure(exc)
        return JSONResponse(result)

    @app.get("/tables", tags=["lookup tables"], response_model=TablesResponse, responses=error_responses(),
             summary="Lookup tables in the table directory")
    async def tables_list():
        return JSONResponse(await run_in_threadpool(service.list_tables))

    @app.get("/tables/{name}", tags=["lookup tables"], response_class=Response,
             responses={200: {"description": "The table's file, as stored", "content": _TABLE_CONTENT},
                        **error_responses(404, 422, answers_json=False)}, summary="Download a lookup table file")
    async def tables_download(request: Request):
        name = _table_name_from(request)
        fh, size = await run_in_threadpool(service.tables.open_table, name)
        # FileResponse's header, which cannot be had without FileResponse opening the path again.
        quoted = quote(name)
        disposition = (f'attachment; filename="{name}"' if quoted == name
                       else f"attachment; filename*=utf-8''{quoted}")
        headers = {"content-length": str(size), "content-disposition": disposition}
        media_type = _TABLE_MEDIA.get(_table_media_key(name), "application/octet-stream")
        if request.scope.get(HEAD_ONLY):
            # A HEAD (a load balancer's probe) read a table of gigabytes whole, to send none of it.
            fh.close()
            return Response(b"", media_type=media_type, headers=headers)

        async def content() -> AsyncIterator[bytes]:
            # From the file opened above: a table renamed over or deleted meanwhile is still
            # sent whole, as it was, never a body longer or shorter than its Content-Length.
            try:
                while chunk := await run_in_threadpool(fh.read, _DOWNLOAD_CHUNK):
                    yield chunk
            finally:
                fh.close()

        return StreamingResponse(content(), media_type=media_type, headers=headers)

    # Off the event loop: unlinking a table of gigabytes and its sidecar takes a while on some file systems.
    @app.delete("/tables/{name}", tags=["lookup tables"], dependencies=[*writes, NO_BODY],
                response_model=TableDeleted,
                responses=error_responses(400, 404, 413, 415, 422, described={
                    400: "The default table (DEFAULT_LOOKUP_TABLE) loaded from a file outside the table directory: it "
                         "is not deleted (unset DEFAULT_LOOKUP_TABLE instead)"}),
                summary="Delete a lookup table")
    async def tables_delete(request: Request):
        return JSONResponse(await run_in_threadpool(service.delete_table, _table_name_from(request)))


# A download holds its chunks while its client reads slower than the disk: with 1 MB chunks
# 300 clients that did not read held 580 MB, 1.9 MB each; with 64 kB ones (FileResponse's) 63 MB.
_DOWNLOAD_CHUNK = 1 << 16

_TABLE_MEDIA = {"json": "application/json", "jsonl": "application/x-ndjson", "csv": "text/csv", "gz": "application/gzip"}
# (a .json table is an array of records; the others' bytes, as stored)
_TABLE_CONTENT = {media: {"schema": {"type": "array", "items": {"type": "object"}} if media == "application/json"
                          else {"type": "string", "format": "binary"}} for media in _TABLE_MEDIA.values()}


def _table_media_key(name: str) -> str:
    from ..lookup import table_format

    return "gz" if name.lower().endswith(".gz") else (table_format(name) or "")


def _table_name_from(request: Request) -> str:
    """The table name from the raw path, so that an encoded '/' is seen (and refused), not routed."""
    segs = raw_segments(request.scope, 1)
    return "/".join(segs)



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


def _form_count(value: Any, default: int, field: str, most: int) -> int:
    """A whole number from 0 to ``most`` given as a form field (``default`` where left out)."""
    if value is None:
        return default
    text = _form_str(value)
    # (Checked by length first: Python refuses to read an integer of over 4,300 digits.)
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 6 or int(text) > most:
        raise InvalidInput(f"{field} must be a whole number from 0 to {most} (leave the field out for {default}), "
                           f"got {shown(text) if text is not None else 'a blank field or a file'}", field=field)
    return int(text)


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
