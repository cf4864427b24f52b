"""Which trace fields are features, how they are typed, and how traces become a matrix."""

from __future__ import annotations

import difflib
import functools
import itertools
import math
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from .errors import cut, listed, shown
from .traces import (
    DEFAULT_TARGET, MAX_RUNTIME, MIN_RUNTIME, RUNTIME_RANGE, TIMESTAMP_KEYS, TraceError, TraceTable, as_number,
    epoch_unit_of, timestamp_in, timestamp_number, timestamps, BOOLEAN_WORDS, category_text, finite_number_in_text,
    number_in_text, reserved_keys,
)

FeatureKind = Literal["numeric", "categorical"]

# The derived column that says whether a trace's input shape had run before it.
FIRST_OF_SHAPE = "first_of_shape"
# A numeric feature with fractional values belongs to an input's shape only when this few
# of its values are distinct (a scale of 0.5, 1, 1.5; not a load or a temperature).
SHAPE_KEY_DISTINCT_SHARE = 0.25
# Both kinds of rows, first runs and repeats, must be this many for the column to be kept.
SHAPE_MIN_ROWS = 10
# How much more (times 1/rows) of the log runtime's variance a flag must explain for a
# smaller shape key to replace a larger one (see _shape_history).
SHAPE_KEY_EVIDENCE = 10.0
# At most this many many-valued whole-number features are tried out of the shape key
# (every combination: 2 ** this keys at most).
SHAPE_KEY_MAX_OPTIONAL = 3
# The stored table of shapes stays small next to a model.
SHAPE_MAX_DISTINCT = 20_000
# A categorical feature's values learned in training: those on at least this many rows,
# at most this many of them (the most frequent); see FeatureSchema.prepare_training.
CATEGORY_MIN_ROWS = 2
# A runtime this many times what its features predict, or this many times less, is a gross
# outlier (a request that hung, a clock that jumped, a unit slip): dropped from training
# when such runtimes are at most 1% of the rows, or 2 (more, and they are a mode of their own).
# Real modes stay inside: first runs of a shape 10x to 375x its repeats (the H200 vision
# trace without its derived column), aborted LLM requests 5x to 50x below.
GROSS_OUTLIER_FACTOR = 1e3
GROSS_OUTLIER_MAX_SHARE = 0.01
GROSS_OUTLIER_MIN_ROWS = 20
MAX_CATEGORIES = 128
# Real traces have a handful of features; each one costs the model selection (and the
# feature elimination a quadratic number of fits): 500 columns on 40 rows took two minutes
# and 5,000 filled the machine's memory. More than this many is refused.
MAX_FEATURES = 64
# A feature's name is stored in the model's meta file, its metrics and every lookup table
# record: a 23-million-character key made a meta file the registry could not read.
MAX_FEATURE_NAME = 1024
ROW_COUNTER_MIN_ROWS = 20


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    kind: FeatureKind
    categories: tuple[str, ...] = ()
    # Numeric only: value used for rows of the *training* data that lacked it.
    fill: float = 0.0
    # Some training rows lacked it: a trace may too, and is read as they were (``fill`` for a
    # number, an unseen value for a word). Otherwise a trace that lacks it is an error.
    optional: bool = False
    # Numeric only: training read the few words among its numbers ("n/a") as missing; a
    # trace's word is read so too (any other feature's word is an error).
    words_missing: bool = False
    # Numeric only: the least and the greatest value training saw (None: a model stored
    # before they were kept). A value past them is flagged in the answer (outside_training).
    low: float | None = None
    high: float | None = None

    def text_value(self, text: str) -> float:
        """What this numeric feature reads a string as: the finite number it spells; else NaN
        where training read its words as gaps (a missing value), a boolean's word as 1 or 0,
        and NaN for any other word (an error where the feature is required)."""
        x = finite_number_in_text(text)
        if x is not None:
            return x
        return math.nan if self.words_missing else BOOLEAN_WORDS.get(text, math.nan)

    def reads_as_missing(self, value: Any) -> bool:
        """Whether a trace's ``value`` for this feature is read as training read its gaps:
        nothing given, or (where training read its words so) a word."""
        return self.optional and (value is None or (self.words_missing and isinstance(value, str)))

    @property
    def codes(self) -> dict[str, int]:
        """Category -> code, built once per spec (prediction asks for it on every request)."""
        got = self.__dict__.get("_codes")
        if got is None:
            got = {c: k for k, c in enumerate(self.categories)}
            object.__setattr__(self, "_codes", got)  # a cache, not state: the spec stays frozen
        return got

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "categorical":
            out["categories"] = list(self.categories)
        else:
            out["fill"] = self.fill
        if self.low is not None:
            out["range"] = [self.low, self.high]
        if self.optional:  # written only when set: older services read the rest as before
            out["optional"] = True
        if self.words_missing:
            out["words_missing"] = True
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FeatureSpec":
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or d.get("kind") not in (
                "numeric", "categorical"):
            raise ValueError(f"a feature must be an object with a name and a kind (numeric or categorical), got {d!r:.200}")
        categories = d.get("categories", [])
        if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
            raise ValueError(f"feature {d['name']!r}: 'categories' must be a list of strings")
        optional = d.get("optional", False)
        if not isinstance(optional, bool):
            raise ValueError(f"feature {d['name']!r}: 'optional' must be true or false")
        words_missing = d.get("words_missing", False)
        if not isinstance(words_missing, bool):
            raise ValueError(f"feature {d['name']!r}: 'words_missing' must be true or false")
        span = d.get("range")  # specs stored before 2026-12-01: none
        if span is not None and not (isinstance(span, list) and len(span) == 2
                                     and all(type(v) in (int, float) and math.isfinite(v) for v in span)
                                     and span[0] <= span[1]):
            raise ValueError(f"feature {d['name']!r}: 'range' must be the least and the greatest value, got {span!r:.200}")
        low, high = (None, None) if span is None else (float(span[0]), float(span[1]))
        return cls(d["name"], d["kind"], tuple(categories), float(d.get("fill", 0.0)), optional, words_missing,
                   low, high)


@dataclass(frozen=True, eq=False)
class ShapeHistory:
    """When each input shape first ran, learned from the training traces' timestamps.

    On a GPU the first task of an input shape is often ten times slower than its
    repeats (kernel selection, autotuning, allocator and cache warm-up), and nothing in
    the task itself says which run is the first; the timestamps do. A trace is the
    first of its shape when no older training trace has the same values of the shape
    features. That flag is one more model column, which model selection keeps or drops
    like any other. At prediction time a trace is a first run when no training trace of
    its shape is older than its timestamp or, without a timestamp, when its shape never
    ran in training.
    """

    key: tuple[int, ...]  # positions in the schema of the features that make a shape
    order_field: str  # the timestamp field
    shapes: np.ndarray  # (shapes, len(key)): the distinct training shapes, rows in lexicographic order
    first_seen: np.ndarray  # the oldest timestamp of each

    @functools.cached_property
    def _search_tables(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """For _locate, per column: its distinct values, and the distinct codes of the
        shapes' prefixes up to it (see there)."""
        tables = []
        code = np.zeros(len(self.shapes), dtype=np.int64)
        for j in range(self.shapes.shape[1]):
            values = np.unique(self.shapes[:, j])
            code = code * len(values) + np.searchsorted(values, self.shapes[:, j])
            levels, code = np.unique(code, return_inverse=True)
            tables.append((values, levels))
        return tables

    @functools.cached_property
    def _first_seen_of(self) -> dict[tuple[float, ...], float]:
        """Shape -> oldest timestamp, for the single-row path."""
        return dict(zip(map(tuple, self.shapes.tolist()), self.first_seen.tolist()))

    @staticmethod
    def _values(X: np.ndarray, key: Sequence[int]) -> np.ndarray:
        # Only a categorical value can be missing; its codes are never negative.
        V = X[:, list(key)]
        return np.where(np.isnan(V), -1.0, V)

    def _locate(self, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into ``shapes``, found) for rows of shape values, with float searches only.

        Column by column, the code of a prefix is its rank among the training shapes'
        distinct prefixes, so codes stay below shapes x values and the last one is the
        shape's row in ``shapes``. Several times faster than searching the rows as
        structured records (which compare field by field through a generic path).
        """
        found = np.ones(len(V), dtype=bool)
        code = np.zeros(len(V), dtype=np.int64)
        for j, (values, levels) in enumerate(self._search_tables):
            pos = np.minimum(np.searchsorted(values, V[:, j]), len(values) - 1)
            found &= values[pos] == V[:, j]
            code = code * len(values) + pos
            rank = np.minimum(np.searchsorted(levels, code), len(levels) - 1)
            found &= levels[rank] == code
            code = rank
        return code, found

    @classmethod
    def learn(cls, X: np.ndarray, order: np.ndarray, key: Sequence[int], order_field: str) -> "ShapeHistory":
        return cls._tabulate(tuple(key), order_field, cls._values(X, key), order)

    @classmethod
    def _tabulate(cls, key: tuple[int, ...], order_field: str, V: np.ndarray, order: np.ndarray) -> "ShapeHistory":
        """The distinct rows of shape values ``V`` and the oldest ``order`` of each."""
        shapes, inverse = np.unique(V, axis=0, return_inverse=True)
        first_seen = np.full(len(shapes), np.inf)
        np.minimum.at(first_seen, inverse.ravel(), order)
        return cls(key, order_field, shapes, first_seen)

    def flags(self, X: np.ndarray, order: np.ndarray) -> np.ndarray:
        """1.0 where the row's shape had not run before its timestamp (NaN: after all training)."""
        found_at = np.full(len(X), np.inf)
        if len(X):
            row, found = self._locate(self._values(X, self.key))
            found_at[found] = self.first_seen[row[found]]
        t = np.where(np.isnan(order), np.inf, order)
        return (found_at >= t).astype(np.float64)

    def extend(self, X: np.ndarray, order: np.ndarray) -> tuple["ShapeHistory", np.ndarray]:
        """Take in rows that ran after training, at the times ``order``, in any order;
        return the history that includes them and their flags (of a shape's rows only the
        oldest, the first of those as old, can be a first run)."""
        V = self._values(X, self.key)
        # Not the first row of a shape as given: observations are logged as they are
        # reported, and two instances reporting in batches log a repeat before its first run.
        by_time = np.argsort(order, kind="stable")
        _, first_row = np.unique(V[by_time], axis=0, return_index=True)
        earliest_here = np.zeros(len(X), dtype=bool)
        earliest_here[by_time[first_row]] = True
        flags = self.flags(X, order) * earliest_here
        merged = self._tabulate(self.key, self.order_field, np.vstack([self.shapes, V]),
                                np.concatenate([self.first_seen, order]))
        return merged, flags

    def flag_row(self, x: Sequence[float], order: float) -> float:
        """:meth:`flags` for one row in plain Python (the single-prediction path)."""
        shape = tuple(-1.0 if math.isnan(x[j]) else x[j] for j in self.key)
        seen = self._first_seen_of.get(shape, math.inf)
        return float(seen >= (math.inf if math.isnan(order) else order))

    @functools.cached_property
    def timestamp_fields(self) -> tuple[str, ...]:
        """The fields a trace's timestamp is read from, in order: the one training read,
        then the other accepted names (``ts``, ``timestamp``)."""
        return (self.order_field, *sorted(TIMESTAMP_KEYS - {self.order_field}))

    @functools.cached_property
    def unit(self) -> float | None:
        """The unit of Unix time (per second) that training's timestamps were in, where they
        were Unix times (see traces.EPOCH_UNITS): a trace's time in another (an ISO date and
        time, in seconds, where training's were milliseconds) is read in this one."""
        return epoch_unit_of(self.first_seen)

    def time_of(self, trace: dict[str, Any]) -> float:
        """A trace's timestamp: the first of :attr:`timestamp_fields` that holds a number."""
        t = math.nan
        for name in self.timestamp_fields:
            t = timestamp_in(trace.get(name), self.unit)
            if t == t:
                break
        return t

    def seconds_in_unit(self, t: np.ndarray) -> np.ndarray:
        """Unix times in seconds (when observations were made) in training's :attr:`unit`."""
        return t * self.unit if self.unit is not None else t

    def time_problem(self, trace: dict[str, Any]) -> str | None:
        """What is wrong where the field :meth:`time_of` reads holds a boolean: ``true`` read
        as the time 1, before any training trace, and made the task a first run (a ResNet-50
        task's median 61.6 ms, not 4.3). Another value that is no number is no timestamp, as
        documented (README, Traces)."""
        for name in self.timestamp_fields:
            v = trace.get(name)
            t = timestamp_number(v)
            if t == t:
                if v.__class__ is not bool:
                    return None
                return (f"'{name}' must be a number, when the task starts (as training read "
                        f"{self.order_field!r}), got {str(v).lower()}")
        return None

    def order_of(self, traces: Sequence[dict[str, Any]]) -> np.ndarray:
        return np.fromiter((self.time_of(t) for t in traces), dtype=np.float64, count=len(traces))

    def order_of_table(self, table: TraceTable) -> np.ndarray:
        """:meth:`time_of` for every row of a table."""
        order = np.full(len(table), math.nan)
        for name in self.timestamp_fields:
            if name in table.columns:
                order = np.where(np.isnan(order), timestamps(table, name, self.unit), order)
        return order

    def to_json(self, names: Sequence[str]) -> dict[str, Any]:
        return {
            "shape": [names[j] for j in self.key],
            "timestamp": self.order_field,
            "shapes": self.shapes.tolist(),
            "first_seen": self.first_seen.tolist(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], names: Sequence[str]) -> "ShapeHistory":
        if not isinstance(d.get("shape"), list) or not d["shape"] or len(set(d["shape"])) != len(d["shape"]):
            raise ValueError("'shape' must name distinct features")
        key = tuple(names.index(n) for n in d["shape"])
        if not isinstance(d.get("timestamp"), str):
            raise ValueError("'timestamp' must be a field name")
        shapes = np.array(d["shapes"], dtype=np.float64).reshape(-1, len(key))
        first_seen = np.array(d["first_seen"], dtype=np.float64)
        # Checked here: a damaged file that parses failed its predictions with an IndexError.
        if first_seen.shape != (len(shapes),):
            raise ValueError(f"'first_seen' holds {first_seen.size} times for {len(shapes)} shapes")
        return cls(key, d["timestamp"], shapes, first_seen)


def gross_outliers(X: np.ndarray, y: np.ndarray, kinds: Sequence[str]) -> np.ndarray:
    """Rows whose runtime is ``GROSS_OUTLIER_FACTOR`` times what rows like it take, or that
    many times less; none where such rows are more than ``GROSS_OUTLIER_MAX_SHARE`` of them
    (and more than 2).

    "Rows like it": a least-squares fit of the log runtime on the features (per numeric
    feature its signed log and its value, per categorical one its values' median log
    runtime), fitted again without the rows far from the first fit. One 1e7 ms runtime
    among 400 of 10 to 300 ms put the model's means 150 times its medians; with three,
    cross-validation, in milliseconds, chose the model that ignores every feature.
    """
    n = len(y)
    none = np.zeros(n, dtype=bool)
    if n < GROSS_OUTLIER_MIN_ROWS:
        return none
    z = np.log(y)
    cols = []
    for j, kind in enumerate(kinds):
        x = X[:, j]
        if kind == "categorical":
            _, inv = np.unique(x, return_inverse=True)
            order = np.argsort(inv, kind="stable")
            bounds = np.flatnonzero(np.diff(inv[order])) + 1
            medians = np.array([np.median(z[part]) for part in np.split(order, bounds)])
            cols.append(medians[inv])
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                cols += [np.sign(x) * np.log1p(np.abs(x)), x]
    A = np.column_stack(cols) if cols else np.empty((n, 0))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        # Relative to each column's largest value first: below about 1e-162 the squares of the
        # standard deviation underflow, and the column was lost to a division by zero.
        top = np.abs(A).max(axis=0) if n else np.ones(A.shape[1])
        A = A / np.where(top > 0, top, 1.0)
        A = (A - A.mean(axis=0)) / A.std(axis=0)
    A = np.column_stack([np.ones(n), A[:, np.isfinite(A).all(axis=0)]])

    def residuals(rows: np.ndarray) -> np.ndarray:
        coef = np.linalg.lstsq(A[rows], z[rows], rcond=None)[0]
        return z - A @ coef

    r = residuals(np.ones(n, dtype=bool))
    spread = 1.4826 * np.median(np.abs(r - np.median(r)))
    inliers = np.abs(r - np.median(r)) <= max(4.0 * spread, math.log(10.0))
    r = residuals(inliers)
    out = np.abs(r - np.median(r[inliers])) > math.log(GROSS_OUTLIER_FACTOR)
    if out.sum() > max(2, int(GROSS_OUTLIER_MAX_SHARE * n)):
        return none
    return out


@dataclass
class DataReport:
    """What training kept and what it dropped, and why; returned in the metrics."""

    rows_total: int = 0
    rows_used: int = 0
    rows_dropped: dict[str, int] = field(default_factory=dict)
    columns_dropped: dict[str, str] = field(default_factory=dict)
    values_imputed: dict[str, int] = field(default_factory=dict)
    columns_derived: dict[str, str] = field(default_factory=dict)
    columns_not_derived: dict[str, str] = field(default_factory=dict)  # and why not
    # Per categorical feature: rows whose value was too rare to learn, read as an unseen value.
    rare_categories: dict[str, int] = field(default_factory=dict)
    # Per numeric feature: its few words ("n/a"), read as missing values (counted in values_imputed too).
    words_read_as_missing: dict[str, int] = field(default_factory=dict)

    def drop_rows(self, reason: str, count: int) -> None:
        if count:
            self.rows_dropped[reason] = self.rows_dropped.get(reason, 0) + int(count)

    def to_json(self) -> dict[str, Any]:
        return {
            "rows_total": self.rows_total,
            "rows_used": self.rows_used,
            "rows_dropped": dict(self.rows_dropped),
            "columns_dropped": dict(self.columns_dropped),
            "values_imputed": dict(self.values_imputed),
            "columns_derived": dict(self.columns_derived),
            "columns_not_derived": dict(self.columns_not_derived),
            "rare_categories": dict(self.rare_categories),
            "words_read_as_missing": dict(self.words_read_as_missing),
        }


def _distinct(features: tuple[FeatureSpec, ...]) -> tuple[FeatureSpec, ...]:
    names = [f.name for f in features]
    if len(set(names)) != len(names):
        raise ValueError(f"a feature is listed twice: {sorted({n for n in names if names.count(n) > 1})}")
    return features


def _clean_target(table: TraceTable, target: str, report: DataReport) -> tuple[np.ndarray, np.ndarray]:
    """The target column as numbers, and which rows keep it (a runtime in ``RUNTIME_RANGE``);
    the others are counted in ``report``, by why."""
    if target not in table.columns:
        fields = sorted(table.columns)
        named = ", ".join(shown(f) for f in fields[:10]) + (f" and {len(fields) - 10} more" if len(fields) > 10 else "")
        raise TraceError(f"target field {shown(target)} is not present in the traces"
                         + (f" (they hold {named}: set 'target' to the one that is the runtime)" if fields else ""),
                         field="target")
    # true/false is no measurement (a feature reads it as 1 or 0; a runtime of 1 ms it is not).
    booleans = table.columns[target].boolean_rows()
    words = 0
    if table.columns[target].is_categorical:
        # Runtimes written as strings ("12.5") are numbers. A few words among numbers
        # ("timeout", "n/a") are broken measurements, dropped and counted as the other
        # unusable targets are; a column with no number at all is no runtime.
        y_strings = table.strings(target)
        numeric = [v is not None and _reads_as_number(v) for v in y_strings]
        words = sum(1 for v, ok, b in zip(y_strings, numeric, booleans) if v is not None and not ok and not b)
        if words and not any(numeric):
            raise TraceError(f"target field {shown(target)} has {words} non-numeric value(s) and no number",
                             field="target")
        numbers = sum(1 for ok, b in zip(numeric, booleans) if ok and not b)
        if words > numbers:
            # Most runtimes unread is a column misread ("1,234.5" with a thousands separator,
            # "12.5ms" with a unit), not a few broken measurements: training on the numbers
            # left (those under 1,000) would model a biased few rows without a word.
            example = next(v for v, ok, b in zip(y_strings, numeric, booleans) if v is not None and not ok and not b)
            raise TraceError(f"target field {shown(target)} has {words} values that are no number (such as "
                             f"{shown(example)}) and {numbers} numbers: runtimes are plain numbers, without "
                             "thousands separators or units", field="target")
        y = np.array([float(v) if ok else math.nan for v, ok in zip(y_strings, numeric)], dtype=np.float64)
    else:
        y = table.numeric(target)
    y[booleans] = math.nan
    report.drop_rows("target is a boolean", int(booleans.sum()))
    report.drop_rows("target is not a number", words)
    keep = (y >= MIN_RUNTIME) & (y <= MAX_RUNTIME)
    report.drop_rows("target missing or not finite", int((~np.isfinite(y)).sum() - booleans.sum() - words))
    report.drop_rows("target not positive", int((np.isfinite(y) & (y <= 0)).sum()))
    report.drop_rows(f"target outside {RUNTIME_RANGE}", int((np.isfinite(y) & (y > 0) & ~keep).sum()))
    return y, keep


def _candidate_features(table: TraceTable, target: str, features: Sequence[str] | None,
                        report: DataReport) -> list[str]:
    """The columns that may become features: those ``features`` names (each checked), else
    every column but the reserved ones, a measured runtime beside another target and names
    too long to be a feature's (counted in ``report``)."""
    reserved = reserved_keys(target)
    if features is None:
        candidates = [name for name in table.columns if name not in reserved]
        for name in [c for c in candidates if len(c) > MAX_FEATURE_NAME]:
            candidates.remove(name)
            # Under its first characters, numbered where another such name begins alike (two
            # fields of one prefix were reported as one, the other dropped without a word).
            key, n = cut(name), 1
            while key in report.columns_dropped:
                n += 1
                key = f"{cut(name)} ({n})"
            report.columns_dropped[key] = (f"a name of {len(name):,} characters "
                                           f"(a feature's is at most {MAX_FEATURE_NAME:,})")
        if target != DEFAULT_TARGET and DEFAULT_TARGET in candidates:
            # A measured runtime beside another target is not known before the task runs:
            # a feature only when the config names it.
            candidates.remove(DEFAULT_TARGET)
            report.columns_dropped[DEFAULT_TARGET] = "a measured runtime (name it in 'features' to use it)"
        return candidates
    missing = [f for f in features if f not in table.columns]
    if missing:
        raise TraceError(f"feature(s) not found in the traces: {listed(missing)}", field="features")
    bad = [f for f in features if f in reserved]
    if bad:
        raise TraceError(f"reserved field(s) cannot be features: {listed(bad)}", field="features")
    long = [f for f in features if len(f) > MAX_FEATURE_NAME]
    if long:
        raise TraceError(f"a feature's name is at most {MAX_FEATURE_NAME:,} characters, got "
                         f"{len(long[0]):,} ({shown(cut(long[0]))})", field="features")
    if len(features) > MAX_FEATURES:
        raise TraceError(f"'features' names {len(features)} columns; at most {MAX_FEATURES} can be used",
                         field="features")
    return list(features)


def _flag_column(name: str, flags: np.ndarray, report: DataReport) -> tuple[FeatureSpec, np.ndarray] | None:
    """The traces' own first-run flag (1 / 0, true / false, a CSV file's words too): the
    model's first-run column (FeatureSchema.regime_column), a trace that does not state it a
    repeat, as a lookup table reads it. None where it cannot be one (said in ``report``)."""
    given = np.isfinite(flags)
    if not given.any():
        report.columns_dropped[name] = "no values"
        return None
    if flags[given].min() == flags[given].max():
        report.columns_dropped[name] = "constant"
        return None
    if not given.all():
        report.values_imputed[name] = int((~given).sum())
    return FeatureSpec(name, "numeric", fill=0.0, optional=True, low=0.0, high=1.0), np.where(given, flags, 0.0)


def _categorical_column(table: TraceTable, name: str, rows: np.ndarray, report: DataReport,
                        constants: list[tuple[str, float | str]]) -> tuple[FeatureSpec, np.ndarray] | None:
    """A column of words as a categorical feature (its frequent values learned), or None
    where it is constant (noted in ``constants``), empty or an identifier."""
    values = table.strings(name)[rows]
    present = values[values != None]  # noqa: E711 - elementwise on object array
    counts = Counter(present.tolist())
    if len(counts) <= 1 and len(present) == len(values):
        report.columns_dropped[name] = "constant"
        if counts and name != FIRST_OF_SHAPE:  # (a flag, not a field: see matrix)
            constants.append((name, str(next(iter(counts)))))
        return None
    if len(present) == 0:
        report.columns_dropped[name] = "no values"
        return None
    # A value seen once teaches nothing about a runtime, and each learned value is a
    # column of the linear model's design (whose solves grow with its cube): at most
    # MAX_CATEGORIES values seen on CATEGORY_MIN_ROWS rows or more are learned, the
    # most frequent; the others are read as an unseen value, in training and after.
    frequent = _frequent(counts, MAX_CATEGORIES)
    if not frequent:
        report.columns_dropped[name] = "no value repeats (an identifier, not a feature)"
        return None
    cats = tuple(sorted(frequent))
    rare = len(present) - sum(counts[c] for c in cats)
    if rare:
        report.rare_categories[name] = rare
    n_missing = len(values) - len(present)
    if n_missing:  # read as an unseen value, in training and after
        report.values_imputed[name] = n_missing
    return FeatureSpec(name, "categorical", cats, optional=n_missing > 0), _encode_categories(values, cats)


def _numeric_column(table: TraceTable, name: str, rows: np.ndarray, words: int | None,
                    row_counters: Collection[str] | None, report: DataReport,
                    constants: list[tuple[str, float | str]]) -> tuple[FeatureSpec, np.ndarray] | None:
    """A column of numbers (a few words among them read as missing) as a numeric feature, gaps
    filled with its median; or None where it is empty, constant (noted in ``constants``) or,
    unless ``row_counters`` is None (a column the config named), a row counter."""
    values = table.columns[name].as_numeric(spelled=True)[rows]
    finite = np.isfinite(values)
    if not finite.any():
        report.columns_dropped[name] = "no values"
        return None
    fin = values[finite]
    # Gaps are filled with the median, so one distinct value means a constant column.
    if fin.min() == fin.max():
        report.columns_dropped[name] = "constant"
        if name != FIRST_OF_SHAPE:  # (a flag, not a field: see matrix)
            constants.append((name, float(fin.min())))
        return None
    if row_counters is not None and (name in row_counters or _is_row_counter(table.numeric(name))):
        report.columns_dropped[name] = "a row counter (an index, not a feature)"
        return None
    fill = float(np.median(fin))
    n_missing = int((~finite).sum())
    if n_missing:
        report.values_imputed[name] = n_missing
        values = np.where(finite, values, fill)
    if words:
        report.words_read_as_missing[name] = words
    return (FeatureSpec(name, "numeric", fill=fill, optional=n_missing > 0, words_missing=bool(words),
                        low=float(fin.min()), high=float(fin.max())), values)


@dataclass(frozen=True)
class FeatureSchema:
    """The trace fields a model reads and, optionally, the column derived from their history.

    A model's matrix has one column per feature, in order, then ``FIRST_OF_SHAPE``
    when ``history`` is set.
    """

    features: tuple[FeatureSpec, ...]
    history: ShapeHistory | None = None
    # The fields training dropped as constant, with their one value (a number, or a category's
    # text): a trace that gives another is outside what training saw (``outside_training``),
    # though no column reads it.
    constants: tuple[tuple[str, float | str], ...] = ()

    @property
    def names(self) -> list[str]:
        """The trace fields a trace must carry."""
        return [f.name for f in self.features]

    @functools.cached_property
    def prediction_fields(self) -> tuple[str, ...]:
        """Every trace field a prediction depends on: the features, and with a shape
        history every timestamp field :meth:`ShapeHistory.time_of` reads (the one
        training read, then the other accepted names) and a stated ``FIRST_OF_SHAPE``."""
        constant = tuple(name for name, _ in self.constants)  # (the answer names them when they differ)
        if self.history is None:
            return (*self.names, *constant)
        return (*self.names, *self.history.timestamp_fields, FIRST_OF_SHAPE, *constant)

    @property
    def column_names(self) -> list[str]:
        return self.names + ([FIRST_OF_SHAPE] if self.history is not None else [])

    @property
    def kinds(self) -> list[FeatureKind]:
        return [f.kind for f in self.features] + (["numeric"] if self.history is not None else [])

    @property
    def n_categories(self) -> list[int]:
        return [len(f.categories) for f in self.features] + ([0] if self.history is not None else [])

    def with_values_seen(self, traces: Sequence[dict[str, Any]], X: np.ndarray) -> "FeatureSchema":
        """This schema as if its training had seen ``traces`` (encoded as ``X`` by this
        schema) too; ``self`` where they hold nothing it does not know.

        A categorical feature also holds the values they give on CATEGORY_MIN_ROWS rows or
        more that it does not know, as training learns its own, up to MAX_CATEGORIES values;
        the new ones come after the known ones, whose codes stay (rows encoded by this schema,
        a version's stored training rows, read the same under the new one). A numeric
        feature's range also spans their values. A field training dropped as constant that
        they give other values of (on CATEGORY_MIN_ROWS rows or more; for a category, one
        value on as many) becomes a feature, after the others (rows of this schema gain its
        column at :meth:`widen_rows`): optional, since traces that lack it were answered
        (a number read as the constant then, a category as an unseen value).
        """
        specs = list(self.features)
        flag_j = self.stated_flag_column
        for j, spec in enumerate(self.features):
            if j == flag_j or not len(X):
                continue
            if spec.kind == "numeric":
                if spec.low is not None:  # (None: a model stored before ranges were kept)
                    low, high = min(spec.low, float(X[:, j].min())), max(spec.high, float(X[:, j].max()))
                    if (low, high) != (spec.low, spec.high):
                        specs[j] = replace(spec, low=low, high=high)
                continue
            if len(spec.categories) >= MAX_CATEGORIES:
                continue
            unseen = [traces[i].get(spec.name) for i in np.flatnonzero(np.isnan(X[:, j])).tolist()]
            frequent = _frequent(_category_counts(unseen), MAX_CATEGORIES - len(spec.categories))
            if frequent:
                specs[j] = replace(spec, categories=spec.categories + tuple(sorted(frequent)))
        constants = []
        for name, value in self.constants:
            values = [t.get(name) for t in traces]
            spec = (_varied_constant(name, value, [values[i] for i in _differs_from_constant(values, value) or ()])
                    if len(specs) < MAX_FEATURES else None)  # (as many as a training takes)
            if spec is None:
                constants.append((name, value))
            else:
                specs.append(spec)
        if specs == list(self.features):
            return self
        return replace(self, features=tuple(specs), constants=tuple(constants))

    def widen_rows(self, X: np.ndarray, wider: "FeatureSchema") -> np.ndarray:
        """Rows this schema encoded (``X``) as ``wider`` (:meth:`with_values_seen`) encodes
        them: the fields it promoted from constants read as the constant they were."""
        added = wider.features[len(self.features):]
        if not added:
            return X
        # A promoted category's constant is its first value (code 0), a number its fill.
        columns = np.array([[0.0 if spec.kind == "categorical" else spec.fill for spec in added]])
        n = len(self.features)
        return np.hstack([X[:, :n], np.repeat(columns, len(X), axis=0), X[:, n:]])

    def probe_row(self) -> list[float]:
        """A row within the training data: each numeric feature's median (its fill value),
        each categorical one's first category, a repeat of its shape."""
        return [f.fill if f.kind == "numeric" else 0.0 for f in self.features] + (
            [0.0] if self.history is not None else [])

    @functools.cached_property  # (asked by every prediction)
    def stated_flag_column(self) -> int | None:
        """The column of the traces' own ``first_of_shape`` flag where it is the model's
        first-run column (see :attr:`regime_column`): a trace's value there is read as
        :func:`stated_flag` reads it, and one not stated is a repeat."""
        return self.regime_column if self.history is None else None

    @functools.cached_property
    def regime_column(self) -> int | None:
        """The column of the ``first_of_shape`` flag, if any: the derived one (the last), or
        the traces' own, 0 or 1; the model may answer first runs and repeats with a model
        each (``QuantileModel.regime_column``)."""
        if self.history is not None:
            return len(self.features)
        return next((j for j, f in enumerate(self.features) if f.name == FIRST_OF_SHAPE and f.kind == "numeric"
                     and (f.low, f.high) == (0.0, 1.0)), None)

    def describe(self, detail: bool = False) -> list[dict[str, Any]]:
        """The model's columns as the API shows them: name and kind (with ``detail``, the
        categories and fill values too), and for a derived column what it derives from."""
        out: list[dict[str, Any]] = [f.to_json() if detail else {"name": f.name, "kind": f.kind} for f in self.features]
        if self.history is not None:
            out.append({"name": FIRST_OF_SHAPE, "kind": "derived",
                        "shape": [self.features[j].name for j in self.history.key],
                        "timestamp": self.history.order_field, "shapes_seen": len(self.history.shapes)})
        return out

    def to_json(self) -> list[dict[str, Any]] | dict[str, Any]:
        """The features' stored form; the constants are stored beside it (:meth:`constants_json`),
        where a service older than them, which reads this form, does not look."""
        specs = [f.to_json() for f in self.features]
        if self.history is None:
            return specs
        return {"features": specs, FIRST_OF_SHAPE: self.history.to_json(self.names)}

    def constants_json(self) -> list[list[Any]]:
        return [[name, value] for name, value in self.constants]

    @classmethod
    def from_json(cls, d: list[dict[str, Any]] | dict[str, Any], constants: Any = None) -> "FeatureSchema":
        """The stored form read back, with the stored constants (:meth:`constants_json`)."""
        if isinstance(d, list):
            features = _distinct(tuple(FeatureSpec.from_json(item) for item in d))
            history = None
        else:
            features = _distinct(tuple(FeatureSpec.from_json(item) for item in d["features"]))
            history = ShapeHistory.from_json(d[FIRST_OF_SHAPE], [f.name for f in features])
        return cls(features, history, _constants_from_json([] if constants is None else constants,
                                                           {f.name for f in features}))

    # ------------------------------------------------------------------ training side

    @classmethod
    def prepare_training(
        cls,
        table: TraceTable,
        target: str = DEFAULT_TARGET,
        features: Sequence[str] | None = None,
        first_of_shape: bool = True,
        row_counters: Collection[str] = (),
    ) -> tuple["FeatureSchema", np.ndarray, np.ndarray, DataReport]:
        """Pick and type the features, clean the rows; return (schema, X, y, report).

        Rows without a target between ``MIN_RUNTIME`` and ``MAX_RUNTIME`` are
        dropped (runtimes are modelled on a log scale). Constant and empty
        columns are dropped. Missing numeric values are filled with the column
        median, which LightGBM and the linear model both handle sensibly, and
        counted in the report. With ``first_of_shape``, a column
        ``FIRST_OF_SHAPE`` follows the features where the timestamps allow one
        (see :class:`ShapeHistory`). ``row_counters`` names columns that number the
        traces of the file ``table`` was taken from (see :func:`row_counters`), dropped
        as the ones that number ``table``'s own rows are.
        """
        report = DataReport(rows_total=len(table))
        y, keep = _clean_target(table, target, report)
        candidates = _candidate_features(table, target, features, report)
        specs: list[FeatureSpec] = []
        columns: list[np.ndarray] = []
        constants: list[tuple[str, float | str]] = []
        rows = _in_run_order(table, np.flatnonzero(keep))
        for name in candidates:
            col = table.columns[name]
            if col.nested_at is not None and (nested := int(col.nested_rows()[rows].sum())):
                # No feature's value (a prediction refuses one, naming the feature): read as a gap
                # it made a model that refused traces of its own training file. A column of them
                # alone (a trace's metadata) is no feature; beside numbers or text, which to
                # drop (the column, or the rows) would be a guess: an error naming them.
                named = features is not None
                if named or not col.missing_rows()[rows].all():
                    raise TraceError(f"feature {shown(name)} holds a list or an object on {nested:,} training row(s): "
                                     "a feature's value is a number, a boolean or a text" + (
                                         "" if named else " (it holds them beside numbers or text: fix those traces, "
                                         "or name the features to use, without it, in 'features')"),
                                     field="features" if named else "traces")
                report.columns_dropped[name] = (f"a list or an object wherever it has a value ({nested:,} row(s)), "
                                                "which is no feature's value (a number, a boolean or a text)")
                continue
            words = _few_words_among_numbers(col, rows)
            if name == FIRST_OF_SHAPE and (flags := _stated_flags(table, rows)) is not None:
                typed = _flag_column(name, flags, report)
            elif col.is_categorical and words is None:
                typed = _categorical_column(table, name, rows, report, constants)
            else:
                counters = row_counters if features is None else None  # a column named is kept
                typed = _numeric_column(table, name, rows, words, counters, report, constants)
            if typed is None:
                continue
            specs.append(typed[0])
            columns.append(typed[1])
            if len(specs) > MAX_FEATURES:
                # At once: each kept column is a dense array, and a wide sparse file has thousands.
                raise TraceError(f"the traces have more than {MAX_FEATURES} columns that could be features "
                                 f"(the {len(specs)}th is {shown(name)}): name the features with 'features'")
        report.rows_used = len(rows)
        X = np.column_stack(columns) if columns else np.empty((len(rows), 0))
        X = X.astype(np.float64, copy=False)
        history, flags, why_not = _shape_history(table, rows, specs, X, y[rows]) if first_of_shape else (
            None, None, "turned off by the config ('first_of_shape': false)")
        kinds = [s.kind for s in specs]
        if history is None:
            report.columns_not_derived[FIRST_OF_SHAPE] = why_not
        else:
            X = np.column_stack([X, flags])
            kinds.append("numeric")
            report.columns_derived[FIRST_OF_SHAPE] = (
                f"first run of its shape ({', '.join(specs[j].name for j in history.key)}) by '{history.order_field}'")
        y = y[rows]
        # After the shape history: the run happened, and its shape ran first then.
        gross = gross_outliers(X, y, kinds)
        if gross.any():
            report.drop_rows(f"runtime over {GROSS_OUTLIER_FACTOR:,.0f} times (or under 1/{GROSS_OUTLIER_FACTOR:,.0f} of) "
                             "what its features predict", int(gross.sum()))
            report.rows_used -= int(gross.sum())
            X, y = X[~gross], y[~gross]
        return cls(tuple(specs), history, tuple(constants)), X, y, report

    # ------------------------------------------------------------------ prediction side

    def matrix(self, traces: Sequence[dict[str, Any]]) -> tuple[np.ndarray, list[str | None]]:
        """Encode traces column by column; return (X, per-trace error or None).

        A trace that lacks a feature, or holds a value of the wrong type, gets
        an error naming the feature; its row in X is filled and must be ignored.
        """
        n = len(traces)
        errors: list[str | None] = [None] * n
        searched: dict[tuple[Any, ...], str | None] = {}  # fields spelt like a missing feature (_problem)
        X = np.empty((n, len(self.column_names)), dtype=np.float64)
        flag_j = self.stated_flag_column
        for j, spec in enumerate(self.features):
            name = spec.name
            values = [t.get(name) for t in traces]
            kinds = set(map(type, values))
            if j == flag_j:  # (0.51 was a first run); not stated, a repeat
                X[:, j] = np.nan_to_num(_stated_flags_of(values, errors), nan=0.0)
                continue
            if spec.kind == "numeric":
                col = _plain_numbers(values, kinds)
                if col is None:
                    # Value by value, by one rule (feature_number): numpy would take [5] as 5, and a
                    # string in one batch but not in another.
                    col = np.fromiter((feature_number(v) for v in values), dtype=np.float64, count=n)
                ok = np.isfinite(col)
                if ok.all():
                    X[:, j] = col
                    continue
                X[:, j] = np.where(ok, col, spec.fill)
                for i in np.flatnonzero(~ok):
                    if spec.reads_as_missing(values[i]):  # (a word too, where training read its words so)
                        continue
                    if (word := _boolean_word(values[i])) is not None:
                        X[i, j] = word
                    elif errors[i] is None:
                        errors[i] = self._problem(name, values[i], traces[i], searched)
            elif kinds == {str}:
                # Each text looked up in C; only one training did not learn (an unseen
                # category, or a boolean's word) goes by the general rule.
                codes = np.fromiter(map(spec.codes.get, values, itertools.repeat(-1)), dtype=np.float64, count=n)
                for i in np.flatnonzero(codes < 0).tolist():
                    code = category_code(spec.codes, values[i])
                    codes[i] = math.nan if code is None else code
                X[:, j] = codes
            else:
                lookup = spec.codes
                codes = np.empty(n, dtype=np.float64)
                for i, v in enumerate(values):
                    if v is None:
                        if errors[i] is None and not spec.optional:
                            errors[i] = self._problem(name, None, traces[i], searched)
                        codes[i] = math.nan
                    elif not isinstance(v, (str, int, float)):
                        # A list or an object is not a category (training read it as missing).
                        errors[i] = errors[i] or _category_problem(name, v)
                        codes[i] = math.nan
                    else:
                        # An unseen category is not an error: it behaves like an unknown level.
                        code = category_code(lookup, v)
                        codes[i] = math.nan if code is None else code
                X[:, j] = codes
        if self.history is not None:
            stated = _stated_flags_of([t.get(FIRST_OF_SHAPE) for t in traces], errors)
            order = self.history.order_of(traces)
            # A boolean reads as the time 1 or 0: only those traces are looked at again.
            for i in np.flatnonzero((order == 1.0) | (order == 0.0)).tolist():
                problem = self.history.time_problem(traces[i])
                if problem is not None and errors[i] is None and np.isnan(stated[i]):
                    errors[i] = problem  # (a trace that states its flag needs no time)
            X[:, -1] = self.history.flags(X[:, :-1], order)
            X[:, -1] = np.where(np.isnan(stated), X[:, -1], stated)  # a trace that states its flag keeps it
        return X, errors

    def outside_training(self, X: np.ndarray, traces: Sequence[dict[str, Any]]) -> dict[int, list[str]] | None:
        """By row of ``X`` (encoded from ``traces`` by :meth:`matrix`, without errors), of the
        rows that have any, the features whose value training never saw: a number past the
        least or the greatest training value, a category it did not learn (nor, where rare
        values were read as unseen, one of those). None where no row has one (not a list for
        every row: in a long batch few have one). Where such a value lies, the
        model extrapolates, or answers among the known categories: a scheduler may want to
        know (and to train with such tasks)."""
        flagged: dict[int, list[str]] | None = None
        for j, spec in enumerate(self.features):
            if spec.kind == "numeric":
                if spec.low is None:
                    continue
                out = (X[:, j] < spec.low) | (X[:, j] > spec.high)
            else:
                out = np.isnan(X[:, j])  # a category it did not learn, or a gap where training had gaps
                if spec.optional:
                    for i in np.flatnonzero(out).tolist():
                        out[i] = traces[i].get(spec.name) is not None
            if out.any():
                if flagged is None:
                    flagged = {}
                for i in np.flatnonzero(out).tolist():
                    flagged.setdefault(i, []).append(spec.name)
        for name, value in self.constants:
            values = [t.get(name) for t in traces]
            differs = _differs_from_constant(values, value)
            if differs is not None:
                if flagged is None:
                    flagged = {}
                for i in differs:
                    flagged.setdefault(i, []).append(name)
        return flagged

    def outside_training_row(self, x: Sequence[float], trace: dict[str, Any]) -> list[str]:
        """:meth:`outside_training` for one row of :meth:`row`, in plain floats."""
        out = []
        for spec, v in zip(self.features, x):
            if spec.kind == "numeric":
                if spec.low is not None and not spec.low <= v <= spec.high:
                    out.append(spec.name)
            elif v != v and trace.get(spec.name) is not None:
                out.append(spec.name)
        for name, value in self.constants:
            if _differs_from_constant([trace.get(name)], value):
                out.append(name)
        return out

    def _problem(self, name: str, value: Any, trace: dict[str, Any],
                 searched: dict[tuple[Any, ...], str | None] | None = None) -> str:
        """What is wrong with a trace's value of the feature ``name``; where it is missing and
        the trace holds a field of a name close to it that the model does not read
        (``img_size`` for ``image_size``), that field is named too. ``searched``: what a
        batch's traces found so far, by feature and fields (traces of the same fields are
        searched once, and at most ``_HINTS_PER_BATCH`` different ones)."""
        message = _numeric_problem(name, value)
        if value is None:
            hint = misspelling_hint(name, trace, self.prediction_fields, searched)
            spec = next((f for f in self.features if f.name == name), None)
            if not hint and spec is not None and spec.kind == "categorical" and len(spec.categories) == 1:
                # A column of one value but on a row or two (the H100 example's 'phase') is a
                # feature all the same: say what to send, or how to train without it.
                hint = (f" (the model learned one value of it, {shown(spec.categories[0])}: state it, or "
                        "train with 'features' leaving it out)")
            message += hint
        return message

    def row(self, trace: dict[str, Any]) -> tuple[list[float], str | None]:
        """One trace encoded like a row of :meth:`matrix`, in plain floats; (values, error or None)."""
        values: list[float] = []
        flag_j = self.stated_flag_column
        for j, spec in enumerate(self.features):
            v = trace.get(spec.name)
            if j == flag_j:
                flag = 0.0 if v is None else stated_flag(v)
                if isinstance(flag, str):
                    return values, flag
                values.append(flag)
                continue
            if spec.kind == "numeric":
                x = feature_number(v)
                if math.isfinite(x):
                    values.append(x)
                elif spec.reads_as_missing(v):
                    values.append(spec.fill)
                elif (word := _boolean_word(v)) is not None:
                    values.append(word)
                else:
                    return values, self._problem(spec.name, v, trace)
            elif v is None:
                if not spec.optional:
                    return values, self._problem(spec.name, None, trace)
                values.append(math.nan)
            elif not isinstance(v, (str, int, float)):
                return values, _category_problem(spec.name, v)
            else:
                code = category_code(spec.codes, v)
                values.append(math.nan if code is None else float(code))
        if self.history is not None:
            stated = trace.get(FIRST_OF_SHAPE)
            if stated is None:
                problem = self.history.time_problem(trace)
                if problem is not None:
                    return values, problem
                values.append(self.history.flag_row(values, self.history.time_of(trace)))
            else:
                flag = stated_flag(stated)
                if isinstance(flag, str):
                    return values, flag
                values.append(flag)
        return values, None

    def matrix_from_table(self, table: TraceTable) -> tuple[np.ndarray, np.ndarray]:
        """Encode a whole TraceTable like :meth:`matrix`; return (X, mask of the rows it could encode).

        A row is masked out when it lacks a feature or states a ``FIRST_OF_SHAPE``
        that is not true or false. A table reads values as training does: a list or an
        object where a number belongs is a missing value (filled for an optional feature),
        where :meth:`matrix` calls it an error.
        """
        n = len(table)
        X = np.empty((n, len(self.column_names)), dtype=np.float64)
        ok = np.ones(n, dtype=bool)
        for j, spec in enumerate(self.features):
            if spec.name not in table.columns:
                X[:, j] = spec.fill if spec.kind == "numeric" else math.nan
                if not spec.optional:
                    ok[:] = False
                continue
            if spec.kind == "numeric":
                col = table.numeric(spec.name)
                column = table.columns[spec.name]
                if column.is_categorical:
                    # Per distinct string, then per row, as text_value reads it.
                    word_of = np.array([spec.text_value(s) for s in column.vocab], dtype=np.float64)
                    codes = column.code_array()
                    col = np.where(np.isnan(col), np.append(word_of, np.nan)[codes], col)  # code -1 (no string): the NaN at the end
                good = np.isfinite(col)
                X[:, j] = np.where(good, col, spec.fill)
                ok &= (good | table.columns[spec.name].missing_rows()) if spec.optional else good
                if j == self.stated_flag_column:  # as in matrix(): 1 or 0 (or a boolean's word), or none
                    ok &= ~good | (col == 0.0) | (col == 1.0)
            else:
                values = table.strings(spec.name)
                if not spec.optional:
                    ok &= values != None  # noqa: E711
                X[:, j] = _encode_categories(values, spec.categories)
                booleans = table.columns[spec.name].boolean_rows()
                numbers = table.numeric(spec.name) if booleans.any() else None
                for i in np.flatnonzero(np.isnan(X[:, j]) & (values != None)):  # noqa: E711
                    # A boolean in either format's spelling, as matrix() reads it.
                    v = bool(numbers[i]) if numbers is not None and booleans[i] else values[i]
                    code = category_code(spec.codes, v)
                    X[i, j] = math.nan if code is None else code
        if self.history is not None:
            X[:, -1] = self.history.flags(X[:, :-1], self.history.order_of_table(table))
            if FIRST_OF_SHAPE in table.columns:
                # As in matrix(): a trace that states its flag keeps it; a bad one marks the row.
                column = table.columns[FIRST_OF_SHAPE]
                stated = table.numeric(FIRST_OF_SHAPE)
                given = np.isfinite(stated)
                valid = given & ((stated == 0.0) | (stated == 1.0))
                X[valid, -1] = stated[valid]
                ok &= valid | ~given
                if column.is_categorical:
                    ok &= column.code_array() < 0
        return X, ok


def _timestamp_field(table: TraceTable) -> str | None:
    return next((k for k in sorted(TIMESTAMP_KEYS, key=len) if k in table.columns), None)


def _in_run_order(table: TraceTable, rows: np.ndarray) -> np.ndarray:
    """``rows`` in the order their tasks ran, by the traces' timestamp where every one of
    them has one (ties and a file already in order keep the file's order); else as given.
    The model reads how the runtimes' level moved between stretches of the run from the
    rows' order (modeling.model.stretch_levels): traces gathered from several workers'
    logs, one log after the other, would make each log a stretch of its own."""
    order_field = _timestamp_field(table)
    if order_field is None or len(rows) < 2:
        return rows
    ts = timestamps(table, order_field)[rows]
    if not np.isfinite(ts).all() or (np.diff(ts) >= 0).all():
        return rows
    return rows[np.argsort(ts, kind="stable")]


def _shape_history(table: TraceTable, rows: np.ndarray, specs: list[FeatureSpec], X: np.ndarray,
                   y: np.ndarray) -> tuple[ShapeHistory, np.ndarray, None] | tuple[None, None, str]:
    """The history of input shapes and the training rows' flags, where the traces'
    timestamps and features make one useful; else (None, None, why not)."""
    n = len(rows)
    order_field = _timestamp_field(table)
    if FIRST_OF_SHAPE in (s.name for s in specs):
        return None, None, f"the traces hold a '{FIRST_OF_SHAPE}' feature of their own"
    if order_field is None or n == 0:
        why = f"the traces have no timestamp ({' or '.join(sorted(TIMESTAMP_KEYS, key=len))})"
        if FIRST_OF_SHAPE in table.columns:  # stated, and left out by the config's features
            why += f"; they state '{FIRST_OF_SHAPE}', which is not among the config's features: list it there to use it"
        return None, None, why
    order = timestamps(table, order_field)[rows]
    if not np.isfinite(order).all():
        if table.columns[order_field].boolean_rows()[rows].any():
            return None, None, f"some traces' '{order_field}' is true or false, which is no time"
        unread = table.strings(order_field)[rows][~np.isfinite(order)]
        said = next((v for v in unread if v is not None), None)
        return None, None, (f"some traces' '{order_field}' is missing or not a number"
                            + (f" nor an ISO 8601 date and time ({shown(cut(said))})" if said is not None else ""))
    distinct = [len(np.unique(X[:, j])) for j in range(len(specs))]
    key = [j for j, spec in enumerate(specs) if _is_shape_feature(X[:, j], spec, distinct[j])]
    if not key:
        return None, None, "no feature repeats as an input shape does (a category, a whole-number size)"
    # A whole number with many distinct values may be a size (a sequence length) or a
    # count that shapes nothing (the tokens of a padded batch) and would make nearly every
    # row a shape of its own. Keys without such features (the SHAPE_KEY_MAX_OPTIONAL most
    # varied, in every combination) are tried too. The full key is kept if its flag is
    # usable; another key must explain more of the log runtime's variance than the best
    # kept so far (or than nothing) by SHAPE_KEY_EVIDENCE / n: n times the share explained
    # by a flag of no effect is about chi-square with one degree of freedom.
    optional = sorted((j for j in key if specs[j].kind == "numeric" and distinct[j] > SHAPE_KEY_DISTINCT_SHARE * n),
                      key=lambda j: (-distinct[j], j))[:SHAPE_KEY_MAX_OPTIONAL]
    trials = [[j for j in key if j not in dropped]
              for r in range(len(optional) + 1) for dropped in itertools.combinations(optional, r)]
    log_y = np.log(y)
    best: tuple[float, ShapeHistory, np.ndarray] | None = None
    why_not = ""
    for trial in trials:
        if not trial:
            continue
        full = len(trial) == len(key)
        widest = max(trial, key=lambda j: distinct[j])
        if distinct[widest] > SHAPE_MAX_DISTINCT:  # more shapes than the cap, whatever the other features
            why_not = why_not or (f"at least {distinct[widest]} input shapes ({specs[widest].name} alone), "
                                  f"more than {SHAPE_MAX_DISTINCT}")
            continue
        history = ShapeHistory.learn(X, order, trial, order_field)
        if len(history.shapes) > SHAPE_MAX_DISTINCT:
            why_not = why_not or f"{len(history.shapes)} input shapes, more than {SHAPE_MAX_DISTINCT}"
            continue
        flags = history.flags(X, order)
        first = int(flags.sum())
        # A flag that is (almost) always the same says nothing the model could use.
        if min(first, n - first) < SHAPE_MIN_ROWS:
            why_not = why_not or (f"{first} first runs and {n - first} repeats: at least {SHAPE_MIN_ROWS} of "
                                  "each are needed")
            continue
        explained = _share_explained(log_y, flags)
        if full or explained > (best[0] if best else 0.0) + SHAPE_KEY_EVIDENCE / n:
            best = (explained, history, flags)
    if best is None:
        if optional:
            names = ", ".join(specs[j].name for j in optional)
            why_not += f"; no shape without {names} had a flag that explained enough of the runtime"
        return None, None, why_not
    return best[1], best[2], None


def row_counters(table: TraceTable) -> frozenset[str]:
    """The columns that number ``table``'s traces 0, 1, 2, ... (see :func:`_is_row_counter`).

    Found on the whole file: a part of it (a ``group_by`` group, a benchmark's random
    training rows) numbers its rows with gaps, and the counter was a feature there that
    located each held-out row between its neighbours in time.
    """
    return frozenset(name for name, col in table.columns.items()
                     if not col.is_categorical and col.at_rows is None and _is_row_counter(col.as_numeric()))


def _is_row_counter(values: np.ndarray) -> bool:
    """Whether a column numbers the traces in order, 0, 1, 2, ... (at least
    ``ROW_COUNTER_MIN_ROWS`` of them): a runtime's dependence on it is drift in time, which
    a feature cannot carry forward. From 0 only: a sweep of batch sizes 1, 2, ..., 64, one
    run each, is a feature."""
    if len(values) < ROW_COUNTER_MIN_ROWS or values[0] != 0.0 or not np.isfinite(values).all():
        return False
    return bool((np.diff(values) == 1.0).all())


def _share_explained(values: np.ndarray, flags: np.ndarray) -> float:
    """The share of the variance of ``values`` between the two groups that ``flags`` makes."""
    total = float(np.var(values))
    # Values equal but for rounding (constant runtimes' logs) have a variance of rounding's
    # residue, 1e-30 and not 0: a flag then "explained" 22% of it, and chose the shape key.
    if total == 0.0 or np.ptp(values) <= 64 * np.finfo(float).eps * float(np.abs(values).max()):
        return 0.0
    ones = flags == 1.0
    share = ones.mean()
    return share * (1.0 - share) * float(values[ones].mean() - values[~ones].mean()) ** 2 / total


def _is_shape_feature(col: np.ndarray, spec: FeatureSpec, distinct: int) -> bool:
    """Categories and counts (a batch size, an image size) that repeat; not ids, counters or measurements.

    ``distinct`` is the number of distinct values in ``col``."""
    if distinct == len(col):
        return False  # an id or a counter: never repeats, so no shape would either
    if spec.kind == "categorical" or np.array_equal(col, np.round(col)):
        return True
    return distinct <= SHAPE_KEY_DISTINCT_SHARE * len(col)


def stated_flag(v: Any) -> float | str:
    """A trace's own ``first_of_shape`` (the caller knows its instance's warm state), or an error."""
    if isinstance(v, bool) or (isinstance(v, (int, float)) and v in (0, 1)):
        return float(v)
    return f"'{FIRST_OF_SHAPE}' must be true or false, got {shown(v)}"


_FLAG_TYPES = (bool, int, float)


def _stated_flags_of(values: list[Any], errors: list[str | None]) -> np.ndarray:
    """Each trace's stated ``first_of_shape`` as :func:`stated_flag` reads it: 1.0 or 0.0, NaN
    where it states none, or one that is no flag (whose error is set in ``errors``)."""
    flags = np.fromiter((float(v) if v.__class__ in _FLAG_TYPES and v in (0, 1) else math.nan for v in values),
                        dtype=np.float64, count=len(values))
    for i in np.flatnonzero(np.isnan(flags)).tolist():
        if values[i] is None:
            continue
        flag = stated_flag(values[i])  # (a subclass of a number, say)
        if isinstance(flag, str):
            errors[i] = errors[i] or flag
        else:
            flags[i] = flag
    return flags


def _stated_flags(table: TraceTable, rows: np.ndarray) -> np.ndarray | None:
    """The training traces' own ``first_of_shape`` on ``rows``: 1.0 or 0.0 (a boolean, 1 or 0,
    or their word), NaN where not stated; None where a value is none of these (the column is
    then an ordinary feature, as before 2026-12-01)."""
    column = table.columns[FIRST_OF_SHAPE]
    flags = column.as_numeric(spelled=True)[rows]
    if column.is_categorical:
        strings = table.strings(FIRST_OF_SHAPE)[rows]
        for i in np.flatnonzero(np.isnan(flags) & (strings != None)):  # noqa: E711
            word = _boolean_word(strings[i].strip().lower())
            if word is None:
                return None
            flags[i] = word
    given = np.isfinite(flags)
    if not np.isin(flags[given], (0.0, 1.0)).all():
        return None
    return flags


def _boolean_word(v: Any) -> float | None:
    """1.0 or 0.0 for a boolean spelled as text (a CSV file's ``true``), else None."""
    return BOOLEAN_WORDS.get(v) if v.__class__ is str else None


CONSTANTS = "constants"  # the key of a schema's constant fields in a version's stored metadata


def _constants_from_json(items: Any, feature_names: set[str]) -> tuple[tuple[str, float | str], ...]:
    if not isinstance(items, list):
        raise ValueError(f"'{CONSTANTS}' must be a list of [name, value] pairs")
    out: list[tuple[str, float | str]] = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and item[0] not in feature_names and (isinstance(item[1], str) or (
                    isinstance(item[1], (int, float)) and not isinstance(item[1], bool) and math.isfinite(item[1])))):
            raise ValueError(f"'{CONSTANTS}' holds {shown(item)}, not a [name, value] pair of a field that is no feature")
        out.append((item[0], item[1] if isinstance(item[1], str) else float(item[1])))
    if len({name for name, _ in out}) < len(out):
        raise ValueError(f"'{CONSTANTS}' names a field twice")
    return tuple(out)


def _frequent(counts: Counter, most: int) -> list[str]:
    """The values a categorical feature learns of these ``counts``: those on CATEGORY_MIN_ROWS
    rows or more, at most ``most`` of them, the most frequent (equally frequent ones by name,
    so that the choice is reproducible)."""
    return sorted((c for c, k in counts.items() if k >= CATEGORY_MIN_ROWS), key=lambda c: (-counts[c], c))[:most]


def _category_counts(values: Iterable[Any]) -> Counter:
    """How many of ``values`` (a trace's, of a categorical field) name each category; a list,
    an object or a missing value names none."""
    return Counter(category_text(v) for v in values if isinstance(v, (str, int, float)))


def _varied_constant(name: str, constant: float | str, others: list[Any]) -> FeatureSpec | None:
    """The feature a field training saw one value of (``constant``) becomes, given the
    ``others`` values it has since (those that differ from it), as training would have
    learned it; None where they are too few to teach anything."""
    if isinstance(constant, str):
        frequent = _frequent(_category_counts(others), MAX_CATEGORIES - 1)
        return FeatureSpec(name, "categorical", (constant, *sorted(frequent)), optional=True) if frequent else None
    numbers = np.array([_as_feature_reads(v) for v in others], dtype=np.float64)
    numbers = numbers[np.isfinite(numbers)]
    if len(numbers) < CATEGORY_MIN_ROWS:
        return None
    # Words read as gaps, as the constant: a trace that gave one was answered before.
    return FeatureSpec(name, "numeric", fill=constant, optional=True, words_missing=True,
                       low=min(constant, float(numbers.min())), high=max(constant, float(numbers.max())))


def _differs_from_constant(values: list[Any], constant: float | str) -> list[int] | None:
    """The places of ``values`` (a field's, trace by trace) that give another value than
    ``constant``, the one training saw (a number, or a category's text); None where none
    does. A missing value (None) differs from nothing."""
    if isinstance(constant, str):
        codes = {constant: 0}

        def other(v: Any) -> bool:
            return v is not None and (not isinstance(v, (str, int, float)) or category_code(codes, v) is None)

        try:
            if set(values) <= {constant, None}:  # the common batch: told in C
                return None
        except TypeError:
            pass
        keyed = list(zip(map(type, values), values))  # (True and 1 are one key, and may read apart)
        try:
            distinct = set(keyed)  # each value judged once: a batch holds few
        except TypeError:  # a list or an object among them: value by value
            return [i for i, v in enumerate(values) if other(v)] or None
        bad = {key for key in distinct if other(key[1])}
        return [i for i, key in enumerate(keyed) if key in bad] if bad else None
    numbers = _plain_numbers(values, set(map(type, values)))
    if numbers is None:  # read as a numeric feature reads them (a boolean's word too)
        numbers = np.fromiter((math.nan if v is None else _as_feature_reads(v) for v in values), dtype=np.float64,
                              count=len(values))
        given = np.array([v is not None for v in values], dtype=bool)
    else:
        given = np.ones(len(values), dtype=bool)
    differs = np.flatnonzero(given & ~(numbers == constant))
    return differs.tolist() or None


def _as_feature_reads(v: Any) -> float:
    x = feature_number(v)
    if x != x and (word := _boolean_word(v)) is not None:
        return word
    return x


def category_code(codes: dict[str, int], v: Any) -> int | None:
    """The code of the category ``v`` stands for. A boolean is also its word, as a model
    fitted on a CSV file (where ``true`` is text) learned it, and a boolean's word also the
    boolean, as one fitted on JSON (where ``true`` is 1) learned it."""
    code = codes.get(category_text(v))
    if code is None:
        truth = bool(v) if v.__class__ is bool else _boolean_word(v)
        if truth is not None:
            for other in (_TRUE_SPELLINGS if truth else _FALSE_SPELLINGS):
                if (code := codes.get(other)) is not None:
                    break
    return code


# A boolean's category, in every way training may have learned it: a CSV file's words, JSON's number.
_TRUE_SPELLINGS = (*(w for w, x in BOOLEAN_WORDS.items() if x == 1.0), category_text(True))
_FALSE_SPELLINGS = (*(w for w, x in BOOLEAN_WORDS.items() if x == 0.0), category_text(False))


def _encode_categories(values: np.ndarray, categories: tuple[str, ...]) -> np.ndarray:
    lookup = {c: float(k) for k, c in enumerate(categories)}
    return np.array([lookup.get(v, math.nan) if v is not None else math.nan for v in values], dtype=np.float64)


def _plain_numbers(values: list[Any], kinds: set[type]) -> np.ndarray | None:
    """``values`` as floats, converted in C, where all are plain ints and floats (of
    ``kinds``, their types), which :func:`feature_number` reads as ``float()`` does; None
    otherwise, and for an integer past the float range."""
    if not kinds <= _PLAIN_NUMBER_TYPES:
        return None
    try:
        return np.array(values, dtype=np.float64)
    except OverflowError:
        return None


_PLAIN_NUMBER_TYPES = frozenset({int, float})


def feature_number(v: Any) -> float:
    """A trace's value of a numeric feature: a number or a boolean as :func:`as_number` reads
    it, and a string that spells a finite number (``"8"``, ``" 12.5"``) as that number, as
    runtimes and CSV cells are read; NaN for anything else."""
    if v.__class__ is str:
        x = finite_number_in_text(v)
        return math.nan if x is None else x
    return as_number(v)


# The most different sets of fields a batch's traces are searched in for one spelt like a
# missing feature, and the most fields of one compared: 2,000 traces of 500 fields each,
# every one missing a feature, took 3 s to search whole (5 ms to encode with the feature
# there); so bounded, about 40 ms.
_HINTS_PER_BATCH = 64
_HINT_FIELDS = 64


def misspelling_hint(name: str, trace: dict[str, Any], known: Collection[str],
                     searched: dict[tuple[Any, ...], str | None] | None = None, reader: str = "model") -> str:
    """What to add to "missing required feature ``name``" where ``trace`` holds a field of a
    close name (see :func:`_close_field`) that the ``reader`` does not read (its fields:
    ``known``); else "". ``searched``: a batch's fields found so far, by feature and fields
    (traces of the same fields are searched once, and at most ``_HINTS_PER_BATCH`` ones)."""
    key = (name, *trace)
    if searched is None:
        close = _close_field(name, trace, known)
    elif key in searched:
        close = searched[key]
    elif len(searched) < _HINTS_PER_BATCH:
        close = searched[key] = _close_field(name, trace, known)
    else:
        close = None
    return "" if close is None else f" (the trace has {shown(close)}, which the {reader} does not read: a misspelling?)"


def _close_field(name: str, fields: Iterable[Any], known: Collection[str]) -> str | None:
    """The field among ``fields`` (a trace's, not in ``known``) whose name is closest to the
    feature ``name``, where one is close (difflib's ratio 0.85 or more: ``img_size`` for
    ``image_size``, not ``output_tokens`` for ``input_tokens``)."""
    size = len(name)
    candidates = [k for k in fields if k.__class__ is str and abs(len(k) - size) <= max(3, size // 4)
                  and k not in known][:_HINT_FIELDS]
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.85)
    return close[0] if close else None


def _numeric_problem(name: str, value: Any) -> str:
    if value is None:
        return f"missing required feature '{name}'"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"feature '{name}' must be a finite number, got {shown(value)}"
    return f"feature '{name}' must be a number, got {type(value).__name__} {shown(value)}"


# A column of numbers with a few words among them ("n/a", "-") is a numeric feature whose
# words are gaps: read as a category, each distinct number was a value of its own, and a
# column of 200 token counts with one "n/a" was dropped as an identifier. At most this share
# of its values may be words; more ("fast" and 3 alike) and the column is categorical.
WORDS_AS_GAPS_SHARE = 0.05


def _few_words_among_numbers(col: Any, rows: np.ndarray) -> int | None:
    """How many of ``rows`` hold a word, where the column reads as numbers on them: none (the
    words, if any, are on rows not trained on), or a few among at least two distinct numbers;
    None where it is categorical on them.

    Only the rows trained on count: a column of numbers was categorical because another
    ``group_by`` group, or a row without a runtime, held a word there."""
    if col.codes is None:
        return 0
    codes = col.code_array()[rows]
    strings = codes >= 0
    if not strings.any():
        return 0
    if not np.isfinite(col.as_numeric()[rows]).any():
        return None  # strings alone make a categorical feature, "8" and "16" too
    # A number written as a string ("8") is a number of a column that holds numbers, not a
    # word: the runtime and a CSV cell are read so, and so is a trace's value at prediction.
    numbers = col.as_numeric(spelled=True)[rows]
    words = int((strings & np.isnan(numbers)).sum())
    numbers = numbers[np.isfinite(numbers)]
    if len(numbers) < 2 or numbers.min() == numbers.max():
        return None
    return words if words <= WORDS_AS_GAPS_SHARE * (words + len(numbers)) else None


def _category_problem(name: str, value: Any) -> str:
    return f"feature '{name}' must be a text or a number, got {type(value).__name__} {shown(value)}"


def _reads_as_number(s: str) -> bool:
    return number_in_text(s) is not None
