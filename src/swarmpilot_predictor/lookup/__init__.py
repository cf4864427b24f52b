"""Lookup tables: predictions computed once for a file of traces, answered by matching.

A table is written by :func:`generate_table` (``POST /predict/table/...`` or the
``table`` CLI command) and holds one record per trace in the seed's format::

    {"status": "success", "model_type": .., "quantiles": [..], "quantile_predictions": [..],
     "expect": .., "error": .., "interval": [lo, hi], "confidence_level": .., "model_info": {..},
     "model_version": .., "features": {"input_tokens": 100, ..}, "task_id": ..,
     "knot_levels": [..], "knot_predictions": [..]}

as a JSON array (one record per line) or as CSV (feature columns first, then ids,
identity and predictions; quantiles as ``quantile_<level>`` columns, knots as
``knot_<level>`` ones). The knots are the model's quantiles at further levels, shared by
the table's records and chosen where answers read off the stored levels would miss the
model most (:func:`.quantiles.choose_knot_levels`). Tables in the seed's own format,
without ``features`` or knots, load too; a record without a ``features`` object may also
carry its features as plain top-level keys.

:class:`LookupTable` keeps a table column-wise (about 100 bytes a row, and 4 a knot) with an
index built once: a sorted 64-bit hash of every row's feature values (exact
match, vectorised ``searchsorted``), the same for task ids, and per identity and
combination of categorical values a k-d tree over the numeric features,
centred on the table's median and scaled by its interquartile range (nearest match).
A trace is answered by, in order: exact feature match, task id, nearest record
(categorical features must match exactly), and, for identities whose records
carry no features (the seed's format), a pseudo-random record chosen by a hash
of the trace and a seed, so the same trace always gets the same record.

:class:`LookupTableStore` manages the table directory: names are plain file
names, loaded tables are cached (bounded, reloaded when the file changes), a
table that cannot be read gives an error naming the file and the place.

The code is split by concern, one module each: :mod:`.names` (table names and
formats), :mod:`.hashing` (hashing helpers of the indexes), :mod:`.quantiles` (a
record's quantile function, :class:`TablePrediction`), :mod:`.files` (reading table
files, writing tables, :func:`generate_table`), :mod:`.table` (:class:`LookupTable`,
its parts and indexes, and building one from records), :mod:`.sidecar` (parsed-table
sidecars) and :mod:`.store` (:class:`LookupTableStore`). The names the rest of the
package uses are re-exported here; the others without an underscore are the modules' API
to each other.
"""

from __future__ import annotations

from .files import GENERATION_CHUNK, CsvTableWriter, JsonTableWriter, generate_table
from .names import (
    CSV_PREDICTION_COLUMNS,
    QUANTILE_PREFIX,
    RECORD_KEYS,
    SHAPE_FEATURES,
    TABLE_FORMATS,
    WRITABLE_FORMATS,
    check_table_name,
    table_format,
)
from .quantiles import TablePrediction, quantile_function
from .sidecar import INDEX_FORMAT, load_index, save_index
from .store import LookupTableStore
from .table import MATCH_KINDS, SCALAR_MAX, LookupResult, LookupTable

__all__ = [
    "CSV_PREDICTION_COLUMNS",
    "CsvTableWriter",
    "GENERATION_CHUNK",
    "INDEX_FORMAT",
    "JsonTableWriter",
    "LookupResult",
    "LookupTable",
    "LookupTableStore",
    "MATCH_KINDS",
    "QUANTILE_PREFIX",
    "RECORD_KEYS",
    "SCALAR_MAX",
    "SHAPE_FEATURES",
    "TABLE_FORMATS",
    "TablePrediction",
    "WRITABLE_FORMATS",
    "check_table_name",
    "generate_table",
    "load_index",
    "quantile_function",
    "save_index",
    "table_format",
]
