"""Table names and formats: what a table file may be called and what its records hold.

:func:`table_format` reads a table's format from its file name and :func:`check_table_name`
checks a name a request gives; the constants name the formats (read and written) and the
keys and columns of a record, which the modules that read and write tables share.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import InvalidInput, shown
from ..identity import has_control_characters
from ..traces import TRACE_FILE_FORMATS, TRACE_FILE_KINDS, trace_file_format

TABLE_FORMATS = TRACE_FILE_FORMATS  # a table is named as a trace file is
WRITABLE_FORMATS = ("json", "csv")
# The endings of a table generation writes, in messages (the endings it reads: TRACE_FILE_KINDS).
WRITABLE_TABLE_KINDS = ".json or .csv (optionally .gz): a table is written as JSON or CSV"
# Keys of a record that are not features (flat-feature records put features beside them).
RECORD_KEYS = frozenset({
    "status", "model_type", "quantiles", "quantile_predictions", "expect", "error", "interval",
    "confidence_level", "model_info", "model_version", "features", "message", "source", "match",
    "distance", "table", "shape_features", "stale", "kind_mismatch", "knot_levels", "knot_predictions",
})
# Which features make an input shape (the model's, where it derives first_of_shape): with
# it a lookup tells a shape the model saw (answered as a repeat) from one it never saw (as
# a first run), as the model does. A record key (JSON) or a column holding a JSON list (CSV).
SHAPE_FEATURES = "shape_features"
CSV_PREDICTION_COLUMNS = ("status", "model_version", "expect", "error", "confidence_level", "interval_low", "interval_high")
QUANTILE_PREFIX = "quantile_"
# A CSV table's columns of the further levels its records store (JSON: ``knot_levels`` and
# ``knot_predictions``), ``knot_<level>``; a column so named whose suffix is no level
# strictly between 0 and 1 is a feature (tables made before the knots may have one).
KNOT_PREFIX = "knot_"


def knot_column_level(name: str) -> float | None:
    """The level of a CSV table's ``knot_<level>`` column (None: the column is no knot's)."""
    if not name.startswith(KNOT_PREFIX):
        return None
    try:
        level = float(name[len(KNOT_PREFIX):])
    except ValueError:
        return None
    return level if 0.0 < level < 1.0 else None


def table_format(name: str) -> str | None:
    """``json``, ``jsonl`` or ``csv`` from a table file name longer than its suffix (``.gz`` allowed), else None."""
    parsed = trace_file_format(name, stem_required=True)
    return parsed.format if parsed else None


def check_table_name(name: Any, field: str = "lookup_table_name", writing: bool = False) -> str:
    """A table name is a plain file name in the table directory, never a path (``writing``:
    one that generation can write, which is JSON or CSV)."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput(f"{field} must be a non-empty file name", field=field)
    if name != name.strip():  # " r.json" is not "r.json": read as one, it replaced that table
        raise InvalidInput(f"{field} {shown(name)} must not begin or end with white space", field=field)
    try:
        # Strictly UTF-8: a byte that is not (surrogate-escaped from a command line's argument)
        # makes a file no request, nor a JSON answer, can name.
        name.encode("utf-8")
        size = len(os.fsencode(name))
    except UnicodeEncodeError:
        raise InvalidInput(f"{field} {shown(name)} is not a valid file name (it holds a lone surrogate)", field=field) from None
    if size > 255:  # the file system's limit is on the encoded name, not on characters
        raise InvalidInput(f"{field} is longer than 255 bytes", field=field)
    if "/" in name or "\\" in name or name.startswith(".") or has_control_characters(name):
        raise InvalidInput(
            f"{field} {shown(name)} must be a file name in the table directory, not a path "
            "(no '/', '\\', leading '.', control or invisible format characters)",
            field=field,
        )
    fmt = table_format(name)
    if fmt is None or (writing and fmt not in WRITABLE_FORMATS):
        endings = WRITABLE_TABLE_KINDS if writing else TRACE_FILE_KINDS
        raise InvalidInput(f"{field} {shown(name)} must end in {endings}", field=field)
    return name
