"""Multipart forms and the files uploaded with them: read whole or refused, saved under
generated names in a fresh folder of the data directory, a gzip file bounded by what it
expands to."""

from __future__ import annotations

import gzip
import math
import shutil
import tempfile
import zlib
from contextlib import aclosing
from pathlib import Path

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from ..errors import InvalidInput, PayloadTooLarge, PredictorError, shown, storage_error, writing
from ..traces import TRACE_FILE_KINDS, trace_file_format


class _WholeMultiPartParser(MultiPartParser):
    """Starlette's parser, refusing a body that ends before the closing boundary.

    Without it a form cut short lost its last part without a word (a table written under
    the default name, over another table, when its 'table_name' part was cut off).
    """

    ended = False

    def on_end(self) -> None:
        self.ended = True
        super().on_end()

    async def parse(self) -> FormData:
        form = await super().parse()
        if not self.ended:
            await form.close()
            raise MultiPartException("the body ends before the form's closing boundary (it was cut short)")
        return form


async def read_form(request: Request, files_field: str, text_field: str = "body", **limits: int) -> FormData:
    """The request's multipart form; a body Starlette cannot parse, or one past ``limits``, is a PredictorError
    (a text part past its size names ``text_field``).

    Starlette reports those as a bare ``HTTPException(400)``, which would bypass the
    routes' own error answers (the table route's ``{"status": "failed", ...}``).
    """
    try:
        async with aclosing(request.stream()) as stream:
            return await _WholeMultiPartParser(request.headers, stream, **limits).parse()
    except OSError as exc:
        # Starlette spools file parts over 1 MB to the system's temporary directory.
        raise storage_error(exc, "the uploaded form", f"in the temporary directory {tempfile.gettempdir()}") from None
    except (StarletteHTTPException, MultiPartException) as exc:
        reason = str(getattr(exc, "detail", None) or getattr(exc, "message", None) or exc)
        message = f"the multipart form cannot be read: {reason}"
        if "exceeded maximum size" in reason:
            # Starlette does not say which part: on /train the one text part taken is the config.
            said = "only file parts may be larger" if text_field == "body" else (
                f"a text part, such as '{text_field}', is at most that; only file parts may be larger")
            raise PayloadTooLarge(f"{message} ({said})", field=text_field) from None
        if "Too many files" in reason:
            raise PredictorError(message, field=files_field) from None
        raise PredictorError(message, field="body") from None


def upload_bytes(max_mb: float) -> int:
    """``PREDICTOR_MAX_UPLOAD_MB`` in bytes, rounded up: a positive limit under a byte is one
    byte, not 0, which means no limit."""
    return math.ceil(max_mb * 2**20)


def upload_dir(data_dir: Path) -> Path:
    """A fresh folder for one request's uploaded files, inside the data directory (the caller removes it)."""
    with writing("an uploaded file"):
        return Path(tempfile.mkdtemp(prefix="upload-", dir=data_dir))


def save_upload(upload: UploadFile, dest: Path, name: str, field: str, max_mb: float) -> None:
    with writing(f"the uploaded file {shown(name)}"), dest.open("wb") as fh:
        shutil.copyfileobj(upload.file, fh, 1 << 20)
    if max_mb and name.lower().endswith(".gz"):
        _check_expanded_size(dest, name, field, max_mb)


def _check_expanded_size(path: Path, name: str, field: str, max_mb: float) -> None:
    """Refuse a gzip upload that expands past the size limit a plain upload has.

    Otherwise compression is a way around it: a 99 KB file of a million identical
    traces made a 518 MB lookup table. (A file that is not gzip, or is cut short, is
    left to the trace reader, whose message names what is wrong with it.)
    """
    limit, total = upload_bytes(max_mb), 0
    try:
        with gzip.open(path, "rb") as gz:
            while chunk := gz.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLarge(f"{field} {shown(name)} expands to more than {max_mb:g} MB "
                                          "(PREDICTOR_MAX_UPLOAD_MB, which a plain upload has too)", field=field)
    except (OSError, EOFError, zlib.error):
        return


def trace_suffix(name: str) -> str:
    """The suffix an uploaded trace file is saved under: its own (lower case, ``.gz`` kept), else ""."""
    parsed = trace_file_format(name)
    return parsed.suffix + (".gz" if parsed.gzipped else "") if parsed else ""


class UploadedTraceFiles:
    """The trace files of a multipart training, stored under generated names in ``folder``,
    by the names its config may call them: each file's own name, or the part it was sent as
    where that is no file's name and only one file was sent as it (else it would be chance)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._by_name: dict[str, Path] = {}
        self._by_part: dict[str, list[Path]] = {}

    def place(self, part: str, filename: str | None) -> tuple[str, Path]:
        """Where the file sent as ``part`` under ``filename`` is to be saved, and its name."""
        name = Path(filename or part).name
        if name in self._by_name:
            # The config names files by name: two parts of one name would leave it to chance.
            raise InvalidInput(f"two uploaded files are named {shown(name)}; the config names files by name",
                               field=part)
        if trace_file_format(name) is None:
            raise InvalidInput(f"uploaded file {shown(name)} must be {TRACE_FILE_KINDS}", field=part)
        # A generated name: the client's file name never touches the disk.
        dest = self.folder / f"{len(self._by_name)}{trace_suffix(name)}"
        self._by_name[name] = dest
        self._by_part.setdefault(part, []).append(dest)
        return name, dest

    def by_name(self, config_traces: object = None) -> dict[str, Path]:
        """Every file by each name it may be called; ``config_traces`` (the config's
        ``traces``) naming a part that several files were sent as is refused."""
        named = dict(self._by_name)
        for part, dests in self._by_part.items():
            if part in named:
                continue  # file names come first
            if len(dests) == 1:
                named[part] = dests[0]
            elif config_traces == part:
                raise InvalidInput(f"{len(dests)} uploaded files were sent as part {shown(part)}, which the config "
                                   "names: name one of them by its file name", field="config.traces")
        return named
