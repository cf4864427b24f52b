"""Which trace fields are features, how they are typed, and how traces become a matrix."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .traces import DEFAULT_TARGET, TraceError, TraceTable, category_text, reserved_keys

FeatureKind = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    kind: FeatureKind
    categories: tuple[str, ...] = ()
    # Numeric only: value used for rows of the *training* data that lacked it.
    fill: float = 0.0

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
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FeatureSpec":
        return cls(d["name"], d["kind"], tuple(d.get("categories", ())), float(d.get("fill", 0.0)))


@dataclass
class DataReport:
    """What training kept and what it dropped, and why; returned in the metrics."""

    rows_total: int = 0
    rows_used: int = 0
    rows_dropped: dict[str, int] = field(default_factory=dict)
    columns_dropped: dict[str, str] = field(default_factory=dict)
    values_imputed: dict[str, int] = field(default_factory=dict)

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
        }


@dataclass(frozen=True)
class FeatureSchema:
    features: tuple[FeatureSpec, ...]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def to_json(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self.features]

    @classmethod
    def from_json(cls, items: list[dict[str, Any]]) -> "FeatureSchema":
        return cls(tuple(FeatureSpec.from_json(d) for d in items))

    # ------------------------------------------------------------------ training side

    @classmethod
    def prepare_training(
        cls,
        table: TraceTable,
        target: str = DEFAULT_TARGET,
        features: Sequence[str] | None = None,
    ) -> tuple["FeatureSchema", np.ndarray, np.ndarray, DataReport]:
        """Pick and type the features, clean the rows; return (schema, X, y, report).

        Rows without a finite positive target are dropped (runtimes are modelled
        on a log scale). Constant and empty columns are dropped. Missing numeric
        values are filled with the column median, which LightGBM and the linear
        model both handle sensibly, and counted in the report.
        """
        report = DataReport(rows_total=len(table))
        if target not in table.columns:
            raise TraceError(f"target field {target!r} is not present in the traces")
        if table.columns[target].is_categorical:
            # Runtimes written as strings ("12.5") are numbers; anything else is an error.
            y_strings = table.strings(target)
            bad = sum(1 for v in y_strings if v is not None and not _is_number(v))
            if bad:
                raise TraceError(f"target field {target!r} has {bad} non-numeric value(s)")
            y = np.array([math.nan if v is None else float(v) for v in y_strings], dtype=np.float64)
        else:
            y = table.numeric(target)
        keep = np.isfinite(y) & (y > 0)
        report.drop_rows("target missing or not finite", int((~np.isfinite(y)).sum()))
        report.drop_rows("target not positive", int((np.isfinite(y) & (y <= 0)).sum()))

        reserved = reserved_keys(target)
        if features is None:
            candidates = [name for name in table.columns if name not in reserved]
        else:
            missing = [f for f in features if f not in table.columns]
            if missing:
                raise TraceError(f"feature(s) not found in the traces: {', '.join(missing)}")
            bad = [f for f in features if f in reserved]
            if bad:
                raise TraceError(f"reserved field(s) cannot be features: {', '.join(bad)}")
            candidates = list(features)

        specs: list[FeatureSpec] = []
        columns: list[np.ndarray] = []
        rows = np.flatnonzero(keep)
        for name in candidates:
            col = table.columns[name]
            if col.is_categorical:
                values = table.strings(name)[rows]
                present = values[values != None]  # noqa: E711 - elementwise on object array
                cats = tuple(sorted(set(present.tolist())))
                if len(cats) <= 1 and len(present) == len(values):
                    report.columns_dropped[name] = "constant"
                    continue
                if len(present) == 0:
                    report.columns_dropped[name] = "no values"
                    continue
                spec = FeatureSpec(name, "categorical", cats)
                columns.append(_encode_categories(values, cats))
            else:
                values = table.numeric(name)[rows]
                finite = np.isfinite(values)
                if not finite.any():
                    report.columns_dropped[name] = "no values"
                    continue
                fin = values[finite]
                # Gaps are filled with the median, so one distinct value means a constant column.
                if fin.min() == fin.max():
                    report.columns_dropped[name] = "constant"
                    continue
                fill = float(np.median(fin))
                n_missing = int((~finite).sum())
                if n_missing:
                    report.values_imputed[name] = n_missing
                    values = np.where(finite, values, fill)
                spec = FeatureSpec(name, "numeric", fill=fill)
                columns.append(values)
            specs.append(spec)

        report.rows_used = len(rows)
        X = np.column_stack(columns) if columns else np.empty((len(rows), 0))
        return cls(tuple(specs)), X.astype(np.float64, copy=False), y[rows], report

    # ------------------------------------------------------------------ prediction side

    def matrix(self, traces: Sequence[dict[str, Any]]) -> tuple[np.ndarray, list[str | None]]:
        """Encode traces column by column; return (X, per-trace error or None).

        A trace that lacks a feature, or holds a value of the wrong type, gets
        an error naming the feature; its row in X is filled and must be ignored.
        """
        n = len(traces)
        errors: list[str | None] = [None] * n
        X = np.empty((n, len(self.features)), dtype=np.float64)
        for j, spec in enumerate(self.features):
            name = spec.name
            values = [t.get(name) for t in traces]
            if spec.kind == "numeric":
                # Value by value: numpy would also take "100" or [5], but only for some batches.
                col = np.fromiter((_as_float(v) for v in values), dtype=np.float64, count=n)
                ok = np.isfinite(col)
                if ok.all():
                    X[:, j] = col
                    continue
                for i in np.flatnonzero(~ok):
                    if errors[i] is None:
                        errors[i] = _numeric_problem(name, values[i])
                X[:, j] = np.where(ok, col, spec.fill)
            else:
                lookup = spec.codes
                codes = np.empty(n, dtype=np.float64)
                for i, v in enumerate(values):
                    if v is None:
                        if errors[i] is None:
                            errors[i] = f"missing required feature '{name}'"
                        codes[i] = math.nan
                    else:
                        key = category_text(v)
                        # An unseen category is not an error: it behaves like an unknown level.
                        codes[i] = lookup.get(key, math.nan)
                X[:, j] = codes
        return X, errors

    def row(self, trace: dict[str, Any]) -> tuple[list[float], str | None]:
        """One trace encoded like a row of :meth:`matrix`, in plain floats; (values, error or None)."""
        values: list[float] = []
        for spec in self.features:
            v = trace.get(spec.name)
            if spec.kind == "numeric":
                x = _as_float(v)
                if not math.isfinite(x):
                    return values, _numeric_problem(spec.name, v)
                values.append(x)
            elif v is None:
                return values, f"missing required feature '{spec.name}'"
            else:
                code = spec.codes.get(category_text(v))
                values.append(math.nan if code is None else float(code))
        return values, None

    def matrix_from_table(self, table: TraceTable) -> tuple[np.ndarray, np.ndarray]:
        """Encode a whole TraceTable; return (X, ok mask of rows with every feature)."""
        n = len(table)
        X = np.empty((n, len(self.features)), dtype=np.float64)
        ok = np.ones(n, dtype=bool)
        for j, spec in enumerate(self.features):
            if spec.name not in table.columns:
                X[:, j] = spec.fill
                ok[:] = False
                continue
            if spec.kind == "numeric":
                col = table.numeric(spec.name)
                good = np.isfinite(col)
                X[:, j] = np.where(good, col, spec.fill)
                ok &= good
            else:
                values = table.strings(spec.name)
                ok &= values != None  # noqa: E711
                X[:, j] = _encode_categories(values, spec.categories)
        return X, ok

    def missing_in(self, table: TraceTable) -> list[str]:
        return [f.name for f in self.features if f.name not in table.columns]


def _encode_categories(values: np.ndarray, categories: tuple[str, ...]) -> np.ndarray:
    lookup = {c: float(k) for k, c in enumerate(categories)}
    return np.array([lookup.get(v, math.nan) if v is not None else math.nan for v in values], dtype=np.float64)


def _as_float(v: Any) -> float:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return math.nan


def _numeric_problem(name: str, value: Any) -> str:
    if value is None:
        return f"missing required feature '{name}'"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"feature '{name}' must be a finite number, got {value!r}"
    return f"feature '{name}' must be a number, got {type(value).__name__} {value!r}"


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
