"""Reading traces: flat or structured objects, from requests or JSON/JSONL/CSV(.gz) files.

Everything here streams: rows are folded into compact per-column arrays as they
are read, so a million-row file costs tens of MB, not a list of a million dicts.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import math
import re
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import orjson

from .errors import shown, too_many_digits
from .identity import IDENTITY_KEYS

DEFAULT_TARGET = "runtime_ms"
# The runtimes accepted in training and as observations. A value outside is a broken
# measurement in any unit (1e15 ms is 31,700 years and 1e15 ns 11.6 days; 1e-12 s is a
# picosecond), and one such row would overflow the sums, ratios and fourth moments that
# the models and monitors take.
MIN_RUNTIME = 1e-12
MAX_RUNTIME = 1e15
RUNTIME_RANGE = f"[{MIN_RUNTIME:g}, {MAX_RUNTIME:g}]"


def is_runtime(v: Any) -> bool:
    """Whether one measured value is a runtime the service accepts (a number, not a bool, in range)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and MIN_RUNTIME <= v <= MAX_RUNTIME
ID_KEYS = frozenset({"task_id", "req_id", "model_id", "request_id"})
TIMESTAMP_KEYS = frozenset({"ts", "timestamp"})
# In a prediction's trace, how long the task has already run (ms): the answer is its time left.
ELAPSED_KEY = "elapsed_ms"
_NUMBER_OR_NONE = frozenset({int, float, type(None)})
# A trace file's suffixes and the formats they name; lookup tables are named the same way.
TRACE_FILE_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
# What a message says the file names above are (trace files and lookup tables alike).
TRACE_FILE_KINDS = ".json, .jsonl (or .ndjson) or .csv, optionally .gz"
UTF8_BOM = b"\xef\xbb\xbf"


class TraceError(ValueError):
    """A trace or trace file that cannot be read; the message says where and why.

    ``field`` names the training config's key at fault where it is not the traces
    themselves (``features`` that are not in them, a ``target`` that is not).
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def reserved_keys(target: str = DEFAULT_TARGET) -> frozenset[str]:
    return frozenset({target, ELAPSED_KEY, *ID_KEYS, *TIMESTAMP_KEYS, *IDENTITY_KEYS})


# The fields of a lookup table's records that are not features: ``elapsed_ms`` is one, where
# a model stored before it was reserved learned it and made the table.
TABLE_RESERVED_KEYS = reserved_keys() - {ELAPSED_KEY}


def elapsed_times(traces: list[dict[str, Any]], features: Sequence[str] = ()
                  ) -> tuple[np.ndarray | None, list[str | None] | None]:
    """Each trace's ``elapsed_ms`` (0 where it has none: not started), and an error naming
    the field for each trace whose value is not a number of milliseconds at least 0; (None,
    None) where no trace states one (told in C: a batch of queued tasks costs a list), or
    where it is one of ``features`` (a model, or its table, stored before it was reserved)."""
    if ELAPSED_KEY in features:
        return None, None
    values = list(map(dict.get, traces, itertools.repeat(ELAPSED_KEY)))
    if values.count(None) == len(values):
        return None, None
    try:  # (None reads as NaN)
        col = np.array(values, dtype=np.float64) if set(map(type, values)) <= _NUMBER_OR_NONE else None
    except OverflowError:  # an int past the float range
        col = None
    if col is None:
        col = np.array([float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= MAX_RUNTIME
                        else math.nan for v in values])
    good = (col >= 0) & (col <= MAX_RUNTIME)
    errors: list[str | None] = [None] * len(values)
    for i in np.flatnonzero(~good).tolist():
        if values[i] is not None:
            errors[i] = (f"{ELAPSED_KEY} must be the milliseconds the task has already run, a number in "
                         f"[0, {MAX_RUNTIME:g}]; got {shown(values[i])}")
    elapsed = np.where(good, col, 0.0)
    return elapsed, errors


def normalize_trace(obj: Any) -> dict[str, Any]:
    """Return a flat trace dict, accepting SwarmPilot's structured form too.

    ``{"input_feature": [{"param_name": "x", "val": 1}], "model_id": "m"}``
    becomes ``{"x": 1, "model_id": "m"}``; other keys are kept as they are.
    """
    if not isinstance(obj, dict):
        raise TraceError(f"a trace must be a JSON object, got {type(obj).__name__}")
    if "input_feature" not in obj:
        return obj
    items = obj["input_feature"]
    if not isinstance(items, list):
        raise TraceError("input_feature must be a list of {param_name, val} objects")
    flat = {k: v for k, v in obj.items() if k != "input_feature"}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "param_name" not in item:
            raise TraceError(f"input_feature[{i}] must be an object with param_name and val")
        if not isinstance(item["param_name"], str):
            # A number would name a feature "5" that no model has: the trace would then
            # fail for a feature it did send.
            raise TraceError(f"input_feature[{i}].param_name must be a text, got {shown(item['param_name'])}")
        name, value = item["param_name"], item.get("val")
        had = flat.get(name)
        if had is not None and value is not None and had != value:
            # Either could be the one meant: which one a model read would be a guess.
            raise TraceError(f"input_feature[{i}]: {shown(name)} is given twice, as {shown(had)} "
                             f"and as {shown(value)}")
        if value is not None or name not in flat:  # a null (a CSV file's empty cell) is a missing value
            flat[name] = value
    return flat


_DICT_TYPE = frozenset({dict})


def normalize_traces(traces: Iterable[Any]) -> tuple[list[dict[str, Any]], list[str | None]]:
    """Normalise each trace; one that cannot be read becomes ``{}`` with its error beside it.

    Requests with many traces fail trace by trace, never as a whole.
    """
    if not isinstance(traces, list):
        traces = list(traces)
    # The common batch, flat dicts all, is checked in C and returned as it is (no Python
    # step per trace: 5.7 ms for 100,000 traces against 7.7 trace by trace).
    if set(map(type, traces)) <= _DICT_TYPE and "input_feature" not in set().union(*traces):
        return traces, [None] * len(traces)
    flat: list[dict[str, Any]] = []
    errors: list[str | None] = []
    for t in traces:
        try:
            flat.append(normalize_trace(t))
            errors.append(None)
        except TraceError as exc:
            flat.append({})
            errors.append(str(exc))
    return flat, errors


# --------------------------------------------------------------------------- files


def open_trace_file(path: Path | str, source: str | None = None) -> tuple[IO[bytes], str]:
    """Open a trace file (transparently gunzipping) and return it with its format.

    A UTF-8 byte order mark (which spreadsheet programs write at the start of a
    CSV file) is skipped: the stream starts with the first field's name or value.
    A ``.gz`` file that is not gzip is a TraceError naming it ``source``.
    """
    path = Path(path)
    parsed = trace_file_format(path.name)
    if parsed is None:
        raise TraceError(
            f"unsupported trace file {shown(path.name.lower().removesuffix('.gz'))}: expected {TRACE_FILE_KINDS}"
        )
    fmt, gz = parsed.format, parsed.gzipped
    raw: IO[bytes] = gzip.open(path, "rb") if gz else open(path, "rb")
    try:
        skip_bom(raw)
        if problem := encoding_problem(raw.peek(4)[:4], gz):
            raise TraceError(f"{source or path.name}: {problem}")
    except (OSError, EOFError) as exc:
        raw.close()
        if gz:  # (read as text it was "empty", or a JSON error at its first byte)
            raise TraceError(f"{source or path.name}: not a valid gzip file ({exc})") from None
        raise
    except BaseException:
        raw.close()
        raise
    return raw, fmt


@contextmanager
def text_view(raw: IO[bytes], encoding: str = "utf-8", newline: str | None = "") -> Iterator[IO[str]]:
    """``raw`` read as text; on leaving, the text layer is detached, leaving ``raw`` to its owner.

    (A text wrapper left to the garbage collector, as a reader stopped early leaves it,
    closes ``raw`` under its owner, or warns of an unclosed file.)
    """
    text = io.TextIOWrapper(raw, encoding=encoding, newline=newline)
    try:
        yield text
    finally:
        if not raw.closed:  # (a closed one leaves nothing to detach: flushing it would fail)
            text.detach()


def skip_bom(raw: Any) -> None:
    """Move ``raw`` (a buffered or gzip file at its start) past a UTF-8 byte order mark, if one is there."""
    head = raw.peek(len(UTF8_BOM))[: len(UTF8_BOM)]
    if head == UTF8_BOM:
        raw.read(len(UTF8_BOM))
    elif head and len(head) < len(UTF8_BOM) and UTF8_BOM.startswith(head):
        # peek() gave too few bytes to tell (possible, if rare, for a gzip stream): read them and look.
        if raw.read(len(UTF8_BOM)) != UTF8_BOM:
            raw.seek(0)


class TraceFileFormat(NamedTuple):
    """What a trace or table file's name says: its ``format`` (json, jsonl or csv), its
    ``suffix`` (a key of TRACE_FILE_FORMATS: ``.ndjson`` stays ``.ndjson``) and whether it is ``gzipped``."""

    format: str
    suffix: str
    gzipped: bool


# Byte order marks of the encodings other than UTF-8 that a trace file comes in (Excel's
# "Unicode text" and PowerShell's `>` write UTF-16): read as UTF-8, such a file was refused
# for its first line's bytes, in words that did not name the encoding.
_OTHER_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
               (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))
GZIP_MAGIC = b"\x1f\x8b"


def encoding_problem(head: bytes, gzipped: bool) -> str | None:
    """Why a trace file whose (decompressed) content starts with ``head``, its first bytes
    past a UTF-8 byte order mark, cannot be read as UTF-8 text; None where it may be."""
    for bom, name in _OTHER_BOMS:
        if head.startswith(bom):
            return f"the file is {name} text (it starts with a {name} byte order mark); save it as UTF-8"
    if head.startswith(GZIP_MAGIC):
        return ("the file is gzip-compressed twice; decompress it once more" if gzipped
                else "the file is gzip-compressed; name it with .gz at the end")
    # Every text format here starts with an ASCII character: in UTF-16, each beside a NUL byte.
    if len(head) == 4 and any(all(head[i::2]) and not any(head[1 - i::2]) for i in (0, 1)):
        return "the file reads as UTF-16 text without a byte order mark; save it as UTF-8"
    return None


def trace_file_format(name: str, stem_required: bool = False) -> TraceFileFormat | None:
    """The format a trace or table file's name ends in (any case, optionally followed by
    ``.gz``; see TRACE_FILE_KINDS), else None.

    ``stem_required``: the name must be longer than that suffix (``.json`` alone, or
    ``.csv.gz``, names no lookup table).
    """
    lower = name.lower()
    base = lower.removesuffix(".gz")
    for suffix, fmt in TRACE_FILE_FORMATS.items():
        if base.endswith(suffix) and (not stem_required or len(base) > len(suffix)):
            return TraceFileFormat(fmt, suffix, base != lower)
    return None


def iter_trace_file(path: Path | str, source: str | None = None) -> Iterator[dict[str, Any]]:
    """Yield flat traces from a file, one at a time; messages name it ``source`` (default: its file name).

    Streamed: JSONL and CSV line by line, a JSON array, or an object's ``traces``
    array, item by item (:func:`iter_json_array`). (Training loaded every JSON file
    whole: an array of a million traces, 89 MB, peaked at 686 MB resident, and streamed
    at 210 MB; benchmarks/ingest.py.)
    """
    path = Path(path)
    source = source or path.name
    raw, fmt = open_trace_file(path, source)
    done = 0
    line_error = False
    with raw:
        if fmt != "json":
            yield from iter_trace_stream(raw, fmt, source=source)
            return
        try:
            for obj in iter_json_array(raw, source, constants=False, member="traces", surrogates=False):
                yield _normalize_at(obj, source, f"item {done}")
                done += 1
            return
        except NotAnArray:
            pass
        except LineModeError:
            line_error = True
    if line_error:
        # Valid JSON laid out differently from one record a line is read again by the
        # general decoder. The traces already yielded were consumed, so the second pass
        # skips as many (both parsers see the same items up to the line that failed). A
        # file that fails again does so with the general decoder's message, which names the
        # item and why (NaN, a cut record): the line's said "may be truncated" either way.
        yield from _retry_traces(path, source, done)
        return
    # Neither an array nor an object: not JSON, or a JSON value of another kind, which the
    # whole-document reader refuses with its message.
    raw, fmt = open_trace_file(path, source)
    with raw:
        yield from iter_trace_stream(raw, fmt, source=source)


def _retry_traces(path: Path, source: str, skip: int) -> Iterator[dict[str, Any]]:
    try:
        raw, _ = open_trace_file(path, source)
    except OSError as exc:
        raise TraceError(f"{source}: cannot read the file again ({exc.strerror or exc})") from None
    with raw:  # (an array: the line reader started on its '[')
        for i, obj in enumerate(iter_json_array(raw, source, line_mode=False, constants=False, surrogates=False)):
            if i >= skip:
                yield _normalize_at(obj, source, f"item {i}")


def _json_loads(data: bytes) -> Any:
    """JSON as orjson reads it; where it refuses a number past the float range (an integer
    of 400 digits), as Python's parser does, which keeps the integer (it then reads as
    infinite, as in a CSV file, a request's traces and a lookup table's JSON)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "infinity" not in str(exc):
            raise
        try:
            obj = json.loads(data, parse_constant=_no_constant, parse_int=_integer_in_text)
        except ValueError:
            raise exc from None
        if (said := lone_surrogate_in(obj)) is not None:  # (which orjson refuses, and Python's parser reads)
            raise orjson.JSONDecodeError(said, data.decode("utf-8", "replace"), 0)
        return obj


# A \u escape of a UTF-16 surrogate: in a pair it is one character, alone none (orjson
# refuses it; Python's parser reads it as a lone surrogate, which no UTF-8 text holds, and
# storing a model of such a name or category was a 500).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate_in(obj: Any) -> str | None:
    """What is wrong where a string of ``obj`` (a key or a value, at any depth) holds a lone
    surrogate, as Python's JSON parser reads ``"\\ud800"``; None where none does."""
    todo = [obj]  # (a stack, not recursion: as deep as the parser read)
    while todo:
        value = todo.pop()
        if isinstance(value, str):
            if (found := _SURROGATE.search(value)) is not None:
                return (f"a lone surrogate ({ascii(found.group())}) in {ascii(value[:40])}"
                        f"{'...' if len(value) > 40 else ''}: a \\u escape of a UTF-16 surrogate needs its pair; "
                        "this is no Unicode text")
        elif isinstance(value, dict):
            todo.extend(value)
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
    return None


def line_json_problem(exc: json.JSONDecodeError) -> str:
    """What is wrong with one line of JSON, placed by its column: orjson's own place says
    "line 1" of the one line it was given, beside the file's line number."""
    return f"{exc.msg} at column {exc.colno}"


def not_utf8(exc: UnicodeDecodeError, where: str = "") -> str:
    """Why a file that ``exc`` stopped is refused, naming the byte (and ``where`` it is)."""
    return (f"byte 0x{exc.object[exc.start]:02x}{where} is not UTF-8 text (is the file latin-1 or "
            "Windows-1252?); save it as UTF-8")


def not_utf8_in(line: bytes) -> str | None:
    """Where a line that does not parse is not UTF-8 (orjson says "surrogates not allowed")."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return not_utf8(exc, f" at column {exc.start + 1}")
    return None


def _constant_said(name: str) -> str:
    """Why NaN or an infinity in a trace file is refused, and the way out."""
    return f"{name} is not a JSON value: write null for a missing value"


def _no_constant(name: str) -> Any:
    raise ValueError(f"not valid JSON ({_constant_said(name)})")


class SpeltConstant(str):
    """NaN, Infinity or -Infinity where a request's body or a trace line spelt one (JSON has none of them)."""


class TooLargeNumber(SpeltConstant):
    """A number spelt that no double holds (1e999, an integer of 400 digits)."""


def _number(text: str) -> Any:
    """A JSON number's text as a float for ``json.loads``, a ``TooLargeNumber`` where it is past a
    double's range (quoted cut short: an integer may have thousands of digits)."""
    value = float(text)
    if abs(value) <= sys.float_info.max:
        return value
    return TooLargeNumber(text if len(text) <= 24 else f"{text[:20]}... ({len(text)} characters)")


def non_finite_place(raw: bytes) -> tuple[str, SpeltConstant] | None:
    """Where JSON orjson refused (a request's body, a trace line) spells NaN, Infinity or -Infinity (as Python's json writes
    them by default) or a number beyond a double's range (a ``TooLargeNumber``), the first in
    the text (``trace[2].batch_size``) and which; None where it is not valid JSON even so.
    Said as a JSON syntax error at a character, the field went unnamed (the Python client
    names NaN and the infinities before sending)."""
    try:
        # Integers read as floats: only the place matters here, and int() refuses more than
        # 4,300 digits, which left such a number's field unnamed.
        data = json.loads(raw, parse_constant=SpeltConstant, parse_float=_number, parse_int=_number)
    except (ValueError, RecursionError):  # (UnicodeDecodeError too)
        return None
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, SpeltConstant):
            return path or "body", value
        if isinstance(value, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend((value[i], f"{path}[{i}]") for i in range(len(value) - 1, -1, -1))
    return None


def _constant_in(line: bytes) -> str | None:
    """Why a line orjson refused is not JSON where it spells NaN or an infinity (Python's
    json writes them by default), as a JSON array's item is told; None otherwise."""
    spelt = non_finite_place(line)
    if spelt is None or isinstance(spelt[1], TooLargeNumber):
        return None
    return _constant_said(spelt[1])


# Bytes read at a time by content_lines.
_LINES_BLOCK = 1 << 20


def content_lines(raw: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(number, from 1, and line) of each line of ``raw`` that holds more than whitespace,
    without a UTF-8 byte order mark at the start, read a megabyte at a time: blank lines are
    passed over without a step of Python each (a 19 KB gzip upload of 20 million blank
    lines held the training worker 11 s, read line by line; benchmarks/ingest.py)."""
    lineno = 0
    pending: list[bytes] = []  # the start of a line that runs past the blocks read so far
    first = True
    while block := raw.read(_LINES_BLOCK):
        if first:
            block, first = block.removeprefix(UTF8_BOM), False
        cut = block.rfind(b"\n")
        if cut < 0:
            pending.append(block)
            continue
        pending.append(block[:cut])
        lines = b"".join(pending).split(b"\n")
        pending = [block[cut + 1:]]
        yield from itertools.compress(zip(itertools.count(lineno + 1), lines), map(bytes.strip, lines))
        lineno += len(lines)
    last = b"".join(pending)
    if last.strip():
        yield lineno + 1, last


def iter_trace_stream(raw: IO[bytes], fmt: str, source: str = "<upload>") -> Iterator[dict[str, Any]]:
    try:
        if fmt == "jsonl":
            for lineno, line in content_lines(raw):
                try:
                    obj = _json_loads(line)
                except orjson.JSONDecodeError as exc:
                    if said := not_utf8_in(line):
                        raise TraceError(f"{source}: line {lineno}: {said}") from None
                    said = _constant_in(line) or line_json_problem(exc)
                    raise TraceError(f"{source}: line {lineno} is not valid JSON ({said})") from None
                yield _normalize_at(obj, source, f"line {lineno}")
        elif fmt == "json":
            try:
                doc = _json_loads(raw.read().removeprefix(UTF8_BOM))
            except orjson.JSONDecodeError as exc:
                raise TraceError(f"{source}: not valid JSON ({exc})") from None
            if isinstance(doc, dict) and isinstance(doc.get("traces"), list):
                doc = doc["traces"]
            if not isinstance(doc, list):
                raise TraceError(f"{source}: a .json trace file holds an array or an object with a 'traces' array")
            for i, obj in enumerate(doc):
                yield _normalize_at(obj, source, f"item {i}")
        elif fmt == "csv":
            # A cell as long as JSON's strings may be (the upload limit bounds them): past the
            # csv module's default of 131,072 characters the whole file was refused.
            csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
            with text_view(raw, "utf-8-sig") as text:
                reader = csv_reader(text)
                row_line = 1  # where the row being read starts (a quoted cell may span lines)
                try:
                    header = csv_header(next(reader, None) or [], source)
                    # Columns without a name (a spreadsheet's trailing empty columns, pandas' index)
                    # are no fields; a row's cells past the header must be empty, or they would be
                    # dropped without a word; a short row's missing cells are missing values.
                    # Each named column with its reader, chosen once: text for an identity column,
                    # JSON for SwarmPilot's structured form.
                    named = [(i, h, _CSV_READERS.get(h, csv_value)) for i, h in enumerate(header) if h]
                    structured = "input_feature" in header
                    row_line = reader.line_num + 1
                    for row in reader:
                        line, row_line = row_line, reader.line_num + 1  # this row's start; the next one's
                        if not row or blank_cells(row):  # an empty line, or a spreadsheet's row of commas
                            continue
                        if len(row) > len(header) and not blank_cells(row[len(header):]):
                            raise TraceError(f"{source}: line {line} has {len(row)} fields where the header "
                                             f"has {len(header)}")
                        trace = {h: read(row[i] if i < len(row) else None) for i, h, read in named}
                        if structured:
                            if trace["input_feature"] is None:  # an empty cell: no features in that form
                                del trace["input_feature"]
                            trace = _normalize_at(trace, source, f"line {line}")
                        yield trace
                except csv.Error as exc:
                    raise TraceError(f"{source}: line {row_line}: {csv_problem(exc)}") from None
        else:  # pragma: no cover - guarded by trace_file_format
            raise TraceError(f"unknown trace format {shown(fmt)}")
    except UnicodeDecodeError as exc:  # (its position counts from a block's start, not the file's)
        raise TraceError(f"{source}: {not_utf8(exc)}") from None
    except (OSError, EOFError, csv.Error) as exc:
        # Truncated gzip streams, binary garbage and CSV fields beyond the csv module's limit.
        raise TraceError(f"{source}: cannot read the file ({exc}); it may be truncated or not what its name says") from None


# --------------------------------------------------------------------------- streamed JSON arrays


class NotAnArray(Exception):
    """The JSON document is not an array (raised before any item is yielded)."""


class LineModeError(TraceError):
    """A line of a one-record-per-line file did not parse (truncated, or a layout worth a second look)."""


class _Prefixed(io.RawIOBase):
    """A byte stream that yields ``head`` and then the rest of ``raw``."""

    def __init__(self, head: bytes, raw: IO[bytes]):
        self._head = memoryview(head)
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        if len(self._head):
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._raw.read(len(buf))
        buf[: len(data)] = data
        return len(data)


_HEAD = 1 << 16
_WS = re.compile(r"[ \t\n\r]*")
_LINE_MODE = re.compile(rb"\A\s*\[[ \t]*\r?\n")


def iter_json_array(raw: IO[bytes], source: str, line_mode: bool = True, constants: bool = True,
                    member: str | None = None, surrogates: bool = True) -> Iterator[Any]:
    """Yield the items of a JSON array one at a time, without loading the document.

    Files with one item per line (what the table writer produces) are parsed
    line by line with orjson; any other layout by an incremental decoder. A
    truncated or malformed file raises :class:`TraceError` naming the place.
    With ``member``, an object whose ``member`` is the array is read as well
    (``{"traces": [...]}``; its other members are read past). Raises
    :class:`NotAnArray` (before yielding anything) when the document is neither.
    ``constants=False`` refuses ``NaN`` and ``Infinity``, which are not
    JSON, as orjson does (Python's ``json`` writes them, and a lookup table written
    by it may hold them); ``surrogates=False`` refuses a lone surrogate (``"\\ud800"``), as
    orjson does too (see :func:`lone_surrogate_in`).
    """
    try:
        head = raw.read(_HEAD)
        stream = io.BufferedReader(_Prefixed(head, raw), 1 << 20)
        if line_mode and _LINE_MODE.match(head) and _first_line_record(head):
            yield from _iter_lines(stream, source)
        else:
            with text_view(stream, newline=None) as text:
                yield from _iter_incremental(text, source, constants, member, surrogates)
    except UnicodeDecodeError as exc:  # a latin-1 byte, say: named, as in a .jsonl or .csv file
        raise TraceError(f"{source}: {not_utf8(exc)}") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise TraceError(f"{source}: cannot read the file ({exc}); it may be truncated or not what its name says") from None


def _first_line_record(head: bytes) -> bool:
    lines = head.split(b"\n")
    for line in lines[1:-1]:  # the last piece may be cut by the head's end
        s = line.strip()
        if not s:
            continue
        if s == b"]":
            return True
        try:
            return isinstance(orjson.loads(s.removesuffix(b",")), dict)
        except orjson.JSONDecodeError:
            return False
    return False


def _iter_lines(stream: IO[bytes], source: str) -> Iterator[Any]:
    opened = closed = False
    for lineno, line in content_lines(stream):
        s = line.strip()
        if closed:
            raise TraceError(f"{source}: line {lineno}: unexpected data after the closing ']'")
        if not opened:
            opened = True  # the '[' line, checked by the caller
            continue
        if s == b"]":
            closed = True
            continue
        try:
            yield orjson.loads(s.removesuffix(b","))
        except orjson.JSONDecodeError as exc:
            raise LineModeError(f"{source}: line {lineno}: not valid JSON ({line_json_problem(exc)}); "
                                "the file may be truncated") from None
    if not closed:
        raise LineModeError(f"{source}: ends before the closing ']'; the file is truncated")


class _JsonCursor:
    """A position in a JSON text read a megabyte at a time: whitespace, one character, or a
    whole value (by the standard decoder, which says where a value goes wrong)."""

    def __init__(self, text: IO[str], source: str, constants: bool = True, surrogates: bool = True):
        self._text = text
        self._source = source
        self.decode = (json.JSONDecoder() if constants else json.JSONDecoder(parse_constant=_no_constant)).raw_decode
        # Past an integer of more digits than int() reads, a decoder that reads such integers
        # as infinite, as a CSV file's are; the standard one raises there, and is faster.
        self._wide_decode = json.JSONDecoder(parse_int=_integer_in_text,
                                             parse_constant=None if constants else _no_constant).raw_decode
        self.buf, self.pos, self.eof = "", 0, False
        # Whether lone surrogates are refused (see lone_surrogate_in), and whether the text read
        # so far may hold one: its items are then searched for one, a cost that text without
        # such an escape is spared.
        self.refuse_surrogates = not surrogates
        self.surrogates = False

    def _more(self) -> None:
        chunk = self._text.read(1 << 20)
        if not chunk:
            self.eof = True
        self.buf, self.pos = self.buf[self.pos:] + chunk, 0
        if self.refuse_surrogates and not self.surrogates and _SURROGATE_ESCAPE.search(self.buf) is not None:
            self.surrogates = True

    def peek(self) -> str:
        """The next character that is not whitespace ('' at the end), not consumed."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf) or self.eof:
                return self.buf[self.pos:self.pos + 1]
            self._more()

    def take(self) -> str:
        c = self.peek()
        self.pos += len(c)
        return c

    def value(self, what: str | int) -> Any:
        """The value that starts here; errors name it ``what`` ("a member name"; a number: that item)."""
        self.peek()
        while True:
            try:
                obj, end = self.decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:  # (a number cut by the chunk's end reads as a shorter one)
                    self.pos = end
                    return obj
                self._more()
            except RecursionError:
                raise TraceError(f"{self._source}: {_what(what)}: arrays or objects nested too deeply to read") from None
            except json.JSONDecodeError as exc:
                near_end = exc.pos >= len(self.buf) - 16 or exc.msg.startswith("Unterminated string")
                if self.eof or not near_end:
                    # Near the end, but where a closing bracket or a comma follows (a trailing
                    # comma: '[{...},]'), the file is whole: it was said to be truncated.
                    cut = self.eof and near_end and self.buf[exc.pos:].strip()[:1] not in ("]", "}", ",")
                    where = "the file is truncated" if cut else "malformed"
                    raise TraceError(f"{self._source}: {_what(what)}: not valid JSON ({exc.msg}; {where})") from None
                self._more()
            except ValueError as exc:  # NaN refused; or an integer of more digits than int() reads
                if self.decode is not self._wide_decode and too_many_digits(exc):
                    self.decode = self._wide_decode
                    continue
                raise TraceError(f"{self._source}: {_what(what)}: {exc}") from None


def _what(what: str | int) -> str:
    return f"item {what}" if isinstance(what, int) else what


def _iter_incremental(text: IO[str], source: str, constants: bool = True, member: str | None = None,
                      surrogates: bool = True) -> Iterator[Any]:
    cur = _JsonCursor(text, source, constants, surrogates)
    first = cur.peek()
    if not first:
        raise TraceError(f"{source}: the file is empty")
    if first == "[":
        yield from _array_items(cur, source)
    elif first == "{" and member is not None:
        yield from _member_items(cur, source, member)
    else:
        raise NotAnArray()
    if cur.take():
        raise TraceError(f"{source}: unexpected data after the closing '{']' if first == '[' else '}'}'")


# After an item: the whitespace, the ',' or ']', and the whitespace before the next item.
_AFTER_ITEM = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*")


def _array_items(cur: _JsonCursor, source: str) -> Iterator[Any]:
    cur.take()  # '['
    if cur.peek() == "]":
        cur.take()
        return
    decode, after = cur.decode, _AFTER_ITEM.match
    i = 0
    while True:
        # The usual item, whole in the buffer and followed by its separator, is read by one
        # decode and one match; anything else (the buffer's end, an error) by the cursor.
        buf = cur.buf
        try:
            obj, end = decode(buf, cur.pos)
        except (ValueError, RecursionError):
            end = -1
        sep = after(buf, end) if 0 < end < len(buf) else None
        if sep is not None and sep.end() < len(buf):
            cur.pos = sep.end()
            c = sep.group(1)
        else:
            obj = cur.value(i)
            c = cur.take()
            cur.peek()  # past the whitespace before the next item, where the decoder starts
        if cur.surrogates and (said := lone_surrogate_in(obj)) is not None:
            raise TraceError(f"{source}: item {i}: not valid JSON ({said})")
        yield obj
        if c == "]":
            return
        if not c:
            raise TraceError(f"{source}: ends after item {i} before the closing ']'; the file is truncated")
        if c != ",":
            raise TraceError(f"{source}: expected ',' or ']' after item {i}, found {c!r}")
        i += 1


def _member_items(cur: _JsonCursor, source: str, member: str) -> Iterator[Any]:
    """The items of the array under ``member`` of the object that starts here; the other
    members are read past (each whole, as they are small beside the array)."""
    cur.take()  # '{'
    found = False
    if cur.peek() == "}":
        cur.take()
    else:
        while True:
            if cur.peek() != '"':
                raise TraceError(f"{source}: malformed object: expected a member name, found {cur.peek() or 'the end'!r}")
            key = cur.value("a member name")
            if cur.take() != ":":
                raise TraceError(f"{source}: malformed object: expected ':' after the member name {shown(key)}")
            if key != member:
                cur.value(f"member {shown(key)}")
            elif found:
                raise TraceError(f"{source}: the object has two {shown(member)} members")
            elif cur.peek() != "[":
                break  # refused below, as an object without the array
            else:
                found = True
                yield from _array_items(cur, source)
            c = cur.take()
            if c == "}":
                break
            if c != ",":
                what = "the file is truncated" if not c else f"found {c!r}"
                raise TraceError(f"{source}: malformed object: expected ',' or '}}' after member {shown(key)} ({what})")
    if not found:
        raise TraceError(f"{source}: a .json trace file holds an array or an object with a {shown(member)} array")


def csv_problem(exc: csv.Error, unclosed_hint: str = "") -> str:
    """What a strict CSV reader's error says of the row it was reading."""
    return ("a quoted cell that starts there is never closed" + unclosed_hint if "end of data" in str(exc)
            else f"not valid CSV ({exc})")


def blank_cells(cells: list[str]) -> bool:
    """Whether CSV cells hold nothing (what a spreadsheet writes past its last column, or as an empty row)."""
    return not any(cell.strip() for cell in cells)


def csv_reader(text: IO[str]) -> Iterator[list[str]]:
    """The reader of CSV trace files and lookup tables.

    Strict: a quote never closed took every row after it into one cell, without a word.
    Spaces after a comma are skipped (``batch_size, image_size, runtime_ms`` is a common
    hand-written header, and its target was the field `` runtime_ms``, not found; its
    text cells were categories `` a100``, not ``a100``)."""
    return csv.reader(text, strict=True, skipinitialspace=True)


def csv_header(cells: list[str], source: str) -> list[str]:
    """A CSV file's column names, without the spaces around them; each named once, since a
    repeated name would let the last column win."""
    header = [cell.strip() for cell in cells]
    named = [name for name in header if name]
    if len(named) == 1 and (sep := next((c for c in ";\t|" if c in named[0]), None)):
        # (else: a file of one field, its whole header line, and a target "not present")
        raise TraceError(f"{source}: the CSV header is one column, {shown(named[0])}: its fields must be separated "
                         f"by commas, not {shown(sep)}")
    seen: set[str] = set()
    for name in header:
        if name and name in seen:  # unnamed columns (a spreadsheet's trailing empty ones) name nothing
            raise TraceError(f"{source}: the CSV header names column {shown(name)} twice")
        seen.add(name)
    return header


def _normalize_at(obj: Any, source: str, where: str) -> dict[str, Any]:
    try:
        return normalize_trace(obj)
    except TraceError as exc:
        raise TraceError(f"{source}: {where}: {exc}") from None


# A CSV cell of an identity column names a model as written: read as a number, versions
# "2.1" and "2.10" (or hardware "007" and "7") were one model.
_IDENTITY_COLUMNS = frozenset(IDENTITY_KEYS)
_CSV_FIELD_LIMIT = 2**31 - 1


def csv_text(text: str | None) -> str | None:
    return None if not text or text.isspace() else text  # an empty (or blank) cell is a missing value


# How CSV (which holds no types) and JSON (whose booleans are numbers, 1 and 0) spell a
# boolean: a CSV cell `true` is text, and a model fitted on one format reads the other's.
BOOLEAN_WORDS = {"true": 1.0, "True": 1.0, "TRUE": 1.0, "false": 0.0, "False": 0.0, "FALSE": 0.0}


def number_in_text(text: str) -> int | float | None:
    """The number ``text`` spells (as Python's ``int``, else ``float``, reads it: surrounding
    spaces, ``nan`` and ``inf`` included), or None.

    ASCII only, without underscores: Python also reads ``1_000`` and other scripts' digits,
    which were numbers in a CSV file and words in a JSON one."""
    if not text.isascii() or "_" in text:
        return None
    if text.isdigit():
        return _integer_in_text(text)
    # Then float(): a raised exception is what a cell costs (int() first failed on every
    # decimal, and both on every word: 1.7 and 2.5 µs a cell, against 0.2 for an integer).
    try:
        number = float(text)
    except ValueError:
        return None
    # Where float() reads it, int() does exactly when it is digits with one sign at most.
    return _integer_in_text(text) if text.strip().lstrip("+-").isdigit() else number


def _integer_in_text(text: str) -> int | float:
    """``int(text)`` for digits (a sign and spaces around them allowed), or the infinity
    of that sign past Python's limit on the digits an integer is read from (4,300 by
    default): such a number lies far past the float range, where every reader takes an
    integer as infinite, and ``int()`` would raise instead."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def finite_number_in_text(text: str) -> float | None:
    """The finite number ``text`` spells, as a float; None for a word, and for ``nan``,
    ``inf`` and numbers past the float range: how a string is read where a number belongs
    (a numeric feature of a model, a numeric column of a lookup table)."""
    number = number_in_text(text)
    if number is None:
        return None
    x = as_number(number)
    return x if math.isfinite(x) else None


def csv_value(text: str | None) -> Any:
    if csv_text(text) is None:
        return None
    number = number_in_text(text)
    return text if number is None else number


def _csv_structured(text: str | None) -> Any:
    """A CSV cell of SwarmPilot's structured form: the JSON list of ``{param_name, val}``
    pairs that a JSON trace holds (text that is no JSON stays text, which the form refuses)."""
    if csv_text(text) is None:
        return None
    try:
        return _json_loads(text)
    except orjson.JSONDecodeError:
        return text


_CSV_READERS: dict[str, Callable[[str | None], Any]] = {
    **dict.fromkeys(_IDENTITY_COLUMNS, csv_text), "input_feature": _csv_structured}


# --------------------------------------------------------------------------- columnar table


# A field that most rows hold is stored densely, a gap as NaN; one that few rows hold keeps
# its values and their row numbers only. Gaps are padded while the padding stays within
# this many slots more than twice the values held, so either way a column costs a few
# times the values it holds, never rows times fields.
DENSE_SLACK = 64


@dataclass(slots=True)
class Column:
    """One field's values across all rows: numbers, strings, or both (then categorical).

    The arrays hold one entry per stored value: every row's (gaps as NaN) while ``at_rows``
    is None, else the rows in ``at_rows`` only. The accessors spread them over all rows.
    """

    numbers: array = field(default_factory=lambda: array("d"))
    codes: array | None = None  # int32 codes into `vocab`; -1 where the value was not a string
    vocab: dict[str, int] = field(default_factory=dict)
    booleans: array | None = None  # 1 where the value was true or false (a feature reads it as 1 or 0)
    at_rows: array | None = None  # int64 row of each stored value, once the column is sparse
    n_rows: int = 0  # the table's rows (set by finish)
    padded: int = 0  # gap slots padded while dense
    spelled: np.ndarray | None = None  # spelled_numbers(), once worked out for the whole vocabulary
    # The rows whose value was a list or an object (no feature value: see nested_rows).
    nested_at: array | None = None

    def _skip_to(self, row: int) -> None:
        """Make the next stored value row ``row``'s: pad the gap, or turn sparse."""
        stored = len(self.numbers)
        gap = row - stored
        if stored + gap <= 2 * (stored - self.padded) + DENSE_SLACK:
            self.numbers.extend([math.nan] * gap)
            if self.codes is not None:
                self.codes.extend([-1] * gap)
            if self.booleans is not None:
                self.booleans.extend([0] * gap)
            self.padded += gap
        else:
            self.at_rows = array("q", range(stored))

    def append(self, row: int, value: Any) -> None:
        """Store ``value`` as row ``row``'s (rows come in increasing order)."""
        if self.at_rows is None and row != len(self.numbers):
            self._skip_to(row)
        if self.at_rows is not None:
            self.at_rows.append(row)
        if isinstance(value, bool):
            if self.booleans is None:
                self.booleans = array("b", [0] * len(self.numbers))
            self.booleans.append(1)
        elif self.booleans is not None:
            self.booleans.append(0)
        if isinstance(value, (int, float)):  # booleans too
            self.numbers.append(as_number(value))
            if self.codes is not None:
                self.codes.append(-1)
        elif isinstance(value, str):
            if self.codes is None:
                self.codes = array("i", [-1] * len(self.numbers))
            self.numbers.append(math.nan)
            self.codes.append(self.vocab.setdefault(value, len(self.vocab)))
        else:  # None, lists, objects: no number nor text
            if value is not None:  # (noted: a list or an object is no missing value, nor a feature's)
                if self.nested_at is None:
                    self.nested_at = array("q")
                self.nested_at.append(row)
            self.numbers.append(math.nan)
            if self.codes is not None:
                self.codes.append(-1)

    def finish(self, n_rows: int) -> None:
        """The table has ``n_rows`` rows: the rows after the last stored value are gaps."""
        if self.at_rows is None and len(self.numbers) < n_rows:
            self._skip_to(n_rows)
        self.n_rows = n_rows

    @property
    def is_categorical(self) -> bool:
        return self.codes is not None

    def _spread(self, stored: np.ndarray, gap: Any) -> np.ndarray:
        """Stored values over every row, ``gap`` where a row has none (always a new array)."""
        if self.at_rows is None:
            return stored if stored.flags.owndata else stored.copy()  # a view of the buffer: copied
        out = np.full(self.n_rows, gap, dtype=stored.dtype)
        out[np.frombuffer(self.at_rows, dtype=np.int64)] = stored
        return out

    def as_numeric(self, spelled: bool = False) -> np.ndarray:
        """Each row's number (NaN where it holds none); with ``spelled``, a string that spells
        a finite number (``"8"``, ``"12.5"``) is that number too."""
        out = self._spread(np.frombuffer(self.numbers, dtype=np.float64), math.nan)
        if spelled and self.codes is not None:
            codes = self.code_array()
            has = codes >= 0
            out[has] = self.spelled_numbers()[codes[has]]
        return out

    def spelled_numbers(self) -> np.ndarray:
        """Per string of ``vocab``, in code order, the finite number it spells, else NaN
        (worked out once per vocabulary: an identifier column holds a string per row)."""
        if self.spelled is None or len(self.spelled) != len(self.vocab):
            self.spelled = np.array([np.nan if (x := finite_number_in_text(s)) is None else x for s in self.vocab],
                                    dtype=np.float64)
        return self.spelled

    def code_array(self) -> np.ndarray:
        """Each row's code into ``vocab``; -1 where it holds no string."""
        if self.codes is None:
            return np.full(self.n_rows, -1, dtype=np.int32)
        return self._spread(np.frombuffer(self.codes, dtype=np.int32), -1)

    def boolean_rows(self) -> np.ndarray:
        """Where the value was a boolean."""
        if self.booleans is None:
            return np.zeros(self.n_rows, dtype=bool)
        return self._spread(np.frombuffer(self.booleans, dtype=np.int8).astype(bool), False)

    def nested_rows(self) -> np.ndarray:
        """Where the value was a list or an object."""
        out = np.zeros(self.n_rows, dtype=bool)
        if self.nested_at is not None:
            out[np.frombuffer(self.nested_at, dtype=np.int64)] = True
        return out

    def missing_rows(self) -> np.ndarray:
        """Where the row had no value: neither a number nor a string (absent, null, a list)."""
        out = np.isnan(np.frombuffer(self.numbers, dtype=np.float64))
        if self.codes is not None:
            out &= np.frombuffer(self.codes, dtype=np.int32) < 0
        return self._spread(out, True)

    def as_strings(self) -> np.ndarray:
        """Values as an object array of strings (None where missing)."""
        nums = np.frombuffer(self.numbers, dtype=np.float64)
        out = np.full(len(nums), None, dtype=object)
        if self.codes is not None:
            codes = np.frombuffer(self.codes, dtype=np.int32)
            inverse = np.array(list(self.vocab), dtype=object)
            has = codes >= 0
            out[has] = inverse[codes[has]]
        else:
            has = np.zeros(len(nums), dtype=bool)
        numeric = ~has & np.isfinite(nums)
        out[numeric] = [format_number(v) for v in nums[numeric]]
        return self._spread(out, None)

    def take(self, rows: np.ndarray) -> "Column":
        """The column of ``rows`` (increasing), numbered from 0.

        Each group of a ``group_by`` split takes its rows: the cost follows the group's rows
        (or a sparse column's values, where fewer), never the table's.
        """
        if self.at_rows is None:
            keep, new_rows = rows, None
        else:
            at = np.frombuffer(self.at_rows, dtype=np.int64)
            if len(at) <= len(rows):  # each stored value's place among the rows
                pos = np.searchsorted(rows, at)
                hit = pos < len(rows)
                hit[hit] = rows[pos[hit]] == at[hit]
                keep, new_pos = np.flatnonzero(hit), pos[hit]
            else:  # each row's place among the stored values
                pos = np.searchsorted(at, rows)
                hit = pos < len(at)
                hit[hit] = at[pos[hit]] == rows[hit]
                keep, new_pos = pos[hit], np.flatnonzero(hit)
            new_rows = array("q", new_pos.astype(np.int64).tobytes())
        new = Column(numbers=array("d", np.frombuffer(self.numbers, dtype=np.float64)[keep].tobytes()),
                     vocab=self.vocab, at_rows=new_rows, n_rows=len(rows), spelled=self.spelled)
        if self.codes is not None:
            new.codes = array("i", np.frombuffer(self.codes, dtype=np.int32)[keep].tobytes())
        if self.booleans is not None:
            new.booleans = array("b", np.frombuffer(self.booleans, dtype=np.int8)[keep].tobytes())
        if self.nested_at is not None:
            at = np.frombuffer(self.nested_at, dtype=np.int64)
            pos = np.searchsorted(rows, at)
            hit = pos < len(rows)
            hit[hit] = rows[pos[hit]] == at[hit]
            new.nested_at = array("q", pos[hit].astype(np.int64).tobytes())
        return new


# Integers of magnitude up to this are exact as floats, and written back as they were.
_EXACT_INTEGERS = 2**53


@dataclass(slots=True)
class IdentityColumn(Column):
    """An identity key's column: an integer a float cannot hold exactly is kept as its digits,
    the name it gives its model (a version 20251208123456789012 named the model
    ``20251208123456790528``, the float's digits), as a CSV file's cell is."""

    def append(self, row: int, value: Any) -> None:
        if value.__class__ is int and not -_EXACT_INTEGERS <= value <= _EXACT_INTEGERS:
            try:
                float(value)
            except OverflowError:  # past the float range: infinite, as in every format
                pass
            else:
                value = str(value)
        Column.append(self, row, value)


def format_number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def as_number(v: Any) -> float:
    """A value as a float: numbers and booleans; NaN for anything else.

    An integer past the float range (the CSV and json readers keep every digit) is infinite.
    """
    if isinstance(v, (int, float)):
        try:
            return float(v)
        except OverflowError:
            return math.inf if v > 0 else -math.inf
    return math.nan


def timestamp_number(v: Any) -> float:
    """A trace's timestamp as a number: a number as it is (a boolean too, which the callers
    refuse), a string that spells a finite number (``"1795835266.5"``) that number, and an
    ISO 8601 date and time (``2026-11-28T03:07:46.369``, ``2026-11-28 03:07:46.369999886``:
    pandas writes datetimes so in CSV and in JSON with ``date_format="iso"``) its seconds
    since the Unix epoch, UTC where it names no offset; NaN for anything else."""
    if isinstance(v, str):
        number = finite_number_in_text(v)
        if number is not None:
            return number
        return _iso_seconds(v.strip())
    return as_number(v)


# The seconds of a leap second (23:59:60 UTC, or as another offset writes it), which datetime
# cannot hold: read as the second after 23:59:59, as a Unix clock reads it (the next day's
# first), so that a trace logged in one still has its time.
_LEAP_SECOND = re.compile(r"(?<=[T ]\d\d:\d\d:)60(?=$|[.,]\d|[Zz+-])")


def _iso_seconds(text: str) -> float:
    # A date alone (2026-11-28) is a day, not a time a task started: no timestamp.
    if len(text) < 13 or not text[:4].isdigit() or text[4:5] != "-":
        return math.nan
    try:
        when, leap = datetime.fromisoformat(text), 0.0
    except ValueError:
        try:
            when, leap = datetime.fromisoformat(_LEAP_SECOND.sub("59", text, count=1)), 1.0
        except ValueError:
            return math.nan
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp() + leap


# A number from 1e8 to 1e10 is a Unix time in seconds (1973 to 2286), and so is one in the
# same span times 1e3, 1e6 or 1e9 in milliseconds, microseconds or nanoseconds: one instant
# in two of these units is read as one (an ISO date and time reads in seconds).
EPOCH_SPAN = (1e8, 1e10)
EPOCH_UNITS = (1.0, 1e3, 1e6, 1e9)


def epoch_units(t: np.ndarray) -> np.ndarray:
    """Per value, the unit (per second: 1, 1e3, 1e6, 1e9) in which it is a Unix time of
    :data:`EPOCH_SPAN`; NaN where none."""
    t = np.asarray(t, dtype=np.float64)
    out = np.full(t.shape, np.nan)
    for unit in EPOCH_UNITS:
        out[(t >= EPOCH_SPAN[0] * unit) & (t < EPOCH_SPAN[1] * unit)] = unit
    return out


def epoch_unit_of(t: np.ndarray) -> float | None:
    """The unit most of the Unix times among ``t`` are in (the smallest of those as many); None
    where none is one."""
    units = epoch_units(t)
    counts = [int((units == u).sum()) for u in EPOCH_UNITS]
    return EPOCH_UNITS[counts.index(max(counts))] if max(counts) else None


def timestamp_in(v: Any, unit: float | None) -> float:
    """:func:`timestamp_number` of ``v``, a Unix time in another of :data:`EPOCH_UNITS` (an ISO
    date and time, in seconds) moved to ``unit`` where one is given."""
    t = timestamp_number(v)
    if unit is None or t != t:
        return t
    if isinstance(v, str) and finite_number_in_text(v) is None:
        own: float | None = 1.0  # an ISO date and time
    else:  # (in plain Python: a single prediction reads one)
        own = next((u for u in EPOCH_UNITS if EPOCH_SPAN[0] * u <= t < EPOCH_SPAN[1] * u), None)
    return t if own is None or own == unit else t * (unit / own)


def timestamps(table: "TraceTable", name: str, unit: float | None = None) -> np.ndarray:
    """:func:`timestamp_number` of column ``name`` for every row of ``table`` (NaN where none).

    Unix times (see :data:`EPOCH_UNITS`) are moved to ``unit``, by default the one most of the
    column's numbers are in (none: ISO dates and times stay in seconds): an ISO date and time
    among milliseconds since the epoch read as a time 1,000 times older, and so first.
    """
    col = table.columns[name]
    out = col.as_numeric(spelled=True)  # numbers, and strings that spell one (read once per string)
    own = epoch_units(out)
    if unit is None:
        unit = epoch_unit_of(out)
    if col.is_categorical:
        codes = col.code_array()
        dated = (codes >= 0) & np.isnan(out)
        if dated.any():
            seconds = np.array([_iso_seconds(s.strip()) for s in col.vocab], dtype=np.float64)
            out[dated] = seconds[codes[dated]]
            own[dated & np.isfinite(out)] = 1.0
    if unit is not None:
        moved = np.isfinite(own) & (own != unit)
        out[moved] *= unit / own[moved]
    # A boolean is no time (true read as the time 1 made its task the oldest: a first run, and
    # the first row in training), as a prediction's is refused (ShapeHistory.time_problem).
    out[col.boolean_rows()] = math.nan
    return out


def category_text(v: Any) -> str:
    """The category a value stands for, as training reads it: ``3``, ``3.0`` and ``"3"`` are one."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, (int, float)):
        try:
            if math.isfinite(v):
                return format_number(float(v))
        except OverflowError:  # an integer past the float range (the CSV and json readers keep every digit)
            pass
    return str(v)


# Columns cost what their values do (see Column), so the bounds are on values and fields:
# MAX_TRACE_VALUES stored values are 2 GB of numbers (a dense file within the default 512
# MB upload limit holds fewer), and each field costs a column's few hundred bytes however
# few values it holds (a file whose every row names a field of its own).
MAX_TRACE_VALUES = 256 * 1024 * 1024
MAX_TRACE_FIELDS = 65_536


@dataclass
class TraceTable:
    """Traces read column by column; ``columns`` keeps first-seen order."""

    columns: dict[str, Column]
    n_rows: int

    @classmethod
    def from_traces(
        cls, traces: Iterable[Any], progress: Callable[[int], None] | None = None
    ) -> "TraceTable":
        columns: dict[str, Column] = {}
        n = 0
        for i, raw in enumerate(traces):
            trace = raw if isinstance(raw, dict) and "input_feature" not in raw else _normalize_at(raw, "traces", f"item {i}")
            for key, value in trace.items():
                col = columns.get(key)
                if col is None:
                    if len(columns) >= MAX_TRACE_FIELDS:
                        raise TraceError(f"item {i}: the traces name more than {MAX_TRACE_FIELDS:,} different fields")
                    col = columns[key] = IdentityColumn() if key in _IDENTITY_COLUMNS else Column()
                col.append(n, value)
            n += 1
            if n % 8192 == 0:
                if (stored := sum(len(c.numbers) for c in columns.values())) > MAX_TRACE_VALUES:
                    raise TraceError(f"item {i}: the first {n:,} traces hold {stored:,} values, more than "
                                     f"{MAX_TRACE_VALUES:,}")
                if progress is not None:
                    progress(8192)
        for col in columns.values():
            col.finish(n)
        if (stored := sum(len(c.numbers) for c in columns.values())) > MAX_TRACE_VALUES:
            raise TraceError(f"the traces hold {stored:,} values, more than {MAX_TRACE_VALUES:,}")
        if progress is not None:
            progress(n % 8192)
        return cls(columns=columns, n_rows=n)

    @classmethod
    def from_file(cls, path: Path | str, progress: Callable[[int], None] | None = None,
                  source: str | None = None) -> "TraceTable":
        return cls.from_traces(iter_trace_file(path, source), progress=progress)

    def __len__(self) -> int:
        return self.n_rows

    def numeric(self, name: str) -> np.ndarray:
        return self.columns[name].as_numeric()

    def strings(self, name: str) -> np.ndarray:
        return self.columns[name].as_strings()

    def take(self, rows: np.ndarray) -> "TraceTable":
        """A new table holding only ``rows``, in increasing order (used to split by ``group_by``)."""
        rows = np.asarray(rows, dtype=np.int64)
        return TraceTable(columns={name: col.take(rows) for name, col in self.columns.items()}, n_rows=len(rows))


def read_json_lines(data: bytes, usable: Callable[[Any], bool]) -> list[Any]:
    """The records of a JSONL log that ``usable`` accepts; a line torn by a crash is skipped."""
    out = []
    for line in data.splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if usable(record):
            out.append(record)
    return out


def dumps_json(obj: Any, option: int = 0) -> bytes:
    """``orjson.dumps``, with integers beyond 64 bits (which orjson cannot write) as :func:`json_ints` makes them."""
    try:
        return orjson.dumps(obj, option=option)
    except TypeError:  # orjson: "Integer exceeds 64-bit range"
        return orjson.dumps(json_ints(obj), option=option)


def json_ints(v: Any) -> Any:
    """``v`` with integers orjson cannot write (beyond 64 bits) as the nearest float.

    Such integers come from CSV and pretty-printed JSON trace files (their readers keep
    every digit) and from Python callers. The model, and a lookup request (orjson reads
    them as floats), see them as floats, so a float finds its record by value and by
    task id alike. One past the float range becomes its digits as a string.
    """
    if v.__class__ is int:
        if -(1 << 63) <= v < (1 << 64):
            return v
        try:
            return float(v)
        except OverflowError:
            return str(v)
    if v.__class__ is dict:
        return {k: json_ints(x) for k, x in v.items()}
    if v.__class__ is list:
        return [json_ints(x) for x in v]
    return v
