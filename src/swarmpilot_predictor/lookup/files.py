"""Table files: reading their records, and writing tables (:func:`generate_table`).

The readers yield a file's records, located (``record 3``, ``line 7``), from a JSON
array, JSON lines or CSV; :class:`~.table.LookupTable` builds itself from them. The
writers stream records into a temporary file renamed into place when complete, and
:func:`generate_table` predicts a file of traces in chunks into one.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import operator
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from ..atomic import sync_folder, temp_beside
from ..errors import InvalidInput, PayloadTooLarge, shown, storage_error
from ..features import FIRST_OF_SHAPE
from ..identity import IDENTITY_KEYS, ModelIdentity, identity_conflicts
from ..traces import (
    ID_KEYS,
    TIMESTAMP_KEYS,
    NotAnArray,
    TABLE_RESERVED_KEYS,
    TraceError,
    blank_cells,
    content_lines,
    csv_header,
    csv_problem,
    csv_reader,
    csv_value,
    dumps_json,
    iter_json_array,
    line_json_problem,
    not_utf8,
    not_utf8_in,
    text_view,
)
from .names import CSV_PREDICTION_COLUMNS, KNOT_PREFIX, QUANTILE_PREFIX, SHAPE_FEATURES, WRITABLE_FORMATS, knot_column_level
from .quantiles import KNOT_MOST, choose_knot_levels, round_significant

GENERATION_CHUNK = 8192
# A table's id keys, in the order its records hold them: the same bytes from the same traces
# whatever the process's string hashing (ID_KEYS, a set, is iterated in its own order).
_ID_COLUMNS = ("task_id", "req_id", "request_id", "model_id")


def iter_json_records(raw: IO[bytes], name: str, line_mode: bool = True) -> Iterator[tuple[str, Any]]:
    try:
        for i, rec in enumerate(iter_json_array(raw, name, line_mode)):
            yield f"record {i}", rec
    except NotAnArray:
        raise TraceError(f"{name}: a .json lookup table is a JSON array of records") from None


def iter_jsonl_records(raw: IO[bytes], name: str) -> Iterator[tuple[str, Any]]:
    try:
        for lineno, line in content_lines(raw):
            try:
                yield f"line {lineno}", orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                if said := not_utf8_in(line):  # (orjson says "surrogates not allowed")
                    raise TraceError(f"{name}: line {lineno}: {said}") from None
                raise TraceError(f"{name}: line {lineno}: not a valid JSON record ({line_json_problem(exc)}); "
                                 "the file may be truncated") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise TraceError(f"{name}: cannot read the file ({exc}); it may be truncated") from None


def iter_csv_records(raw: IO[bytes], name: str) -> Iterator[tuple[str, Any]]:
    with text_view(raw) as text:
        yield from _csv_records(text, name)



# An integer written plainly (no sign but minus, no leading zero): a CSV id cell, or a queried
# task_id string, that spells one (see _csv_id and LookupTable's task ids).
PLAIN_INTEGER = re.compile(r"-?[1-9][0-9]*")


def _csv_id(cell: str) -> Any:
    """An id cell of a CSV table as a JSON table stores the trace's value: an integer beyond
    64 bits as the nearest float (orjson reads it so in a request, and a JSON table writes it
    so), where the CSV keeps every digit, and the trace did not find its record. (Others
    keep their text; a request's integer finds such a cell by its digits, see
    ``LookupTable``'s task ids.)"""
    if len(cell) > 19 and PLAIN_INTEGER.fullmatch(cell):
        try:
            number = int(cell)
        except ValueError:  # more digits than int() reads (4,300), a ValueError that ended the load
            return cell
        if not -(2**63) <= number < 2**64:
            try:
                return float(number)
            except OverflowError:  # past the float range: its digits, as a JSON table keeps it
                pass
    return cell

def _csv_records(text: IO[str], name: str) -> Iterator[tuple[str, Any]]:
    try:
        reader = csv_reader(text)
        row_line = 1
        header = next(reader, None)
        if not header:
            raise TraceError(f"{name}: the CSV table has no header")
        header = csv_header(header, name)
        q_cols: list[tuple[float, int]] = []
        for i, h in enumerate(header):
            if h.startswith(QUANTILE_PREFIX):
                try:
                    q_cols.append((float(h[len(QUANTILE_PREFIX):]), i))
                except ValueError:
                    raise TraceError(f"{name}: column {shown(h)} is not quantile_<level>") from None
        if not q_cols:
            raise TraceError(f"{name}: the CSV table has no quantile_<level> columns")
        q_cols.sort()
        levels = [lv for lv, _ in q_cols]
        q_idx = [i for _, i in q_cols]
        k_cols = sorted((lv, i) for i, h in enumerate(header) if (lv := knot_column_level(h)) is not None)
        knot_levels = [lv for lv, _ in k_cols]
        k_idx = [i for _, i in k_cols]
        pos = {h: i for i, h in enumerate(header)}
        for needed in ("expect", "error"):
            if needed not in pos:
                raise TraceError(f"{name}: the CSV table has no {needed!r} column")
        feat = [(h, i) for i, h in enumerate(header) if not _csv_column_taken(h) and h not in TABLE_RESERVED_KEYS]
        # A feature's cells repeat (token counts, a dtype): each text is read once a column.
        feat_memo: list[dict[str, Any]] = [{} for _ in feat]
        q_cells, k_cells = _cells_getter(q_idx), _cells_getter(k_idx)
        i_shape = pos.get(SHAPE_FEATURES)
        shape_cells: dict[str, Any] = {}  # the same cell on every row: parsed once
        ids = [(h, pos[h]) for h in ID_KEYS if h in pos]
        ident = [(k, pos.get(k)) for k in IDENTITY_KEYS]
        info_keys = ("type", "name", "hardware", "software_name", "software_version")
        i_exp, i_err = pos["expect"], pos["error"]
        i_status, i_lo, i_hi, i_cl, i_ver = (pos.get(k) for k in ("status", "interval_low", "interval_high", "confidence_level", "model_version"))
        width = len(header)
        row_line = reader.line_num + 1  # where the row being read starts
        for row in reader:
            row_line = reader.line_num + 1  # the next one's
            if blank_cells(row):  # a blank line, or a spreadsheet's empty row
                continue
            where = f"line {reader.line_num}"  # the physical line: a quoted cell may span several
            if len(row) > width and blank_cells(row[width:]):
                row = row[:width]  # a spreadsheet's empty cells past the header
            if len(row) != width:
                raise TraceError(f"{name}: {where}: {len(row)} fields where the header has {width}; the file may be truncated")
            try:
                rec: dict[str, Any] = {
                    "status": (row[i_status] or "success") if i_status is not None else "success",
                    "quantiles": levels,
                    "quantile_predictions": list(map(float, q_cells(row))),
                    "expect": float(row[i_exp]),
                    "error": float(row[i_err]),
                    "model_info": {ik: (row[i] if i is not None else None) for ik, (_, i) in zip(info_keys, ident)},
                    "features": {h: _memo_value(memo, row[i]) for (h, i), memo in zip(feat, feat_memo)},
                }
                if i_lo is not None and i_hi is not None and i_cl is not None and row[i_lo] != "":
                    rec["interval"] = [float(row[i_lo]), float(row[i_hi])]
                    rec["confidence_level"] = float(row[i_cl])
                if i_ver is not None and row[i_ver] != "":
                    rec["model_version"] = _csv_version(row[i_ver])
                if k_idx:
                    rec["knot_levels"] = knot_levels
                    rec["knot_predictions"] = list(map(float, k_cells(row)))
            except ValueError as exc:
                if _rec_status_failed(row, i_status):
                    yield where, {"status": "error"}
                    continue
                raise TraceError(f"{name}: {where}: a prediction column is not a number ({exc})") from None
            for h, i in ids:
                if row[i] != "":
                    rec[h] = _csv_id(row[i])
            if i_shape is not None and (cell := row[i_shape]) != "":
                if cell not in shape_cells:
                    try:
                        shape_cells[cell] = orjson.loads(cell)
                    except orjson.JSONDecodeError:
                        shape_cells[cell] = cell  # refused as not a list, naming the line
                rec[SHAPE_FEATURES] = shape_cells[cell]
            yield where, rec
    except csv.Error as exc:
        # (an unclosed quote took every row after it into one cell, without a word, before strict)
        raise TraceError(f"{name}: line {row_line}: {csv_problem(exc, '; the file may be truncated')}") from None
    except UnicodeDecodeError as exc:  # a latin-1 byte, say: named, as in a CSV trace file
        raise TraceError(f"{name}: {not_utf8(exc)}") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise TraceError(f"{name}: cannot read the CSV table ({exc}); it may be truncated") from None


def _csv_version(cell: str) -> Any:
    """A ``model_version`` cell as a JSON table holds the number: ``3.0`` (a whole number as a
    spreadsheet or pandas writes a column with empty cells) is 3.0, which the records' check
    reads as version 3, as in JSON; a cell that is no whole number is left for that check to
    refuse (it was "a prediction column is not a number", of ``3.0`` too). Digits past what
    Python reads an integer from (4,300) are the infinity of their sign, as a JSON table reads
    them (the message was Python's, "Exceeds the limit (4300 digits) ... sys.set_int_max_str_digits()")."""
    try:
        return int(cell)
    except ValueError:
        pass
    try:
        return float(cell)
    except ValueError:
        return cell


def _cells_getter(idx: list[int]) -> Callable[[list[str]], Sequence[str]]:
    """The cells of a row at ``idx``, taken in C (itemgetter gives one cell bare)."""
    if len(idx) == 1:
        only = idx[0]
        return lambda row: (row[only],)
    return operator.itemgetter(*idx) if idx else (lambda row: ())


_MEMO_MOST = 4096  # texts remembered a column (a column of ids reads each once anyway)


def _memo_value(memo: dict[str, Any], cell: str) -> Any:
    value = memo.get(cell, memo)  # (the memo itself: no value is)
    if value is memo:
        value = csv_value(cell)
        if len(memo) < _MEMO_MOST:
            memo[cell] = value
    return value


def _rec_status_failed(row: list[str], i_status: int | None) -> bool:
    return i_status is not None and row[i_status] not in ("", "success")


# --------------------------------------------------------------------------- writing


class _TableWriter:
    """Writes to a temporary file beside the target; ``commit`` renames it into place."""

    def __init__(self, path: Path):
        self.path = path
        # Its folder is there (the tables folder, or the CLI's --output folder, made by the CLI):
        # a tables folder gone under the service (an unmounted volume) is not made again.
        fd, tmp = temp_beside(path)
        self.tmp = Path(tmp)
        raw = os.fdopen(fd, "wb")
        self._raw = raw
        # Level 1: a table of 300,000 LLM traces is 67 MiB (273 plain), generated at about
        # 50,000 traces a second (62,000 plain); level 5, used until 2026-12-06: 62 MiB at 27,000.
        self.fh: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) if path.name.lower().endswith(".gz") else raw
        self.rows = 0

    def commit(self) -> None:
        self.finish()
        if self.fh is not self._raw:
            self.fh.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self.tmp, self.path)
        sync_folder(self.path.parent)

    def abort(self) -> None:
        try:
            if self.fh is not self._raw:
                self.fh.close()
            self._raw.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def finish(self) -> None:  # pragma: no cover - overridden
        pass


class JsonTableWriter(_TableWriter):
    """A JSON array with one record per line (so readers can stream it)."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.fh.write(b"[\n")

    def write(self, records: list[bytes]) -> None:
        if not records:
            return
        if self.rows:
            self.fh.write(b",\n")
        self.fh.write(b",\n".join(records))
        self.rows += len(records)

    def finish(self) -> None:
        self.fh.write(b"\n]\n" if self.rows else b"]\n")


class CsvTableWriter(_TableWriter):
    def __init__(self, path: Path, header: list[str]):
        super().__init__(path)
        self._text = io.StringIO()
        self.csv = csv.writer(self._text)
        # For rows with a text cell that starts with a space: the reader skips spaces after a
        # comma (hand-written headers), so such a cell is quoted, as this writer quotes text.
        self.csv_quoting_text = csv.writer(self._text, quoting=csv.QUOTE_NONNUMERIC)
        self.fh.write(self._encode([header]))
        # A cell no trace holds (letters and digits: the csv module writes it as it is),
        # which write_marked replaces.
        self.marker = "M" + uuid.uuid4().hex

    def write_marked(self, rows: list[Sequence[Any]], tails: list[str]) -> list[tuple[int, str]] | None:
        """Write ``rows``, each ending with the cell :attr:`marker`, that cell replaced by the
        text of the row's ``tails`` (cells already written); as :meth:`write` returns (no row
        left out: a chunk with one to leave out is not written here). None, writing nothing,
        where the marker is found elsewhere than at the rows' ends or a cell is not valid
        UTF-8 (which :meth:`write` leaves out row by row)."""
        parts = self._text_of(rows).split(self.marker)
        if len(parts) != len(rows) + 1:
            return None
        out = [parts[0]]
        for tail, part in zip(tails, parts[1:]):
            out += [tail, part]
        try:
            data = "".join(out).encode("utf-8")
        except UnicodeEncodeError:
            return None
        self.fh.write(data)
        self.rows += len(rows)
        return []

    def _text_of(self, rows: list[Sequence[Any]], quote_text: bool = False) -> str:
        self._text.seek(0)
        self._text.truncate()
        (self.csv_quoting_text if quote_text else self.csv).writerows(rows)
        return self._text.getvalue()

    def _encode(self, rows: list[Sequence[Any]], quote_text: bool = False) -> bytes:
        return self._text_of(rows, quote_text).encode("utf-8")

    def write(self, rows: list[Sequence[Any]], quote_text: bool = False) -> list[tuple[int, str]]:
        """Write ``rows`` (``quote_text``: every text cell quoted); return (index, reason) for
        each that cannot be written, which is left out.

        A chunk is encoded whole before anything is written, so a row that cannot be
        (a string with a lone surrogate, which Python's json reads) leaves no part behind.
        """
        try:
            data = self._encode(rows, quote_text)
            bad: list[tuple[int, str]] = []
        except UnicodeEncodeError:
            parts, bad = [], []
            for k, row in enumerate(rows):
                try:
                    parts.append(self._encode([row], quote_text))
                except UnicodeEncodeError as exc:
                    bad.append((k, f"a string is not valid UTF-8: {exc.reason}"))
            data = b"".join(parts)
        self.fh.write(data)
        self.rows += len(rows) - len(bad)
        return bad


def generate_table(
    *,
    traces: Iterable[dict[str, Any]],
    schema,
    model,
    levels: Sequence[float],
    model_info: dict[str, str],
    model_version: int,
    out_path: Path,
    fmt: str,
    confidence_level: float,
    progress: Callable[[int], None] | None = None,
    chunk_size: int = GENERATION_CHUNK,
    max_rows: int = 0,
    knots: int = KNOT_MOST,
) -> dict[str, Any]:
    """Predict every trace in vectorised chunks and stream the records to ``out_path``.

    Each record also stores the model's quantiles at up to ``knots`` further levels (see
    :func:`~.quantiles.choose_knot_levels`; 0: none).

    Memory stays bounded by the chunk size whatever the number of traces.
    Traces that cannot be predicted (a missing feature, say) are left out and
    counted; the table is renamed into place only when every chunk is written.
    More than ``max_rows`` records (0: no limit) is a PayloadTooLarge, and no table.
    """
    t0 = time.perf_counter()
    generation = _TableGeneration(schema, model, levels, model_info, model_version, out_path, fmt, confidence_level, knots)
    try:
        generation.start()
        for chunk in _chunks(traces, chunk_size):
            generation.add(chunk)
            if max_rows and generation.rows > max_rows:
                raise PayloadTooLarge(
                    f"the table would hold more than {max_rows:,} records (PREDICTOR_MAX_TABLE_ROWS; every worker "
                    f"holds a table it answers from in memory): {generation.seen:,} traces read so far; a table "
                    "needs one trace per distinct row of features", field="trace_file")
            if progress is not None:
                progress(len(chunk))
        generation.commit()
    except TraceError as exc:
        generation.abort()
        raise InvalidInput(str(exc), field="trace_file") from None
    except OSError as exc:  # reading the traces raises TraceError: this is the table's own file
        generation.abort()
        raise storage_error(exc, f"lookup table {out_path.name}", f"in {out_path.parent}") from exc
    except BaseException:
        generation.abort()
        raise
    return {
        "status": "successful",
        "path": str(out_path.resolve()),
        "table_name": out_path.name,
        "format": fmt,
        "rows": generation.rows,
        "repeats_added": generation.added_repeats,
        "failed": generation.failed,
        "errors": generation.samples,
        "quantiles": generation.levels,
        "knot_levels": generation.knot_levels or [],
        "confidence_level": confidence_level,
        "model_version": model_version,
        "duration_seconds": time.perf_counter() - t0,
    }


class _TableGeneration:
    """One table being written by :func:`generate_table`: its writer, and what it has counted
    (traces read, traces failed with the first five reasons, repeats added) over the chunks."""

    MAX_SAMPLES = 5

    def __init__(self, schema, model, levels: Sequence[float], model_info: dict[str, str], model_version: int,
                 out_path: Path, fmt: str, confidence_level: float, knots: int = KNOT_MOST):
        if fmt not in WRITABLE_FORMATS:
            raise InvalidInput(f"format must be one of {', '.join(WRITABLE_FORMATS)}", field="format")
        self.names = list(schema.names)
        if fmt == "csv" and (taken := [n for n in self.names if _csv_column_taken(n)]):
            # A CSV table's features are columns beside its own: one named like those could not
            # be read back (a column named twice), or was read as the record's, not a feature.
            raise InvalidInput(f"feature(s) {', '.join(map(shown, taken))} have the name of a CSV table's own column "
                               f"(status, expect, error, message, quantile_<level>, knot_<level>...): make a JSON table",
                               field="format")
        if fmt == "csv" and (spaced := [n for n in self.names if n != n.strip()]):
            # A CSV table's header names are read without the spaces around them (a hand-written
            # 'x, gpu'): a feature ' gpu' was read back as 'gpu', and every lookup of the table
            # failed with "missing required feature 'gpu'".
            raise InvalidInput(f"feature(s) {', '.join(map(shown, spaced))} start or end with whitespace, which a CSV "
                               "table's header does not keep: make a JSON table", field="format")
        self.schema, self.model, self.fmt, self.out_path = schema, model, fmt, out_path
        self.levels = [float(q) for q in levels]
        self.model_version, self.confidence_level = model_version, confidence_level
        # A numeric feature's string is stored as the number the model read it as ("1744" is
        # 1744; a word it read as missing, nothing): stored as given, one string made the whole
        # column categorical, and every trace not among its values found no record.
        self.specs = list(schema.features)
        # A CSV cell that is empty or blank reads back as a missing value, where the model reads
        # a category "" (or " ") as a value: such a record answered the traces that lack the
        # feature ("exact", where the model says "missing required feature"), and none of its own.
        self.blank_unwritable = [s.name for s in self.specs if s.kind == "categorical"] if fmt == "csv" else []
        # With a shape history the prediction also depends on whether the trace was its
        # shape's first run: the record stores the flag it was predicted with, as a feature,
        # so that a lookup tells a first run from a repeat of the same shape.
        self.flagged = schema.history is not None
        self.shape_names = [self.names[j] for j in schema.history.key] if self.flagged else None
        self.shape_cell = orjson.dumps(self.shape_names).decode() if self.flagged else None
        self.info = dict(model_info)
        info = self.info
        self.identity_row = [info["type"], info["name"], info["hardware"], info["software_name"],
                             info["software_version"]]
        self.identity = ModelIdentity(*self.identity_row)
        # Opened by start(), in generate_table's try: a folder gone is a StorageError there.
        self.writer: JsonTableWriter | CsvTableWriter | None = None
        self.id_cols: list[str] | None = None  # a CSV table's: the id keys its first chunk's traces hold
        # The further levels every record stores (see choose_knot_levels): chosen on the first
        # chunk that has a trace to predict, so that all records share them.
        self.knot_levels: list[float] | None = None
        self.knots = knots
        self.seen = self.failed = self.added_repeats = 0
        self.samples: list[str] = []
        self.repeats_stored: set[bytes] = set()  # the feature rows whose repeat answer was added

    def start(self) -> None:
        """Open a JSON table's file (a CSV table's waits for its first chunk: its id columns)."""
        if self.fmt == "json":
            self.writer = JsonTableWriter(self.out_path)

    @property
    def rows(self) -> int:
        return self.writer.rows if self.writer is not None else 0

    def _fail(self, index: int, why: str) -> None:
        self.failed += 1
        if len(self.samples) < self.MAX_SAMPLES:
            self.samples.append(f"trace {index}: {why}")

    def _feature_values(self, t: dict[str, Any]) -> list[Any]:
        return [_as_read(spec, t.get(spec.name)) if spec.kind == "numeric" else t.get(spec.name) for spec in self.specs]

    def add(self, chunk: list[dict[str, Any]]) -> None:
        """Predict a chunk of traces and write their records."""
        start = self.seen
        self.seen += len(chunk)
        X, errors = self.schema.matrix(chunk)
        # A trace whose identity fields name another model is not this model's to
        # answer, as in a prediction (training leaves such traces out too).
        for i, why in enumerate(identity_conflicts(chunk, self.identity) or ()):
            if why is not None and errors[i] is None:
                errors[i] = why
        for name in self.blank_unwritable:
            for i, t in enumerate(chunk):
                v = t.get(name)
                if v.__class__ is str and (not v or v.isspace()) and errors[i] is None:
                    errors[i] = (f"cannot be written as CSV (feature {shown(name)} is the category {shown(v)}, which a "
                                 "CSV table reads back as a missing value: make a JSON table)")
        ok_rows = [i for i, e in enumerate(errors) if e is None]
        for i, e in enumerate(errors):
            if e is not None:
                self._fail(start + i, e)
        if self.id_cols is None:
            self.id_cols = [k for k in _ID_COLUMNS if any(k in t for t in chunk)]
        if not ok_rows:
            return
        good = [chunk[i] for i in ok_rows]
        n_own = len(good)  # the traces' own records; added repeats follow them
        good, Xg = self._with_repeats(good, X[ok_rows])
        dist = self.model.predict_distribution(Xg)
        if self.knot_levels is None:
            self.knot_levels = choose_knot_levels(dist, self.levels, self.confidence_level, most=self.knots)
        if self.fmt == "csv" and self.writer is None:
            self.writer = CsvTableWriter(self.out_path, self.names + [FIRST_OF_SHAPE, SHAPE_FEATURES] * self.flagged
                                         + self.id_cols + list(IDENTITY_KEYS) + list(CSV_PREDICTION_COLUMNS)
                                         + [QUANTILE_PREFIX + repr(q) for q in self.levels]
                                         + [KNOT_PREFIX + repr(q) for q in self.knot_levels])
        answers = _RecordValues(dist, self.levels, self.confidence_level,
                                Xg[:, -1].astype(bool).tolist() if self.flagged else None, self.knot_levels)
        if self.fmt == "json":
            self._write_json(good, n_own, answers, [start + i for i in ok_rows])
        else:
            self._write_csv(good, n_own, answers, [start + i for i in ok_rows])

    def _with_repeats(self, good: list[dict[str, Any]], Xg: np.ndarray) -> tuple[list[dict[str, Any]], np.ndarray]:
        """The traces, and after them the repeats to store of their shapes' first runs.

        A trace predicted as its shape's first run (by its timestamp) whose shape ran in
        training is, asked without a timestamp or a flag, what the model answers as a repeat:
        that answer is stored too (once per row of features), so that a lookup that states no
        flag finds it, as the model would answer. (A shape the model never saw has no repeat
        to store.)
        """
        if not self.flagged:
            return good, Xg
        firsts = np.flatnonzero(Xg[:, -1] == 1.0).tolist()
        X0, _ = self.schema.matrix([{k: v for k, v in good[i].items() if k not in TIMESTAMP_KEYS} for i in firsts])
        extra = []
        for j, i in enumerate(firsts):
            row = X0[j].tobytes()
            if X0[j, -1] == 0.0 and row not in self.repeats_stored:
                self.repeats_stored.add(row)
                extra.append((i, j))
        if not extra:
            return good, Xg
        self.added_repeats += len(extra)
        return good + [good[i] for i, _ in extra], np.concatenate([Xg, X0[[j for _, j in extra]]])

    def _write_json(self, good: list[dict[str, Any]], n_own: int, a: _RecordValues, indexes: list[int]) -> None:
        info, out = self.info, []
        # What every record repeats is written once (about a microsecond a record: a
        # table's knot levels are 24 numbers to format).
        levels, info_json, knot_levels, shape_names = (
            orjson.Fragment(orjson.dumps(v)) for v in (self.levels, info, self.knot_levels, self.shape_names))
        for k, t in enumerate(good):
            rec = {
                "status": "success",
                "model_type": info["type"],
                "quantiles": levels,
                "quantile_predictions": a.quantiles[k],
                "expect": a.mean[k],
                "error": a.std[k],
                "interval": a.interval[k],
                "confidence_level": self.confidence_level,
                "model_info": info_json,
                "model_version": self.model_version,
                "features": dict(zip(self.names, self._feature_values(t))),
            }
            if self.knot_levels:
                rec["knot_levels"] = knot_levels
                rec["knot_predictions"] = a.knots[k]
            if a.first is not None:
                rec["features"][FIRST_OF_SHAPE] = a.first[k]
                rec[SHAPE_FEATURES] = shape_names
            for idk in _ID_COLUMNS if k < n_own else ():  # an added repeat is no trace's
                if idk in t:
                    rec[idk] = t[idk]
            try:
                out.append(dumps_json(rec, orjson.OPT_SERIALIZE_NUMPY))
            except TypeError as exc:  # a string with a lone surrogate, say (Python's json reads one)
                if k < n_own:  # (an added repeat fails with its trace, counted once)
                    self._fail(indexes[k], f"cannot be written as JSON ({exc})")
        self.writer.write(out)  # type: ignore[union-attr]

    def _write_csv(self, good: list[dict[str, Any]], n_own: int, a: _RecordValues, indexes: list[int]) -> None:
        # Each row's cells up to its identity's: features, first-run flag, ids.
        heads = []
        for k, t in enumerate(good):
            feats = [_csv_out(v) for v in self._feature_values(t)]
            if a.first is not None:
                feats += [int(a.first[k]), self.shape_cell]
            heads.append(feats + [_csv_out(t.get(c)) if k < n_own else None for c in self.id_cols or ()]
                         + self.identity_row)
        # The predicted numbers, 30 or more cells a row, are written by orjson for the whole
        # chunk (Python's csv module formatted each float by repr: half a CSV table's
        # generation); the csv module writes the rest of each row, ended by a marker cell that
        # the numbers then replace. orjson's shortest decimals read back as the same floats
        # (0.00001 for 1e-05).
        numbers = a.csv_numbers(self.confidence_level)
        writer: CsvTableWriter = self.writer  # type: ignore[assignment]
        # A category " a100" written bare read back as "a100": that record answered the
        # traces of "a100", and " a100" found none. Such a chunk's text cells are quoted.
        own = len(heads[0]) - len(self.identity_row) if heads else 0  # the identity's cells are every row's
        spaced = any(c.__class__ is str and c[:1].isspace() for c in self.identity_row) or any(
            c.__class__ is str and c[:1].isspace() for head in heads for c in head[:own])
        if numbers is not None and not spaced:
            front = f"success,{self.model_version},"
            if writer.write_marked([head + [writer.marker] for head in heads], [front + n for n in numbers]) is not None:
                return
        quantiles, knots, intervals = a.lists()
        rows = [head + ["success", self.model_version, a.mean[k], a.std[k], self.confidence_level, *intervals[k]]
                + quantiles[k] + knots[k] for k, head in enumerate(heads)]
        for k, reason in writer.write(rows, quote_text=spaced):
            if k < n_own:
                self._fail(indexes[k], f"cannot be written as CSV ({reason})")

    def commit(self) -> None:
        if self.seen == 0:
            raise InvalidInput("the trace file holds no traces", field="trace_file")
        if self.writer is None or self.writer.rows == 0:
            raise InvalidInput(f"none of the {self.seen} trace(s) could be predicted: "
                               f"{self.samples[0] if self.samples else 'unknown reason'}", field="trace_file")
        self.writer.commit()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


class _RecordValues:
    """A chunk's predicted values, a row per record (the writers' input).

    The rows are kept as C-ordered arrays: orjson writes a row of one straight from its
    buffer (``OPT_SERIALIZE_NUMPY``, the same shortest decimals as a Python float), where
    turning a chunk into lists of Python floats first took a quarter of a JSON table's
    generation. The CSV writer, which needs Python values, calls :meth:`lists`.
    """

    def __init__(self, dist, levels: list[float], confidence_level: float, first: list[bool] | None,
                 knot_levels: list[float]):
        self.quantiles = np.ascontiguousarray(dist.quantiles(levels), dtype=np.float64)
        self.knots = (np.ascontiguousarray(round_significant(dist.quantiles(knot_levels)), dtype=np.float64)
                      if knot_levels else np.empty((len(dist), 0)))
        mean, std = dist.mean_std()
        self.mean, self.std = mean.tolist(), std.tolist()
        self.interval = np.ascontiguousarray(dist.interval(confidence_level), dtype=np.float64)
        self.first = first

    def lists(self) -> tuple[list[list[float]], list[list[float]], list[list[float]]]:
        """The quantiles, knots and intervals as lists of Python floats."""
        return self.quantiles.tolist(), self.knots.tolist(), self.interval.tolist()

    def csv_numbers(self, confidence_level: float) -> list[str] | None:
        """Each record's CSV cells from ``expect`` on (expect, error, confidence level, the
        interval's ends, quantiles, knots), comma-separated; None where one is not finite
        (orjson writes null), which the cell-by-cell path writes as Python does."""
        n = len(self.mean)
        block = np.column_stack([self.mean, self.std, np.full(n, float(confidence_level)), self.interval,
                                 self.quantiles, self.knots])
        if n == 0 or not np.isfinite(block).all():
            return None
        text = orjson.dumps(block, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        return text[2:-2].split("],[")


def _csv_column_taken(name: str) -> bool:
    """Whether a CSV table's own columns include ``name`` (so no feature can be named so)."""
    return (name.startswith(QUANTILE_PREFIX) or knot_column_level(name) is not None or name in CSV_PREDICTION_COLUMNS
            or name in ("message", SHAPE_FEATURES))


def _as_read(spec: Any, v: Any) -> Any:
    """A numeric feature's value as the model (``spec``) reads it: a string as
    :meth:`~.features.FeatureSpec.text_value` reads it (nothing for a missing value or a
    word); anything else as it is."""
    if v.__class__ is not str:
        return v
    x = spec.text_value(v)
    return None if math.isnan(x) else x


def _csv_out(v: Any) -> Any:
    if v.__class__ is bool:
        return int(v)
    if isinstance(v, (dict, list)):
        return orjson.dumps(v).decode()
    return v


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    append = chunk.append
    for item in items:
        append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
            append = chunk.append
    if chunk:
        yield chunk
