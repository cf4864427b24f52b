"""Design matrices and the linear algebra under the fits.

:class:`LogLinearDesign` (log features, hinges, per-value indicators, one-hot
categories), the sparse-or-dense choice, weighted Gram matrices, the sparse LU and
ridge solves with their GCV penalty, and :func:`single_threaded_blas`. The location,
scale and shape models all build on these, so they are kept apart from any one model.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .stored import standardisation, stored_kinds, stored_numbers


LEVEL_MIN_ROWS = 5


_BLAS_CONTROLLER: Any = None


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run BLAS on one thread inside the block.

    The matrices here are small (rows x a few dozen columns); a threaded BLAS
    spends far longer waking and spinning its threads than computing, and on
    a busy machine, or after LightGBM's OpenMP pool has run, a product that
    takes 0.1 ms on one thread was measured at 5-80 ms with two.
    """
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS_CONTROLLER = ThreadpoolController()
        except Exception:  # pragma: no cover - threadpoolctl missing or broken
            _BLAS_CONTROLLER = False
    if not _BLAS_CONTROLLER:
        yield
        return
    with _BLAS_CONTROLLER.limit(limits=1, user_api="blas"):
        yield


def numeric_positions(kinds: Sequence[str]) -> list[int]:
    """Columns of the numeric features a design uses."""
    return [j for j, k in enumerate(kinds) if k == "numeric"]


def categorical_positions(kinds: Sequence[str], n_categories: Sequence[int]) -> list[tuple[int, int]]:
    """(column, number of categories) of the categorical features a design uses."""
    return [(j, k) for j, (kind, k) in enumerate(zip(kinds, n_categories)) if kind == "categorical" and k > 0]


def _one_hot(X: np.ndarray, cats: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """One-hot columns per categorical feature; an unseen (NaN) category is all zeros."""
    return [(X[:, j:j + 1] == np.arange(k)[None, :]).astype(np.float64) for j, k in cats]


def design_matrix(dense: np.ndarray, X: np.ndarray, cats: Sequence[tuple[int, int]], sparse: bool):
    """The columns ``dense`` followed by the one-hot columns of ``cats``.

    With ``sparse``, a CSR matrix built from the category codes where the whole would be
    wide and mostly zeros (:func:`sparse_view`'s rule), so that neither the one-hot
    columns nor their zeros are ever materialised densely: for a 2000-value categorical
    on 100k rows the dense design alone is 1.6 GB, and building it and finding its
    non-zeros cost more than the fits it fed. Otherwise a dense array.
    """
    n, p = dense.shape
    d = p + sum(k for _, k in cats)
    if sparse and _wants_sparse(n, d, None):
        codes = []
        for j, k in cats:
            c = X[:, j]
            with np.errstate(invalid="ignore"):
                valid = (c >= 0) & (c < k) & (c == np.floor(c))  # NaN and unseen codes: no column
            codes.append((valid, np.where(valid, c, 0).astype(np.int64)))
        if _wants_sparse(n, d, np.count_nonzero(dense) + sum(int(v.sum()) for v, _ in codes)):
            import scipy.sparse as sp

            rows, cols = np.nonzero(dense)
            parts_r, parts_c, parts_v = [rows], [cols], [dense[rows, cols]]
            offset = p
            for (valid, c), (_, k) in zip(codes, cats):
                r = np.flatnonzero(valid)
                parts_r.append(r)
                parts_c.append(c[r] + offset)
                parts_v.append(np.ones(len(r)))
                offset += k
            return sp.csr_matrix((np.concatenate(parts_v), (np.concatenate(parts_r), np.concatenate(parts_c))),
                                 shape=(n, d))
    return np.concatenate([dense] + _one_hot(X, cats), axis=1)


def with_intercept(A):
    """``A`` with a column of ones in front, kept sparse when ``A`` is."""
    if is_sparse(A):
        import scipy.sparse as sp

        return sp.hstack([np.ones((A.shape[0], 1)), A], format="csr")
    return np.concatenate([np.ones((A.shape[0], 1)), A], axis=1)


def is_sparse(A) -> bool:
    return not isinstance(A, np.ndarray)


class LogLinearDesign:
    """Features for linear models on the log scale.

    Per numeric feature: ``log1p`` of its size (sign kept), the raw value, and
    ``hinges`` piecewise-linear hinges ``max(0, log1p(x) - k)`` at quantiles of
    the training values, so that a linear model in these columns is a
    piecewise-linear function of the log feature (a power law per piece, which
    fits fixed overheads plus per-unit costs); all standardised. Per
    categorical feature: one-hot columns (an unseen category is all zeros).

    With ``levels > 0``, a numeric feature that takes only a few distinct
    values (3 to ``levels``, each on at least :data:`LEVEL_MIN_ROWS` training
    rows: frame counts, batch sizes, step counts) also gets one standardised
    indicator column per value, so that a ridge fit can follow each level
    exactly where the smooth columns do not. A value between two levels takes both
    indicators, weighted by where it lies between them on the log scale (so its
    runtime is interpolated between theirs: as the training mean of the indicators,
    batch 33 between batches 32 and 64 was answered 26% under batch 32); a missing
    value sits at the indicators' training mean.
    """

    def __init__(self, kinds: Sequence[str], n_categories: Sequence[int], hinges: int = 3, levels: int = 0):
        self.kinds = list(kinds)
        self.n_categories = list(n_categories)
        self.hinges = hinges
        self.levels = levels
        self.knots_: list[list[float]] = []
        self.levels_: list[list[float]] = []
        self._row_plan: tuple | None = None

    @property
    def _num(self) -> list[int]:
        return numeric_positions(self.kinds)

    @property
    def width(self) -> int:
        """Columns of ``transform``: the numeric ones, then one per learned category."""
        return len(self.center_) + sum(k for _, k in categorical_positions(self.kinds, self.n_categories))

    def fit(self, X: np.ndarray) -> "LogLinearDesign":
        num = self._num
        L = slog(X[:, num])
        self.knots_ = []
        for j in range(L.shape[1]):
            col = L[:, j][np.isfinite(L[:, j])]
            knots: list[float] = []
            if self.hinges > 0 and len(col):
                lo, hi = col.min(), col.max()
                qs = np.quantile(col, np.arange(1, self.hinges + 1) / (self.hinges + 1))
                knots = [float(k) for k in np.unique(qs) if lo < k < hi]
            self.knots_.append(knots)
        self.levels_ = [_discrete_levels(X[:, j], self.levels) for j in num]
        Xn = X[:, num]
        # Raw values near the float limit overflow these statistics; such a raw column is
        # then about zero (centre 0, the largest finite spread: the JSON stays valid), and
        # its log column still carries the feature.
        with np.errstate(over="ignore", invalid="ignore"):
            if len(Xn):
                self.edges_ = np.stack([np.nanmin(Xn, axis=0), np.nanmax(Xn, axis=0)])
            else:
                self.edges_ = np.zeros((2, len(num)))
            self.raw_range_ = None
            self.slopes_ = np.zeros((2, 0))  # the training rows lie within the edges
            R = self._numeric_raw(X)
            self.center_ = np.nanmean(R, axis=0) if R.shape[1] else np.zeros(0)
            spread = np.nanstd(R, axis=0) if R.shape[1] else np.zeros(0)
            varies = np.nanmax(R, axis=0) > np.nanmin(R, axis=0) if R.shape[1] else spread > 0
            # A column of one value is no column: its mean can be off by a rounding error, and
            # that error over a spread of the same size made it a column of +-1s, which a fit
            # weighed and a single row's folded weights (1e14 per unit) got wrong.
            constant = ~varies & np.isfinite(self.center_)
            self.center_[constant] = np.nanmax(R[:, constant], axis=0) if constant.any() else 0.0
            spread[constant] = 0.0
            # Values below about 1e-162 have squares that underflow: their spread read 0, and
            # the feature was ignored without a word. Taken relative to the largest value.
            underflowed = (spread == 0) & varies
            if underflowed.any():
                top = np.nanmax(np.abs(R[:, underflowed]), axis=0)
                spread[underflowed] = np.nanstd(R[:, underflowed] / top, axis=0) * top
        overflowed = ~(np.isfinite(self.center_) & np.isfinite(spread))
        self.center_ = np.where(overflowed, 0.0, self.center_)
        self.spread_ = np.where(overflowed, np.finfo(np.float64).max, np.where(spread > 0, spread, 1.0))
        self.slopes_ = self._edge_slopes(Xn)
        self._row_plan = self._fused = self._edge_plan_ = None  # the single-row caches belong to the previous fit
        return self

    def _owners(self) -> np.ndarray:
        """The numeric feature (its place among the numeric ones) behind each numeric column."""
        p = len(self._num)
        return np.concatenate([np.arange(p), np.arange(p),
                               np.repeat(np.arange(p), [len(k) for k in self.knots_]).astype(np.int64),
                               np.repeat(np.arange(p), [len(v) for v in self.levels_]).astype(np.int64)])

    def _edge_slopes(self, Xn: np.ndarray) -> np.ndarray:
        """Per numeric column, how it goes on per unit of the log feature beyond the lowest
        (row 0) and the highest (row 1) training value.

        Past an edge of the training values every column of a feature continues along its
        secant between that edge and the middle of the values (the median distinct value),
        so the model continues as a power law with the log-log slope its fit has over that
        half of the range. Columns evaluated out there as they are would not: the raw column
        acts exponentially on the runtime and is capped, the log and hinge columns go on,
        and a fit that pairs a large raw weight with negative log weights then predicts
        runtimes that fall, 100x too low at 50x the largest training value.
        """
        p = Xn.shape[1]
        if p == 0:
            return np.zeros((2, 0))
        mid = np.zeros(p)
        for i in range(p):
            values = np.unique(Xn[:, i][np.isfinite(Xn[:, i])])
            mid[i] = values[(len(values) - 1) // 2] if len(values) else 0.0
        probe = np.stack([self.edges_[0], mid, self.edges_[1]])  # lowest, middle, highest
        rows = np.zeros((3, len(self.kinds)))
        rows[:, self._num] = probe
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            R = self._numeric_raw(rows)
            R = np.where(np.isnan(R), self.center_, R)  # a missing value sits at the training mean
            L = slog(probe)[:, self._owners()]
            whole = (R[2] - R[0]) / (L[2] - L[0])
            slopes = np.stack([np.where(L[1] > L[0], (R[1] - R[0]) / (L[1] - L[0]), whole),
                               np.where(L[2] > L[1], (R[2] - R[1]) / (L[2] - L[1]), whole)])
        return np.where(np.isfinite(slopes), slopes, 0.0)

    def _numeric_raw(self, X: np.ndarray) -> np.ndarray:
        num = self._num
        if not num:
            return np.zeros((len(X), 0))
        Xn = infinite_as_missing(X[:, num])
        edges = getattr(self, "edges_", None)
        if edges is None:  # a model stored before edges: raw values capped, the rest as they are
            rng = getattr(self, "raw_range_", None)
            L = slog(Xn)
            return self._columns(Xn if rng is None else np.minimum(np.maximum(Xn, rng[0]), rng[1]), L, Xn)
        # minimum/maximum rather than np.clip: same result, a fraction of the per-call cost.
        inside = np.minimum(np.maximum(Xn, edges[0]), edges[1])
        Lc = slog(inside)
        R = self._columns(inside, Lc, inside)
        if self.slopes_.shape[1] and ((Xn < edges[0]) | (Xn > edges[1])).any():
            D = (slog(Xn) - Lc)[:, self._owners()]
            R += np.where(D > 0, D * self.slopes_[1], np.where(D < 0, D * self.slopes_[0], 0.0))
        return R

    def _columns(self, raw: np.ndarray, L: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The numeric columns: logs ``L``, raw values ``raw``, hinges of ``L``, indicators of ``values``."""
        cols = [L, raw]
        for j, knots in enumerate(self.knots_):
            if knots:
                cols.append(np.maximum(L[:, j : j + 1] - np.asarray(knots)[None, :], 0.0))
        for j, levels in enumerate(self.levels_):
            if levels:
                cols.append(_level_weights(values[:, j], np.asarray(levels)))
        return np.concatenate(cols, axis=1)

    def transform(self, X: np.ndarray, sparse: bool = False):
        """The design's columns for rows ``X``; with ``sparse``, a CSR matrix where they are wide and mostly zeros."""
        if self._num:
            Z = (self._numeric_raw(X) - self.center_) / self.spread_
            # A missing value sits at the training mean.
            # (np.nan_to_num costs tens of µs on a single row; this is the same, cheaper.)
            Z[~np.isfinite(Z)] = 0.0
        else:
            Z = np.zeros((len(X), 0))
        return design_matrix(Z, X, categorical_positions(self.kinds, self.n_categories), sparse)

    def row(self, x: Sequence[float]) -> list[float]:
        """``transform`` of one row, in plain floats.

        A lone prediction's hot path: each numpy call costs a microsecond or more
        whatever its size, and ``transform`` makes dozens. Same columns, same
        order, same values (tests/test_scalar.py holds the two together).
        """
        num, lows, highs, knots, center, spread, cats, levels = self._plan()
        if any(math.isinf(x[j]) for j in num):
            x = [math.nan if j in num and math.isinf(v) else v for j, v in enumerate(x)]
        if self._beyond_edges(x, num, lows, highs):
            # The columns at the nearest edge, then on along their secants (``_edge_slopes``).
            inside, steps = self._clip_to_edges(x)
            out = self.row(inside)
            for cols, slopes, d in steps:
                for c in cols:
                    out[c] += d * slopes[c] / spread[c]
            return out
        logs = [math.copysign(math.log1p(abs(x[j])), x[j]) for j in num]
        if lows is None:
            cols = logs + [float(x[j]) for j in num]
        else:
            cols = logs + [min(max(float(x[j]), lo), hi) for j, lo, hi in zip(num, lows, highs)]
        for lg, ks in zip(logs, knots):
            cols.extend([max(lg - k, 0.0) for k in ks])
        for j, values, logs in levels:
            v = x[j]
            if v in values:
                cols.extend([float(v == u) for u in values])
            elif math.isfinite(v):  # between two levels: both, as in transform
                i, t = _level_pair(v, values, logs)
                weights = [0.0] * len(values)
                weights[i], weights[i + 1] = 1.0 - t, t
                cols.extend(weights)
            else:  # missing: NaN, then 0 (the training mean) below, as in transform
                cols.extend([math.nan] * len(values))
        out = [(c - m) / sd for c, m, sd in zip(cols, center, spread)]
        if not all(map(math.isfinite, out)):
            out = [v if math.isfinite(v) else 0.0 for v in out]
        for j, k in cats:
            onehot = [0.0] * k
            code = x[j]
            if 0 <= code < k and code == int(code):  # False for NaN, 1.5: an unseen category is all zeros
                onehot[int(code)] = 1.0
            out.extend(onehot)
        return out

    def dot_row(self, x: Sequence[float], coef: np.ndarray) -> float:
        """``row(x) @ coef`` with the standardisation folded into the weights (fewer float operations)."""
        cache = self.__dict__.get("_fused")
        fused = None if cache is None else cache.get(id(coef))
        if fused is None or fused[0] is not coef:
            # (coef, the folded terms, the numeric columns' weights per raw unit); one per
            # coefficient vector (a linear location has one more per regime flag).
            weights = (np.asarray(coef, dtype=np.float64).ravel()[:len(self.center_)] / self.spread_).tolist()
            fused = (coef, self._fold(coef), weights)
            if cache is None or len(cache) > 8:
                cache = self._fused = {}
            cache[id(coef)] = fused
        offset, numeric, levels, cats = fused[1]
        num, lows, highs = self._plan()[:3]
        if self._beyond_edges(x, num, lows, highs):
            # The value at the nearest edge, then on along the secants: per feature, the
            # weighted sum of its columns' slopes.
            inside, steps = self._clip_to_edges(x)
            total = self.dot_row(inside, coef)
            w = fused[2]
            for cols, slopes, d in steps:
                total += d * sum(w[c] * slopes[c] for c in cols)
            return total
        total = offset
        for j, wl, wr, lo, hi, hinges in numeric:
            v = x[j]
            if not math.isfinite(v):  # a missing value sits at the training mean: take the long way
                return sum(map(float.__mul__, self.row(x), coef.tolist()))
            lg = math.copysign(math.log1p(abs(v)), v)
            total += wl * lg + wr * min(max(v, lo), hi)
            for k, wh in hinges:
                if lg > k:
                    total += wh * (lg - k)
        for j, weight_of, values, logs, weights in levels:
            w = weight_of.get(x[j])
            if w is None:  # between two levels (a missing value took the long way above)
                i, t = _level_pair(x[j], values, logs)
                w = (1.0 - t) * weights[i] + t * weights[i + 1]
            total += w
        for j, weights in cats:
            code = x[j]
            if 0 <= code < len(weights) and code == int(code):  # 1.5 is no category, as in transform
                total += weights[int(code)]
        return total

    def _fold(self, coef: np.ndarray) -> tuple:
        num, lows, highs, knots, center, spread, cats, levels = self._plan()
        coef = np.asarray(coef, dtype=np.float64).ravel()
        n_num = len(center)
        w = (coef[:n_num] / np.asarray(spread)).tolist() if n_num else []
        offset = -float(np.dot(w, center)) if n_num else 0.0
        p = len(num)
        numeric = []
        col = 2 * p
        for i, j in enumerate(num):
            hinges = []
            for k in knots[i]:
                hinges.append((k, w[col]))
                col += 1
            lo = lows[i] if lows is not None else -math.inf
            hi = highs[i] if highs is not None else math.inf
            numeric.append((j, w[i], w[p + i], lo, hi, hinges))
        level_terms = []
        for j, values, logs in levels:
            weights = w[col:col + len(values)]
            level_terms.append((j, dict(zip(values, weights)), values, logs, weights))
            col += len(values)
        cat_terms = []
        col = n_num
        for j, k in cats:
            cat_terms.append((j, coef[col:col + k].tolist()))
            col += k
        return offset, numeric, level_terms, cat_terms

    def _plan(self) -> tuple:
        """What ``row`` and ``dot_row`` need, as plain lists; made once per fit."""
        if self._row_plan is None:
            self._row_plan = self._make_row_plan()
        return self._row_plan

    def _beyond_edges(self, x: Sequence[float], num: list[int], lows: list[float] | None,
                      highs: list[float] | None) -> bool:
        if getattr(self, "edges_", None) is None or lows is None:
            return False
        return any(not lo <= x[j] <= hi for j, lo, hi in zip(num, lows, highs) if math.isfinite(x[j]))

    def _clip_to_edges(self, x: Sequence[float]) -> tuple[list[float], list[tuple[list[int], list[float], float]]]:
        """``x`` with each numeric value beyond the training values at the nearest edge, and per
        such value: its columns, their slopes on that side, and how far beyond (in log units)."""
        num, lows, highs = self._plan()[:3]
        cols_of, slopes_low, slopes_high = self._edge_plan()
        inside = list(x)
        steps = []
        for i, (j, lo, hi) in enumerate(zip(num, lows, highs)):
            v = x[j]
            if not math.isfinite(v) or lo <= v <= hi:
                continue
            edge = lo if v < lo else hi
            inside[j] = edge
            d = math.copysign(math.log1p(abs(v)), v) - math.copysign(math.log1p(abs(edge)), edge)
            steps.append((cols_of[i], slopes_low if v < lo else slopes_high, d))
        return inside, steps

    def _edge_plan(self) -> tuple[list[list[int]], list[float], list[float]]:
        plan = self.__dict__.get("_edge_plan_")
        if plan is None:
            owners = self._owners().tolist()
            cols_of = [[c for c, o in enumerate(owners) if o == i] for i in range(len(self._num))]
            plan = self._edge_plan_ = (cols_of, self.slopes_[0].tolist(), self.slopes_[1].tolist())
        return plan

    def _make_row_plan(self) -> tuple:
        """Per numeric feature, ``lows`` and ``highs``: the training values' edges (beyond
        which a value is extrapolated), or for a model stored before them, the caps of the
        raw column."""
        num = self._num
        rng = getattr(self, "edges_", None)
        if rng is None:
            rng = getattr(self, "raw_range_", None)
        lows = highs = None
        if rng is not None and num:
            lows, highs = rng[0].tolist(), rng[1].tolist()
        cats = categorical_positions(self.kinds, self.n_categories)
        center = self.center_.tolist() if num else []
        spread = self.spread_.tolist() if num else []
        levels = [(j, list(v), slog(np.asarray(v)).tolist()) for j, v in zip(num, self.levels_) if v]
        return num, lows, highs, [list(k) for k in self.knots_], center, spread, cats, levels

    def to_json(self) -> dict[str, Any]:
        return {
            "kinds": self.kinds,
            "n_categories": self.n_categories,
            "hinges": self.hinges,
            "knots": self.knots_,
            "levels": self.levels_,
            "edges": self.edges_.tolist(),
            "edge_slopes": self.slopes_.tolist(),
            "center": self.center_.tolist(),
            "spread": self.spread_.tolist(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "LogLinearDesign":
        obj = cls(stored_kinds(d["kinds"], d["n_categories"]), d["n_categories"], int(d.get("hinges", 0)))
        obj.knots_ = [list(map(float, k)) for k in d.get("knots", [[] for k in d["kinds"] if k == "numeric"])]
        obj.levels_ = [list(map(float, v)) for v in d.get("levels", [[] for k in d["kinds"] if k == "numeric"])]
        obj.levels = max((len(v) for v in obj.levels_), default=0)
        obj.center_, obj.spread_ = standardisation(d, len(obj._owners()))
        if "edges" in d:
            obj.edges_ = stored_numbers(d["edges"], "edges", ndim=2).reshape(2, -1)
            obj.slopes_ = stored_numbers(d["edge_slopes"], "edge_slopes", ndim=2).reshape(2, -1)
        elif "raw_range" in d:  # stored before edges: predicts as it did
            obj.raw_range_ = stored_numbers(d["raw_range"], "raw_range", ndim=2).reshape(2, -1)
        return obj


def _level_weights(v: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """The indicator columns of values ``v`` for the sorted ``levels``: 1 on a value's level; a
    value between two levels shares 1 between them by where it lies on the log scale (hat
    functions), one beyond them takes the nearest; a missing value is NaN (the training mean,
    once standardised)."""
    sl = slog(levels)
    sv = slog(np.minimum(np.maximum(v, levels[0]), levels[-1]))
    i = np.clip(np.searchsorted(sl, sv, side="right") - 1, 0, len(levels) - 2)
    with np.errstate(invalid="ignore"):
        t = np.clip((sv - sl[i]) / (sl[i + 1] - sl[i]), 0.0, 1.0)
    W = np.zeros((len(v), len(levels)))
    rows = np.arange(len(v))
    W[rows, i] = 1.0 - t
    W[rows, i + 1] += t
    W[~np.isfinite(v)] = np.nan
    return W


def _level_pair(v: float, values: list[float], logs: list[float]) -> tuple[int, float]:
    """:func:`_level_weights` of one finite value, in plain floats (a lone prediction's path):
    the level ``i`` below it and the weight ``t`` of level ``i + 1`` (``1 - t`` is level ``i``'s)."""
    v = min(max(v, values[0]), values[-1])
    lv = math.copysign(math.log1p(abs(v)), v)
    i = min(max(bisect.bisect_right(logs, lv) - 1, 0), len(logs) - 2)
    return i, min(max((lv - logs[i]) / (logs[i + 1] - logs[i]), 0.0), 1.0)


def _discrete_levels(col: np.ndarray, max_levels: int) -> list[float]:
    """The distinct values of a numeric column that gets indicator columns, or [] if it does not."""
    if max_levels < 3:
        return []
    col = col[np.isfinite(col)]
    values, counts = np.unique(col, return_counts=True)
    if not 3 <= len(values) <= max_levels or counts.min() < LEVEL_MIN_ROWS:
        return []
    return [float(v) for v in values]


def infinite_as_missing(Xn: np.ndarray) -> np.ndarray:
    """Numeric feature values with the infinite ones missing (NaN): no runtime follows from
    them, and the single-row paths read them so (a power law's floor made -inf finite)."""
    inf = np.isinf(Xn)
    return np.where(inf, np.nan, Xn) if inf.any() else Xn


def slog(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


# A design at least this wide and at most a quarter non-zero (one-hot columns of a
# categorical feature with many values) is handled through a sparse view: its Gram
# matrices and solves scaled with the number of categories squared or cubed (a training
# on 100k rows with a 500-value categorical took four minutes of CPU, and 15 s this way).
SPARSE_MIN_WIDTH = 64
# ... on a thousand rows or more; on fewer, only from this width. A narrower design is
# as fast dense on few rows; a wider one cost its dense Gram matrices rows x width^2 per
# knot and Newton step: 8 categorical features of 100 values (801 columns) on 1,200 rows
# took 131 s to train, 86 of them in the shape model's Hessians.
SPARSE_ALWAYS_WIDTH = 256


def sparse_view(A: np.ndarray):
    """A CSR copy of a wide design that is mostly zeros (one-hot columns), else None; a sparse ``A`` itself."""
    if is_sparse(A):
        return A
    n, d = A.shape
    if not (_wants_sparse(n, d, None) and _wants_sparse(n, d, np.count_nonzero(A))):
        return None
    import scipy.sparse as sp

    return sp.csr_matrix(A)


def _wants_sparse(n: int, d: int, nnz: int | None) -> bool:
    """Whether a design of ``n`` rows, ``d`` columns and ``nnz`` non-zeros (not yet counted:
    None) is handled sparse: wide (very wide on fewer than a thousand rows), at most a quarter non-zero."""
    wide = d >= SPARSE_MIN_WIDTH if n >= 1000 else d >= SPARSE_ALWAYS_WIDTH
    return wide and (nnz is None or nnz <= 0.25 * n * d)


def wgram(A: np.ndarray, w: np.ndarray, S=None, dense: bool = True):
    """``A.T @ (A * w[:, None])``; through the sparse view when there is one."""
    if S is None:
        return A.T @ (A * w[:, None])
    Sw = S.copy()
    Sw.data = S.data * w[np.repeat(np.arange(S.shape[0]), np.diff(S.indptr))]  # each stored value's row weight
    G = S.T @ Sw
    return G.toarray() if dense else G


def wgrams(A: np.ndarray, V: np.ndarray, block: int = 131_072) -> np.ndarray:
    """``A.T @ (A * V[:, k, None])`` for every column ``k`` of ``V`` (non-negative), shape (columns, d, d).

    Per block of rows and column of ``V``, the product of ``A * sqrt(V[:, k])`` with itself,
    which BLAS computes as a symmetric rank-k update (half the multiplications of a
    general product), the block (``block`` entries of rows x d) small enough to stay in
    cache. On one thread, 1,200 rows of 151 columns with 15 columns of ``V`` took 13 ms,
    10,000 rows of 241 columns 245 ms, where one general product per block of rows for
    all the columns at once took 29 and 430.
    """
    n, d = A.shape
    K = V.shape[1]
    out = np.zeros((K, d, d))
    root = np.sqrt(V)
    rows = max(1, block // max(1, d))
    for s in range(0, n, rows):
        a = A[s : s + rows]
        for k in range(K):
            b = a * root[s : s + rows, k, None]
            out[k] += b.T @ b
    return out


# A sparse matrix with more than this share of its entries stored (and at most
# DENSE_SOLVE_MAX_SIZE wide) is factorised dense. One categorical feature's Gram matrix is
# an arrow (a diagonal block per value), which a sparse LU factorises fast; several
# categorical features fill in a block for every pair of them, and the sparse LU fills in
# the rest: 8 features of 100 values (801 columns) took 37 to 44 ms a factorisation sparse
# and 5 to 7 ms dense, on 600 to 2,000 rows (6% to 16% stored), and the power model makes
# one per Levenberg-Marquardt step.
DENSE_SOLVE_SHARE = 0.05
DENSE_SOLVE_MAX_SIZE = 4096


# A run of factorisations of one sparsity pattern (a fit's steps) whose first sparse LU
# filled in more than this share of the dense matrix goes on dense: that fill is not in
# the stored share. Eight 100-value features on 480 rows (4% stored) filled 82% and took
# 38 ms a factorisation sparse, 10 ms dense; two 500-value ones on 3,000 rows (0.9%) 39%,
# 31 ms against 8; on 1,000 rows (0.5%) 2%, 1.2 ms against 9.
DENSE_FILL_SHARE = 0.2


class Factoriser:
    """:func:`sparse_lu` for a run of matrices of one sparsity pattern, such as a fit's
    steps: once a sparse LU has filled in more than ``DENSE_FILL_SHARE`` of the dense
    matrix, the rest are factorised dense (``dense_``)."""

    def __init__(self):
        self.dense_ = False

    def __call__(self, M, symmetric: bool = False):
        import scipy.sparse as sp

        M = sp.csc_matrix(M)
        d = M.shape[0]
        small = d <= DENSE_SOLVE_MAX_SIZE
        if small and (self.dense_ or M.nnz > DENSE_SOLVE_SHARE * d * d):
            return dense_factor(M.toarray(), symmetric)
        from scipy.sparse.linalg import splu

        lu = splu(M)
        self.dense_ = small and lu.L.nnz + lu.U.nnz > DENSE_FILL_SHARE * d * d
        return lu.solve


def sparse_lu(M, symmetric: bool = False):
    """The solve function of a factorisation of the square sparse matrix ``M``.

    Dense (Cholesky, else LU) where ``M`` is filled in enough that the sparse LU would
    only be slower; singular matrices raise RuntimeError either way, as ``splu`` does.
    ``symmetric`` as for :func:`dense_factor`. A run of matrices of one pattern takes a
    :class:`Factoriser`, which also learns from the sparse LU's fill.
    """
    return Factoriser()(M, symmetric)


def dense_factor(M: np.ndarray, symmetric: bool = False):
    """The solve function of a factorisation of the square matrix ``M``.

    Cholesky where ``M`` is symmetric positive definite, else LU; a singular ``M``
    raises RuntimeError, as ``splu`` does. ``symmetric`` says that ``M`` is symmetric
    but for rounding (a weighted Gram matrix plus a diagonal), so that Cholesky, which
    reads one triangle, serves even where a sparse product summed ``M[i, j]`` and
    ``M[j, i]`` in different orders: those matrices of the power model's fit on sixteen
    100-value features were factorised by LU at 67 ms each, where Cholesky takes 40.
    """
    import scipy.linalg as sl

    try:
        if not symmetric and not np.array_equal(M, M.T):  # Cholesky reads one triangle only
            raise np.linalg.LinAlgError("not symmetric")
        factor = sl.cho_factor(M, check_finite=False)
        return lambda b: sl.cho_solve(factor, b, check_finite=False)
    except np.linalg.LinAlgError:  # not symmetric, or not positive definite
        with warnings.catch_warnings():  # a singular one: the RuntimeError below says it
            warnings.simplefilter("ignore", sl.LinAlgWarning)
            lu, piv = sl.lu_factor(M, check_finite=False)
        if not np.all(np.isfinite(lu)) or np.any(np.diag(lu) == 0):
            raise RuntimeError("Factor is exactly singular") from None
        return lambda b: sl.lu_solve((lu, piv), b, check_finite=False)


def sparse_solve(G, diag: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(G + diag(diag))^-1 b`` for a sparse symmetric positive definite ``G``."""
    import scipy.sparse as sp

    return sparse_lu(G + sp.diags(diag), symmetric=True)(b)


# The penalties GCV weighs: 10^x times the largest eigenvalue of the centred Gram matrix per row.
GCV_GRID = np.arange(-6.0, 4.01, 0.5)


def gcv_alpha(A: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, S=None) -> float:
    """Ridge penalty (as taken by :func:`ridge_regression`) minimising generalised cross-validation error."""
    return gcv_choice(A, y, w, S)[0]


def gcv_choice(A: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, S=None) -> tuple[float, float]:
    """:func:`gcv_alpha`'s penalty and the degrees of freedom of the fit at it, the intercept's included."""
    n, d = A.shape
    if d == 0 or n < 3:
        return 1.0, float(min(d + 1, n))
    w = np.ones(n) if w is None else w
    sw = w.sum()
    y_mean = float((y * w).sum() / sw)
    yc = (y - y_mean) * np.sqrt(w)
    total = float(yc @ yc)
    lam_max, fit_stats = _spectral_gcv(A, w, yc) if S is None else _sparse_gcv(S, w, y - y_mean)
    best = (np.inf, 1.0, float(min(d + 1, n)))
    scale = sw / n
    for log_a in GCV_GRID:
        a = 10.0**log_a * max(lam_max, 1e-12) / n
        explained, dof = fit_stats(a * scale)
        rss = total - explained
        df = dof + 1.0
        if df >= n - 0.5:
            continue
        gcv = max(rss, 0.0) / (1.0 - df / n) ** 2
        if gcv < best[0]:
            best = (gcv, a, df)
    return best[1], best[2]


def _spectral(lam: np.ndarray, beta2: np.ndarray):
    """The ridge fit's statistics from the centred Gram matrix's spectrum ``lam`` and the
    squared projections ``beta2`` of ``A'Wy`` on its eigenvectors: at penalty ``c``, the
    sum of squares the fit explains and its degrees of freedom (the intercept's aside)."""
    def fit_stats(c: float) -> tuple[float, float]:
        return float((beta2 * (lam + 2 * c) / (lam + c) ** 2).sum()), float((lam / (lam + c)).sum())

    return fit_stats


def _spectral_gcv(A: np.ndarray, w: np.ndarray, yc: np.ndarray):
    r = np.sqrt(w)
    a_mean = (A.T @ w) / w.sum()
    U, sv, _ = np.linalg.svd((A - a_mean) * r[:, None], full_matrices=False)
    lam = sv**2
    return float(lam[0]), _spectral(lam, lam * (U.T @ yc) ** 2)


# A design whose Gram matrix has a diagonal block this wide or wider (the one-hot columns
# of one categorical feature) and a rest narrow enough has its GCV scores computed through
# that block's Schur complement instead of an eigen-decomposition: for a 2,000-value
# categorical on 2,000 rows, 40 eigen-decompositions of a 2,000-wide matrix took 34 of a
# training's 89 s.
ARROW_MIN_WIDTH = 256


def _sparse_gcv(S, w: np.ndarray, centred: np.ndarray):
    """:func:`gcv_alpha`'s largest eigenvalue and fit statistics for a sparse design ``S``
    (``centred``: the targets less their weighted mean)."""
    G0 = wgram(S, w, S, dense=False).tocsr()
    s = np.asarray(S.T @ w).ravel()
    sw = float(w.sum())
    b = np.asarray(S.T @ (w * centred)).ravel()
    n, d = S.shape
    # Flops, roughly: the eigen-decomposition of the d-square Gram matrix d^3; that of the
    # n-square kernel matrix dual_cost; the Schur path k r^2 + r^3 per penalty tried.
    kernel_cost = dual_cost(n, d)
    block = _diagonal_block(G0) if d >= ARROW_MIN_WIDTH else None
    if block is not None:
        k = int(block.sum())
        r = d - k
        if len(GCV_GRID) * (k * r * r + r**3) < min(d**3, kernel_cost):
            return _largest_eigenvalue(G0, s, sw), _arrow_stats(G0, s, sw, b, block)
    if kernel_cost < d**3:
        return _kernel_gcv(S, w, centred, s, sw)
    lam, V = np.linalg.eigh(_centred_gram(G0, s, sw))
    lam, V = np.maximum(lam[::-1], 0.0), V[:, ::-1]
    return float(lam[0]), _spectral(lam, (V.T @ b) ** 2)


def dual_cost(n: int, d: int) -> float:
    """About the flops of a factorisation (or eigen-decomposition) through the n-square
    matrix of the dual, for ``n`` rows of ``d`` columns, against ``d^3`` through the Gram
    matrix: twice ``n^3``, for building it too (on sixteen 100-value features, 1,601
    columns, and 1,600 rows GCV's was no faster); infinite where rows are not fewer."""
    return 2.0 * n**3 if n < d else math.inf


def _kernel_gcv(S, w: np.ndarray, centred: np.ndarray, s: np.ndarray, sw: float):
    """:func:`_sparse_gcv`'s results from the n-square kernel matrix ``Xc Xc'`` of the
    weighted, centred design ``Xc``, for designs with fewer rows than columns (``s``: the
    weighted column sums, ``sw``: the weights' sum).

    Its eigenvalues are the Gram matrix's non-zero ones, and its eigenvectors ``Xc``'s left
    singular vectors, which is all :func:`_spectral` needs: on sixteen 100-value features
    (1,601 columns) and 800 rows an eigen-decomposition of the Gram matrix took 0.66 s."""
    r = np.sqrt(w)
    u = np.asarray(S @ (s / sw)).ravel()  # each row's dot with the column means
    m2 = float(u @ w) / sw  # the column means' squared norm
    K = np.asarray((S @ S.T).todense()) - u[:, None] - u[None, :] + m2
    K *= r[:, None]
    K *= r[None, :]
    lam, U = np.linalg.eigh(K)
    lam, U = np.maximum(lam[::-1], 0.0), U[:, ::-1]
    return float(lam[0]), _spectral(lam, lam * (U.T @ (centred * r)) ** 2)


def _diagonal_block(G) -> np.ndarray:
    """A set of columns (a mask) whose Gram matrix ``G`` block is diagonal: a greedy
    independent set of its graph, the columns with the fewest non-zeros first (so a
    categorical's one-hot columns, each beside the few dense columns only, fill it)."""
    d = G.shape[0]
    degree = np.diff(G.indptr)
    block = np.zeros(d, dtype=bool)
    taken = np.zeros(d, dtype=bool)
    for j in np.argsort(degree, kind="stable").tolist():
        if not taken[j]:
            block[j] = True
            taken[G.indices[G.indptr[j]:G.indptr[j + 1]]] = True
    return block


def _largest_eigenvalue(G0, s: np.ndarray, sw: float) -> float:
    """The largest eigenvalue of the centred Gram matrix ``G0 - s s' / sw`` (Lanczos, to working precision)."""
    from scipy.sparse.linalg import ArpackError, LinearOperator, eigsh

    d = G0.shape[0]
    op = LinearOperator((d, d), matvec=lambda x: G0 @ x - s * (s @ x) / sw, dtype=np.float64)
    # A fixed start, so that a training is repeatable; not all ones, which a categorical's
    # one-hot columns (they sum to the intercept, which centring removes) may send to zero.
    start = np.random.default_rng(0).standard_normal(d)
    try:
        top = float(eigsh(op, k=1, which="LA", v0=start, tol=0)[0][0])
    except ArpackError:  # no convergence (ArpackNoConvergence is one): the whole spectrum
        top = float(np.linalg.eigvalsh(_centred_gram(G0, s, sw))[-1])
    return max(top, 0.0)


def _centred_gram(G0, s: np.ndarray, sw: float) -> np.ndarray:
    """The centred weighted Gram matrix, dense, from the uncentred one ``G0``, the weighted
    column sums ``s`` and the weights' sum ``sw``."""
    a_mean = s / sw
    return G0.toarray() - sw * np.outer(a_mean, a_mean)


def _arrow_stats(G0, s: np.ndarray, sw: float, b: np.ndarray, block: np.ndarray):
    """:func:`_spectral`'s statistics without a spectrum, for a Gram matrix with the diagonal ``block``.

    The penalised centred Gram matrix ``G0 - s s'/sw + cI`` is the Schur complement of
    the unpenalised intercept in ``M = [[sw, s'], [s, G0 + cI]]``; with the block's
    columns first, ``M`` is an arrow (a diagonal, then a narrow dense rest), whose inverse
    is the diagonal's plus a term of the rest's own Schur complement. So the ridge
    coefficients ``beta`` and ``tr((G + cI)^-1)`` cost a solve of the narrow rest.
    """
    d = len(b)
    rest = np.flatnonzero(~block)
    inner = np.flatnonzero(block)
    diagonal = G0.diagonal()[inner]
    # The rest with the intercept in front: its own block F, and the arrow's E (block x rest).
    F = np.empty((len(rest) + 1, len(rest) + 1))
    F[0, 0] = sw
    F[0, 1:] = F[1:, 0] = s[rest]
    F[1:, 1:] = G0[rest][:, rest].toarray()
    E = np.empty((len(inner), len(rest) + 1))
    E[:, 0] = s[inner]
    E[:, 1:] = G0[inner][:, rest].toarray()
    b_inner, b_rest = b[inner], np.concatenate([[0.0], b[rest]])

    def fit_stats(c: float) -> tuple[float, float]:
        D = diagonal + c
        Ed = E / D[:, None]
        penalised = F.copy()
        penalised[1:, 1:] += c * np.eye(len(rest))
        schur_inv = np.linalg.inv(penalised - E.T @ Ed)
        z = schur_inv @ (b_rest - Ed.T @ b_inner)
        beta = np.empty(d)
        beta[rest] = z[1:]
        beta[inner] = (b_inner - E @ z) / D
        # tr((G + cI)^-1): the block's diagonal of M^-1, then the rest's (the intercept's aside).
        trace = (float((1.0 / D).sum()) + float(np.einsum("ij,ji->", schur_inv, Ed.T @ Ed))
                 + float(np.trace(schur_inv)) - schur_inv[0, 0])
        return float(beta @ b) + c * float(beta @ beta), d - c * trace

    return fit_stats


# The least penalty of a ridge solve, relative to its Gram matrix's mean diagonal: a training
# config's alpha of 1e-30 left the Gram matrix of collinear columns (a category's one-hot
# columns beside the intercept) singular, and the training failed with "Singular matrix".
_MIN_RELATIVE_PENALTY = 1e-10


def ridge_regression(A: np.ndarray, y: np.ndarray, alpha: float, w: np.ndarray | None = None, S=None,
                     factorise: Factoriser | None = None) -> tuple[float, np.ndarray]:
    """Weighted ridge regression with an unpenalised intercept.

    A penalty too small for the solve to be exact (singular to working precision) is
    raised to a ten-billionth of the Gram matrix's mean diagonal, and solved again.
    ``factorise``: a :class:`Factoriser` for a run of fits of one sparse design (a
    reweighting's steps)."""
    try:
        return _ridge_solve(A, y, alpha, w, S, factorise)
    except (np.linalg.LinAlgError, RuntimeError):
        w = np.ones(len(y)) if w is None else w
        floor = _MIN_RELATIVE_PENALTY * _mean_gram_diagonal(A, w, S) * len(y) / w.sum()
        if not alpha < floor:
            raise
        return _ridge_solve(A, y, floor, w, S, factorise)


def _mean_gram_diagonal(A, w: np.ndarray, S) -> float:
    """The mean diagonal of the weighted Gram matrix of the centred design (at least 1e-300)."""
    if A.shape[1] == 0:
        return 1e-300
    sw = w.sum()
    if S is not None:
        means = np.asarray(S.T @ w).ravel() / sw
        squares = np.asarray(S.multiply(S).T @ w).ravel()
    else:
        means = (A * w[:, None]).sum(axis=0) / sw
        squares = ((A * A) * w[:, None]).sum(axis=0)
    diag = squares - sw * means**2
    return max(float(np.mean(diag)), 1e-300)


def _ridge_solve(A: np.ndarray, y: np.ndarray, alpha: float, w: np.ndarray | None = None, S=None,
                 factorise: Factoriser | None = None) -> tuple[float, np.ndarray]:
    w = np.ones(len(y)) if w is None else w
    sw = w.sum()
    if S is not None:
        # The normal equations with the intercept as an unpenalised column keep the
        # matrix sparse (centring would fill it): a sparse LU instead of a dense solve.
        import scipy.sparse as sp

        d = A.shape[1]
        s = S.T @ w
        G = wgram(A, w, S, dense=False) + sp.diags(np.full(d, alpha * sw / len(y)))
        K = sp.bmat([[sp.csr_matrix([[sw]]), sp.csr_matrix(s[None, :])], [sp.csr_matrix(s[:, None]), G]])
        sol = (factorise or Factoriser())(K, symmetric=True)(np.concatenate([[float(w @ y)], S.T @ (w * y)]))
        return float(sol[0]), sol[1:]
    a_mean = (A * w[:, None]).sum(axis=0) / sw
    y_mean = float((y * w).sum() / sw)
    Ac = A - a_mean
    yc = y - y_mean
    Aw = Ac * w[:, None]
    gram = Ac.T @ Aw + alpha * sw / len(y) * np.eye(A.shape[1])
    coef = np.linalg.solve(gram, Aw.T @ yc)
    return y_mean - float(a_mean @ coef), coef


# The kind of a feature that a fitted design ignores.
UNUSED = "unused"
