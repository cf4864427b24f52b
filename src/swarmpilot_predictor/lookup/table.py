"""The in-memory table: :class:`LookupTable`, its parts and indexes, matching and answers.

:class:`LookupTable` holds a table column-wise (:class:`FeatureColumn`) with its
indexes per identity (:class:`_Group`, :class:`_Partition`), matches traces to records
(:class:`LookupResult`) and answers them. :class:`_Builder` makes one from records:
``LookupTable.load`` and ``from_records`` build through it and it builds a
``LookupTable``, so the two share this module (apart they would import each other).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import itertools
import math
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
from scipy.spatial import cKDTree
from scipy.special import fdtri

from ..distribution import (RemainingDistribution, StoredQuantileDistribution, TotalReading, interval_levels,
                            levels_of_rows, levels_reached)
from ..errors import AmbiguousModel, NotFound, shown
from ..schemas import DEADLINE_KEY
from ..features import FIRST_OF_SHAPE, misspelling_hint, stated_flag
from ..identity import (IDENTITY_KEYS, IdentityPattern, describe_stated, fields_naming_a_model, join_key, named_by_traces,
                        has_control_characters, names_a_model, names_part)
from ..traces import (
    TRACE_FILE_KINDS,
    BOOLEAN_WORDS,
    LineModeError,
    TABLE_RESERVED_KEYS,
    TraceError,
    as_number,
    category_text,
    elapsed_times,
    encoding_problem,
    finite_number_in_text,
    normalize_traces,
    skip_bom,
)
from .files import PLAIN_INTEGER, iter_csv_records, iter_json_records, iter_jsonl_records
from .hashing import (MASK, NAN_INT, SEED_INT, code_bits, float_bits, float_int, hash_parts, mix_int, probe,
                      probe_one, sorted_index, str_hash, vocab_code)
from .names import RECORD_KEYS, SHAPE_FEATURES, table_format
from .quantiles import (MAX_TABLE_RUNTIME, TableCompletion, TablePrediction, merge_interval_knots, merge_interval_knots_many, quantile_function,
                        quantiles_one)

MATCH_KINDS = ("exact", "task_id", "nearest", "random")
_EXACT, _TASK, _NEAREST, _RANDOM = range(4)
# Calls with at most this many traces take the per-trace path (plain Python on
# scalars); larger batches the vectorised one. Both give the same answers.
SCALAR_MAX = 8
# Standardised coordinates are clipped here for the nearest-record search: a value near
# the float limit (or infinite) still finds the farthest record on its side, where its
# squared distance would otherwise overflow and the k-d tree answer "no neighbour". (A
# million standard deviations out, the records' differences still show in the distances.)
_Z_MAX = 1e6
# Records further than this many (robust) standard deviations out on a feature do not set
# the features' weights (LookupTable._relevance): of lognormal token counts of sigma 1, 3 in
# a hundred thousand, of sigma 2, 7 in a thousand; a typo's 10^5 tokens among 16 to 4,096
# (64 out) is left out. (At 20, 2% of the sigma-2 records were, and the answers came a little
# further from the model's.)
_FIT_Z_MAX = 50.0
# The least weight of a nearest-record coordinate (see LookupTable._relevance): a feature
# the answers do not follow still tells records apart that are otherwise alike.
_MIN_WEIGHT = 1e-3
# A query's category that the C lookup did not find (codes are -2 and up).
_NOT_LOOKED_UP = -3


@dataclass
class FeatureColumn:
    name: str
    kind: str  # "numeric" | "categorical"
    values: np.ndarray  # float64 (numeric, NaN = missing) or int64 codes (-1 = missing)
    vocab: dict[str, int] = field(default_factory=dict)
    # A numeric feature's origin and unit as a nearest-record coordinate (_centre_and_scale).
    centre: float = 0.0
    scale: float = 1.0
    # Of a categorical column that also holds numbers, its first string that spells no finite
    # number: why it is not numeric (an edited table's typo makes a numeric column categorical).
    word_among_numbers: str | None = None
    # A query trace that does not state this feature reads it as this value (None:
    # it is missing). Only ``first_of_shape`` has one: not stating it means a repeat
    # run, the usual case for a shape a table holds.
    missing_as: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.name == FIRST_OF_SHAPE and self.kind == "numeric":
            self.missing_as = 0.0

    def query_value(self, trace: dict[str, Any]) -> Any:
        v = trace.get(self.name)
        return self.missing_as if v is None else v

    def present(self, rows: np.ndarray) -> np.ndarray:
        # A numeric value is missing where it is NaN; an infinite one (a JSON 1e999, a CSV cell
        # 'inf') is there: counted missing, it made the column optional, and a trace that
        # lacked that feature was answered by a nearest record, not "missing required feature".
        v = self.values[rows]
        return ~np.isnan(v) if self.kind == "numeric" else v >= 0

    def standardised(self, v: np.ndarray) -> np.ndarray:
        """Numeric values as nearest-record coordinates (NaN stays NaN)."""
        return np.clip((v - self.centre) / self.scale, -_Z_MAX, _Z_MAX)


@dataclass
class _Partition:
    rows: np.ndarray  # table rows, one per distinct feature tuple
    tree: cKDTree | None


@dataclass
class _Group:
    """The records of one identity and their index."""

    identity: tuple[str | None, ...]
    rows: np.ndarray
    cols: list[int]  # feature columns present in this group
    num_cols: list[int]  # the nearest-record coordinates
    cat_cols: list[int]
    # Columns a nearest record must equal: the categorical ones, then the first-run flag (a
    # first run's answer is ten times a repeat's: never the nearest of the other kind).
    part_cols: list[int]
    # Numeric columns some of the group's records lack: the model read them as optional (a
    # trace without one is answered), and a record lacking the value sits at the centre (the median).
    optional_cols: frozenset[int]
    exact_keys: np.ndarray
    exact_rows: np.ndarray
    task_keys: np.ndarray
    task_rows: np.ndarray
    partitions: dict[int, _Partition]
    # The features that make a shape, and an index of the shapes the group's repeat records
    # have (those the model saw: hash, a record's row); None where the records do not say
    # which features make a shape.
    shape_cols: list[int] | None = None
    seen_keys: np.ndarray | None = None
    seen_rows: np.ndarray | None = None
    # Per nearest-record coordinate (num_cols), how much it moves the records' answers.
    weights: list[float] = field(default_factory=list)
    model_versions: list[int] | None = None  # see LookupTable.versions_of
    # Feature columns none of the group's records hold, in a table of one model: a trace
    # that states one has no exact record (its value was never compared), however the
    # others match.
    absent_cols: list[int] = field(default_factory=list)

    @functools.cached_property
    def seen_set(self) -> frozenset[int]:
        """``seen_keys`` for the single-trace path: a numpy search cost 2 µs more a lookup."""
        return frozenset(self.seen_keys.tolist()) if self.seen_keys is not None else frozenset()

    @property
    def featureless(self) -> bool:
        return not self.cols

    def matches(self, pattern: IdentityPattern | None) -> bool:
        if pattern is None:
            return True
        return all(want is None or have is None or want == have for want, have in zip(pattern.as_tuple(), self.identity))

    def model_info(self, pattern: IdentityPattern | None = None) -> dict[str, str]:
        """The seed's ``model_info``; parts the records leave out come from the request, else ``*``."""
        asked = pattern.as_tuple() if pattern is not None else (None,) * 5
        parts = [have if have is not None else (want if want is not None else "*") for have, want in zip(self.identity, asked)]
        return dict(zip(("type", "name", "hardware", "software_name", "software_version"), parts))

    def describe(self) -> str:
        return join_key(self.identity)


def _described(parts: tuple[str | None, ...]) -> str:
    """A table's model key for a message: quoted where a part begins or ends with white space or
    holds a control character (a hand-edited '0.4.0 '): bare, "no records for llm/m/h/s/1; it
    holds llm/m/h/s/1 " named the model asked for as the one held."""
    key = join_key(parts)
    odd = any(p is not None and (p != p.strip() or has_control_characters(p)) for p in parts)
    return shown(key) if odd else key


def _several_models(groups: list[_Group]) -> bool:
    """Whether ``groups`` hold records of more than one model: two of them differ in an
    identity part both state (a record that leaves a part out answers for any value of it)."""
    first = groups[0].identity
    return any(a is not None and b is not None and a != b
               for g in groups[1:] for a, b in zip(first, g.identity)) or (
        len(groups) > 2 and _several_models(groups[1:]))


@dataclass
class LookupResult:
    """Per trace: the matched row (-1 when none), how it matched, the distance, or why not."""

    rows: np.ndarray
    match: np.ndarray  # int8 index into MATCH_KINDS, -1 when unmatched
    distance: np.ndarray
    errors: list[str | None]
    # Where a record of the other kind of run answered (the table held none of the trace's).
    kind_mismatch: set[int] = field(default_factory=set)
    # How long each task has run, 0 where it has not started (None: no trace states it).
    elapsed: np.ndarray | None = None

    @property
    def ok(self) -> np.ndarray:
        return self.rows >= 0

    def kinds(self) -> list[str | None]:
        return [MATCH_KINDS[m] if m >= 0 else None for m in self.match.tolist()]


@dataclass
class _RowAnswers:
    """The answers of the records found, in the traces' order: each one's (levels, values,
    interval), mean, standard deviation, identity (an index into the table's) and model
    version (-1: none). A running task's are made its time left's in place."""

    answers: list[tuple[list[float], list[float], list[float]]]
    expect: list[float]
    error: list[float]
    ident: list[int]
    versions: list[int]


class LookupTable:
    """An immutable, indexed lookup table held column-wise."""

    def __init__(
        self,
        name: str,
        identities: list[tuple[str | None, ...]],
        row_identity: np.ndarray,
        levelsets: list[np.ndarray],
        row_levelset: np.ndarray,
        row_position: np.ndarray,
        values: list[np.ndarray],
        expect: np.ndarray,
        error: np.ndarray,
        interval: np.ndarray,
        confidence: np.ndarray,
        versions: np.ndarray,
        columns: list["FeatureColumn"],
        task_hashes: np.ndarray | None,
        skipped: int = 0,
        path: Path | None = None,
        fmt: str | None = None,
        seed: int = 0,
        shape_features: dict[int, tuple[str, ...]] | None = None,
        knot_levels: list[np.ndarray] | None = None,
        knot_values: list[np.ndarray] | None = None,
    ):
        self.name = name
        self.shape_features = dict(shape_features or {})
        self.path = path
        self.format = fmt
        self.seed = seed
        self.skipped = skipped
        self.n_rows = len(expect)
        self.identities = identities
        self.row_identity = row_identity
        self.levelsets = levelsets
        self.levelset_lists = [ls.tolist() for ls in levelsets]
        self.row_levelset = row_levelset
        self.row_position = row_position
        self.values = values
        # Per set of stored levels: the further levels its records store (knot_levels; none in
        # a table made before 2026-12-06, or by another writer) and their values, (records, knots).
        self.knot_levels = knot_levels if knot_levels is not None else [np.zeros(0) for _ in levelsets]
        self.knot_values = knot_values if knot_values is not None else [np.zeros((len(v), 0)) for v in values]
        # Per set of stored levels, for one record's answer on Python floats: the stored and
        # further levels in increasing order, and where each comes from among the two's values.
        self._merged_lists = []
        for L, K in zip(levelsets, self.knot_levels):
            order = np.argsort(np.concatenate([L, K]), kind="stable")
            self._merged_lists.append((np.concatenate([L, K])[order].tolist(), order.tolist()))
        self.expect = expect
        self.error = error
        self.interval = interval
        self.confidence = confidence
        self.versions = versions
        # Per record: its highest knot's level and value and its body's spread (see
        # task_distributions), worked out on the first queue total.
        self._tops: np.ndarray | None = None
        t0 = time.perf_counter()
        self.columns = columns
        self.task_hashes = task_hashes
        self.groups = [self._build_group(g) for g in range(len(identities))]
        self._group_cache: dict[IdentityPattern | None, list[_Group]] = {}
        self.index_seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(cls, path: Path | str, name: str | None = None, seed: int = 0) -> "LookupTable":
        """Read a table file (see TRACE_FILE_KINDS); TraceError when it cannot be read."""
        path = Path(path)
        name = name or path.name
        fmt = table_format(path.name)
        if fmt is None:
            raise TraceError(f"{name}: a lookup table is a {TRACE_FILE_KINDS} file")
        try:
            return cls._load(path, name, fmt, seed, line_mode=True)
        except LineModeError as first:
            # Valid JSON laid out differently from the writer's one record a line
            # parses with the general decoder; a truncated file fails again.
            try:
                return cls._load(path, name, fmt, seed, line_mode=False)
            except TraceError:
                raise TraceError(str(first)) from None

    @classmethod
    def _load(cls, path: Path, name: str, fmt: str, seed: int, line_mode: bool) -> "LookupTable":
        try:
            with _file_records(path, name, fmt, line_mode) as records:
                return _Builder(name).build(records, path=path, fmt=fmt, seed=seed)
        except _RecordFault as fault:
            # Found once every record was read: the record is placed as the file places it
            # (a line, an item), read again up to it, rather than by its count among the
            # successful ones, which a file's reader could not find.
            where = None
            with contextlib.suppress(TraceError), _file_records(path, name, fmt, line_mode) as records:
                successes = (w for w, rec in records if rec.__class__ is dict and rec.get("status") in (None, "success"))
                where = next(itertools.islice(successes, fault.index, None), None)
            if where is None:
                raise
            raise TraceError(f"{name}: {where}: {fault.detail}") from None

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]], name: str = "<records>", seed: int = 0) -> "LookupTable":
        return _Builder(name).build(((f"record {i}", r) for i, r in enumerate(records)), seed=seed)

    def _build_group(self, g: int) -> _Group:
        if len(self.identities) == 1:
            rows = np.arange(self.n_rows, dtype=np.int64)
        else:
            rows = np.flatnonzero(self.row_identity == g).astype(np.int64)
        cols = [j for j, c in enumerate(self.columns) if c.present(rows).any()]
        flag = next((j for j in cols if self.columns[j].missing_as is not None), None)
        num = [j for j in cols if self.columns[j].kind == "numeric" and j != flag]
        cat = [j for j in cols if self.columns[j].kind == "categorical"]
        part_cols = cat + ([flag] if flag is not None else [])
        empty = np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
        exact_keys, exact_rows = empty
        partitions: dict[int, _Partition] = {}
        weights = np.ones(len(num))
        if cols:
            keys = hash_parts([self._bits(j, rows) for j in cols], len(rows))
            exact_keys, exact_rows = sorted_index(keys, rows)
            unique_rows = np.sort(exact_rows)
            cat_keys = hash_parts([self._bits(j, unique_rows) for j in part_cols], len(unique_rows))
            order = np.argsort(cat_keys, kind="stable")
            sorted_keys = cat_keys[order]
            bounds = np.flatnonzero(np.diff(sorted_keys)) + 1
            if num:
                Z_all = self._standardised(num, unique_rows)
                weights = self._relevance(Z_all, unique_rows, cat_keys)
            for part in np.split(order, bounds):
                prow = unique_rows[part]
                tree = None
                if num:
                    tree = cKDTree(Z_all[part] * weights, leafsize=16, balanced_tree=False, compact_nodes=False)
                partitions[int(cat_keys[part[0]])] = _Partition(prow, tree)
        task_keys, task_rows = empty
        if self.task_hashes is not None:
            th = self.task_hashes[rows]
            has = th >= 0
            task_keys, task_rows = sorted_index(th[has], rows[has])
        optional = frozenset(j for j in num if not self.columns[j].present(rows).all())
        shape_cols, seen = None, (None, None)
        names = {self.columns[j].name: j for j in cols}
        if flag is not None and (shape := self.shape_features.get(g)) and all(n in names for n in shape):
            shape_cols = [names[n] for n in shape]
            repeats = rows[self.columns[flag].values[rows] == 0.0]
            seen = sorted_index(hash_parts([self._bits(j, repeats) for j in shape_cols], len(repeats)), repeats)
        # Only where the table holds one model: in a table of several, a column none of this
        # model's records hold may be another model's feature, which this one never reads.
        present = set(cols)
        absent = [j for j, c in enumerate(self.columns)
                  if j not in present and c.missing_as is None] if len(self.identities) == 1 else []
        return _Group(self.identities[g], rows, cols, num, cat, part_cols, optional, exact_keys, exact_rows, task_keys,
                      task_rows, partitions, shape_cols, *seen, weights.tolist(), absent_cols=absent)

    def _relevance(self, Z: np.ndarray, rows: np.ndarray, parts: np.ndarray) -> np.ndarray:
        """Per standardised numeric feature, how much the records' answers follow it, relative
        to the feature they follow most, at least ``_MIN_WEIGHT``. A nearest record is then
        near on what matters: weighted alike, an input-token count the model ignores picked
        records 4 times off while one that answers as the trace was there.

        Within each combination of categorical values (and flag), of the records' log mean,
        fitted by least squares on every feature and its square (a curve, a U shape): the
        larger of the spread of the feature's own part of that fit (its share where features
        move together) and the spread over bins of the feature of that part plus what the
        fit leaves unexplained, where an F test says it is more than chance (an effect no
        curve follows: numeric codes of zones, say).
        """
        n, p = Z.shape
        # Records far outside on a feature (a typo's 10^15 tokens) are left out of the fit:
        # one of them tilted it, and the weights, for every other record.
        inside = (np.abs(Z) <= _FIT_Z_MAX).all(axis=1)
        if inside.sum() >= p + 3:
            Z, rows, parts = Z[inside], rows[inside], parts[inside]
            n = len(Z)
        if n < p + 3:
            return np.ones(p)
        t = np.log(np.maximum(self.expect[rows], 1e-300))
        _, inv = np.unique(parts, return_inverse=True)
        counts = np.bincount(inv).astype(np.float64)

        def within(M: np.ndarray) -> np.ndarray:
            """``M`` less its mean in each combination (column by column)."""
            means = np.stack([np.bincount(inv, weights=col) / counts for col in M.reshape(len(M), -1).T], axis=1)
            return M - means[inv].reshape(M.shape)

        Zd, td = within(Z), within(t)
        with np.errstate(all="ignore"):
            Q = within(Z ** 2)
            q_sd = Q.std(axis=0)
            Q = Q / np.where(q_sd > 0, q_sd, 1.0)
            D = np.column_stack([Zd, Q])
            D = np.where(np.isfinite(D), D, 0.0)
            coef = np.linalg.lstsq(D, td, rcond=None)[0]
            own = Zd * coef[:p] + Q * coef[p:]  # each feature's own part of the fit
            residual = td - own.sum(axis=1)
            # Partial residuals: a feature that only moves with one that matters has little.
            effect = np.array([_binned_effect(Zd[:, k], residual + own[:, k]) for k in range(p)])
            relevance = np.maximum(own.std(axis=0), effect)
        top = relevance.max() if len(relevance) else 0.0
        if not (np.isfinite(relevance).all() and top > 1e-9):
            return np.ones(p)
        return np.maximum(relevance / top, _MIN_WEIGHT)

    def versions_of(self, g: _Group) -> list[int]:
        """The model versions ``g``'s records were made by (a table never changes: found once)."""
        if g.model_versions is None:
            v = self.versions[g.rows]
            g.model_versions = np.unique(v[v >= 0]).tolist()
        return g.model_versions

    def _bits(self, j: int, rows: np.ndarray) -> np.ndarray:
        c = self.columns[j]
        return float_bits(c.values[rows]) if c.kind == "numeric" else code_bits(c.values[rows])

    def _standardised(self, cols: list[int], rows: np.ndarray) -> np.ndarray:
        Z = np.empty((len(rows), len(cols)))
        for k, j in enumerate(cols):
            c = self.columns[j]
            z = c.standardised(c.values[rows])
            Z[:, k] = np.where(np.isnan(z), 0.0, z)  # a record lacking the value sits at the centre (the median)
        return Z

    # ------------------------------------------------------------------ description

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "format": self.format,
            "rows": self.n_rows,
            "skipped_records": self.skipped,
            "features": [{"name": c.name, "kind": c.kind} for c in self.columns],
            "identities": [dict(zip(IDENTITY_KEYS, g.identity)) for g in self.groups],
            "quantiles": [ls.tolist() for ls in self.levelsets],
            "knot_levels": [ks.tolist() for ks in self.knot_levels],
            "index_seconds": self.index_seconds,
        }

    def groups_for(self, pattern: IdentityPattern | None) -> list[_Group]:
        """The identities ``pattern`` selects (``*`` and parts a record leaves out match anything)."""
        hit = self._group_cache.get(pattern)
        if hit is not None:
            return hit
        groups = [g for g in self.groups if g.matches(pattern)]
        if groups:
            if len(self._group_cache) > 1024:
                self._group_cache.clear()
            self._group_cache[pattern] = groups
        if not groups:
            have = ", ".join(_described(g.identity) for g in self.groups[:10]) or "no records"
            want = pattern.describe() if pattern is not None else "*"
            raise NotFound(f"lookup table {self.name!r} has no records for {want}; it holds {have}", field="identity")
        return groups

    # ------------------------------------------------------------------ matching

    def lookup(self, traces: Sequence[Any], pattern: IdentityPattern | None = None) -> LookupResult:
        """Match each trace to a record: exact features, task id, nearest, then random.

        A trace that does not state ``first_of_shape`` is a repeat run if a repeat record
        has its shape (the table holds repeats only of the shapes its model saw, see
        :func:`generate_table`), else a first run, as the model answers it; a record
        answers only traces of its own flag. (In a table that does not say which features
        make a shape, the flag is a repeat's where a repeat record has the trace's
        features, else that of the nearer record of either kind.) Identity fields a trace
        states pick among the table's identities. A trace's ``elapsed_ms`` (a running task)
        is read too: one that is no number of milliseconds fails the trace.
        """
        rows = traces if isinstance(traces, list) else list(traces)
        flat, errors = normalize_traces(rows)  # once: the steps below take flat traces
        named = names_a_model(rows)
        groups = self.groups_for(pattern)
        # Traces naming a model pick it however many the table holds: naming one it lacks is a
        # 404 with one model's records as with two.
        if groups and (named or (len(groups) > 1 and _several_models(groups))):
            # (A trace that could not be read still names its model by its own fields.)
            naming = [f if e is None else fields_naming_a_model(t) for t, f, e in zip(rows, flat, errors)] if named else []
            groups = self._one_model(groups, pattern, naming)
        res = self._lookup_by_stated_identity(flat, errors, pattern, groups) if named else self._lookup(flat, errors, groups)
        res.elapsed, elapsed_errors = elapsed_times(flat, self.feature_names)
        if elapsed_errors is not None and elapsed_errors.count(None) < len(elapsed_errors):
            res.rows = res.rows.copy()
            for i, error in enumerate(elapsed_errors):
                if error is not None and res.rows[i] >= 0:
                    res.rows[i], res.errors[i] = -1, error
        return res

    def _one_model(self, groups: list[_Group], pattern: IdentityPattern | None,
                   flat: list[dict[str, Any]]) -> list[_Group]:
        """Of ``groups``, which name several models, those of the one model the traces'
        identity fields name, as for the models: one request is answered by one model, and
        a ``*`` that several match is a 409 naming them (answered record by record, a queue
        summed A100 and H100 tasks)."""
        asked = pattern or IdentityPattern()
        stated = asked.stated_by(flat)
        said = describe_stated(stated)
        chosen, named = named_by_traces(stated, groups, lambda g: g.identity)
        if not chosen:
            if len(named) > 1 and _several_models(named):
                names = [g.describe() for g in named]
                raise AmbiguousModel(f"the traces name different models of lookup table {self.name!r} "
                                     f"(their {said}): {', '.join(names)}; send each model's traces in a "
                                     f"request of its own", field="identity", extra={"candidates": names})
            if named:  # the one model some traces name; those that name none fail on their own
                return named
            raise NotFound(f"lookup table {self.name!r} has no records for {asked.describe()} with the traces' {said}",
                           field="identity")
        if len(chosen) > 1 and _several_models(chosen):
            names = [g.describe() for g in chosen]
            with_traces = f" with the traces' {said}" if said else ""
            raise AmbiguousModel(f"lookup table {self.name!r} holds {len(names)} models that match "
                                 f"{asked.describe()}{with_traces}: {', '.join(names)}; specify more of the identity",
                                 field="identity", extra={"candidates": names})
        return chosen

    def _lookup_by_stated_identity(self, flat: list[dict[str, Any]], unreadable: list[str | None],
                                   pattern: IdentityPattern | None, groups: list[_Group]) -> LookupResult:
        """:meth:`lookup` where traces state identity fields: as for the model, they say which
        model (here: which of the table's identities) a trace belongs to, and one that names
        another than the request's is an error for that trace."""
        asked = pattern.as_tuple() if pattern is not None else (None,) * len(IDENTITY_KEYS)
        n = len(flat)
        res = LookupResult(np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int8), np.full(n, np.nan), [None] * n)
        parts: dict[tuple, list[int]] = {}
        for i, t in enumerate(flat):  # (flat: SwarmPilot's structured form states them inside)
            said = tuple((j, v) for j, key in enumerate(IDENTITY_KEYS) if isinstance(v := t.get(key), (str, int, float)))
            wrong = next((f"the trace's {IDENTITY_KEYS[j]} {shown(v)} names another model than "
                          f"{join_key(asked)}" for j, v in said if asked[j] is not None and not names_part(v, asked[j])),
                         None)
            if wrong is not None:
                res.errors[i] = wrong
            else:
                parts.setdefault(said, []).append(i)
        for said, idx in parts.items():
            chosen = [g for g in groups if all(g.identity[j] is None or names_part(v, g.identity[j]) for j, v in said)]
            if not chosen:
                stated = ", ".join(f"{IDENTITY_KEYS[j]} {shown(v)}" for j, v in said)
                for i in idx:
                    res.errors[i] = f"lookup table {self.name!r} has no records for the trace's {stated}"
                continue
            got = self._lookup([flat[i] for i in idx], [unreadable[i] for i in idx], chosen)
            rows = np.asarray(idx, dtype=np.int64)
            res.rows[rows], res.match[rows], res.distance[rows] = got.rows, got.match, got.distance
            res.kind_mismatch.update(idx[k] for k in got.kind_mismatch)
            for k, i in enumerate(idx):
                res.errors[i] = got.errors[k]
        return res

    def _lookup(self, every: list[dict[str, Any]], unreadable: list[str | None], groups: list[_Group]) -> LookupResult:
        """:meth:`lookup` among the records of ``groups``, of flat traces (``unreadable``: why
        one could not be read, or None)."""
        flag = next((c for c in self.columns if c.missing_as is not None), None)
        if flag is None:
            return self._match(every, unreadable, groups)
        traces = every
        stated = [t.get(flag.name) for t in every]
        featured = [g for g in groups if g.cols]
        unsaid = [i for i, v in enumerate(stated) if v is None and unreadable[i] is None]
        shaped = bool(featured) and all(g.seen_keys is not None for g in featured)
        if shaped and unsaid:
            # As the model answers a trace that states neither flag nor timestamp: a repeat
            # of a shape it saw (one the table holds a repeat of), else a first run.
            seen = self._shape_seen([every[i] for i in unsaid], featured)
            traces = list(traces)
            for k, i in enumerate(unsaid):
                traces[i] = {**every[i], flag.name: 0.0 if seen[k] else 1.0}
        res = self._match(traces, list(unreadable), groups)  # (a copy: the match adds its own errors)
        # A stated flag is true or false, as a model reads it (2 or 0.5 fail the trace).
        for i, v in enumerate(stated):
            problem = None if v is None else stated_flag(v)
            # The flag's own message, as the model gives it ("must be true or false"), over
            # the generic one its column's match gave ("must be a number").
            if isinstance(problem, str) and unreadable[i] is None:
                res.rows[i], res.match[i], res.distance[i], res.errors[i] = -1, -1, math.nan, problem
        if shaped:
            # Where no record of that kind has the trace's categorical values (a table made
            # from repeats only, say), the nearest of the other kind answers, rather than
            # none, and says so (kind_mismatch): its answer may be ten times off the model's.
            failed = [i for i in unsaid if res.match[i] < 0]
            if failed:
                again = self._match([{**traces[i], flag.name: 1.0 - traces[i][flag.name]} for i in failed],
                                    [None] * len(failed), groups)
                for k, i in enumerate(failed):
                    if again.match[k] >= 0:
                        res.rows[i], res.match[i], res.distance[i] = again.rows[k], again.match[k], again.distance[k]
                        res.errors[i] = None
                        res.kind_mismatch.add(i)
            return res
        # A table that does not say which features make a shape: where no record has the
        # trace's features as a repeat, the nearer of a repeat and a first run answers.
        retry, flat = [], []
        for i in np.flatnonzero((res.match == _NEAREST) | (res.match < 0)).tolist():
            if unreadable[i] is None and stated[i] is None:
                retry.append(i)
                flat.append({**every[i], flag.name: 1.0 - flag.missing_as})
        if not retry:
            return res
        again = self._match(flat, [None] * len(flat), groups)
        for k, i in enumerate(retry):
            m0, m1 = int(res.match[i]), int(again.match[k])
            better = (m1 == _EXACT and m0 != _EXACT) or (
                m0 == _NEAREST and m1 == _NEAREST and again.distance[k] < res.distance[i])
            if better:
                res.rows[i], res.match[i], res.distance[i] = again.rows[k], m1, again.distance[k]
                res.errors[i] = None
        return res

    def _shape_seen(self, flat: list[dict[str, Any]], groups: list[_Group]) -> np.ndarray:
        """Per trace, whether a repeat record of its shape is among ``groups``'."""
        seen = np.zeros(len(flat), dtype=bool)
        if len(flat) <= SCALAR_MAX:  # plain Python on scalars: numpy's per-call costs were 50 µs a lookup
            for i, t in enumerate(flat):
                seen[i] = any(self._shape_hash(t, g) in g.seen_set for g in groups)
            return seen
        values: dict[int, np.ndarray] = {}  # per column, shared by the groups
        for g in groups:
            shape = g.shape_cols or []
            parts = [self._query_bits(j, values[j] if j in values else values.setdefault(j, self._query_column(j, flat)[0]))
                     for j in shape]
            seen |= probe(g.seen_keys, g.seen_rows, hash_parts(parts, len(flat))) >= 0
        return seen

    def _query_number(self, v: str) -> Any:
        """A query's string where a numeric column is: a boolean's word, or a number's text
        (``"8"``), is the number, as the model reads it."""
        word = BOOLEAN_WORDS.get(v)
        if word is not None:
            return word
        if not v:
            return None  # an empty cell: missing
        x = finite_number_in_text(v)
        return v if x is None else x  # a word (or "inf", "nan") stays one: "must be a number"

    def _query_bits(self, j: int, values: np.ndarray) -> np.ndarray:
        """:meth:`_bits` of query values of column ``j`` (from :meth:`_query_column`)."""
        return float_bits(values) if self.columns[j].kind == "numeric" else code_bits(values)

    def _scalar_query(self, c: FeatureColumn, v: Any) -> tuple[float | int, int] | None:
        """One query value as :meth:`_query_column` reads it, and its hash bits: a number (NaN
        when missing) or a category code (-1 missing, -2 no record has it); None for a value
        of a numeric column that is no number."""
        if c.kind == "numeric":
            if v.__class__ is str:
                v = self._query_number(v)
            if v is None:
                return math.nan, NAN_INT
            if isinstance(v, (int, float)):
                q = float(v)
                return q, float_int(q)
            return None
        q = -1 if v is None else vocab_code(c.vocab, v)
        return q, q & MASK

    def _shape_hash(self, t: dict[str, Any], g: _Group) -> int | None:
        """:func:`hash_parts` of one trace's shape values, as :meth:`_query_column` reads them."""
        h = SEED_INT
        for j in g.shape_cols:  # type: ignore[union-attr]
            c = self.columns[j]
            got = self._scalar_query(c, t.get(c.name))
            if got is None:
                return None  # not a number: its match fails on it
            h = mix_int(h ^ got[1])
        return h

    def _match(self, flat: list[dict[str, Any]], errors: list[str | None], groups: list[_Group]) -> LookupResult:
        """:meth:`lookup` with every feature as the flat trace states it (or its default);
        ``errors`` (why a trace could not be read, or None) becomes the result's."""
        n = len(flat)
        searched: dict[tuple[Any, ...], str | None] = {}  # fields spelt like a missing feature (_missing)
        if n <= SCALAR_MAX:
            found = [(-1, -1, math.nan, e) if e is not None else self._lookup_one(t, groups, searched)
                     for t, e in zip(flat, errors)]
            return LookupResult(
                np.array([f[0] for f in found], dtype=np.int64),
                np.array([f[1] for f in found], dtype=np.int8),
                np.array([f[2] for f in found], dtype=np.float64),
                [f[3] for f in found],
            )
        rows = np.full(n, -1, dtype=np.int64)
        match = np.full(n, -1, dtype=np.int8)
        dist = np.full(n, np.nan)
        bad = np.array([e is not None for e in errors], dtype=bool)
        cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        featured = [g for g in groups if not g.featureless]

        def column(j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            if j not in cache:
                cache[j] = self._query_column(j, flat)
            return cache[j]

        # 1. exact match on every feature the group's records carry
        for g in featured:
            todo = np.flatnonzero((rows < 0) & ~bad)
            if not len(todo):
                break
            parts, usable = [], np.ones(len(todo), dtype=bool)
            for j in g.cols:
                vals, missing, invalid = column(j)
                usable &= ~invalid[todo]
                parts.append(self._query_bits(j, vals[todo]))
            for j in g.absent_cols:  # stated (anything but null) where no record holds it: not exact
                name = self.columns[j].name
                usable &= np.fromiter((flat[i].get(name) is None for i in todo.tolist()), dtype=bool, count=len(todo))
            found = probe(g.exact_keys, g.exact_rows, hash_parts(parts, len(todo)))
            found[~usable] = -1
            hit = found >= 0
            if hit.any():
                idx, cand = todo[hit], found[hit]
                same = np.ones(len(idx), dtype=bool)
                for j in g.cols:  # confirm: a hash collision must not pass as a match
                    vals, _, _ = column(j)
                    tv, qv = self.columns[j].values[cand], vals[idx]
                    same &= (tv == qv) | (np.isnan(tv) & np.isnan(qv)) if self.columns[j].kind == "numeric" else tv == qv
                rows[idx[same]] = cand[same]
                match[idx[same]] = _EXACT
                dist[idx[same]] = 0.0

        # 2. task id
        if self.task_hashes is not None:
            todo = [i for i in np.flatnonzero((rows < 0) & ~bad).tolist() if flat[i].get("task_id") is not None]
            if todo:
                # Each id by its text as a category reads it, then by its other spelling (an
                # integer's digits, a string's number): see _task_id_keys.
                both = [_task_id_keys(flat[i]["task_id"]) for i in todo]
                for pick in (0, 1):
                    keys = np.array([k[pick] for k in both], dtype=np.int64)
                    idx = np.asarray(todo, dtype=np.int64)
                    for g in groups:
                        found = probe(g.task_keys, g.task_rows, keys)
                        hit = (found >= 0) & (rows[idx] < 0)
                        rows[idx[hit]] = found[hit]
                        match[idx[hit]] = _TASK

        # 3. nearest record by standardised numeric features, categorical ones equal
        if featured:
            todo = np.flatnonzero((rows < 0) & ~bad)
            if len(todo):
                self._nearest(featured, todo, column, rows, match, dist, errors, flat, searched)

        # 4. a seeded pseudo-random record of a featureless (seed-format) identity
        plain = [g for g in groups if g.featureless]
        todo = np.flatnonzero((rows < 0) & ~bad)
        if plain and len(todo):
            pool = plain[0].rows if len(plain) == 1 else np.concatenate([g.rows for g in plain])
            for i in todo.tolist():
                rows[i] = pool[self._pick(flat[i], len(pool))]
                match[i] = _RANDOM
                errors[i] = None
        for i in np.flatnonzero((rows < 0) & ~bad).tolist():
            if errors[i] is None:
                errors[i] = f"no record in lookup table {self.name!r} matches this trace"
        return LookupResult(rows, match, dist, errors)

    def _lookup_one(self, t: dict[str, Any], groups: list[_Group],
                    searched: dict[tuple[Any, ...], str | None] | None = None) -> tuple[int, int, float, str | None]:
        """One flat trace, in plain Python on scalars: (row, match kind, distance, error)."""
        columns = self.columns
        featured = [g for g in groups if g.cols]
        for g in featured:  # 1. exact
            if g.absent_cols and any(t.get(columns[j].name) is not None for j in g.absent_cols):
                continue  # a feature no record of g holds, stated: none is the trace's exact record
            h = SEED_INT
            query: list[Any] = []
            for j in g.cols:
                c = columns[j]
                got = self._scalar_query(c, c.query_value(t))
                if got is None or (c.kind == "categorical" and got[0] == -2):  # no number; a category no record has
                    break
                query.append(got[0])
                h = mix_int(h ^ got[1])
            else:
                row = probe_one(g.exact_keys, g.exact_rows, h)
                if row >= 0 and self._same_row(row, g.cols, query):
                    return row, _EXACT, 0.0, None
        tid = t.get("task_id")  # 2. task id
        if tid is not None and self.task_hashes is not None:
            for key in dict.fromkeys(_task_id_keys(tid)):
                for g in groups:
                    row = probe_one(g.task_keys, g.task_rows, key)
                    if row >= 0:
                        return row, _TASK, math.nan, None
        best_d, best_row, error = math.inf, -1, None  # 3. nearest
        for g in featured:
            z = []
            for j, weight in zip(g.num_cols, g.weights):
                c = columns[j]
                v = c.query_value(t)
                if v.__class__ is str:
                    v = self._query_number(v)
                if isinstance(v, (int, float)) and v == v:
                    z.append(weight * min(max((float(v) - c.centre) / c.scale, -_Z_MAX), _Z_MAX))
                elif v is None and j in g.optional_cols:
                    z.append(0.0)  # where the records lacking it sit
                else:
                    error = error or (self._missing(c.name, t, searched) if v is None or v != v
                                      else f"feature '{c.name}' must be a number")
                    break
            else:
                h = SEED_INT
                codes = []
                for j in g.part_cols:
                    c = columns[j]
                    if c.kind == "numeric":  # the first-run flag
                        v = c.query_value(t)
                        h = mix_int(h ^ float_int(float(v) if isinstance(v, (int, float)) else math.nan))
                        continue
                    v = t.get(c.name)
                    code = -1 if v is None else vocab_code(c.vocab, v)
                    codes.append(code)
                    h = mix_int(h ^ (code & MASK))
                part = g.partitions.get(h)
                if part is None:
                    error = error or self._category_message(g, codes, t, searched)
                    continue
                if part.tree is None:
                    d, row = 0.0, int(part.rows[0])
                else:
                    d, k = part.tree.query(z)
                    row = int(part.rows[k])
                if d < best_d:
                    best_d, best_row = float(d), row
        if best_row >= 0:
            return best_row, _NEAREST, best_d, None
        plain = [g for g in groups if not g.cols]  # 4. a seeded pseudo-random record
        if plain:
            pool = plain[0].rows if len(plain) == 1 else np.concatenate([g.rows for g in plain])
            return int(pool[self._pick(t, len(pool))]), _RANDOM, math.nan, None
        return -1, -1, math.nan, error or f"no record in lookup table {self.name!r} matches this trace"

    def _same_row(self, row: int, cols: list[int], query: list[Any]) -> bool:
        for j, q in zip(cols, query):
            c = self.columns[j]
            if c.kind == "numeric":
                tv = float(c.values[row])
                if not (tv == q or (tv != tv and q != q)):
                    return False
            elif int(c.values[row]) != q:
                return False
        return True

    def _missing(self, name: str, trace: dict[str, Any], searched: dict[tuple[Any, ...], str | None] | None) -> str:
        """"missing required feature", and where the trace holds a field spelt like it that the
        table does not read (``img_size`` for ``image_size``), that field."""
        message = f"missing required feature '{name}'"
        if trace.get(name) is None:  # (not where it is NaN)
            message += misspelling_hint(name, trace, self._fields_read, searched, reader="table")
        return message

    @functools.cached_property
    def _fields_read(self) -> frozenset[str]:
        """The trace fields a lookup reads: the features, the model's identity and ``task_id``."""
        return frozenset([c.name for c in self.columns] + list(IDENTITY_KEYS) + ["task_id"])

    def _category_message(self, g: _Group, codes: list[int], trace: dict[str, Any],
                          searched: dict[tuple[Any, ...], str | None] | None) -> str:
        for j, code in zip(g.cat_cols, codes):
            name = self.columns[j].name
            if code == -1:
                return self._missing(name, trace, searched)
            if code == -2:
                word = self.columns[j].word_among_numbers
                why = "" if word is None else (
                    f"; the table's '{name}' is categorical because it holds {shown(word)} beside numbers")
                return (f"no record in lookup table {self.name!r} has this value of '{name}' "
                        f"(categorical features must match exactly{why})")
        return f"no record in lookup table {self.name!r} has this combination of {', '.join(self.columns[j].name for j in g.part_cols)}"

    def _query_column(self, j: int, flat: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(values, missing, invalid) of feature column ``j`` for the query traces."""
        c = self.columns[j]
        raw = [t.get(c.name) for t in flat] if c.missing_as is None else [c.query_value(t) for t in flat]
        n = len(raw)
        if c.kind == "numeric":
            raw = [self._query_number(v) if v.__class__ is str else v for v in raw]
            try:
                if any(v.__class__ is str for v in raw):
                    raise ValueError  # numpy would parse "100"; a string is never a number here
                vals = np.array(raw, dtype=np.float64)
                invalid = np.zeros(n, dtype=bool)
                if vals.ndim != 1:
                    raise ValueError
            except (TypeError, ValueError):
                vals = np.full(n, np.nan)
                invalid = np.zeros(n, dtype=bool)
                for i, v in enumerate(raw):
                    if isinstance(v, (int, float)):
                        vals[i] = float(v)
                        invalid[i] = v != v
                    elif v is not None:
                        invalid[i] = True
            missing = np.isnan(vals) & ~invalid
            return vals, missing, invalid
        vocab = c.vocab
        try:
            # Each value looked up in C (a table's keys are texts, which no other value equals);
            # only the misses go by the general rule: None, a boolean's word, an unseen value
            # (10,000 values took 3.2 ms one by one, 0.8 so).
            codes = np.fromiter(map(vocab.get, raw, itertools.repeat(_NOT_LOOKED_UP)), dtype=np.int64, count=n)
        except TypeError:  # a value that cannot be a key (a list): each by the general rule
            codes = np.full(n, _NOT_LOOKED_UP, dtype=np.int64)
        for i in np.flatnonzero(codes == _NOT_LOOKED_UP).tolist():
            v = raw[i]
            codes[i] = -1 if v is None else vocab_code(vocab, v)
        return codes, codes == -1, np.zeros(n, dtype=bool)

    def _nearest(self, groups, todo, column, rows, match, dist, errors, flat, searched) -> None:
        best = np.full(len(todo), np.inf)
        best_row = np.full(len(todo), -1, dtype=np.int64)
        first_error: list[str | None] = [None] * len(todo)
        for g in groups:
            usable = np.ones(len(todo), dtype=bool)
            for j in g.cols:
                vals, missing, invalid = column(j)
                c = self.columns[j]
                if c.kind == "numeric":
                    bad = ((missing & (j not in g.optional_cols)) | invalid)[todo] & usable
                    for k in np.flatnonzero(bad).tolist():
                        if first_error[k] is None:
                            first_error[k] = (f"feature '{c.name}' must be a number" if invalid[todo[k]]
                                              else self._missing(c.name, flat[todo[k]], searched))
                    usable &= ~bad
            if not usable.any():
                continue
            sel = todo[usable]
            cat_keys = hash_parts([self._query_bits(j, column(j)[0][sel]) for j in g.part_cols], len(sel))
            Z = None
            if g.num_cols:
                Z = np.empty((len(sel), len(g.num_cols)))
                for k, j in enumerate(g.num_cols):
                    z = self.columns[j].standardised(column(j)[0][sel])
                    Z[:, k] = g.weights[k] * np.where(np.isnan(z), 0.0, z)  # an optional value not stated: at the centre (the median)
            positions = np.flatnonzero(usable)
            order = np.argsort(cat_keys, kind="stable")
            sk = cat_keys[order]
            for part_idx in np.split(order, np.flatnonzero(np.diff(sk)) + 1):
                part = g.partitions.get(int(cat_keys[part_idx[0]]))
                pos = positions[part_idx]
                if part is None:
                    for p, q in zip(pos.tolist(), sel[part_idx].tolist()):
                        if first_error[p] is None:
                            first_error[p] = self._category_message(
                                g, [int(column(j)[0][q]) for j in g.cat_cols], flat[q], searched)
                    continue
                if part.tree is None:
                    d = np.zeros(len(part_idx))
                    r = np.full(len(part_idx), part.rows[0])
                else:
                    d, k = part.tree.query(Z[part_idx], k=1)
                    r = part.rows[k]
                better = d < best[pos]
                best[pos[better]] = d[better]
                best_row[pos[better]] = r[better]
        found = best_row >= 0
        rows[todo[found]] = best_row[found]
        match[todo[found]] = _NEAREST
        dist[todo[found]] = best[found]
        for k in np.flatnonzero(~found).tolist():
            errors[todo[k]] = first_error[k]

    def _answer_one(self, row: int, levels: list[float] | None, confidence_level: float) -> tuple[list[float], list[float], list[float]]:
        """(levels, values, interval) of one record, as :func:`quantile_function` computes them."""
        s, pos = int(self.row_levelset[row]), int(self.row_position[row])
        stored_levels = self.levelset_lists[s]
        stored = self.values[s][pos].tolist()
        mu, sd = float(self.expect[row]), float(self.error[row])
        cl = float(self.confidence[row])
        lo, hi = self.interval[row].tolist()
        has_interval = 0.0 < cl < 1.0 and math.isfinite(lo) and math.isfinite(hi)
        exact_interval = has_interval and abs(cl - confidence_level) <= 1e-12
        if levels is None and exact_interval:
            return stored_levels, stored, [lo, hi]
        L, order = self._merged_lists[s]
        if len(order) > len(stored):
            both = stored + self.knot_values[s][pos].tolist()
            V = [both[i] for i in order]
        else:
            V = stored
        if has_interval:
            L, V = merge_interval_knots(L, V, cl, lo, hi)
        interval = [lo, hi] if exact_interval else quantiles_one(L, V, mu, sd, interval_levels(confidence_level))
        if levels is None:
            return stored_levels, stored, interval
        return levels, quantiles_one(L, V, mu, sd, levels), interval

    def _pick(self, trace: dict[str, Any], n: int) -> int:
        try:
            data = orjson.dumps(trace, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
        except TypeError:
            data = repr(sorted(trace.items(), key=lambda kv: str(kv[0]))).encode()
        digest = hashlib.blake2b(data, digest_size=8, key=self.seed.to_bytes(8, "little", signed=True)).digest()
        return int.from_bytes(digest, "little") % n

    # ------------------------------------------------------------------ answers

    def predict(
        self,
        pattern: IdentityPattern | None,
        traces: Sequence[Any],
        confidence_level: float = 0.95,
        quantiles: Sequence[float] | None = None,
        with_total: bool = False,
        staleness: Callable[[tuple[str | None, ...], int], bool | None] | None = None,
        deadline_ms: float | None = None,
        record_levels: dict[int, float] | None = None,
        completion: bool = False,
    ) -> "TablePrediction":
        """Answers rendered like the model's: quantiles (the record's levels, or ``quantiles``), interval, totals.

        With ``staleness`` (whether a version of an identity is stale: another version serves
        now, or it was deleted; None where that is unknown, as for a table made by another
        service), a record made by a model version carries ``stale`` where it is known. With
        ``deadline_ms``, each answer (and the total) says how likely it is to be within that;
        ``record_levels`` holds records' probabilities already searched for it (see
        :meth:`deadline_levels_of`), and takes those searched here. With ``completion``, the
        totals of the first 1, 2, ... tasks found, and what bounds them
        (:class:`TableCompletion`), for the time each is done (``completion_answers``).
        """
        t0 = time.perf_counter()
        res = self.lookup(traces, pattern)
        levels = sorted(map(float, quantiles)) if quantiles else None
        ok_rows = res.rows[res.rows >= 0]
        a = self._answers(ok_rows, levels, confidence_level)
        # Running tasks (a trace stating elapsed_ms): their time left, from their records' distributions.
        left, reached = None, {}
        if res.elapsed is not None and len(ok_rows) and ((elapsed_ok := res.elapsed[res.rows >= 0]) > 0).any():
            left, reached = self._time_left(ok_rows, elapsed_ok, confidence_level, a)
        results = self._rendered(res, pattern, a, reached, staleness)
        deadline_levels = None
        if deadline_ms is not None and len(ok_rows):
            deadline_levels = self._deadline_levels(ok_rows.astype(np.int64), left, float(deadline_ms), record_levels)
            for item, p in zip((r for r in results if r["status"] == "success"), deadline_levels.tolist()):
                item["deadline_probability"] = p
        # An empty queue, or one none of whose traces was found, answers the levels its tasks
        # would have had: the table's first records' (a model answers its default levels).
        total_levels = levels if levels is not None else (
            a.answers[0][0] if len(ok_rows) else (list(self.levelset_lists[0]) if self.levelset_lists else None))
        total = None
        if with_total and len(ok_rows):
            total = self._total(ok_rows.astype(np.int64), np.asarray(a.expect), np.asarray(a.error),
                                total_levels, confidence_level, a.answers, left, deadline_ms, deadline_levels)
        prefixes = None
        if completion and len(ok_rows):
            prefixes = self._prefixes(ok_rows.astype(np.int64), np.asarray(a.expect), np.asarray(a.error), total_levels,
                                      confidence_level, a.answers, left, deadline_ms, deadline_levels)
        return TablePrediction(
            table=self.name,
            levels=total_levels,
            confidence_level=confidence_level,
            ok=res.rows >= 0,
            errors=res.errors,
            items=results,
            total=total,
            duration_seconds=time.perf_counter() - t0,
            deadline_ms=deadline_ms,
            completion=prefixes,
        )

    def deadline_levels_of(self, pattern: IdentityPattern | None, traces: Sequence[Any], deadline: float) -> dict[int, float]:
        """The probability of being done within ``deadline`` of each record that answers a trace
        of ``traces`` not running, by record: for :meth:`predict`'s ``record_levels``, so that
        a request's queues, each predicted on its own, search each record once in all."""
        res = self.lookup(traces, pattern)
        rows = res.rows[res.rows >= 0].astype(np.int64)
        known: dict[int, float] = {}
        if len(rows):
            self._deadline_levels(rows, None, deadline, known)
        return known

    def _deadline_levels(self, rows: np.ndarray, left: RemainingDistribution | None, deadline: float,
                         record_levels: dict[int, float] | None = None) -> np.ndarray:
        """Each task's probability of being done within ``deadline``, read off the quantile
        function its answer's quantiles come from: its record's stored quantiles interpolated
        (:meth:`_quantiles_at`, as :meth:`_answers` reads them), or a running task's time left
        (``left``). Not the distributions a total sums (:meth:`task_distributions`): those are
        brought to the record's mean, and a skewed record's answers at 0.1 and 0.2 had
        probabilities of 0.165 and 0.4996 there."""
        out = np.empty(len(rows))
        running = np.zeros(len(rows), dtype=bool) if left is None else left.elapsed > 0
        idle = np.flatnonzero(~running)
        # A task not running has its record's probability: each record searched once (a
        # batch of 100,000 tasks of 2,000 records searched them all, 1.2 s of its 2.4).
        records, back = np.unique(rows[idle], return_inverse=True)
        known = {} if record_levels is None else record_levels
        ids = records.tolist()
        todo = records[[r not in known for r in ids]] if known else records
        if len(todo):
            found = levels_of_rows(lambda at, taus: self._quantiles_at(todo[at], taus), np.full(len(todo), deadline))
            known.update(zip(todo.tolist(), found.tolist()))
        out[idle] = np.array([known[r] for r in ids])[np.ravel(back)]
        if left is not None and running.any():
            at = np.flatnonzero(running)
            out[at] = levels_reached(left.subset(at), np.full(len(at), deadline))
        return out

    def _answers(self, rows: np.ndarray, levels: list[float] | None, confidence_level: float) -> _RowAnswers:
        """The records ``rows``' answers (their levels, values and interval), their mean, spread,
        identity and model version: one at a time for a few, vectorised for more."""
        if len(rows) <= SCALAR_MAX:
            ok_rows = rows.tolist()
            return _RowAnswers([self._answer_one(r, levels, confidence_level) for r in ok_rows],
                               [float(self.expect[r]) for r in ok_rows], [float(self.error[r]) for r in ok_rows],
                               [int(self.row_identity[r]) for r in ok_rows], [int(self.versions[r]) for r in ok_rows])
        idx = rows.astype(np.int64)
        return _RowAnswers(self._answer_many(idx, levels, confidence_level), self.expect[idx].tolist(),
                           self.error[idx].tolist(), self.row_identity[idx].tolist(), self.versions[idx].tolist())

    def _time_left(self, rows: np.ndarray, elapsed: np.ndarray, confidence_level: float,
                   a: _RowAnswers) -> tuple[RemainingDistribution, dict[int, float]]:
        """The running tasks' time left (those of ``elapsed`` > 0): their answers in ``a`` made
        theirs, and the level of its distribution each has reached, by place. Each is read off
        its record's distribution as a total sums it, but with its tail kept as its answer
        extrapolates it: flattened onto the highest stored quantile, a task past it was stuck;
        scaled up (as much as 1,000 times) to carry the stored mean, its time left was hundreds
        of times too long."""
        rows = rows.astype(np.int64)
        tasks = self.task_distributions(rows)  # (the tasks not running are summed as any total's)
        running = np.flatnonzero(elapsed > 0)
        kept = self.task_distributions(rows[running], kept_tail=True)

        def put(whole: np.ndarray, part: np.ndarray) -> np.ndarray:
            out = np.array(whole, dtype=np.float64, copy=True)
            out[running] = part
            return out

        tasks = replace(tasks, var=put(tasks.var, kept.var), tail_scale=put(tasks.tail_scale, kept.tail_scale),
                        bend=put(tasks.bend, kept.bend), stretch=put(tasks.stretch, kept.stretch))
        left = RemainingDistribution.of(tasks, elapsed)
        mean, sd = left.mean_std()
        ends = interval_levels(confidence_level)
        reached: dict[int, float] = {}
        # The running tasks of each set of levels at once (a task at a time, 10,000 took 13 s).
        by_levels: dict[tuple[float, ...], list[int]] = {}
        for k in np.flatnonzero(left.elapsed > 0).tolist():
            by_levels.setdefault(tuple(a.answers[k][0]), []).append(k)
        for out_levels, ks in by_levels.items():
            m = len(out_levels)
            qs = left.subset(np.array(ks)).quantiles([*out_levels, *ends]).tolist()
            for k, q in zip(ks, qs):
                a.answers[k] = (a.answers[k][0], q[:m], q[m:])
                a.expect[k], a.error[k], reached[k] = float(mean[k]), float(sd[k]), float(left.reached[k])
        return left, reached

    def _rendered(self, res: LookupResult, pattern: IdentityPattern | None, a: _RowAnswers,
                  reached: dict[int, float],
                  staleness: Callable[[tuple[str | None, ...], int], bool | None] | None) -> list[dict[str, Any]]:
        """Each trace's answer as the model's are written (an error where no record was found)."""
        match_l, dist_l = res.match.tolist(), res.distance.tolist()
        infos = [g.model_info(pattern) for g in self.groups]
        stale: dict[tuple[int, int], bool | None] = {}  # per identity and version, asked once a request
        results: list[dict[str, Any]] = []
        k = 0
        for i, row in enumerate(res.rows.tolist()):
            if row < 0:
                results.append({"status": "error", "message": res.errors[i], "model_info": infos[0] if len(infos) == 1 else None,
                                "source": "lookup_table", "table": self.name})
                continue
            out_levels, values, interval = a.answers[k]
            kind = MATCH_KINDS[match_l[i]]
            item = {
                "status": "success",
                "quantiles": out_levels,
                "quantile_predictions": values,
                "expect": a.expect[k],
                "error": a.error[k],
                "interval": interval,
                "model_info": infos[a.ident[k]],
                "source": "lookup_table",
                "table": self.name,
                "match": kind,
            }
            version = a.versions[k]
            if version >= 0:
                item["model_version"] = version
                if staleness is not None and None not in self.identities[a.ident[k]]:
                    key = (a.ident[k], version)
                    if key not in stale:
                        stale[key] = staleness(self.identities[key[0]], key[1])
                    if stale[key] is not None:
                        item["stale"] = stale[key]
            if kind == "nearest":
                item["distance"] = dist_l[i]
            if i in res.kind_mismatch:  # its answer may be ten times off the model's
                item["kind_mismatch"] = True
            if k in reached:
                item["elapsed_level"] = reached[k]
            results.append(item)
            k += 1
        return results

    def _total(self, rows: np.ndarray, expect: np.ndarray, error: np.ndarray, levels: list[float] | None,
               confidence_level: float, answers: list[tuple[list[float], list[float], list[float]]],
               tasks: RemainingDistribution | None = None, deadline_ms: float | None = None,
               deadline_levels: np.ndarray | None = None) -> dict[str, Any]:
        """The total of independent tasks answered by the records ``rows`` (``answers``: each
        task's levels, quantiles and interval): the sum of their distributions, each read off
        its stored quantiles as a task's answer is, convolved as a model's tasks are.

        Mean and variance are the sums of the records' means and variances. One task's total is
        its own answer. (A normal law from those two moments, as tables answered until
        2026-12-01, put the median of two tasks of a model with a rare slow mode at 2.2 times
        the model's total's, and a 10-task queue's 5% quantile at half the model's.)

        ``tasks``, where some of them are running, are their distributions with those tasks'
        time left (``expect`` and ``error`` are then the time left's).

        With ``deadline_ms``, ``deadline_levels`` are the tasks' probabilities of being done
        within it, and the total's is read off its distribution, no higher than any task's
        (the total is never below one of them, as its quantiles are bounded by theirs).
        """
        mu, sd = float(expect.sum()), float(np.sqrt(np.square(error).sum()))
        # ``total_method`` stays for the clients of tables that answered "normal approximation".
        if len(answers) == 1:
            out = {"expect": mu, "error": sd, "total_quantiles": list(answers[0][1]), "total_interval": list(answers[0][2]),
                   "total_method": "convolution"}
            if deadline_levels is not None:
                out[DEADLINE_KEY] = float(deadline_levels[0])
            return out
        total = (tasks if tasks is not None else self.task_distributions(rows, expect, error)).total()
        tq = total.quantiles(np.asarray(levels, dtype=np.float64)) if levels else np.zeros(0)
        iv = total.interval(confidence_level)
        # A sum of positive independent tasks is never below one of them at a level. The
        # total is bounded by the distributions it sums, brought to the records' means (bent
        # and stretched), which can lie below the tasks' answers, read off the stored levels
        # as they are: a total of two tasks was half one task's 0.9 quantile. So the answers
        # bound it too.
        at_levels = [answer[1] for answer in answers if list(answer[0]) == list(levels or ())]
        if levels and at_levels:  # (without levels asked, records of other stored levels have others)
            tq = np.maximum(tq, np.max(at_levels, axis=0))
        iv = np.maximum(iv, np.max([answer[2] for answer in answers], axis=0))
        out = {"expect": mu, "error": sd, "total_quantiles": tq.tolist(), "total_interval": iv.tolist(),
               "total_method": "convolution"}
        if deadline_ms is not None and deadline_levels is not None:
            out[DEADLINE_KEY] = min(total.cdf(deadline_ms), float(deadline_levels.min()))
        return out

    def _prefixes(self, rows: np.ndarray, expect: np.ndarray, error: np.ndarray, levels: list[float] | None,
                  confidence_level: float, answers: list[tuple[list[float], list[float], list[float]]],
                  tasks: RemainingDistribution | None, deadline_ms: float | None,
                  deadline_levels: np.ndarray | None) -> "TableCompletion":
        """The totals of the first 1, 2, ... of the tasks answered by the records ``rows``,
        summed as :meth:`_total` sums them all, and the bounds it puts on a total: each
        prefix's quantiles (at ``levels``, where its tasks answered them) and interval are at
        least its tasks' answers, its probability of a deadline at most theirs."""
        summed = tasks if tasks is not None else self.task_distributions(rows, expect, error)
        read = [*(levels or ()), *interval_levels(confidence_level)]
        readings = summed.for_totals(read).prefix_totals(read=lambda total: TotalReading.of(total, read, deadline_ms))
        # The first task's completion is its own answer, as a queue of it alone totals it
        # (_total): read off its summed distribution, its probability of a deadline past the
        # record's highest knot stopped there (0.99984 where its answer and its queue's read 1).
        first, wanted = readings[0], list(levels or ())
        at_wanted = [list(answer[0]) == wanted for answer in answers]  # (records of other stored levels: not at them)
        if at_wanted[0]:
            readings[0] = TotalReading(first.mean, first.std,
                                       np.array([*answers[0][1], *answers[0][2]], dtype=np.float64),
                                       None if deadline_levels is None or first.deadline_probability is None
                                       else float(deadline_levels[0]))
        n_levels = len(wanted)
        asked = [list(answer[1]) if at else [0.0] * n_levels for answer, at in zip(answers, at_wanted)]
        quantile_floor = np.maximum.accumulate(np.array(asked, dtype=np.float64).reshape(len(answers), n_levels), axis=0)
        interval_floor = np.maximum.accumulate(np.array([answer[2] for answer in answers], dtype=np.float64), axis=0)
        means, variances = np.cumsum(expect), np.cumsum(np.square(error))
        # The last is the queue's own total, to the last bit: summed as _total sums it (numpy's
        # pairwise sum, which a running sum of 8 tasks or more can differ from in its last bits).
        means[-1], variances[-1] = expect.sum(), np.square(error).sum()
        return TableCompletion(readings, means, np.sqrt(variances),
                               (quantile_floor, interval_floor),
                               None if deadline_levels is None else np.minimum.accumulate(deadline_levels))

    def task_distributions(self, rows: np.ndarray, expect: np.ndarray | None = None,
                           error: np.ndarray | None = None, kept_tail: bool = False) -> StoredQuantileDistribution:
        """The distributions of tasks answered by the records ``rows`` (of these means and
        standard deviations: the records' own unless given), as a total sums them: each read off
        its stored quantiles as its answer is, its tail above the highest stored level (the
        extrapolated part) brought to the record's mean."""
        expect = self.expect[rows] if expect is None else expect
        error = self.error[rows] if error is None else error
        if self._tops is None:
            # Once per table (in slices: a million records of 30 knots are 240 MB at once):
            # every record's highest knot and its value, its body's spread, its lowest knot and
            # the integral of its quantile function between the two.
            tops = np.empty((5, self.n_rows))
            for part in np.array_split(np.arange(self.n_rows), max(1, self.n_rows // 65536)):
                for sel, _, _, _, L, V in self._knot_groups(part):
                    at, dL = part[sel], np.diff(L)
                    tops[0, at], tops[1, at], tops[2, at] = L[-1], V[:, -1], np.diff(V, axis=1) @ dL
                    tops[3, at], tops[4, at] = L[0], (V[:, :-1] + V[:, 1:]) @ dL / 2.0
            self._tops = tops
        top_level, top_value, spread, bottom_level, body_mean = self._tops[:, rows]
        return StoredQuantileDistribution(self._quantiles_at, rows, np.asarray(expect, dtype=np.float64),
                                          np.square(error, dtype=np.float64), top_level=top_level, top_value=top_value,
                                          body_spread=spread, bottom_level=bottom_level, body_mean=body_mean,
                                          kept_tail=kept_tail)

    def _quantiles_at(self, rows: np.ndarray, taus: np.ndarray, bend: np.ndarray | None = None) -> np.ndarray:
        """The records ``rows``' values at ``taus``, (rows, taus), as their answers read them
        (:func:`quantile_function` on the stored quantiles and interval ends; with ``bend``,
        one per row, bent between them), the levels kept within [1e-12, 1 - 1e-12], where the
        extrapolated tails stay finite. ``taus`` may also be (rows, k), levels of each row's
        own, increasing along each row."""
        taus = np.clip(taus, 1e-12, 1.0 - 1e-12)
        out = np.empty((len(rows), taus.shape[-1]))
        for sel, r, _, _, L, V in self._knot_groups(rows):
            out[sel] = quantile_function(L, V, self.expect[r], self.error[r], taus[sel] if taus.ndim == 2 else taus,
                                         None if bend is None else bend[sel])
        return out

    def _knot_groups(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, int, float, np.ndarray, np.ndarray]]:
        """The records ``rows`` in groups that share their stored levels and stored confidence
        level: (their places in ``rows``, the records, the set of stored levels, the confidence
        level (-1 without a stored interval), and the knots their answers are read off: levels
        (the stored ones and the interval's ends) and values, (records, knots))."""
        ls_of = self.row_levelset[rows]
        cl_of = self.confidence[rows]
        has_interval = (cl_of > 0) & (cl_of < 1) & np.isfinite(self.interval[rows]).all(axis=1)
        cl_key = np.where(has_interval, cl_of, -1.0)
        for s in np.unique(ls_of).tolist():
            for cl in np.unique(cl_key[ls_of == s]).tolist():
                sel = np.flatnonzero((ls_of == s) & (cl_key == cl))
                r = rows[sel]
                L, V = self._record_knots(s, self.row_position[r])
                if cl > 0:
                    L, V = merge_interval_knots_many(L, V, cl, self.interval[r])
                yield sel, r, s, cl, L, V

    def _record_knots(self, s: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The quantile function of the records at ``positions`` of the set of stored levels
        ``s``: its levels (the stored and the further ones, increasing) and values, (records, levels)."""
        return _merged_knots(self.levelsets[s], self.values[s][positions], self.knot_levels[s],
                             self.knot_values[s][positions])

    def _answer_many(self, rows: np.ndarray, levels: list[float] | None,
                     confidence_level: float) -> list[tuple[list[float], list[float], list[float]]]:
        """:meth:`_answer_one` for many rows, vectorised per set of stored levels and stored interval."""
        out: list[Any] = [None] * len(rows)
        ends = interval_levels(confidence_level)
        for sel, r, s, cl, L, V in self._knot_groups(rows):
            mu, sd = self.expect[r], self.error[r]
            if levels is None:
                out_levels, vals = self.levelset_lists[s], self.values[s][self.row_position[r]]
            else:
                out_levels, vals = levels, quantile_function(L, V, mu, sd, levels)
            if cl > 0 and abs(cl - confidence_level) <= 1e-12:
                iv = self.interval[r]
            else:
                iv = quantile_function(L, V, mu, sd, ends)
            for p, v, i in zip(sel.tolist(), vals.tolist(), iv.tolist()):
                out[p] = (out_levels, v, i)
        return out


def _binned_effect(z: np.ndarray, t: np.ndarray, max_bins: int = 16) -> float:
    """The spread of ``t``'s means over bins of ``z`` (quantile bins of 8 rows or more, or
    its values where it takes few), as a standard deviation beyond what chance gives the
    means; 0 unless an F test of the bins says, at the 1% level, that they differ."""
    n = len(t)
    bins = min(max_bins, n // 8)
    if bins < 2:
        return 0.0
    values, inv = np.unique(z, return_inverse=True)
    if len(values) > bins:
        edges = np.quantile(z, np.linspace(0, 1, bins + 1)[1:-1])
        inv = np.searchsorted(edges, z, side="right")
    counts = np.bincount(inv).astype(np.float64)
    k = int((counts > 0).sum())
    if k < 2 or n <= k:
        return 0.0
    means = np.bincount(inv, weights=t) / np.maximum(counts, 1.0)
    between = float((counts * (means - float(t.mean())) ** 2).sum())
    within = float(((t - means[inv]) ** 2).sum()) / (n - k)
    if not (math.isfinite(between) and math.isfinite(within)) or within <= 0.0:
        return math.sqrt(between / n) if math.isfinite(between) else 0.0
    if between / (k - 1) / within <= fdtri(k - 1, n - k, 0.99):
        return 0.0
    return math.sqrt(max(0.0, (between - (k - 1) * within) / n))


# --------------------------------------------------------------------------- building from records


_NUMBERS = (int, float)


# Central ranges a numeric feature's unit is read from, the first that is not empty, each
# over the width it has for normal values: most of a column may be one value (a batch
# size of 1 in four records of five), and its quartiles then tell nothing.
_SCALE_RANGES = ((0.25, 0.75, 1.349), (0.1, 0.9, 2.563), (0.05, 0.95, 3.290), (0.01, 0.99, 4.653))


def _centre_and_scale(values: np.ndarray) -> tuple[float, float]:
    """A numeric feature's origin and unit as a nearest-record coordinate, from its finite
    values: their median, and their interquartile range over 1.349 (normal values' standard
    deviation), or a wider central range where that is empty (_SCALE_RANGES), or the median
    distance from the median of the values off it where even the central 98% are one value;
    1 where all are. So one far record (a typo's 10^15 tokens) moves no other's distances:
    a mean and standard deviation it set made every other record as near as the next, and
    the nearest error's median 0.006 of the model's answer became 0.55 (``benchmarks/lookup.py
    --outliers``)."""
    if not len(values):
        return 0.0, 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        # Every level at once: one sort of a column of a million records, not one a range.
        levels = [0.5, *(level for low, high, _ in _SCALE_RANGES for level in (low, high))]
        centre, *ends = np.quantile(values, levels).tolist()
        scale = 0.0
        for (_, _, width), lo, hi in zip(_SCALE_RANGES, ends[::2], ends[1::2]):
            scale = (hi - lo) / width
            if scale > 0 or not math.isfinite(scale):
                break
        else:
            off = np.abs(values - centre)
            off = off[off > 0]
            scale = float(np.median(off)) if len(off) else 0.0
    if not (math.isfinite(centre) and math.isfinite(scale)):
        # Values near the float limit: the column is too wide to measure distances on.
        return 0.0, float(np.finfo(np.float64).max)
    return centre, scale if scale > 0 else 1.0


def _column_from_values(name: str, values: list[Any]) -> FeatureColumn:
    """A feature column from one value per row: numeric unless it holds a string, or where
    its strings all spell finite numbers beside numbers (a numeric feature's ``"1744"``, as
    the model reads it); categorical otherwise (strings alone, ``"8"`` and ``"16"`` too)."""
    n = len(values)
    word = None
    if any(v.__class__ is str for v in values) and any(v.__class__ in (int, float) for v in values):
        spelled = [finite_number_in_text(v) if v.__class__ is str else v for v in values]
        word = next((v for x, v in zip(spelled, values) if v.__class__ is str and x is None), None)
        if word is None:
            values = spelled
    if not any(v.__class__ is str for v in values):
        try:
            nums = np.array(values, dtype=np.float64)  # None -> NaN, bool -> 0/1
            if nums.ndim != 1:
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            nums = np.array([as_number(v) for v in values], dtype=np.float64)
        centre, scale = _centre_and_scale(nums[np.isfinite(nums)])
        return FeatureColumn(name, "numeric", nums, centre=centre, scale=scale)
    # Strings (and numbers beside them, compared as their text): codes into a vocabulary.
    try:
        distinct = dict.fromkeys(values)
    except TypeError:  # a list or an object among them (no category: -1, below)
        distinct = {}
    if distinct and all(v.__class__ is str for v in distinct):  # (the usual column: its codes looked up in C)
        vocab = {v: code for code, v in enumerate(distinct)}
        return FeatureColumn(name, "categorical", np.fromiter(map(vocab.__getitem__, values), dtype=np.int64, count=n),
                             vocab=vocab, word_among_numbers=word)
    vocab = {}
    codes = np.fromiter(
        (-1 if v is None or isinstance(v, (dict, list)) else vocab.setdefault(category_text(v), len(vocab)) for v in values),
        dtype=np.int64, count=n,
    )
    return FeatureColumn(name, "categorical", codes, vocab=vocab, word_among_numbers=word)


def _task_id_keys(value: Any) -> tuple[int, int]:
    """A queried ``task_id``'s hash as a category's text (a record's key), and that of its
    other spelling: an integer's digits (a CSV table keeps an id as written, while a
    category reads an integer past 2**53 as the nearest float), a string of digits as the
    number (a JSON table keeps a number as one), an object's or a list's JSON text (as a CSV
    table writes it: ``{"a":[1]}``, where a JSON table keeps the object, read as a category
    reads it). The two are one where there is none."""
    first = str_hash(category_text(value))
    if isinstance(value, (dict, list)):
        try:
            return first, str_hash(orjson.dumps(value).decode())
        except TypeError:  # (nothing a CSV table could have written)
            return first, first
    if isinstance(value, int) and not isinstance(value, bool):
        return first, str_hash(str(value))
    if isinstance(value, str) and PLAIN_INTEGER.fullmatch(value):
        try:
            return first, str_hash(category_text(int(value)))
        except ValueError:  # more digits than int() reads
            pass
    return first, first


def _task_hashes(values: list[Any]) -> np.ndarray:
    return np.fromiter((-1 if v is None else str_hash(v if v.__class__ is str else category_text(v)) for v in values),
                       dtype=np.int64, count=len(values))


@contextlib.contextmanager
def _file_records(path: Path, name: str, fmt: str, line_mode: bool) -> Iterator[Iterator[tuple[str, Any]]]:
    """A table file's records, each with where it lies in the file (see :mod:`.files`)."""
    gz = path.name.lower().endswith(".gz")
    try:
        raw: IO[bytes] = gzip.open(path, "rb") if gz else open(path, "rb")
    except OSError as exc:
        raise TraceError(f"{name}: cannot open ({exc.strerror or exc})") from None
    with raw:
        try:
            skip_bom(raw)  # which spreadsheet programs write before a CSV file's header
            problem = encoding_problem(raw.peek(4)[:4], gz)
        except (OSError, EOFError) as exc:  # a damaged gzip stream
            raise TraceError(f"{name}: cannot read the file ({exc})") from None
        if problem:
            raise TraceError(f"{name}: {problem}")
        if fmt == "csv":
            yield iter_csv_records(raw, name)
        elif fmt == "jsonl":
            yield iter_jsonl_records(raw, name)
        else:
            yield iter_json_records(raw, name, line_mode)


class _RecordFault(TraceError):
    """A fault of the successful record ``index`` (counted from 0), found once all are read."""

    def __init__(self, name: str, index: int, detail: str):
        super().__init__(f"{name}: success record {index}: {detail}")
        self.index, self.detail = index, detail


class _Builder:
    """Accumulates validated records column-wise (plain lists and arrays, a few µs a record)."""

    def __init__(self, name: str):
        self.name = name
        self.levelsets: dict[tuple, int] = {}
        self.level_arrays: list[np.ndarray] = []
        self.level_values: list[array] = []
        self.level_counts: list[int] = []
        # Per set of levels: the further levels its records store (knot_levels), and their values.
        self.knot_arrays: list[np.ndarray] = []
        self.knot_values: list[array] = []
        self.row_levelset = array("i")
        self.row_position = array("q")
        self.expect = array("d")
        self.error = array("d")
        self.interval = array("d")
        self.confidence = array("d")
        self.versions = array("q")
        self.identities: dict[tuple, int] = {}
        self._identity_cache: dict[Any, int] = {}
        self._last_identity: tuple[dict[str, Any], Any, int] | None = None
        self.row_identity = array("i")
        self.features: dict[str, list[Any]] = {}
        self.task_ids: list[Any] = []
        self.has_task_ids = False
        self.skipped = 0
        self.shape_features: dict[int, tuple[str, ...]] = {}  # per identity, as its first record says

    def build(self, records: Iterable[tuple[str, Any]], path: Path | None = None, fmt: str | None = None,
              seed: int = 0) -> LookupTable:
        add = self._add
        for where, rec in records:
            try:
                add(rec, where)
            except OverflowError:
                # An integer past the float range (JSON numbers have no limit), where a
                # number is stored: the table is refused like any malformed one.
                raise self._fail(where, "a number is too large for a 64-bit float") from None
        n = len(self.expect)
        if n == 0:
            raise TraceError(f"{self.name}: the table holds no successful prediction records")
        expect = np.frombuffer(self.expect, dtype=np.float64).copy()
        error = np.frombuffer(self.error, dtype=np.float64).copy()
        for label, arr in (("expect", expect), ("error", error)):
            bad = np.flatnonzero(~_runtimes(arr))
            if len(bad):
                raise _RecordFault(self.name, int(bad[0]), f"'{label}' must be a number from 0 to {MAX_TABLE_RUNTIME:g} ms")
        values = []
        for s, lv in enumerate(self.level_values):
            v = np.frombuffer(lv, dtype=np.float64).reshape(self.level_counts[s], -1).copy()
            order = np.argsort(self.level_arrays[s])
            v = v[:, order]
            self._check_runtimes(v, "quantile_predictions", s)
            # Quantiles that cross (a seed model's, fitted one level at a time) are rearranged
            # into increasing order: the rearranged curve is at least as close to the true one.
            values.append(np.sort(v, axis=1))
            self.level_arrays[s] = self.level_arrays[s][order]
        knots = [self._knots(s, values[s]) for s in range(len(values))]
        interval = np.frombuffer(self.interval, dtype=np.float64).reshape(n, 2).copy()
        confidence = np.frombuffer(self.confidence, dtype=np.float64).copy()
        stated = ~np.isnan(confidence)  # records without an interval have none to check
        bad = np.flatnonzero(stated & ~((confidence > 0) & (confidence < 1)))
        if len(bad):
            raise _RecordFault(self.name, int(bad[0]), "'confidence_level' must lie strictly between 0 and 1")
        lo, hi = interval[:, 0], interval[:, 1]
        bad = np.flatnonzero(stated & ~(_runtimes(lo) & _runtimes(hi) & (lo <= hi)))
        if len(bad):
            raise _RecordFault(self.name, int(bad[0]), f"'interval' must be [low, high] with "
                                                       f"0 <= low <= high <= {MAX_TABLE_RUNTIME:g}")
        self._check_intervals(values, knots, interval, confidence, stated)
        # Held in single precision where they fit (a knot is written to 7 digits): a million
        # records of 24 knots take 96 MB, not 192.
        knot_values = [k.astype(np.float32) if k.size and k.max() < 1e38 else k.copy() for k in knots]
        # The values as read go before the table is indexed: with a million records' knots
        # held twice, the parse's peak was 207 MB higher (937 MB against 730).
        del knots
        self.level_values = self.knot_values = []
        self.expect = self.error = self.interval = self.confidence = array("d")
        columns = []
        for fname, vals in self.features.items():
            if fname in TABLE_RESERVED_KEYS:
                continue
            if len(vals) < n:
                vals.extend([None] * (n - len(vals)))
            columns.append(_column_from_values(fname, vals))
        self.features = {}
        task_hashes = _task_hashes(self.task_ids) if self.has_task_ids else None
        self.task_ids = []
        return LookupTable(
            name=self.name,
            identities=list(self.identities),
            row_identity=np.frombuffer(self.row_identity, dtype=np.int32).copy(),
            levelsets=self.level_arrays,
            row_levelset=np.frombuffer(self.row_levelset, dtype=np.int32).copy(),
            row_position=np.frombuffer(self.row_position, dtype=np.int64).copy(),
            values=values,
            knot_levels=self.knot_arrays,
            knot_values=knot_values,
            expect=expect,
            error=error,
            interval=interval,
            confidence=confidence,
            versions=np.frombuffer(self.versions, dtype=np.int64).copy(),
            columns=columns,
            task_hashes=task_hashes,
            skipped=self.skipped,
            path=path,
            fmt=fmt,
            seed=seed,
            shape_features=self.shape_features,
        )

    def _records_of(self, s: int) -> np.ndarray:
        """The records (counted among the successful ones) of the set of levels ``s``, in the
        order of their rows in its arrays."""
        return np.flatnonzero(np.frombuffer(self.row_levelset, dtype=np.int32) == s)

    def _check_runtimes(self, v: np.ndarray, key: str, s: int) -> None:
        """Runtimes the records of the set of levels ``s`` hold under ``key`` (``v``: a row a
        record) are finite, at least 0 and at most MAX_TABLE_RUNTIME; else the first record
        that holds one is named."""
        fine = (v >= 0) & (v <= MAX_TABLE_RUNTIME)
        if fine.all():  # (one pass over a million records' knots, not three)
            return
        pos = int(np.argmax(~fine.all(axis=1)))
        i = int(self._records_of(s)[pos])
        row = v[pos]
        why = ("a value that is not a finite number" if not np.isfinite(row).all() else
               "a negative runtime" if (row < 0).any() else f"a runtime over {MAX_TABLE_RUNTIME:g} ms")
        raise _RecordFault(self.name, i, f"its {key} hold {why}")

    def _knots(self, s: int, stored: np.ndarray) -> np.ndarray:
        """The values of the set of levels ``s``'s knots, (records, knots), in the order of
        their levels, in double precision, checked against the records' stored quantiles
        ``stored``; knots at a stored level are left out (the stored quantile answers there)."""
        K = self.knot_arrays[s]
        k = np.frombuffer(self.knot_values[s], dtype=np.float64).reshape(self.level_counts[s], -1)
        if not len(K):
            return k
        order = np.argsort(K)
        keep = np.abs(K[order][:, None] - self.level_arrays[s][None, :]).min(axis=1) >= 1e-9
        if not (keep.all() and (order == np.arange(len(K))).all()):  # (a written table's are in order)
            K, k = K[order][keep], np.take(k, order[keep], axis=1)
        self.knot_arrays[s] = K
        self._check_runtimes(k, "knot_predictions", s)
        if not (k[:, 1:] >= k[:, :-1]).all():
            k = np.sort(k, axis=1)
        for start, _, U in self._merged_blocks(s, stored, k):
            below, above = U[:, :-1], U[:, 1:]
            # Rounding in a written table (knots are written to 7 digits) is no contradiction.
            bad = (below > above + (above * 1e-6 + 1e-9)).any(axis=1)
            if bad.any():
                i = int(self._records_of(s)[start + np.argmax(bad)])
                raise _RecordFault(self.name, i, "its 'knot_predictions' contradict its "
                                   "'quantile_predictions' (a record's quantiles rise with the level)")
        return k

    def _merged_blocks(self, s: int, stored: np.ndarray, knots: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """The set of levels ``s``'s records' stored quantiles and knots as one quantile function
        (:func:`_merged_knots`), ``_CHECK_BLOCK`` records at a time: (first record's position,
        levels, values). Whole, a million records' took 224 MB, and as much again to check."""
        for start in range(0, len(stored), _CHECK_BLOCK):
            stop = start + _CHECK_BLOCK
            L, U = _merged_knots(self.level_arrays[s], stored[start:stop], self.knot_arrays[s], knots[start:stop])
            yield start, L, U

    def _check_intervals(self, values: list[np.ndarray], knots: list[np.ndarray], interval: np.ndarray,
                         confidence: np.ndarray, stated: np.ndarray) -> None:
        """A record's interval ends are its quantiles at ``(1 ± confidence_level) / 2``: one
        that contradicts its stored quantiles ``values`` or knots ``knots`` (per set of levels;
        a stored quantile above the low end at a lower level, or below it at a higher one; the
        same for the high end) is damaged. Answered, it gave a median below the record's own
        interval when asked for the stored levels, and other values when asked for the same
        levels by name."""
        for s in range(len(values)):
            rows = self._records_of(s)
            if not stated[rows].any():
                continue
            for start, levels, V in self._merged_blocks(s, values[s], knots[s]):
                r = rows[start:start + len(V)]
                check = stated[r]
                if not check.any():
                    continue
                if not check.all():
                    r, V = r[check], V[check]
                L, edge = levels[None, :], (1.0 - confidence[r]) / 2.0
                bad = np.zeros(len(r), dtype=bool)
                for level, end in ((edge, interval[r, 0]), (1.0 - edge, interval[r, 1])):
                    slack = end * 1e-6 + 1e-9  # rounding in a written table
                    bad |= ((L < level[:, None]) & (V > (end + slack)[:, None])).any(axis=1)
                    bad |= ((L > level[:, None]) & (V < (end - slack)[:, None])).any(axis=1)
                if bad.any():
                    i = int(r[np.argmax(bad)])
                    raise _RecordFault(self.name, i, f"its 'interval' [{interval[i, 0]:g}, {interval[i, 1]:g}] contradicts "
                                       "its 'quantile_predictions' (the interval's ends are its quantiles at "
                                       "(1 ± confidence_level) / 2)")

    def _fail(self, where: str, message: str) -> TraceError:
        return TraceError(f"{self.name}: {where}: {message}")

    def _add(self, rec: Any, where: str) -> None:
        if rec.__class__ is not dict:
            raise self._fail(where, f"a record must be a JSON object, got {type(rec).__name__}")
        status = rec.get("status")
        if status is not None and status != "success":
            self.skipped += 1
            return
        levels = rec.get("quantiles")
        values = rec.get("quantile_predictions")
        if levels.__class__ is not list or values.__class__ is not list or not levels or len(levels) != len(values):
            raise self._fail(where, "'quantiles' and 'quantile_predictions' must be non-empty lists of the same length")
        knot_levels = rec.get("knot_levels")
        knots = rec.get("knot_predictions")
        if knot_levels is None and knots is None:
            knot_levels = knots = _NO_KNOTS
        elif knot_levels.__class__ is not list or knots.__class__ is not list or len(knot_levels) != len(knots):
            raise self._fail(where, "'knot_levels' and 'knot_predictions' must be lists of the same length")
        try:
            key = (tuple(levels), tuple(knot_levels))
            s = self.levelsets.get(key)
        except TypeError:
            raise self._fail(where, "'quantiles' and 'knot_levels' must hold numbers") from None
        if s is None:
            s = self._new_levelset(key, where)
        expect = rec.get("expect")
        error = rec.get("error")
        if expect.__class__ not in _NUMBERS or error.__class__ not in _NUMBERS:
            raise self._fail(where, "'expect' and 'error' must be numbers")
        # Each of these may be left out (a seed table's records have no interval); one that is
        # there is what it says, or the table is damaged.
        iv = rec.get("interval")
        cl = rec.get("confidence_level")
        if iv is not None and not (iv.__class__ is list and len(iv) == 2
                                   and iv[0].__class__ in _NUMBERS and iv[1].__class__ in _NUMBERS):
            raise self._fail(where, "'interval' must be [low, high], two numbers")
        if cl is not None and cl.__class__ not in _NUMBERS:
            raise self._fail(where, "'confidence_level' must be a number")
        if iv is None or cl is None:
            iv, cl = _NO_INTERVAL, math.nan
        ver = rec.get("model_version")
        if ver.__class__ is float and ver.is_integer():  # 3.0, as some writers spell a whole number
            ver = int(ver)
        if ver is None:
            ver = -1
        elif ver == math.inf:  # digits past the float range (a CSV cell of thousands)
            raise self._fail(where, "'model_version' does not fit in 64 bits (a number past the float range)")
        elif ver.__class__ is not int or ver < 0:
            raise self._fail(where, "'model_version' must be a whole number, 0 or more")
        elif ver > _INT64_MAX:
            # Checked before anything is appended: versions live in an int64 column.
            raise self._fail(where, f"'model_version' {ver} does not fit in 64 bits")
        if (info := rec.get("model_info")) is not None and info.__class__ is not dict:
            raise self._fail(where, "'model_info' must be an object")
        try:
            self.level_values[s].extend(values)
        except TypeError:
            raise self._fail(where, "'quantile_predictions' must hold numbers") from None
        try:
            self.knot_values[s].extend(knots)
        except TypeError:
            raise self._fail(where, "'knot_predictions' must hold numbers") from None
        n = len(self.expect)
        self.row_levelset.append(s)
        self.row_position.append(self.level_counts[s])
        self.level_counts[s] += 1
        self.expect.append(expect)
        self.error.append(error)
        self.interval.extend(iv)
        self.confidence.append(cl)
        self.versions.append(ver)
        g = self._identity_of(rec, where)
        self.row_identity.append(g)
        shape = rec.get(SHAPE_FEATURES)
        if shape is not None and g not in self.shape_features:
            if shape.__class__ is not list or not shape or not all(v.__class__ is str for v in shape):
                raise self._fail(where, f"'{SHAPE_FEATURES}' must be a non-empty list of feature names")
            self.shape_features[g] = tuple(shape)
        feats = rec.get("features")
        if feats is None:
            feats = {k: v for k, v in rec.items()
                     if k not in RECORD_KEYS and k not in IDENTITY_KEYS and v.__class__ is not dict and v.__class__ is not list}
        elif feats.__class__ is not dict:
            raise self._fail(where, "'features' must be an object")
        columns = self.features
        for k, v in feats.items():
            col = columns.get(k)
            if col is None:
                col = columns[k] = [None] * n
            elif len(col) < n:
                col.extend([None] * (n - len(col)))
            col.append(v)
        tid = rec.get("task_id")
        if tid is None:
            tid = feats.get("task_id")
        if tid is not None:
            self.has_task_ids = True
        self.task_ids.append(tid)

    def _identity_of(self, rec: dict[str, Any], where: str) -> int:
        info = rec.get("model_info")
        last = self._last_identity
        # A table's records name one model, or a few in long runs: the last record's is
        # compared as it is, before a key is made of this one.
        if last is not None and info.__class__ is dict and info == last[0] and rec.get("model_type") == last[1]:
            return last[2]
        try:
            key = (tuple(info.items()) if info.__class__ is dict else None, rec.get("model_type"))
            hit = self._identity_cache.get(key)
        except TypeError:  # an unhashable value inside model_info
            key, hit = None, None
        if hit is not None:
            self._last_identity = (info, key[1], hit)
            return hit
        info = info if info.__class__ is dict else rec
        parts = (info.get("type", rec.get("model_type")), info.get("name", info.get("model_name")),
                 info.get("hardware"), info.get("software_name"), info.get("software_version"))
        for name, v in zip(("type", "name", "hardware", "software_name", "software_version"), parts):
            if isinstance(v, (dict, list)):  # read as its text, it named a model no request can
                raise self._fail(where, f"the model's {name!r} must be a string or a number, got {type(v).__name__}")
        ident = tuple(_part(v) for v in parts)
        g = self.identities.get(ident)
        if g is None:
            g = self.identities[ident] = len(self.identities)
        if key is not None and key[0] is not None:
            self._identity_cache[key] = g
            self._last_identity = (info, key[1], g)
        return g

    def _new_levelset(self, key: tuple, where: str) -> int:
        arrays = []
        for name, levels in zip(("quantiles", "knot_levels"), key):
            try:
                arr = np.array(levels, dtype=np.float64)
            except (TypeError, ValueError):
                raise self._fail(where, f"'{name}' must hold numbers") from None
            if arr.ndim != 1 or not np.all((arr > 0) & (arr < 1)) or len(set(arr.tolist())) != len(arr):
                raise self._fail(where, f"'{name}' must be distinct levels strictly between 0 and 1")
            arrays.append(arr)
        s = self.levelsets[key] = len(self.level_arrays)
        self.level_arrays.append(arrays[0])
        self.knot_arrays.append(arrays[1])
        self.level_values.append(array("d"))
        self.knot_values.append(array("d"))
        self.level_counts.append(0)
        return s


_CHECK_BLOCK = 65536  # records whose quantile functions are checked at once (15 MB with 24 knots)
_NO_INTERVAL = (math.nan, math.nan)
_NO_KNOTS: tuple[float, ...] = ()
_INT64_MAX = (1 << 63) - 1


def _runtimes(values: np.ndarray) -> np.ndarray:
    """Which of ``values`` a table may hold as a runtime, in ms (NaN is none)."""
    return (values >= 0) & (values <= MAX_TABLE_RUNTIME)


def _merged_knots(levels: np.ndarray, values: np.ndarray, knot_levels: np.ndarray,
                  knots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Records' stored quantiles and knots as one quantile function: (levels, (records, levels))
    in increasing order of level (no knot lies at a stored level)."""
    if not len(knot_levels):
        return levels, values
    L = np.concatenate([levels, knot_levels])
    order = np.argsort(L, kind="stable")
    return L[order], np.take(np.concatenate([values, knots], axis=1), order, axis=1)


def _part(v: Any) -> str | None:
    return None if v in (None, "", "*") else str(v)
