"""Runtime-distribution models: location families, a scale model, a shape model and conformal calibration.

A :class:`QuantileModel` predicts ``log(runtime) = m(x) + s(x) * Z`` with ``Z ~ F_x``:

* ``m`` comes from one of several *location families*: ``empirical`` (no
  features: the median), ``linear`` (robust ridge regression on log features
  with piecewise-linear hinges), ``power`` (a fixed overhead plus a power law
  of the features, fitted robustly) or ``lightgbm`` (boosted trees starting
  from the robust linear fit);
* ``s`` is optionally a log-linear model of the size of the cross-validated
  residuals, so that noise may grow or shrink with the features;
* ``Z``'s shared quantile function is the empirical distribution of the
  out-of-fold standardised residuals with conformal plotting positions, which
  makes each level's coverage match its nominal level on new data
  (cross-conformal calibration: every row is used to fit and to calibrate);
* optionally a *shape model* (distribution regression: one ridge logistic
  regression per knot of ``Z``) lets the mass between knots depend on the
  features, so the share of a slow mode (cold starts, aborted requests) can
  vary from task to task; its out-of-fold PIT values recalibrate it.

Every combination (family x constant/feature-dependent scale x with/without
shape) is scored on held-out folds by the pinball loss over
:data:`EVAL_LEVELS`; the simplest one within one standard error of the best
is refitted on all rows (above :data:`SELECT_MAX_ROWS` rows, the comparison
and calibration use a random subsample and only the location model sees every
row). Quantiles of the result never cross and are positive at every level; the
moments and batch totals come from :mod:`.distribution`.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import math
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .distribution import (LOG_BOUNDS, MAX_ATOMS, MixedDistribution, RuntimeDistribution, ScoreDistribution,
                           TaskDistributions, check_levels_in_unit_interval, data_atoms, describe_one,
                           snap_to_atoms)
from .errors import shown
from .traces import MAX_RUNTIME, MIN_RUNTIME, RUNTIME_RANGE

EVAL_LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
ALGORITHMS = ("auto", "empirical", "linear", "power", "lightgbm")
# Knots of the shape model: levels of the shared Z where per-task CDFs are modelled.
KNOT_MIN_ROWS = 10
KNOT_LEVELS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
# Numeric features with at most this many distinct values (each on LEVEL_MIN_ROWS rows
# or more) get per-value indicator columns in the linear location model's design.
MAX_LEVELS = 12
# Training rows (a random sample above this) whose ratios to their predicted means measure
# the model's uncertainty about the runtimes' level.
SHARED_SD_ROWS = 20_000
# Those ratios are capped at the value this many rows exceed, at most this share of them
# but one at least (see QuantileModel._shared_log_sd).
SHARED_SD_TAIL_ROWS = 10
SHARED_SD_TAIL_SHARE = 0.01
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


# --------------------------------------------------------------------------- metrics


def pinball_losses(y: np.ndarray, q: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Pinball loss of every row at every level, (rows, levels); ``q`` has shape (rows, levels)."""
    levels_arr = np.asarray(levels)[None, :]
    diff = y[:, None] - q
    return np.maximum(levels_arr * diff, (levels_arr - 1) * diff)


def pinball_loss(y: np.ndarray, q: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Mean pinball loss per level; ``q`` has shape (rows, levels)."""
    return pinball_losses(y, q, levels).mean(axis=0)


def quantile_metrics(y: np.ndarray, q: np.ndarray, levels: Sequence[float]) -> dict[str, Any]:
    """Held-out quality of quantile predictions ``q`` (rows x levels) against ``y``."""
    levels = list(levels)
    pin = pinball_loss(y, q, levels)
    coverage = (y[:, None] <= q).mean(axis=0)
    out: dict[str, Any] = {
        "pinball_loss": float(pin.mean()),
        "relative_pinball_loss": float(pin.mean() / y.mean()),
        "pinball_loss_per_level": {_lvl(t): float(v) for t, v in zip(levels, pin)},
        "coverage": {_lvl(t): float(c) for t, c in zip(levels, coverage)},
        "mean_abs_coverage_error": float(np.abs(coverage - np.asarray(levels)).mean()),
        "rows": int(len(y)),
    }
    # Central intervals formed by symmetric pairs of levels, e.g. 0.05/0.95 -> "0.9".
    intervals = {}
    for i, lo in enumerate(levels):
        for j, hi in enumerate(levels):
            if lo < 0.5 and abs(lo + hi - 1.0) < 1e-9:
                inside = (y >= q[:, i]) & (y <= q[:, j])
                intervals[_lvl(round(hi - lo, 6))] = float(inside.mean())
    if intervals:
        out["interval_coverage"] = intervals
    if 0.5 in levels:
        med = q[:, levels.index(0.5)]
        out["median_mape"] = float(np.mean(np.abs(med - y) / y))
    return out


def _lvl(t: float) -> str:
    return f"{t:g}"


# --------------------------------------------------------------------------- design matrices


def _numeric_positions(kinds: Sequence[str]) -> list[int]:
    """Columns of the numeric features a design uses."""
    return [j for j, k in enumerate(kinds) if k == "numeric"]


def _categorical_positions(kinds: Sequence[str], n_categories: Sequence[int]) -> list[tuple[int, int]]:
    """(column, number of categories) of the categorical features a design uses."""
    return [(j, k) for j, (kind, k) in enumerate(zip(kinds, n_categories)) if kind == "categorical" and k > 0]


def _one_hot(X: np.ndarray, cats: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """One-hot columns per categorical feature; an unseen (NaN) category is all zeros."""
    return [(X[:, j:j + 1] == np.arange(k)[None, :]).astype(np.float64) for j, k in cats]


def _design_matrix(dense: np.ndarray, X: np.ndarray, cats: Sequence[tuple[int, int]], sparse: bool):
    """The columns ``dense`` followed by the one-hot columns of ``cats``.

    With ``sparse``, a CSR matrix built from the category codes where the whole would be
    wide and mostly zeros (:func:`_sparse_view`'s rule), so that neither the one-hot
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


def _with_intercept(A):
    """``A`` with a column of ones in front, kept sparse when ``A`` is."""
    if _is_sparse(A):
        import scipy.sparse as sp

        return sp.hstack([np.ones((A.shape[0], 1)), A], format="csr")
    return np.concatenate([np.ones((A.shape[0], 1)), A], axis=1)


def _is_sparse(A) -> bool:
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
    exactly where the smooth columns do not; a value not seen in training sits
    at the indicators' training mean, like a missing one.
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
        return _numeric_positions(self.kinds)

    @property
    def width(self) -> int:
        """Columns of ``transform``: the numeric ones, then one per learned category."""
        return len(self.center_) + sum(k for _, k in _categorical_positions(self.kinds, self.n_categories))

    def fit(self, X: np.ndarray) -> "LogLinearDesign":
        num = self._num
        L = _slog(X[:, num])
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
            R = np.where(np.isnan(R), self.center_, R)  # an unseen level sits at the training mean
            L = _slog(probe)[:, self._owners()]
            whole = (R[2] - R[0]) / (L[2] - L[0])
            slopes = np.stack([np.where(L[1] > L[0], (R[1] - R[0]) / (L[1] - L[0]), whole),
                               np.where(L[2] > L[1], (R[2] - R[1]) / (L[2] - L[1]), whole)])
        return np.where(np.isfinite(slopes), slopes, 0.0)

    def _numeric_raw(self, X: np.ndarray) -> np.ndarray:
        num = self._num
        if not num:
            return np.zeros((len(X), 0))
        Xn = _infinite_as_missing(X[:, num])
        edges = getattr(self, "edges_", None)
        if edges is None:  # a model stored before edges: raw values capped, the rest as they are
            rng = getattr(self, "raw_range_", None)
            L = _slog(Xn)
            return self._columns(Xn if rng is None else np.minimum(np.maximum(Xn, rng[0]), rng[1]), L, Xn)
        # minimum/maximum rather than np.clip: same result, a fraction of the per-call cost.
        inside = np.minimum(np.maximum(Xn, edges[0]), edges[1])
        Lc = _slog(inside)
        R = self._columns(inside, Lc, inside)
        if self.slopes_.shape[1] and ((Xn < edges[0]) | (Xn > edges[1])).any():
            D = (_slog(Xn) - Lc)[:, self._owners()]
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
                hit = values[:, j : j + 1] == np.asarray(levels)[None, :]
                # An unseen (or missing) value: NaN, which transform puts at the training mean.
                cols.append(np.where(hit.any(axis=1, keepdims=True), hit, np.nan))
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
        return _design_matrix(Z, X, _categorical_positions(self.kinds, self.n_categories), sparse)

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
        for j, values in levels:
            v = x[j]
            # An unseen or missing value: NaN, then 0 (the training mean) below, as in transform.
            cols.extend([float(v == u) for u in values] if v in values else [math.nan] * len(values))
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
        for j, weight_of, unseen in levels:
            total += weight_of.get(x[j], unseen)
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
        for j, values in levels:
            cols = range(col, col + len(values))
            # An unseen value's indicators sit at their training means: cancel their part of the offset.
            level_terms.append((j, {u: w[c] for u, c in zip(values, cols)}, sum(w[c] * center[c] for c in cols)))
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
        cats = _categorical_positions(self.kinds, self.n_categories)
        center = self.center_.tolist() if num else []
        spread = self.spread_.tolist() if num else []
        levels = [(j, list(v)) for j, v in zip(num, self.levels_) if v]
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
        obj = cls(_stored_kinds(d["kinds"], d["n_categories"]), d["n_categories"], int(d.get("hinges", 0)))
        obj.knots_ = [list(map(float, k)) for k in d.get("knots", [[] for k in d["kinds"] if k == "numeric"])]
        obj.levels_ = [list(map(float, v)) for v in d.get("levels", [[] for k in d["kinds"] if k == "numeric"])]
        obj.levels = max((len(v) for v in obj.levels_), default=0)
        obj.center_, obj.spread_ = _standardisation(d, len(obj._owners()))
        if "edges" in d:
            obj.edges_ = _stored_numbers(d["edges"], "edges", ndim=2).reshape(2, -1)
            obj.slopes_ = _stored_numbers(d["edge_slopes"], "edge_slopes", ndim=2).reshape(2, -1)
        elif "raw_range" in d:  # stored before edges: predicts as it did
            obj.raw_range_ = _stored_numbers(d["raw_range"], "raw_range", ndim=2).reshape(2, -1)
        return obj


def _discrete_levels(col: np.ndarray, max_levels: int) -> list[float]:
    """The distinct values of a numeric column that gets indicator columns, or [] if it does not."""
    if max_levels < 3:
        return []
    col = col[np.isfinite(col)]
    values, counts = np.unique(col, return_counts=True)
    if not 3 <= len(values) <= max_levels or counts.min() < LEVEL_MIN_ROWS:
        return []
    return [float(v) for v in values]


def _infinite_as_missing(Xn: np.ndarray) -> np.ndarray:
    """Numeric feature values with the infinite ones missing (NaN): no runtime follows from
    them, and the single-row paths read them so (a power law's floor made -inf finite)."""
    inf = np.isinf(Xn)
    return np.where(inf, np.nan, Xn) if inf.any() else Xn


def _slog(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


# A design at least this wide and at most a quarter non-zero (one-hot columns of a
# categorical feature with many values) is handled through a sparse view: its Gram
# matrices and solves scaled with the number of categories squared or cubed (a training
# on 100k rows with a 500-value categorical took four minutes of CPU, and 15 s this way).
SPARSE_MIN_WIDTH = 64


def _sparse_view(A: np.ndarray):
    """A CSR copy of a wide design that is mostly zeros (one-hot columns), else None; a sparse ``A`` itself."""
    if _is_sparse(A):
        return A
    n, d = A.shape
    if not (_wants_sparse(n, d, None) and _wants_sparse(n, d, np.count_nonzero(A))):
        return None
    import scipy.sparse as sp

    return sp.csr_matrix(A)


def _wants_sparse(n: int, d: int, nnz: int | None) -> bool:
    """Whether a design of ``n`` rows, ``d`` columns and ``nnz`` non-zeros (not yet counted:
    None) is handled sparse: wide, at least a thousand rows, at most a quarter non-zero."""
    return d >= SPARSE_MIN_WIDTH and n >= 1000 and (nnz is None or nnz <= 0.25 * n * d)


def _wgram(A: np.ndarray, w: np.ndarray, S=None, dense: bool = True):
    """``A.T @ (A * w[:, None])``; through the sparse view when there is one."""
    if S is None:
        return A.T @ (A * w[:, None])
    Sw = S.copy()
    Sw.data = S.data * w[np.repeat(np.arange(S.shape[0]), np.diff(S.indptr))]  # each stored value's row weight
    G = S.T @ Sw
    return G.toarray() if dense else G


def _wgrams(A: np.ndarray, V: np.ndarray, block: int = 1_000_000) -> np.ndarray:
    """``A.T @ (A * V[:, k, None])`` for every column ``k`` of ``V``, shape (columns, d, d).

    One matrix product per block of rows for all the columns at once: about 1.4 times
    as fast as a product per column (single-threaded, 121 design columns, 9 knots), and
    the block (``block`` entries of rows x columns x d) bounds the memory it takes.
    """
    n, d = A.shape
    K = V.shape[1]
    out = np.zeros((d, K * d))
    rows = max(1, block // max(1, K * d))
    for s in range(0, n, rows):
        a = A[s : s + rows]
        out += a.T @ (V[s : s + rows, :, None] * a[:, None, :]).reshape(len(a), K * d)
    return out.reshape(d, K, d).transpose(1, 0, 2)


# A sparse matrix with more than this share of its entries stored (and at most
# DENSE_SOLVE_MAX_SIZE wide) is factorised dense. One categorical feature's Gram matrix is
# an arrow (a diagonal block per value), which a sparse LU factorises fast; several
# categorical features fill in a block for every pair of them, and the sparse LU fills in
# the rest: 8 features of 100 values (801 columns, a third stored) took 49 ms a factorisation
# sparse, 16 ms dense, and the shape model makes one per knot and Newton step.
DENSE_SOLVE_SHARE = 0.1
DENSE_SOLVE_MAX_SIZE = 4096


def _sparse_lu(M):
    """The solve function of a factorisation of the square sparse matrix ``M``.

    Dense (Cholesky, else LU) where ``M`` is filled in enough that the sparse LU would
    only be slower; singular matrices raise RuntimeError either way, as ``splu`` does.
    """
    import scipy.sparse as sp

    M = sp.csc_matrix(M)
    d = M.shape[0]
    if d <= DENSE_SOLVE_MAX_SIZE and M.nnz > DENSE_SOLVE_SHARE * d * d:
        import scipy.linalg as sl

        dense = M.toarray()
        try:
            if not np.array_equal(dense, dense.T):  # Cholesky reads one triangle only
                raise np.linalg.LinAlgError("not symmetric")
            factor = sl.cho_factor(dense, check_finite=False)
            return lambda b: sl.cho_solve(factor, b, check_finite=False)
        except np.linalg.LinAlgError:  # not symmetric, or not positive definite
            with warnings.catch_warnings():  # a singular one: the RuntimeError below says it
                warnings.simplefilter("ignore", sl.LinAlgWarning)
                lu, piv = sl.lu_factor(dense, check_finite=False)
            if not np.all(np.isfinite(lu)) or np.any(np.diag(lu) == 0):
                raise RuntimeError("Factor is exactly singular") from None
            return lambda b: sl.lu_solve((lu, piv), b, check_finite=False)
    from scipy.sparse.linalg import splu

    return splu(M).solve


def _sparse_solve(G, diag: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(G + diag(diag))^-1 b`` for a sparse symmetric positive definite ``G``."""
    import scipy.sparse as sp

    return _sparse_lu(G + sp.diags(diag))(b)


def _wsum(A: np.ndarray, w: np.ndarray, S=None) -> np.ndarray:
    """``A.T @ w``."""
    return A.T @ w if S is None else S.T @ w


def _gcv_alpha(A: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, S=None) -> float:
    """Ridge penalty (as taken by :func:`_ridge`) minimising generalised cross-validation error."""
    n, d = A.shape
    if d == 0 or n < 3:
        return 1.0
    w = np.ones(n) if w is None else w
    sw = w.sum()
    a_mean = _wsum(A, w, S) / sw
    y_mean = float((y * w).sum() / sw)
    r = np.sqrt(w)
    yc = (y - y_mean) * r
    total = float(yc @ yc)
    if S is None:
        U, sv, _ = np.linalg.svd((A - a_mean) * r[:, None], full_matrices=False)
        lam = sv**2
        beta2 = lam * (U.T @ yc) ** 2
    else:
        # Eigen-decomposition of the centred weighted Gram matrix (d x d) instead of an
        # SVD of the n x d design: the same spectrum, and (V' Ac' W yc)^2 = s^2 (U' yc)^2.
        G = _wgram(A, w, S) - sw * np.outer(a_mean, a_mean)
        lam, V = np.linalg.eigh(G)
        lam, V = np.maximum(lam[::-1], 0.0), V[:, ::-1]
        beta2 = (V.T @ _wsum(A, w * (y - y_mean), S)) ** 2
    best = (np.inf, 1.0)
    scale = sw / n
    for log_a in np.arange(-6.0, 4.01, 0.5):
        a = 10.0**log_a * max(float(lam[0]), 1e-12) / n
        c = a * scale
        f = lam / (lam + c)
        rss = total - float((beta2 * (lam + 2 * c) / (lam + c) ** 2).sum())
        df = float(f.sum()) + 1.0
        if df >= n - 0.5:
            continue
        gcv = max(rss, 0.0) / (1.0 - df / n) ** 2
        if gcv < best[0]:
            best = (gcv, a)
    return best[1]


def _ridge(A: np.ndarray, y: np.ndarray, alpha: float, w: np.ndarray | None = None, S=None) -> tuple[float, np.ndarray]:
    """Weighted ridge regression with an unpenalised intercept."""
    w = np.ones(len(y)) if w is None else w
    sw = w.sum()
    if S is not None:
        # The normal equations with the intercept as an unpenalised column keep the
        # matrix sparse (centring would fill it): a sparse LU instead of a dense solve.
        import scipy.sparse as sp

        d = A.shape[1]
        s = S.T @ w
        G = _wgram(A, w, S, dense=False) + sp.diags(np.full(d, alpha * sw / len(y)))
        K = sp.bmat([[sp.csr_matrix([[sw]]), sp.csr_matrix(s[None, :])], [sp.csr_matrix(s[:, None]), G]])
        sol = _sparse_lu(K)(np.concatenate([[float(w @ y)], S.T @ (w * y)]))
        return float(sol[0]), sol[1:]
    a_mean = (A * w[:, None]).sum(axis=0) / sw
    y_mean = float((y * w).sum() / sw)
    Ac = A - a_mean
    yc = y - y_mean
    Aw = Ac * w[:, None]
    gram = Ac.T @ Aw + alpha * sw / len(y) * np.eye(A.shape[1])
    coef = np.linalg.solve(gram, Aw.T @ yc)
    return y_mean - float(a_mean @ coef), coef


# --------------------------------------------------------------------------- location families


class LocationModel:
    """Predicts the location ``m(x)`` of log-runtime; subclasses are the families."""

    name: ClassVar[str]
    min_rows: ClassVar[int] = 1

    def fit(self, X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> "LocationModel":
        raise NotImplementedError

    def predict(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_row(self, x: Sequence[float]) -> float | None:
        """``predict`` for one row in plain floats; None where a family has no such path."""
        return None

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError


class EmpiricalLocation(LocationModel):
    """No features: the runtime distribution is that of the training runtimes."""

    name = "empirical"

    def fit(self, X, y, w=None):
        # The mean of the middle half, not the median: with runtimes in two modes of about
        # equal share the median jumps from one mode to the other between folds, the held-out
        # scores then span both gaps, and predictions reached 100x beyond every run.
        lo, hi = np.quantile(y, [0.25, 0.75])
        middle = y[(y >= lo) & (y <= hi)]
        # Equal middle values: exactly that value (a float mean of them may be one ulp off,
        # and the scores of a constant runtime then not exactly 0).
        self.location_ = float(lo) if lo == hi or not len(middle) else float(middle.mean())
        return self

    def predict(self, X):
        return np.full(len(X), self.location_)

    def predict_row(self, x):
        return self.location_

    def to_json(self):
        return {"location": self.location_}

    @classmethod
    def from_json(cls, d, kinds, n_categories):
        obj = cls()
        obj.location_ = float(d["location"])
        return obj


MAX_REGIME_FLAGS = 2


def _regime_flags(X: np.ndarray, kinds: Sequence[str]) -> list[tuple[int, float]]:
    """Numeric features that take only the values 0 and 1, each on at least
    :data:`LEVEL_MIN_ROWS` rows (``first_of_shape``, a boolean): (column, share of ones).

    At most :data:`MAX_REGIME_FLAGS`, the most evenly split, and none unless another
    numeric feature is there to have slopes: each flag copies the other features' design
    columns (40 flags beside 20 features made a linear fit take 311 s instead of 9).
    """
    numeric = _numeric_positions(kinds)
    flags = []
    for j in numeric:
        col = X[:, j][np.isfinite(X[:, j])]
        if len(col) and bool(np.isin(col, (0.0, 1.0)).all()):
            ones = int((col == 1.0).sum())
            if min(ones, len(col) - ones) >= LEVEL_MIN_ROWS:
                flags.append((j, ones / len(col)))
    if len(flags) == len(numeric):
        return []
    flags.sort(key=lambda f: abs(f[1] - 0.5))
    return sorted(flags[:MAX_REGIME_FLAGS])


def _flag_values(col: np.ndarray, share: float) -> np.ndarray:
    """A flag's 0/1 values; a missing or other value sits at the training share of ones, as its main column does."""
    return np.where((col == 0.0) | (col == 1.0), col, share)


class LinearLocation(LocationModel):
    """Robust ridge regression of log-runtime on log features (Huber, then Tukey's bisquare, by reweighting).

    The ridge penalty is chosen by generalised cross-validation unless ``alpha``
    is given: the design's columns (log, raw, hinges) are strongly collinear, and
    a fixed penalty either biases the fit (it was measured at 2-8% on a trace set
    with four distinct frame counts) or fails to tame useless features.

    A 0/1 feature that splits the rows into two regimes (a shape's first run, which
    costs a fixed ~60 ms of kernel selection whatever the batch, against repeats that
    grow with it) also gets the other numeric features' columns times the flag, so each
    regime has its own slopes; with one slope shared by both, the size features hurt
    the fit more than they helped and were dropped, and every repeat was predicted
    the same 4.4 ms whatever its batch. The ridge penalty shrinks unneeded ones.
    """

    name = "linear"
    min_rows = 8

    def __init__(self, kinds: Sequence[str], n_categories: Sequence[int], alpha: float | None = None, huber_delta: float = 1.0,
                 redescend: bool = True, max_levels: int = MAX_LEVELS, hinges: int = 3, regimes: bool = True):
        self.kinds = list(kinds)
        self.n_categories = list(n_categories)
        self.alpha = alpha
        self.huber_delta = huber_delta
        self.redescend = redescend
        self.max_levels = max_levels
        self.hinges = hinges
        self.regimes = regimes

    def _interacting(self) -> np.ndarray:
        """The numeric design columns a flag multiplies: those of the features that are not flags."""
        num = self.design_._num
        flagged = {j for j, _ in self.flags_}
        return np.array([c for c, o in enumerate(self.design_._owners().tolist()) if num[o] not in flagged], dtype=np.int64)

    def _split(self, coef: np.ndarray, width: int) -> None:
        """Main-effect coefficients, and per flag its slopes as a full-width vector (for ``dot_row``)."""
        self.coef_ = coef
        self.main_ = coef[:width]
        keep = self._interacting() if self.flags_ else np.zeros(0, dtype=np.int64)
        self.flag_coefs_ = []
        for i in range(len(self.flags_)):
            c = np.zeros(width)
            c[keep] = coef[width + i * len(keep): width + (i + 1) * len(keep)]
            self.flag_coefs_.append(c)

    def fit(self, X, y, w=None):
        self.design_ = LogLinearDesign(self.kinds, self.n_categories, hinges=self.hinges, levels=self.max_levels).fit(X)
        A = self.design_.transform(X, sparse=True)
        width = A.shape[1]
        self.flags_ = _regime_flags(X, self.kinds) if self.regimes else []
        if self.flags_:
            keep = self._interacting()
            if len(keep):
                flagged = [(A[:, keep].toarray() if _is_sparse(A) else A[:, keep]) * _flag_values(X[:, j], share)[:, None]
                           for j, share in self.flags_]
                if _is_sparse(A):
                    import scipy.sparse as sp

                    A = sp.hstack([A] + flagged, format="csr")
                else:
                    A = np.concatenate([A] + flagged, axis=1)
            else:
                self.flags_ = []
        base_w = np.ones(len(y)) if w is None else w
        weights = base_w
        S = _sparse_view(A)
        alpha = self.alpha if self.alpha is not None else _gcv_alpha(A, y, base_w, S)
        self.alpha_ = float(alpha)
        for it in range(4 + 4 * self.redescend):
            b, coef = _ridge(A, y, alpha, weights, S)
            r = y - b - (A @ coef if S is None else S @ coef)
            mad = np.median(np.abs(r - np.median(r))) * 1.4826 + 1e-9
            if it < 4:
                # Huber weights tame the aborted-request and cold-start outliers ...
                scaled = np.abs(r) / (self.huber_delta * mad)
                weights = base_w * np.minimum(1.0, 1.0 / np.maximum(scaled, 1e-12))
            else:
                # ... and Tukey's bisquare then ignores them: they belong to Z's tails.
                t = r / (4.685 * mad)
                weights = base_w * np.where(np.abs(t) < 1, (1 - t * t) ** 2, 0.0)
                if weights.sum() < 0.5 * base_w.sum():
                    break
        self.intercept_ = b
        self._split(coef, width)
        return self

    def predict(self, X):
        A = self.design_.transform(X, sparse=True)
        out = self.intercept_ + A @ self.main_
        for (j, share), c in zip(self.flags_, self.flag_coefs_):
            out += _flag_values(X[:, j], share) * (A @ c)
        return out

    def predict_row(self, x):
        out = self.intercept_ + self.design_.dot_row(x, self.main_)
        for (j, share), c in zip(self.flags_, self.flag_coefs_):
            v = x[j]
            b = v if v == 0.0 or v == 1.0 else share
            if b:
                out += b * self.design_.dot_row(x, c)
        return out

    def to_json(self):
        return {
            "alpha": self.alpha_,
            "huber_delta": self.huber_delta,
            "redescend": self.redescend,
            "design": self.design_.to_json(),
            "intercept": self.intercept_,
            "coef": self.coef_.tolist(),
            "flags": [[j, share] for j, share in self.flags_],
        }

    @classmethod
    def from_json(cls, d, kinds, n_categories):
        obj = cls(kinds, n_categories, d["alpha"], d["huber_delta"], bool(d.get("redescend", False)))
        obj.alpha_ = float(d["alpha"])
        obj.design_ = LogLinearDesign.from_json(d["design"])
        obj.hinges = obj.design_.hinges
        obj.intercept_ = _stored_number(d["intercept"], "intercept")
        # Stored before regime flags: none, and the coefficients are the main effects.
        obj.flags_ = [(int(j), float(share)) for j, share in d.get("flags", [])]
        obj.regimes = bool(obj.flags_)
        obj._split(_stored_numbers(d["coef"], "coef"), obj.design_.width)
        return obj


def _fit_overhead_power(B: np.ndarray, y: np.ndarray, w: np.ndarray, th: np.ndarray, f_scale: float,
                        ridge: float, bounds: tuple[float, float], iters: int = 60, S=None) -> tuple[np.ndarray, float]:
    """Fit ``y ~ logaddexp(th[0], th[1] + B th[2:])`` by Levenberg-Marquardt on a soft-L1 loss.

    Iteratively reweighted Gauss-Newton (each row's weight ``1 / sqrt(1 + (r / f_scale)^2)``
    bounds the pull of slow modes and aborted requests), with a ridge ``ridge * n *
    f_scale^2`` on ``th[2:]`` (in the noise's units, so that it stays light whatever the
    noise) and ``th[0]`` (the log overhead) kept within ``bounds``. Returns the
    parameters and the objective. A few numpy products per step: a whole PowerLocation fit
    on a thousand rows took 3.5 ms here (LinearLocation's 6 ms), where scipy's
    ``least_squares`` spent most of its time in its own overhead.
    """
    n, d = B.shape
    alpha = ridge * n * f_scale**2
    sw = float(w.sum())

    def objective(t: np.ndarray) -> tuple[float, np.ndarray]:
        r = y - np.logaddexp(t[0], t[1] + B @ t[2:])
        loss = 2.0 * f_scale**2 * float(w @ (np.sqrt(1.0 + (r / f_scale) ** 2) - 1.0))
        return loss / sw * n + alpha * float(t[2:] @ t[2:]), r

    obj, r = objective(th)
    lam = 1e-3
    penalty = np.zeros(d + 2)
    penalty[2:] = alpha
    for _ in range(iters):
        eta = th[1] + B @ th[2:]
        p = np.exp(th[0] - np.logaddexp(th[0], eta))  # the overhead's share of the runtime
        v = w / np.sqrt(1.0 + (r / f_scale) ** 2) * (n / sw)
        if S is None:
            J = np.empty((n, d + 2))
            J[:, 0] = p
            J[:, 1] = 1.0 - p
            J[:, 2:] = (1.0 - p)[:, None] * B
            Jv = J * v[:, None]
            H = Jv.T @ J + np.diag(penalty)
            g = Jv.T @ r - penalty * th
        else:
            # J = [p, 1-p, (1-p) B] with B sparse: the B block of J'VJ is B' diag(v (1-p)^2) B.
            q = 1.0 - p
            J2 = np.column_stack([p, q])
            H = np.empty((d + 2, d + 2))
            H[:2, :2] = J2.T @ (J2 * v[:, None])
            H[:2, 2:] = (S.T @ (J2 * (v * q)[:, None])).T
            H[2:, :2] = H[:2, 2:].T
            H[2:, 2:] = _wgram(B, v * q * q, S)
            H += np.diag(penalty)
            g = np.concatenate([J2.T @ (v * r), S.T @ (v * q * r)]) - penalty * th
        if S is not None:
            import scipy.sparse as sp

            Hs = sp.csc_matrix(H)
        for _ in range(20):
            D = H + lam * np.diag(np.diag(H) + 1e-12) if S is None else Hs + sp.diags(lam * (np.diag(H) + 1e-12), format="csc")
            try:
                step = np.linalg.solve(D, g) if S is None else _sparse_lu(D)(g)
                if not bounds[0] < th[0] + step[0] < bounds[1]:
                    # The overhead at its bound: the other parameters step with it held
                    # there (a clipped full step would not descend, and the fit stalls).
                    step[0] = min(max(th[0] + step[0], bounds[0]), bounds[1]) - th[0]
                    if S is None:
                        step[1:] = np.linalg.solve(D[1:, 1:], g[1:] - D[1:, 0] * step[0])
                    else:
                        step[1:] = _sparse_lu(D[1:, 1:])(g[1:] - D[1:, 0].toarray().ravel() * step[0])
            except (np.linalg.LinAlgError, RuntimeError):
                step = np.zeros_like(th)
            new = th + step
            new_obj, new_r = objective(new)
            if np.isfinite(new_obj) and new_obj <= obj:
                break
            lam *= 4.0
        else:
            return th, obj
        # Converged when a step no longer lowers the loss noticeably: along a flat valley
        # (an overhead too small to matter drifting lower) the fit no longer changes.
        done = obj - new_obj <= 1e-7 * max(obj, 1e-300) or float(np.abs(new - th).max()) < 1e-7
        th, obj, r = new, new_obj, new_r
        lam = max(lam / 3.0, 1e-9)
        if done:
            break
    return th, obj


class PowerLocation(LocationModel):
    """A fixed overhead plus a power law of the features: ``runtime = a + exp(c0 + B c)``.

    The physical model of most inference runtimes: a launch, scheduling and I/O
    overhead, then work that grows as a power of the batch size, the pixels, the
    tokens or the frames (``B``: the log of each numeric feature, or ``log1p``
    with its sign where the training values are not all positive, standardised;
    one-hot columns per categorical, which scale the work). Its log,
    ``logaddexp(log a, c0 + B c)``, is fitted to log-runtime by robust (soft-L1)
    nonlinear least squares with a light ridge on ``c``. Where it holds it needs
    a parameter per feature and one for the overhead, where the hinged
    log-linear design needs several per feature to bend the same curve: in
    benchmarks/accuracy.py's many-seeds study, on 140 training rows of the
    vision-like ``bimodal`` set, the service's expected loss went from 0.999 to
    0.962 times the best baseline's once this family was a candidate (the true
    quantiles': 0.946).
    """

    name = "power"
    min_rows = 8
    # Ridge on the work's coefficients, per training row and in the noise's units: it
    # only settles collinear columns (a categorical's one-hot columns next to the intercept).
    RIDGE = 1e-3

    def __init__(self, kinds: Sequence[str], n_categories: Sequence[int]):
        self.kinds = list(kinds)
        self.n_categories = list(n_categories)
        self._row_plan: tuple | None = None

    # -- design
    def _logs(self, Xn: np.ndarray) -> np.ndarray:
        """Per numeric feature: log, floored at half the smallest training value, or signed log1p."""
        floor = np.asarray(self.floor_)
        pos = floor > 0
        out = _slog(Xn)
        if pos.any():
            with np.errstate(invalid="ignore"):
                out[:, pos] = np.log(np.maximum(Xn[:, pos], floor[pos]))
        return out

    def _design(self, X: np.ndarray, sparse: bool = True):
        num = _numeric_positions(self.kinds)
        Z = np.zeros((len(X), 0))
        if num:
            Z = (self._logs(_infinite_as_missing(X[:, num])) - self.center_) / self.spread_
            Z[~np.isfinite(Z)] = 0.0  # a missing value sits at the training mean
        return _design_matrix(Z, X, _categorical_positions(self.kinds, self.n_categories), sparse)

    # -- fitting
    def fit(self, X, y, w=None):
        num = _numeric_positions(self.kinds)
        Xn = X[:, num]
        floor = []
        for j in range(Xn.shape[1]):
            col = Xn[:, j][np.isfinite(Xn[:, j])]
            floor.append(float(col.min()) / 2 if len(col) and col.min() > 0 else 0.0)
        self.floor_ = floor
        L = self._logs(Xn) if num else np.zeros((len(X), 0))
        self.center_ = np.nanmean(L, axis=0) if num else np.zeros(0)
        spread = np.nanstd(L, axis=0) if num else np.zeros(0)
        self.spread_ = np.where(spread > 0, spread, 1.0)
        B = self._design(X)
        w = np.ones(len(y)) if w is None else np.asarray(w, dtype=np.float64)
        # Start from the log-linear fit, its runtimes split evenly between an overhead
        # (half the fastest runtimes) and the work.
        S = _sparse_view(B)
        c0, c = _ridge(B, y, self.RIDGE, w, S)
        r = y - c0 - B @ c
        f_scale = max(float(np.median(np.abs(r - np.median(r)))) * 1.4826, 1e-6)
        bounds = (float(y.min()) - 12.0, float(y.max()))
        start = np.concatenate([[float(np.quantile(y, 0.05)) + math.log(0.5), c0 + math.log(0.5)], c])
        th, _ = _fit_overhead_power(B, y, w, start, f_scale, self.RIDGE, bounds, S=S)
        self.log_overhead_, self.intercept_, self.coef_ = float(th[0]), float(th[1]), np.asarray(th[2:])
        self._row_plan = None
        return self

    # -- prediction
    def predict(self, X):
        return np.logaddexp(self.log_overhead_, self.intercept_ + self._design(X) @ self.coef_)

    def predict_row(self, x):
        if self._row_plan is None:
            self._row_plan = self._make_row_plan()
        eta, numeric, cats = self._row_plan
        for j, floor, center, weight in numeric:
            v = x[j]
            if not math.isfinite(v):  # missing (or infinite, as in _design): the training mean
                continue
            lg = math.log(max(v, floor)) if floor > 0 else math.copysign(math.log1p(abs(v)), v)
            eta += weight * (lg - center)
        for j, weights in cats:
            code = x[j]
            if 0 <= code < len(weights) and code == int(code):  # 1.5 is no category, as in _design
                eta += weights[int(code)]
        a = self.log_overhead_
        return max(a, eta) + math.log1p(math.exp(-abs(a - eta)))

    def _make_row_plan(self) -> tuple:
        """What predict_row needs, as plain floats: made once per fit."""
        num = _numeric_positions(self.kinds)
        coef = self.coef_.tolist()
        numeric = [(j, float(f), float(m), coef[i] / float(sd))
                   for i, (j, f, m, sd) in enumerate(zip(num, self.floor_, self.center_, self.spread_))]
        cats, col = [], len(num)
        for j, k in _categorical_positions(self.kinds, self.n_categories):
            cats.append((j, coef[col:col + k]))
            col += k
        return self.intercept_, numeric, cats

    def to_json(self):
        # Its own kinds: features the backward elimination dropped are marked unused there.
        return {"kinds": self.kinds, "n_categories": self.n_categories,
                "floor": list(self.floor_), "center": self.center_.tolist(), "spread": self.spread_.tolist(),
                "log_overhead": self.log_overhead_, "intercept": self.intercept_, "coef": self.coef_.tolist()}

    @classmethod
    def from_json(cls, d, kinds, n_categories):
        obj = cls(_stored_kinds(d["kinds"], d["n_categories"]), d["n_categories"])
        p = len(_numeric_positions(obj.kinds))
        obj.floor_ = _stored_numbers(d["floor"], "floor").tolist()
        if len(obj.floor_) != p:
            raise ValueError(f"floor holds {len(obj.floor_)} values for {p} numeric features")
        obj.center_, obj.spread_ = _standardisation(d, p)
        obj.log_overhead_ = _stored_number(d["log_overhead"], "log_overhead")
        obj.intercept_ = _stored_number(d["intercept"], "intercept")
        obj.coef_ = _stored_numbers(d["coef"], "coef")
        return obj


# Boosting rounds at most: the folds' validation loss (early stopping, 30 rounds of
# patience) picks how many are used. At 300, the cap stopped the folds of sets with
# step-like costs (padding buckets, per-hardware speeds) while their loss still fell,
# and the spread learned from those folds' residuals was too wide for the final model.
MAX_BOOST_ROUNDS = 2000


class LightGBMLocation(LocationModel):
    """Gradient-boosted trees on log-runtime: captures interactions and steps.

    By default the trees boost from the robust linear fit (``linear_base``):
    they learn what the log-linear model misses, and beyond the training range
    the prediction keeps the linear trend instead of going flat. The loss is
    Huber with a delta of 1.345 robust standard deviations of the linear fit's
    residuals (within [0.05, 1]): squared loss for the ordinary noise, absolute
    loss beyond, so that a slow minority mode (cold starts) or aborted requests
    do not drag the location; they go to the score distribution instead.
    """

    name = "lightgbm"
    # Below this many rows, boosted trees fit the noise, and picking them by the lowest
    # cross-validated loss among a dozen candidates is mostly luck: at 140 training rows,
    # over the eight seeds of the many-seeds study in benchmarks/accuracy.py, `auto` with
    # them lost up to 4% to the linear family alone and gained at most 0.2%.
    min_rows = 200
    _stored_text: str | None = None  # the booster's text as a model file gave it (from_json)
    DEFAULT_PARAMS: ClassVar[dict[str, Any]] = {
        "objective": "huber",
        "learning_rate": 0.08,
        "num_leaves": 15,
        "min_data_in_leaf": 10,
        "lambda_l2": 1.0,
        "verbosity": -1,
        "deterministic": True,
        "seed": 0,
    }

    def __init__(self, kinds: Sequence[str], n_categories: Sequence[int], num_boost_round: int = MAX_BOOST_ROUNDS,
                 params: dict[str, Any] | None = None, linear_base: bool = True, base_regimes: bool = False):
        self.kinds = list(kinds)
        self.n_categories = list(n_categories)
        self.num_boost_round = num_boost_round
        self.params = {**self.DEFAULT_PARAMS, **(params or {})}
        self.linear_base = linear_base
        self.base_regimes = base_regimes
        self.base_: LinearLocation | None = None

    def _dataset(self, X, y, w=None, init=None, reference=None):
        import lightgbm as lgb

        unused = [j for j, k in enumerate(self.kinds) if k == UNUSED]
        if unused:
            # A constant column: no tree splits on it, so predictions need no masking.
            X = X.copy()
            X[:, unused] = 0.0
        cats = [j for j, k in enumerate(self.kinds) if k == "categorical"]
        return lgb.Dataset(X, y, weight=w, init_score=init, reference=reference, categorical_feature=cats or "auto",
                           free_raw_data=True, params={"verbosity": -1, "min_data_in_bin": 1})

    def _base(self, X) -> np.ndarray | None:
        return None if self.base_ is None else self.base_.predict(X)

    def fit(self, X, y, w=None, valid: tuple[np.ndarray, np.ndarray] | None = None):
        import lightgbm as lgb

        params = {**self.params, "min_data_in_leaf": min(self.params["min_data_in_leaf"], max(2, len(y) // 10))}
        if self.linear_base:
            self.base_ = LinearLocation(self.kinds, self.n_categories, regimes=self.base_regimes).fit(X, y, w)
            params["boost_from_average"] = False
        init = self._base(X)
        if params.get("objective") == "huber" and "alpha" not in params:
            if init is None:
                params["alpha"] = 0.5
            else:
                r = y - init
                mad = float(np.median(np.abs(r - np.median(r)))) * 1.4826
                params["alpha"] = float(np.clip(1.345 * mad, 0.05, 1.0))
        _check_interaction_constraints(params.get("interaction_constraints"), X.shape[1])
        # The threads are the service's (a model stored when a request could set them keeps
        # its parameter, unused); OpenMP's default is far slower than one thread on small data.
        aliases = _lightgbm_aliases()
        params = {k: v for k, v in params.items() if aliases.get(k, k) != "num_threads"}
        self.params_used_ = dict(params)
        params["num_threads"] = 1 if len(y) < 50_000 else (os.cpu_count() or 1)
        train = self._dataset(X, y, w, init)
        if valid is not None:
            vset = self._dataset(valid[0], valid[1], init=self._base(valid[0]), reference=train)
            evals: dict[str, Any] = {}
            booster = lgb.train(params, train, self.num_boost_round, valid_sets=[vset],
                                callbacks=[lgb.early_stopping(30, verbose=False), lgb.record_evaluation(evals)])
            self.best_iteration_ = booster.best_iteration or self.num_boost_round
            curve = next(iter(evals.get("valid_0", {}).values()), [])
            self.valid_curve_ = np.asarray(curve, dtype=np.float64)
        else:
            booster = lgb.train(params, train, self.num_boost_round)
            self.best_iteration_ = self.num_boost_round
        self.booster_ = booster
        return self

    def predict(self, X):
        # One thread: OpenMP's start-up costs milliseconds, far more than a batch's trees.
        threads = 1 if len(X) < 20_000 else 0
        out = self.booster_.predict(X, num_iteration=self.best_iteration_, num_threads=threads)
        base = self._base(X)
        return out if base is None else out + base

    def predict_row(self, x):
        fast = self.__dict__.get("_row_predictor")
        if fast is None:
            fast = self._row_predictor = _LightGBMRowPredictor(self.booster_, self.best_iteration_)
        out = fast(x)
        return out if self.base_ is None else out + self.base_.predict_row(x)

    def to_json(self):
        # A loaded booster is written back as it was read (LightGBM parsed it without its
        # tree_sizes line and settings, see _booster_text, and would write it without them).
        booster = self._stored_text or self.booster_.model_to_string(num_iteration=self.best_iteration_)
        return {
            "num_boost_round": self.num_boost_round,
            "best_iteration": self.best_iteration_,
            "params": self.params,
            "params_used": self.params_used_,
            "linear_base": None if self.base_ is None else self.base_.to_json(),
            "booster": booster,
            # Checked before LightGBM parses the text again (see _booster_text).
            "booster_sha256": hashlib.sha256(booster.encode()).hexdigest(),
        }

    @classmethod
    def from_json(cls, d, kinds, n_categories):
        import lightgbm as lgb

        base = d.get("linear_base")
        obj = cls(kinds, n_categories, d["num_boost_round"], d["params"], linear_base=base is not None)
        obj.best_iteration_ = int(d["best_iteration"])
        obj.params_used_ = d.get("params_used", d["params"])
        obj.base_ = None if base is None else LinearLocation.from_json(base, kinds, n_categories)
        obj.base_regimes = obj.base_ is not None and bool(obj.base_.flags_)
        # LightGBM's own text format: parsing it runs no code, unlike pickle. But LightGBM
        # aborts the whole process on some damaged texts, so the text is checked first.
        text, checked = _booster_text(d["booster"], d.get("booster_sha256"))
        obj.booster_ = lgb.Booster(model_str=text)
        if obj.booster_.num_trees() != checked:
            raise ValueError(f"the LightGBM booster text is damaged: {checked} trees written, "
                             f"{obj.booster_.num_trees()} read")
        obj._stored_text = d["booster"]
        return obj


_TREE_SIZES = re.compile(r"^tree_sizes=([^\n]*)\n", re.MULTILINE)
_TREE_HEADER = re.compile(rb"^Tree=\d+\n", re.MULTILINE)


def _booster_text(text: Any, digest: Any) -> tuple[str, int]:
    """A LightGBM booster text that is safe to hand to LightGBM, and how many trees it holds.

    LightGBM cuts the text into trees by the lengths on its ``tree_sizes=`` line and
    parses them in parallel; where a length no longer matches (a character lost or
    added), a parse error inside that parallel region terminates the process instead
    of raising. A text saved with its SHA-256 digest must match it exactly. Then (and
    for one saved before the digest was stored) its tree lengths must match its
    ``tree_sizes`` line, and it is parsed without that line: tree by tree, where
    LightGBM's errors are ordinary exceptions. A digest catches damage, not a file
    rewritten whole with its digests (by hand, or by another tool): such a file aborted
    the server on its first prediction. Raises ValueError for a damaged text.
    """
    if not isinstance(text, str):
        raise ValueError(f"the LightGBM booster must be text, got {type(text).__name__}")
    raw = text.encode()
    trees = len(_TREE_HEADER.findall(raw))
    if digest is not None and (not isinstance(digest, str) or hashlib.sha256(raw).hexdigest() != digest):
        raise ValueError("the LightGBM booster text does not match its SHA-256 digest: the file is damaged")
    m = _TREE_SIZES.search(text)
    if m is None:
        return _through_trees(text), trees
    try:
        sizes = [int(v) for v in m.group(1).split()]
    except ValueError:
        raise ValueError("the LightGBM booster text is damaged: its tree_sizes line is not a list of numbers") from None
    if len(sizes) != trees:
        raise ValueError(f"the LightGBM booster text is damaged: it holds {trees} trees, its tree_sizes line {len(sizes)}")
    if trees:
        pos = _TREE_HEADER.search(raw).start()
        for k, size in enumerate(sizes):
            if not raw.startswith(b"Tree=%d\n" % k, pos):
                raise ValueError(f"the LightGBM booster text is damaged: tree {k} is not where its tree_sizes line "
                                 "puts it")
            pos += size
        if not raw.startswith(b"end of trees", pos):
            raise ValueError("the LightGBM booster text is damaged: its trees do not end where its tree_sizes line "
                             "says")
    return _through_trees(text[: m.start()] + text[m.end():]), trees


def _through_trees(text: str) -> str:
    """A booster text up to its ``end of trees`` line: the settings after it (feature
    importances, parameters) are not needed to predict, and LightGBM's parser crashed
    the process on a cut in them where nothing had checked them (no digest)."""
    end = text.find("end of trees")
    return text if end < 0 else text[:end] + "end of trees\n"


class _LightGBMRowPredictor:
    """One row through LightGBM's single-row C API (``LGBM_BoosterPredictForMatSingleRowFast``).

    ``Booster.predict`` spends 50-90 µs of set-up on every call, even for one
    row; the fast API does that set-up once, here, and then scores a row in a
    few µs. The Python package does not expose it, so it is called through the
    same ctypes handle to the library that the package itself uses.
    """

    _PREDICT_NORMAL = 0
    _DTYPE_FLOAT64 = 1

    def __init__(self, booster: Any, num_iteration: int):
        import ctypes

        from lightgbm.basic import _LIB, _safe_call

        self._ctypes, self._lib, self._safe_call = ctypes, _LIB, _safe_call
        self._booster = booster  # keeps the booster (and its handle) alive as long as this
        ncol = booster.num_feature()
        self._config = ctypes.c_void_p()
        _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle, ctypes.c_int(self._PREDICT_NORMAL), ctypes.c_int(0), ctypes.c_int(num_iteration),
            ctypes.c_int(self._DTYPE_FLOAT64), ctypes.c_int32(ncol), ctypes.c_char_p(b"num_threads=1"),
            ctypes.byref(self._config)))
        self._row = (ctypes.c_double * ncol)()
        self._out = ctypes.c_double()
        self._out_len = ctypes.c_int64()
        self._args = (self._config, self._row, ctypes.byref(self._out_len), ctypes.byref(self._out))
        # The handle holds one row buffer: one caller at a time.
        self._lock = threading.Lock()

    def __call__(self, x: Sequence[float]) -> float:
        with self._lock:
            self._row[:] = x
            self._safe_call(self._lib.LGBM_BoosterPredictForMatSingleRowFast(*self._args))
            return self._out.value

    def __del__(self) -> None:
        config = getattr(self, "_config", None)
        if config is not None and config.value:
            with contextlib.suppress(Exception):  # the library may be gone at interpreter exit
                self._lib.LGBM_FastConfigFree(config)


FAMILIES: dict[str, type[LocationModel]] = {
    cls.name: cls for cls in (EmpiricalLocation, LinearLocation, PowerLocation, LightGBMLocation)
}


# Residuals a feature-dependent scale needs: on fewer it is the constant one.
SCALE_MIN_ROWS = 30
# A row's scale relative to the average, at most this many e-folds either way: a sane
# range around the average noise.
SCALE_LOG_LIMIT = 2.5
SCALE_RANGE = (math.exp(-SCALE_LOG_LIMIT), math.exp(SCALE_LOG_LIMIT))
# How gradually a linear scale meets its floor (see _soft_floor).
SCALE_FLOOR_SOFTNESS = 0.02


def _soft_floor(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``z`` kept above ``SCALE_RANGE[0]`` smoothly (a softplus), and its derivative.

    Ten times the softness above the floor, it is ``z`` to within 1e-6.
    """
    lo, soft = SCALE_RANGE[0], SCALE_FLOOR_SOFTNESS
    x = (z - lo) / soft
    return lo + soft * np.logaddexp(0.0, x), 0.5 * (1.0 + np.tanh(0.5 * x))


def _soft_floor_value(z: float) -> float:
    """``_soft_floor(z)[0]`` for one float, without numpy (a lone prediction's hot path);
    ``logaddexp(0, x)`` is ``x + log1p(exp(-x))`` for ``x > 0``."""
    lo, soft = SCALE_RANGE[0], SCALE_FLOOR_SOFTNESS
    x = (z - lo) / soft
    return lo + soft * (x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x)))


class ScaleModel:
    """Model of residual size, relative to its average; constant when there are no features.

    With ``link="log"``, ``log s(x)`` is linear in the log-linear design; with
    ``link="identity"``, ``s(x)`` itself is (noise that grows by a fixed amount
    per unit of load, which a log-linear scale bends into an exponential). Both
    are fitted by maximising the Laplace likelihood of the residuals
    (``|r| / s + log s``, Fisher scoring), which is robust and, unlike a
    regression of ``log |r|``, does not blow up on residuals near zero. The
    scale's level is absorbed by ``Z``: what is kept is how it varies.
    """

    LINKS = ("log", "identity")

    def __init__(self, kinds: Sequence[str], n_categories: Sequence[int], alpha: float = 2.0, hinges: int = 3,
                 link: str = "log"):
        self.kinds = list(kinds)
        self.n_categories = list(n_categories)
        self.alpha = alpha
        self.hinges = hinges
        self.link = link

    def fit(self, X: np.ndarray, residuals: np.ndarray, w: np.ndarray | None = None,
            design: LogLinearDesign | None = None) -> "ScaleModel":
        """``design``: this model's design already fitted to ``X`` (the penalties and links
        tried on one fold share it)."""
        a = np.abs(residuals)
        self.design_ = design if design is not None else LogLinearDesign(self.kinds, self.n_categories, self.hinges).fit(X)
        A = self.design_.transform(X, sparse=True)
        self.intercept_, self.coef_ = 0.0, np.zeros(A.shape[1])
        if A.shape[1] == 0 or len(a) < SCALE_MIN_ROWS or not np.any(a > 0):
            return self
        w = np.ones(len(a)) if w is None else np.asarray(w, dtype=np.float64)
        coef = (self._fit_identity if self.link == "identity" else self._fit_log)(A, a, w)
        if np.all(np.isfinite(coef)):
            self.coef_ = coef
        return self

    def _fit_log(self, A, a: np.ndarray, w: np.ndarray) -> np.ndarray:
        A1 = _with_intercept(A)
        R = self.alpha * np.eye(A1.shape[1])
        R[0, 0] = 0.0
        # Fisher scoring: the expected Hessian is A1' W A1 at every step.
        S1 = _sparse_view(A1)
        if S1 is None:
            M, H = A1, (A1 * w[:, None]).T @ A1 + R
            solve = lambda g: np.linalg.solve(H, g)  # noqa: E731
        else:
            # Wide one-hot design: one sparse LU of the (fixed) Fisher matrix for every step.
            import scipy.sparse as sp

            M, solve = S1, _sparse_lu(_wgram(A1, w, S1, dense=False) + sp.diags(np.diag(R)))
        b = np.zeros(A1.shape[1])
        b[0] = np.log(max(float((w * a).sum() / w.sum()), 1e-12))
        for _ in range(50):
            eta = np.clip(M @ b, -50, 50)
            g = M.T @ (w * (1.0 - a * np.exp(-eta))) + R @ b
            step = solve(g)
            b -= step
            if np.abs(step).max() < 1e-6:
                break
        return b[1:]

    def _fit_identity(self, A, a: np.ndarray, w: np.ndarray) -> np.ndarray:
        """``s = exp(t) floored(1 + A c)``: Fisher scoring on ``(t, c)`` together, halving a
        step that does not lower the penalised deviance.

        The penalty is on ``c``, the relative change per standardised unit, like the log
        link's coefficients near the average scale. The floor is smooth
        (:func:`_soft_floor`): at a hard one the deviance has kinks where rows reach it,
        and the steps stalled there (50 without converging), as they did with the level
        ``t`` and ``c`` updated in turn instead of together. The design is dense: the
        linear link is chosen only for scales of numeric features (see
        ``QuantileModel._scale_design``), a few columns each.
        """
        M = A.toarray() if _is_sparse(A) else A

        def deviance(t: float, c: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
            eta, slope = _soft_floor(1.0 + M @ c)
            s = math.exp(t) * eta
            return float((w * (a / s + np.log(s))).sum()) + 0.5 * self.alpha * float(c @ c), eta, slope

        t = math.log(max(float((w * a).sum() / w.sum()), 1e-300))
        c = np.zeros(A.shape[1])
        f, eta, slope = deviance(t, c)
        for _ in range(50):
            u = w * (1.0 - a / (math.exp(t) * eta))  # d deviance / d log s, per row
            v = slope / eta  # d log s / d (A c)
            g = np.concatenate([[u.sum()], M.T @ (u * v) + self.alpha * c])
            # The expected Hessian of the Laplace deviance in log s is w: D' W D, D = [1, A v].
            cross = M.T @ (w * v)
            block = _wgram(M, w * v**2) + self.alpha * np.eye(len(c))
            H = np.block([[np.array([[w.sum()]]), cross[None, :]], [cross[:, None], block]])
            step = np.linalg.solve(H, g)
            for _ in range(20):
                t_new, c_new = t - step[0], c - step[1:]
                got = deviance(t_new, c_new)
                if got[0] <= f:
                    break
                step = step / 2
            else:
                break
            t, c = t_new, c_new
            f, eta, slope = got
            if np.abs(step).max() < 1e-6:
                break
        return c

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.is_constant:
            return np.ones(len(X))
        lin = self.design_.transform(X, sparse=True) @ self.coef_
        # Keep the learned spread within a sane range of the average noise.
        if self.link == "identity":
            return np.minimum(_soft_floor(1.0 + lin)[0], SCALE_RANGE[1])
        return np.exp(np.clip(lin, -SCALE_LOG_LIMIT, SCALE_LOG_LIMIT))

    @property
    def is_constant(self) -> bool:
        got = self.__dict__.get("_constant")
        if got is None or got[0] is not self.coef_:  # asked on every prediction: decided once per fit
            got = self._constant = (self.coef_, not self.coef_.any())
        return got[1]

    def predict_row(self, x: Sequence[float]) -> float:
        """``predict`` for one row, in plain floats."""
        if self.is_constant:
            return 1.0
        lin = self.design_.dot_row(x, self.coef_)
        if self.link == "identity":
            return min(_soft_floor_value(1.0 + lin), SCALE_RANGE[1])
        return math.exp(min(max(lin, -SCALE_LOG_LIMIT), SCALE_LOG_LIMIT))

    def to_json(self) -> dict[str, Any]:
        out = {"alpha": self.alpha, "kinds": self.kinds, "n_categories": self.n_categories,
               "design": self.design_.to_json(), "coef": self.coef_.tolist()}
        if self.link != "log":  # a log-linear scale is stored as before this option
            out["link"] = self.link
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any], kinds, n_categories) -> "ScaleModel":
        design = LogLinearDesign.from_json(d["design"])
        link = d.get("link", "log")
        if link not in cls.LINKS:
            raise ValueError(f"scale link must be one of {cls.LINKS}, not {link!r}")
        obj = cls(kinds, n_categories, d["alpha"], design.hinges, link)
        obj.design_ = design
        obj.intercept_ = 0.0
        obj.coef_ = _stored_numbers(d["coef"], "coef")
        return obj


# --------------------------------------------------------------------------- shape model


PCG_TOLERANCE = 1e-10  # relative residual of each Newton step's system
PCG_MAX_ITERATIONS = 300


def _newton_steps_pcg(S, St, V: np.ndarray, r: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``(S' diag(V[:, k]) S + diag(r)) x_k = G[:, k]`` for every column at once by
    conjugate gradients, preconditioned by the diagonal; returns the solutions and which converged.

    The matrices are never formed: each iteration is two sparse products for all columns.
    Several categorical features of many values fill the matrices in (a block per pair of
    features), and one factorisation per column and Newton step was most of the training
    time: 15 knots of a 1,601-wide system took 0.96 s by Cholesky and 25 ms by 24 iterations
    of this, to 1e-11.
    """
    diag = np.asarray(S.multiply(S).T @ V) + r[:, None]

    def product(P: np.ndarray) -> np.ndarray:
        return np.asarray(St @ (V * (S @ P))) + r[:, None] * P

    X = G / diag
    R = G - product(X)
    Z = R / diag
    P = Z.copy()
    rz = (R * Z).sum(axis=0)
    goal = PCG_TOLERANCE * np.linalg.norm(G, axis=0)
    done = np.linalg.norm(R, axis=0) <= goal
    for _ in range(PCG_MAX_ITERATIONS):
        if done.all():
            break
        HP = product(P)
        curvature = (P * HP).sum(axis=0)
        a = np.where(done, 0.0, rz / np.where(curvature > 0, curvature, 1.0))
        X += a * P
        R -= a * HP
        done |= np.linalg.norm(R, axis=0) <= goal
        Z = R / diag
        new = (R * Z).sum(axis=0)
        P = Z + np.where(rz > 0, new / np.where(rz > 0, rz, 1.0), 0.0) * P
        rz = new
    return X, done


def _logistic_ridge(A: np.ndarray, T: np.ndarray, alpha: float, w: np.ndarray | None = None, iters: int = 30) -> np.ndarray:
    """Independent ridge logistic regressions of each column of ``T`` on ``A``.

    Newton's method for all columns at once, with step halving per column so
    that it cannot diverge on (nearly) separable data. Returns coefficients,
    shape (1 + features, columns); row 0 is the (almost unpenalised) intercept.
    """
    n, d = A.shape
    K = T.shape[1]
    A1 = _with_intercept(A)
    D = d + 1
    w = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
    sw = w.sum()
    p0 = np.clip((T * w[:, None]).sum(axis=0) / sw, 1e-4, 1 - 1e-4)
    B = np.zeros((D, K))
    B[0] = np.log(p0 / (1 - p0))
    if d == 0 or K == 0:
        return B
    r = np.full(D, float(alpha))
    r[0] = 1e-6
    # Outer products of the rows, to form every column's Hessian in one product.
    outer = (A1[:, :, None] * A1[:, None, :]).reshape(n, D * D) if n * D * D <= 4_000_000 and not _is_sparse(A1) else None
    S1 = None if outer is not None else _sparse_view(A1)
    S1t = None  # its transpose, made for the first Newton step
    M = A1 if S1 is None else S1  # the products below through the sparse view where there is one

    def losses(eta: np.ndarray, b: np.ndarray) -> np.ndarray:
        # Penalised negative log-likelihood per column: log(1 + e^eta) - t * eta.
        return (w[:, None] * (np.logaddexp(0.0, eta) - T * eta)).sum(axis=0) + 0.5 * (r[:, None] * b * b).sum(axis=0)

    eta = M @ B
    cur = losses(eta, B)
    active = np.ones(K, dtype=bool)
    for _ in range(iters):
        P = 0.5 * (1.0 + np.tanh(0.5 * eta))  # sigmoid, overflow-free
        G = M.T @ (w[:, None] * (P - T)) + r[:, None] * B
        V = w[:, None] * P * (1 - P)
        # Hessians (the bulk of the work: rows x D^2 per column) only for the columns still moving.
        live = np.flatnonzero(active)
        step = np.zeros((D, K))
        if S1 is not None:
            # A wide one-hot design: every knot's step by conjugate gradients through the
            # sparse design, all knots at once; a knot whose step did not converge (never
            # seen) is solved directly.
            if S1t is None:
                S1t = S1.T.tocsr()
            found, converged = _newton_steps_pcg(S1, S1t, V[:, live], r, G[:, live])
            step[:, live] = found
            for k in live[~converged]:
                step[:, k] = _sparse_solve(_wgram(A1, V[:, k], S1, dense=False), r, G[:, k])
        else:
            if outer is not None:
                H = (V[:, live].T @ outer).reshape(len(live), D, D)
            else:
                H = _wgrams(A1, V[:, live])
            H += np.diag(r)[None, :, :]
            step[:, live] = np.linalg.solve(H, G[:, live].T[:, :, None])[:, :, 0].T
        size = np.ones(K)
        accepted = np.zeros(K, dtype=bool)
        gain = np.zeros(K)
        for _ in range(20):
            nb = B - size[None, :] * step
            neta = M @ nb
            new = losses(neta, nb)
            ok = (new <= cur + 1e-12) & ~accepted
            B[:, ok], eta[:, ok] = nb[:, ok], neta[:, ok]
            gain = np.where(ok, cur - new, gain)
            cur = np.where(ok, new, cur)
            accepted |= ok
            if accepted.all():
                break
            size = np.where(accepted, size, size * 0.5)
        # A column has converged once its step no longer improves the loss.
        active &= accepted & (gain > 1e-9 * np.maximum(1.0, np.abs(cur)))
        if not active.any():
            break
    return B


class ShapeModel:
    """Distribution regression for ``Z``: ``P(Z <= Q(l_k) | x) = sigmoid(a_k + b_k . phi(x))``.

    ``phi`` are the log-linear design features; every knot ``l_k`` has its own
    ridge logistic regression. Predicted CDF values are made increasing along
    the knots, then mapped through the recalibration (the CDF of out-of-fold PIT
    values), so that on new data they are calibrated.
    """

    MAX_ROWS: ClassVar[int] = 10_000
    kind: ClassVar[str] = "logistic"
    # Whether it may also read a LightGBM location (QuantileModel's shape_location).
    reads_location: ClassVar[bool] = True

    def __init__(self, kinds: Sequence[str], n_categories: Sequence[int], alpha: float = 10.0, hinges: int = 3):
        self.kinds = list(kinds)
        self.n_categories = list(n_categories)
        self.alpha = alpha
        self.hinges = hinges
        self.recal_: tuple[np.ndarray, np.ndarray] | None = None

    @staticmethod
    def knots_for(n: int) -> tuple[float, ...]:
        # Every knot needs enough rows on its rarer side for its regression to mean something.
        return tuple(t for t in KNOT_LEVELS if min(t, 1 - t) * n >= KNOT_MIN_ROWS)

    def fit(self, X: np.ndarray, z: np.ndarray, score: ScoreDistribution, w: np.ndarray | None = None,
            random_state: int = 0) -> "ShapeModel":
        n = len(z)
        if n > self.MAX_ROWS:
            rows = np.random.default_rng(random_state).choice(n, self.MAX_ROWS, replace=False)
            X, z, w = X[rows], z[rows], None if w is None else w[rows]
        self.knots_ = self.knots_for(len(z))
        self.design_ = LogLinearDesign(self.kinds, self.n_categories, self.hinges).fit(X)
        if not self.knots_:
            self.coef_ = np.zeros((1 + self.design_.transform(X[:1]).shape[1], 0))
            return self
        self.coef_ = self._coefficients(self.design_.transform(X, sparse=True), z, score, w)
        return self

    def _coefficients(self, A, z: np.ndarray, score: ScoreDistribution, w: np.ndarray | None) -> np.ndarray:
        """(1 + columns, knots): each knot's ridge logistic regression of ``Z <= Q(l_k)``."""
        c = score.quantile(np.asarray(self.knots_))
        T = (z[:, None] <= c[None, :]).astype(np.float64)
        return _logistic_ridge(A, T, self.alpha, w)

    def raw_cdf(self, X: np.ndarray) -> np.ndarray:
        """Uncalibrated CDF at the knots, (rows, knots), increasing along knots."""
        from scipy.special import expit

        A = self.design_.transform(X, sparse=True)
        F = expit(self.coef_[0][None, :] + A @ self.coef_[1:])
        return _increasing(F)

    def cdf(self, X: np.ndarray) -> np.ndarray:
        return self._recalibrate(self.raw_cdf(X))

    def cdf_row(self, x: Sequence[float]) -> list[float]:
        """``cdf`` of one row at the knots, in plain floats (one small matrix product in numpy)."""
        eta = (self.coef_[0] + np.array(self.design_.row(x)) @ self.coef_[1:]).tolist()
        F = _increasing_row([_expit(e) for e in eta])
        if self.recal_ is None:
            return F
        return _increasing_row([_interp1(v, *self._recal_lists()) for v in F])

    def _recal_lists(self) -> tuple[list[float], list[float]]:
        """The recalibration map in plain floats, converted once per map."""
        got = self.__dict__.get("_recal_cache")
        if got is None or got[0] is not self.recal_:
            got = self._recal_cache = (self.recal_, self.recal_[0].tolist(), self.recal_[1].tolist())
        return got[1], got[2]

    def _recalibrate(self, F: np.ndarray) -> np.ndarray:
        if self.recal_ is not None:
            F = _increasing(np.interp(F, *self.recal_))
        return F

    def pit(self, F: np.ndarray, z: np.ndarray, score: ScoreDistribution) -> np.ndarray:
        """Probability integral transform of scores ``z`` under the rows' distributions ``F``."""
        u = np.interp(z, score.values, score.levels, left=0.0, right=1.0)
        lk = np.concatenate([[0.0], self.knots_, [1.0]])
        n = len(z)
        Fp = np.concatenate([np.zeros((n, 1)), F, np.ones((n, 1))], axis=1)
        idx = np.clip(np.searchsorted(lk, u, side="right") - 1, 0, len(lk) - 2)
        rows = np.arange(n)
        frac = (u - lk[idx]) / (lk[idx + 1] - lk[idx])
        return Fp[rows, idx] + frac * (Fp[rows, idx + 1] - Fp[rows, idx])

    def set_recalibration(self, pits: np.ndarray) -> None:
        self.recal_ = recalibration_map(pits)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "alpha": self.alpha,
            "hinges": self.hinges,
            "knots": list(self.knots_),
            "design": self.design_.to_json(),
            "coef": self.coef_.tolist(),
            "recalibration": None if self.recal_ is None else [self.recal_[0].tolist(), self.recal_[1].tolist()],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], kinds, n_categories) -> "ShapeModel":
        obj = cls(kinds, n_categories, d["alpha"], int(d.get("hinges", 0)))
        obj.knots_ = tuple(float(t) for t in d["knots"])
        obj.design_ = LogLinearDesign.from_json(d["design"])
        obj.coef_ = _stored_numbers(d["coef"], "coef", ndim=2).reshape(-1, len(obj.knots_))
        rc = d.get("recalibration")
        obj.recal_ = None if rc is None else (_stored_numbers(rc[0], "recalibration"), _stored_numbers(rc[1], "recalibration"))
        return obj


# Iterations of the quantile regression's MM algorithm, and its smoothing floor relative
# to the scores' spread (see _quantile_regression).
QR_ITERATIONS = 100
QR_MIN_SMOOTHING = 1e-6
QR_TOLERANCE = 1e-4  # a level is done when no coefficient moves more than this (relative)
# Rows a shape by quantile regression is fitted on, at most (a random subsample above).
QR_MAX_ROWS = 5_000
# Columns of the design above which no shape is fitted by quantile regression: its
# per-level Gram matrices grow with the square of the width, and on the few hundred rows
# where it pays off, a wide design only follows the noise.
QR_MAX_WIDTH = 32


def _quantile_regression(A: np.ndarray, y: np.ndarray, levels: Sequence[float], w: np.ndarray | None = None) -> np.ndarray:
    """Linear quantile regression of ``y`` on ``A`` (with an intercept) at every level at once.

    Returns coefficients (1 + columns, levels), the intercepts in row 0. Each level
    minimises the (weighted) pinball loss by majorization-minimization (Hunter and
    Lange, 2000): every step is a weighted least squares whose weights 1/(eps + |r|)
    majorize the absolute residual, with eps shrinking geometrically to a floor. All
    levels step together; the loss is within a fraction of a percent of the exact
    linear program's (HiGHS), at a small fraction of its time on thousands of rows.
    """
    n, p = A.shape
    A1 = np.column_stack([np.ones(n), A])
    w = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
    t = np.asarray(levels, dtype=np.float64)
    G0 = (A1 * w[:, None]).T @ A1
    # A whisper of ridge keeps one-hot columns that sum to the intercept solvable.
    R = 1e-8 * max(float(np.trace(G0)) / (p + 1), 1e-300) * np.eye(p + 1)
    R[0, 0] = 0.0
    b = np.linalg.solve(G0 + R, A1.T @ (w * y))
    r = y - A1 @ b
    B = np.repeat(b[:, None], len(t), axis=1)
    B[0] += np.quantile(r, t)
    # (Equal scores, a constant runtime's, have no spread: a floor keeps the weights finite.)
    spread = max(float(np.median(np.abs(r - np.median(r)))), 1e-9 * (1.0 + float(np.abs(y).max())))
    eps, floor = 0.1 * spread, QR_MIN_SMOOTHING * spread
    Aw = A1.T @ w
    # Every level's Gram matrix in one product: the rows' outer products, weighted per level.
    outer = (A1[:, :, None] * A1[:, None, :]).reshape(n, -1)
    active = np.arange(len(t))
    for _ in range(QR_ITERATIONS):
        # The middle levels settle in a few dozen steps, the extreme ones (few rows on
        # their far side) take longer: each level steps until its coefficients stand still.
        Ba, ta = B[:, active], t[active]
        Wt = w[:, None] / (eps + np.abs(y[:, None] - A1 @ Ba))
        G = (Wt.T @ outer).reshape(len(active), p + 1, p + 1) + R[None]
        rhs = A1.T @ (Wt * y[:, None]) + (2 * ta - 1)[None, :] * Aw[:, None]
        try:
            new = np.linalg.solve(G, rhs.T[..., None])[..., 0].T
        except np.linalg.LinAlgError:  # weights piled on fewer rows than columns
            new = (np.linalg.pinv(G) @ rhs.T[..., None])[..., 0].T
        if not np.all(np.isfinite(new)):
            break
        B[:, active] = new
        if eps <= floor:
            moved = np.abs(new - Ba).max(axis=0) > QR_TOLERANCE * (1.0 + np.abs(new).max(axis=0))
            active = active[moved]
            if not len(active):
                break
        eps = max(eps * 0.5, floor)
    return B


class QuantileShapeModel(ShapeModel):
    """The shape of ``Z`` by linear quantile regression: ``Q(l_k | x) = a_k + b_k . phi(x)``.

    Where :class:`ShapeModel` regresses the probability below each knot, this
    regresses each knot level's quantile (monotone after sorting) on the same
    log-linear design, without a penalty: the per-level linear quantile regression on
    the log scale, around the location, with a level of its own for each feature's
    slope. On a few hundred rows of a mixture whose shape moves with a feature (each
    model's runtimes over accelerators it does not see), it follows the mixtures that
    the penalised logistic fits smooth away. A row's CDF at the knots is read off its
    quantile curve: between the curve's levels along the pooled scores' distribution,
    beyond them towards 0 and 1 in proportion, then recalibrated as the other shape is.
    """

    MAX_ROWS: ClassVar[int] = QR_MAX_ROWS
    kind: ClassVar[str] = "quantile"
    # A slope on the held-out location the folds fit it on is not one on the final location
    # it is served with, and the folds do not see that (README, Modelling).
    reads_location: ClassVar[bool] = False

    def __init__(self, kinds: Sequence[str], n_categories: Sequence[int], alpha: float = 0.0, hinges: int = 0):
        super().__init__(kinds, n_categories, alpha, hinges)

    @staticmethod
    def fits(kinds: Sequence[str], n_categories: Sequence[int]) -> bool:
        """Whether the design (no hinges) is narrow enough for this shape (:data:`QR_MAX_WIDTH`)."""
        width = 2 * sum(k == "numeric" for k in kinds) + sum(k for _, k in _categorical_positions(kinds, n_categories))
        return 0 < width <= QR_MAX_WIDTH

    def fit(self, X, z, score, w=None, random_state=0):
        self.attach(score)
        return super().fit(X, z, score, w, random_state)

    def _coefficients(self, A, z, score, w):
        """(1 + columns, knots): each knot level's linear quantile regression of ``Z``."""
        return _quantile_regression(A if isinstance(A, np.ndarray) else A.toarray(), z, self.knots_, w)

    def attach(self, score: ScoreDistribution) -> None:
        """The pooled scores this shape reads its knots against (the model's ``score_``)."""
        self.score_ = score
        self._score_lists = (score.values.tolist(), score.levels.tolist())  # for cdf_row

    def _from_quantiles(self, Qz: np.ndarray) -> np.ndarray:
        """CDF at the knots, (rows, knots), of rows whose quantiles at the knot levels are ``Qz``."""
        Qz = np.sort(Qz, axis=-1)
        n, K = Qz.shape
        # Each quantile's level among the pooled scores, then the piecewise-linear map
        # from pooled level to the row's level through (0, 0), (u_k, l_k), (1, 1).
        u = np.interp(Qz, self.score_.values, self.score_.levels)
        u = np.maximum.accumulate(u + np.arange(K) * 1e-9, axis=-1)
        U = np.concatenate([np.zeros((n, 1)), u, np.ones((n, 1))], axis=1)
        T = np.concatenate([[0.0], self.knots_, [1.0]])
        rows = np.arange(n)
        F = np.empty((n, K))
        for k, lv in enumerate(self.knots_):
            j = np.clip((U <= lv).sum(axis=1) - 1, 0, K)
            u0, u1 = U[rows, j], U[rows, j + 1]
            F[:, k] = T[j] + (lv - u0) / np.maximum(u1 - u0, 1e-12) * (T[j + 1] - T[j])
        return _increasing(F)

    def raw_cdf(self, X: np.ndarray) -> np.ndarray:
        A = self.design_.transform(X, sparse=True)
        return self._from_quantiles(self.coef_[0][None, :] + A @ self.coef_[1:])

    def cdf_row(self, x: Sequence[float]) -> list[float]:
        """``cdf`` of one row, in plain floats: ``_from_quantiles`` step by step."""
        Qz = sorted((self.coef_[0] + np.array(self.design_.row(x)) @ self.coef_[1:]).tolist())
        values, levels = self._score_lists
        U, top = [0.0], 0.0
        for k, v in enumerate(Qz):
            top = max(_interp1(v, values, levels) + k * 1e-9, top)
            U.append(top)
        U.append(1.0)
        T = [0.0, *self.knots_, 1.0]
        F = _increasing_row([_interp1(lv, U, T) for lv in self.knots_])
        if self.recal_ is None:
            return F
        return _increasing_row([_interp1(v, *self._recal_lists()) for v in F])


def _shape_from_json(d: dict[str, Any], kinds, n_categories, score: ScoreDistribution) -> ShapeModel:
    """The shape model ``to_json`` wrote, of either kind (one stored without a kind is logistic)."""
    if not isinstance(d, dict):
        raise ValueError(f"the shape model is {shown(d)}, not an object")
    kind = d.get("kind", ShapeModel.kind)
    cls = next((c for c in SHAPE_MODELS.values() if c.kind == kind), None)
    if cls is None:
        raise ValueError(f"the shape model's kind is {shown(kind)}, not "
                         + " or ".join(c.kind for c in SHAPE_MODELS.values()))
    shape = cls.from_json(d, kinds, n_categories)
    if isinstance(shape, QuantileShapeModel):
        shape.attach(score)
    return shape


def _increasing(F: np.ndarray) -> np.ndarray:
    """Clip into (0, 1) and make strictly increasing along the last axis."""
    k = F.shape[-1]
    F = np.clip(F, 1e-6, 1 - 1e-6 - k * 1e-9)
    return np.maximum.accumulate(F, axis=-1) + np.arange(k) * 1e-9


def _increasing_row(F: list[float]) -> list[float]:
    """``_increasing`` of one row of plain floats."""
    k = len(F)
    hi = 1 - 1e-6 - k * 1e-9
    out = []
    top = -math.inf
    for i, v in enumerate(F):
        if v < 1e-6:
            v = 1e-6
        elif v > hi:
            v = hi
        if v > top:
            top = v
        out.append(top + i * 1e-9)
    return out


def _expit(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def _interp1(v: float, xs: list[float], ys: list[float]) -> float:
    """``np.interp`` of one value (xs increasing)."""
    if v <= xs[0]:
        return ys[0]
    if v >= xs[-1]:
        return ys[-1]
    k = bisect.bisect_right(xs, v)
    x0, x1 = xs[k - 1], xs[k]
    return ys[k - 1] + (v - x0) / (x1 - x0) * (ys[k] - ys[k - 1]) if x1 > x0 else ys[k]


def recalibration_map(pits: np.ndarray, max_points: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The CDF of PIT values, with conformal plotting positions, as (x, y) knots for ``np.interp``."""
    v = np.sort(np.clip(pits, 0.0, 1.0))
    n = len(v)
    lv = np.arange(1, n + 1) / (n + 1)
    if n > max_points:
        grid = np.linspace(lv[0], lv[-1], max_points)
        v = np.interp(grid, lv, v)
        lv = grid
    x = np.concatenate([[0.0], v, [1.0]])
    y = np.concatenate([[0.0], lv, [1.0]])
    # Ties (several equal PIT values) would make the map a step; spread them.
    x = np.maximum.accumulate(x + np.arange(len(x)) * 1e-12)
    return x, y


# --------------------------------------------------------------------------- the model


# Above this many rows, candidates are compared and calibrated on a random subsample.
SELECT_MAX_ROWS = 50_000
# Simpler candidates win unless a more complex one is clearly better on held-out rows.
FAMILY_COMPLEXITY = {"empirical": 0, "linear": 1, "power": 1, "lightgbm": 2}
SELECTION_SE = 1.0
# A candidate's ``shaped``: False, True (ShapeModel) or this (QuantileShapeModel).
QUANTILE_SHAPE = QuantileShapeModel.kind
SHAPE_MODELS: dict[bool | str, type[ShapeModel]] = {True: ShapeModel, QUANTILE_SHAPE: QuantileShapeModel}
SHAPE_SUFFIX = {False: "", True: "+shape", QUANTILE_SHAPE: "+quantiles"}
# Ridge penalties the feature-dependent scale chooses from (see QuantileModel._scale_design).
SCALE_ALPHAS = (2.0, 8.0, 32.0, 128.0)
# Rows the scale's forward selection of features looks at, at most.
SCALE_SELECT_ROWS = 10_000
# Hinges per numeric feature in the linear family's design, when the folds prefer them to none.
LINEAR_HINGES = 3
# Backward elimination of features (see QuantileModel._drop_features) up to this many rows x features^2,
# each cross-fit counted as at least FEATURE_DROP_ROW_FLOOR rows: its fixed costs do not shrink
# with the rows (64 features on 9 rows passed the bound and took two minutes; now at most 14 features).
FEATURE_DROP_MAX_WORK = 40_000
FEATURE_DROP_ROW_FLOOR = 200
FEATURE_DROP_SE = 1.0
# Backward elimination runs only for families within this factor of the best one's loss.
DROP_MARGIN = 1.10
# The kind of a feature that a fitted design ignores.
UNUSED = "unused"
# A model split by a regime column (see QuantileModel._fit_regimes) needs this many
# training rows on each side, and as many held-out rows scored by both to choose it.
REGIME_MIN_ROWS = 10
# A shape model of these families learns the rows' scores around the location that scores
# new rows: in each fold, that fold's location (fitted on the rows the shape learns from),
# and in the final model the location fitted on every row. The out-of-fold scores it learnt
# before sat each around another fold's location: where a model's runtimes are a mixture
# (hidden accelerators), a fold's share of each mode moved its location (by 0.03 to 0.15
# log units over the folds), which blurred modes 0.05 wide (benchmarks/other_workloads.py,
# multitenant_hidden: ratio to the best baseline 1.127 -> 1.043 on seed 22). Boosted trees
# fit their own rows too closely for this, and so does a location with fewer than
# CONSISTENT_SHAPE_ROWS rows per coefficient.
CONSISTENT_SHAPE_FAMILIES = frozenset({"linear", "power"})
CONSISTENT_SHAPE_ROWS = 20
# Folds of the cross-validation (n_folds=None): (fewer training rows than this, folds).
# On tens of rows five folds fit each candidate on 80% of them, which is not the model
# served: shapes lose knots, a scale its rows, and complex candidates look worse than
# they are. Ten folds lowered the expected pinball loss against the best baseline from
# 0.973 to 0.965 of it (geometric mean over 200 draws of 20 to 140 training rows,
# benchmarks/small_data.py), at about twice the training time. At 140 rows they did not
# help (small_data.py 0.971 -> 0.968, within the draws' noise; accuracy.py's many-seeds
# study at 200 rows 0.975 -> 0.978, and its real h20_sglang_llm set, 140 training rows,
# 0.992 -> 1.000), so from 100 rows on there are five. Above 20,000 rows three folds
# tell candidates apart as well as five.
CV_FOLDS = ((100, 10), (20_000, 5), (math.inf, 3))
# Below this many rows the folds are stratified by the noise (QuantileModel._folds). At
# every size, on the accuracy benchmark's sets of 140 to 8,936 training rows, it moved the
# choices by about their noise, both ways: heavy_tailed 0.944 -> 0.934 of its best
# baseline, the LLM trace with 5% aborted requests (unseen seeds) 0.992 -> 1.013.
STRATIFIED_FOLDS_BELOW = 100


class _FoldLocations(NamedTuple):
    """A location family's cross-fit: its out-of-fold predictions, and for
    ``CONSISTENT_SHAPE_FAMILIES`` each fold's location on the rows it was fitted on (None
    for other families, or with fewer than ``CONSISTENT_SHAPE_ROWS`` rows per coefficient)."""

    oof: np.ndarray
    own: list[np.ndarray] | None


def common_rounds(curves: Sequence[np.ndarray]) -> int:
    """The boosting round (1-based) with the lowest mean validation loss over folds.

    A fold that stopped early keeps its last recorded loss for the later rounds.
    """
    curves = [c for c in curves if len(c)]
    if not curves:
        return 1
    n = max(len(c) for c in curves)
    padded = np.stack([np.concatenate([c, np.full(n - len(c), c[-1])]) for c in curves])
    return int(np.argmin(padded.mean(axis=0))) + 1


def location_weights(s: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """Weights ``w / s**2`` (mean 1) for refitting a location under feature-dependent noise."""
    v = (1.0 if w is None else w) / np.maximum(s, 1e-6) ** 2
    return v / v.mean()


def _log_bounds(lo: float, hi: float) -> tuple[float, float]:
    """Log-runtimes a model extrapolates to from training extremes ``lo``, ``hi``: 100x beyond them."""
    return lo - _LOG100, hi + _LOG100


def _within_range(m: np.ndarray, ylog: np.ndarray) -> np.ndarray:
    """Held-out locations kept within the bounds of the training rows, as a fitted model keeps its own."""
    return np.clip(m, *_log_bounds(float(ylog.min()), float(ylog.max())))


def _mean_se(d: np.ndarray) -> float:
    """Standard error of the mean of ``d``: for paired per-row differences of losses."""
    return float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0


def clearly_lower(d: np.ndarray) -> bool:
    """Whether paired per-row loss differences ``d`` (one model's minus another's) say the
    first is lower by more than ``SELECTION_SE`` standard errors (the one-standard-error rule)."""
    return bool(d.mean() < -SELECTION_SE * _mean_se(d))


def _location_pinball(ylog: np.ndarray, oof: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Per-row pinball loss (over ``EVAL_LEVELS``) of out-of-fold locations with a constant scale.

    Each fold's quantiles add the other folds' residual quantiles to its location:
    a quick, held-out judge of a location model by the loss the service is chosen
    on. (The absolute error of the medians, used before, is dominated by a heavy
    tail's few far rows; measured over 80 small synthetic draws, this judge chose
    better.)
    """
    out = np.empty(len(ylog))
    for k in range(int(fold.max()) + 1):
        te = fold == k
        q = np.exp(oof[te, None] + np.quantile(ylog[~te] - oof[~te], EVAL_LEVELS)[None, :])
        out[te] = pinball_losses(np.exp(ylog[te]), q, EVAL_LEVELS).mean(axis=1)
    return out


def _log_pinball(ylog: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-row pinball loss (over ``EVAL_LEVELS``) of held-out quantiles ``q``, both on the log scale.

    The judge of whether a feature carries evidence: features act on runtimes as factors,
    and on the log scale every row's relative error counts alike, where in milliseconds
    the few slow rows with the loudest noise decide (on 140 ``heteroscedastic`` rows of
    benchmarks/accuracy.py, one draw in eight dropped a backend that costs 1.2x and lost
    7% by it). The candidates themselves are still compared in milliseconds.
    """
    return pinball_losses(ylog, np.log(np.maximum(q, np.finfo(float).tiny)), EVAL_LEVELS).mean(axis=1)


def _pays_off(richer: np.ndarray, plainer: np.ndarray, ylog: np.ndarray, fold: np.ndarray) -> bool:
    """Whether the richer of two out-of-fold locations lowers the held-out pinball loss of a
    constant-scale fit by more than ``SELECTION_SE`` standard errors (the one-standard-error
    rule, as in :func:`_choose`)."""
    return clearly_lower(_location_pinball(ylog, richer, fold) - _location_pinball(ylog, plainer, fold))


def _choose(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The simplest candidate whose held-out loss is within ``SELECTION_SE`` standard
    errors (of the paired per-row difference) of the lowest (the one-standard-error rule)."""
    best = min(candidates, key=lambda c: c["row_loss"].mean())
    eligible = []
    for c in candidates:
        d = c["row_loss"] - best["row_loss"]
        if c is best or d.mean() <= SELECTION_SE * _mean_se(d):
            eligible.append(c)
    return min(eligible, key=lambda c: (c["complexity"], c["row_loss"].mean()))


class QuantileModel:
    """Calibrated runtime distribution model with a scikit-learn-like interface.

    Parameters are set in ``__init__`` (``n_folds``: the cross-validation's folds, by
    default ten below 100 training rows, five up to 20,000, three above); ``fit`` learns ``family_``, ``location_``,
    ``scale_``, ``score_``, ``shape_`` (or None) and ``cv_`` (cross-validated
    metrics of the best variant of each family tried, with every variant's loss).

    With ``regime_column`` (a 0/1 column: whether a task is the first run of its input
    shape) and ``algorithm="auto"``, ``fit`` also fits a model of their own to the rows of
    each value, without that column, and keeps them as ``regimes_`` when their held-out
    loss beats the model of all rows (``regime_cv_`` says by how much): each task is then
    answered by its regime's model. The model of all rows is kept with them (``algorithm``,
    ``variant`` and ``cv_scores`` in the metrics describe it; the headline held-out figures
    are the pair's, see :meth:`cv_summary`).
    """

    def __init__(
        self,
        kinds: Sequence[str] = (),
        n_categories: Sequence[int] = (),
        algorithm: str = "auto",
        n_folds: int | None = None,
        params: dict[str, Any] | None = None,
        random_state: int = 0,
        regime_column: int | None = None,
    ):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}")
        self.kinds = list(kinds)
        self.n_categories = list(n_categories)
        self.algorithm = algorithm
        self.n_folds = n_folds
        self.params = dict(params or {})
        self.random_state = random_state
        if regime_column is not None and not 0 <= regime_column < len(self.kinds):
            raise ValueError(f"regime_column must be one of the {len(self.kinds)} columns, got {regime_column!r}")
        self.regime_column = regime_column
        self.log_range_: tuple[float, float] | None = None
        self.shared_log_sd_ = 0.0
        self.regimes_: tuple[QuantileModel, QuantileModel] | None = None
        self.regime_cv_: dict[str, Any] | None = None
        self.shape_reads_location_ = False

    # ------------------------------------------------------------------ fitting

    def _make(self, family: str, kinds: Sequence[str] | None = None, hinges: int | None = None,
              regimes: bool | None = None) -> LocationModel:
        if family == "empirical":
            return EmpiricalLocation()
        if family == "linear":
            params = {k: v for k, v in self.params.items()
                      if k in ("alpha", "huber_delta", "redescend", "max_levels", "hinges", "regimes")}
            if hinges is not None:
                params["hinges"] = hinges
            if regimes is not None:
                params["regimes"] = regimes
            return LinearLocation(self.kinds if kinds is None else kinds, self.n_categories, **params)
        if family == "power":
            return PowerLocation(self.kinds if kinds is None else kinds, self.n_categories)
        lgb_params = {k: v for k, v in self.params.items() if k not in MODEL_PARAMS}
        if "lgb_huber_delta" in self.params:
            lgb_params["alpha"] = float(self.params["lgb_huber_delta"])
        return LightGBMLocation(self.kinds if kinds is None else kinds, self.n_categories, int(self.params.get("num_boost_round", MAX_BOOST_ROUNDS)), lgb_params,
                                linear_base=bool(self.params.get("lgb_linear_base", True)), base_regimes=bool(regimes))

    def candidate_families(self, n_rows: int) -> list[str]:
        if self.algorithm != "auto":
            return [self.algorithm]
        families = ["empirical"]
        if self.kinds:
            families += [f for f in ("linear", "power", "lightgbm") if n_rows >= FAMILIES[f].min_rows]
        return families

    def _folds(self, X: np.ndarray, ylog: np.ndarray) -> np.ndarray:
        """Each row's cross-validation fold; below ``STRATIFIED_FOLDS_BELOW`` rows, stratified by the noise.

        On tens of rows a fold holds a few of them, and chance can put most of a rare mode
        in one: with 4 cold runs (10x) in 40 rows, random folds trained one fit on 1 of 36
        cold and the others on 4 of 36, and the held-out loss judged the folds' luck more
        than the models (it preferred a model without the image size, or without any
        feature). There the rows sorted by their residual from a robust linear fit (by
        log-runtime where there are no features) are dealt out in blocks of ``k``, one to
        each fold in a random order, so every fold's training rows hold their share of the
        slow and the aborted runs. Sorting by runtime itself would spread the features'
        extremes over the folds as well, and the held-out loss would no longer see a model
        extrapolate to them (on 20 rows of lognormal and heavy-tailed traces it lost 4% and
        6%, where sorting by the residual gained 2% and 5%).
        """
        n = len(ylog)
        if self.n_folds is not None:
            k = self.n_folds
        else:
            k = next(folds for rows, folds in CV_FOLDS if n < rows)
        k = max(2, min(k, n))
        rng = np.random.default_rng(self.random_state)
        shuffled = rng.permutation(n)
        if n >= STRATIFIED_FOLDS_BELOW:
            return shuffled % k
        noise = ylog
        if any(kind != UNUSED for kind in self.kinds) and n >= LinearLocation.min_rows:
            noise = ylog - LinearLocation(self.kinds, self.n_categories).fit(X, ylog).predict(X)
        order = shuffled[np.argsort(noise[shuffled], kind="stable")]  # ties in a random order
        deal = np.argsort(rng.random((-(-n // k), k)), axis=1).ravel()[:n]
        fold = np.empty(n, dtype=np.int64)
        fold[order] = deal
        return fold

    def _oof_location(self, family, X, ylog, fold, w, kinds=None) -> tuple[np.ndarray, dict[str, int], list[np.ndarray] | None]:
        """Out-of-fold location predictions, what was tuned on the folds (``rounds``, ``hinges``),
        and each fold's location on its own rows (:class:`_FoldLocations`)."""
        if family == "lightgbm":
            if "regimes" in self.params:
                oof, tuned = self._oof_boosted(X, ylog, fold, w, kinds, bool(self.params["regimes"]))
                return oof, {**tuned, "regimes": bool(self.params["regimes"])}, None
            oof, tuned = self._oof_boosted(X, ylog, fold, w, kinds, False)
            if self.params.get("lgb_linear_base", True) and _regime_flags(X, self.kinds if kinds is None else kinds):
                # The linear base with each regime's own slopes (LinearLocation): kept
                # where the folds say so, as for the linear family. (It made the boosted
                # fit far worse on the H200 vision traces, and better on the H100 ones.)
                split, split_tuned = self._oof_boosted(X, ylog, fold, w, kinds, True)
                if _pays_off(split, oof, ylog, fold):
                    return split, {**split_tuned, "regimes": True}, None
                tuned["regimes"] = False
            return oof, tuned, None
        if family != "linear":
            fits = self._oof_fit(family, X, ylog, fold, w, kinds)
            return fits.oof, {}, fits.own
        tuned: dict[str, Any] = {}
        regimes = None
        if "regimes" not in self.params:
            # Each regime's own slopes (LinearLocation) are kept where they lower the
            # held-out loss by more than a standard error: on 12,000 H200 runs with a
            # row counter among the features they cost more than they brought.
            if _regime_flags(X, self.kinds if kinds is None else kinds):
                regimes = tuned["regimes"] = True
        if "hinges" not in self.params:
            # Hinges bend the power law (fixed overheads plus per-unit costs); on a
            # hundred noisy rows their extra columns cost more than they bring. They
            # are kept when they lower the held-out pinball loss by more than a
            # standard error (the one-standard-error rule, as in _choose).
            bent = self._oof_fit(family, X, ylog, fold, w, kinds, LINEAR_HINGES, regimes)
            plain = self._oof_fit(family, X, ylog, fold, w, kinds, 0, regimes)
            hinges = LINEAR_HINGES if _pays_off(bent.oof, plain.oof, ylog, fold) else 0
            fits, tuned["hinges"] = (bent if hinges else plain), hinges
        else:
            fits = self._oof_fit(family, X, ylog, fold, w, kinds, None, regimes)
        if regimes:
            shared = self._oof_fit(family, X, ylog, fold, w, kinds, tuned.get("hinges"), False)
            if not _pays_off(fits.oof, shared.oof, ylog, fold):
                fits, tuned["regimes"] = shared, False
        return fits.oof, tuned, fits.own

    def _oof_fit(self, family, X, ylog, fold, w, kinds, hinges: int | None = None, regimes: bool | None = None) -> _FoldLocations:
        oof = np.empty(len(ylog))
        own: list[np.ndarray] | None = [] if family in CONSISTENT_SHAPE_FAMILIES else None
        for k in range(int(fold.max()) + 1):
            tr, te = fold != k, fold == k
            model = self._make(family, kinds, hinges, regimes).fit(X[tr], ylog[tr], None if w is None else w[tr])
            oof[te] = _within_range(model.predict(X[te]), ylog[tr])
            if own is not None:
                # With few rows per coefficient a location's residuals on its own rows are
                # noticeably narrower than on new rows: the shape then learns held-out ones.
                if (np.size(model.coef_) + 1) * CONSISTENT_SHAPE_ROWS > int(tr.sum()):
                    own = None
                else:
                    own.append(_within_range(model.predict(X[tr]), ylog[tr]))
        return _FoldLocations(oof, own)

    def _oof_boosted(self, X, ylog, fold, w, kinds, regimes: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
        oof = np.empty(len(ylog))
        boosted: list[tuple[np.ndarray, LightGBMLocation]] = []
        for k in range(int(fold.max()) + 1):
            tr, te = fold != k, fold == k
            model = self._make("lightgbm", kinds, regimes=regimes)
            model.fit(X[tr], ylog[tr], None if w is None else w[tr], valid=(X[te], ylog[te]))
            boosted.append((te, model))
        # One number of rounds for every fold, where the folds' mean validation loss is
        # lowest: stopping each fold where its own held-out loss is lowest would tune
        # that fold's trees on the rows that then score them, and make LightGBM look
        # better than it is on small data.
        rounds = common_rounds([m.valid_curve_ for _, m in boosted])
        for te, model in boosted:
            model.best_iteration_ = rounds
            oof[te] = _within_range(model.predict(X[te]), ylog[~te])
        return oof, {"rounds": rounds}

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "QuantileModel":
        with single_threaded_blas():
            X, y, w = self._checked(X, y, sample_weight)
            chosen = self._choose(X, y, w)
            self._finish(X, y, w, chosen)
            self.regimes_, self.regime_cv_ = None, None
            if self.regime_column is not None and self.algorithm == "auto":
                self._fit_regimes(X, y, w, chosen)
            self.shared_log_sd_ = 0.0
            self.shared_log_sd_ = self._shared_log_sd(X, y, w)
        return self

    def _checked(self, X: Any, y: Any, sample_weight: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError("X must be a 2-d array")
        y = np.asarray(y, dtype=np.float64)
        if len(y) != len(X):
            raise ValueError("X and y have different numbers of rows")
        if len(y) < 2:
            raise ValueError("at least 2 rows with a positive runtime are needed to train")
        if not np.all((y >= MIN_RUNTIME) & (y <= MAX_RUNTIME)):  # NaN too
            # The service's range: past it, sums and moments overflow (1e300 ms gave an infinite sd).
            raise ValueError(f"runtimes must be numbers in {RUNTIME_RANGE}")
        if self.algorithm == "lightgbm" and X.shape[1] == 0:
            raise ValueError("algorithm 'lightgbm' needs at least one feature")
        if sample_weight is None:
            return X, y, None
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.shape != y.shape:
            raise ValueError(f"sample_weight must hold one weight per row ({len(y)}), got shape {w.shape}")
        if not (np.all(np.isfinite(w) & (w >= 0)) and w.sum() > 0):
            # (A NaN weight was fitted without a word, and served quantiles far from the data.)
            raise ValueError("sample weights must be finite, at least 0, and not all 0")
        return X, y, w

    def _choose(self, X: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> tuple[np.ndarray, dict[str, Any]]:
        """Cross-fit the candidates (``cv_``) on every row, or on a random sample of
        ``SELECT_MAX_ROWS``: those rows and the chosen candidate, with each row's held-out
        loss (``row_loss``, what a split into regimes is weighed against)."""
        n = len(y)
        sel = np.arange(n)
        if n > SELECT_MAX_ROWS:
            # Large data: choose and calibrate on a random subsample (cross-fitted as
            # usual), then fit the chosen location model on every row.
            rng = np.random.default_rng(self.random_state)
            sel = np.sort(rng.choice(n, SELECT_MAX_ROWS, replace=False))
        return sel, self._select(X[sel], y[sel], np.log(y[sel]), None if w is None else w[sel])

    def _finish(self, X: np.ndarray, y: np.ndarray, w: np.ndarray | None, chosen: tuple[np.ndarray, dict[str, Any]]) -> None:
        """Fit the chosen candidate on every row: location, scale, scores and shape."""
        sel, best = chosen
        n = len(y)
        self._set_atoms(data_atoms(y))
        ylog = np.log(y)
        family = best["family"]
        kinds = best["kinds"]
        self.features_used_ = [k != UNUSED for k in kinds]
        tuned = best["tuned"]
        final = self._make(family, kinds, tuned.get("hinges"), tuned.get("regimes"))
        if isinstance(final, LightGBMLocation) and "rounds" in tuned:
            # Train the final booster as long as the folds found useful, a bit more for the
            # extra data, never past the most rounds allowed (num_boost_round).
            more = max(10, int(tuned["rounds"] * (1.1 if len(sel) == n else 1.3)))
            final.num_boost_round = min(more, final.num_boost_round)
        # The final fit is weighted like the candidate's folds were.
        final.fit(X, ylog, location_weights(best["scale"].predict(X), w) if best["weighted"] else w)
        self.family_ = family
        self.location_ = final
        self.scale_ = best["scale"]
        z = best["z"]
        if family == "empirical" and not best["shaped"]:
            # (A shape model is fitted, and recalibrated, on the held-out scores: they stay.)
            # A location that ignores the features is the same wherever it is fitted: the
            # cross-conformal quantiles (each row's fold location plus its held-out
            # residual) are those of the runtimes themselves. Held-out residuals around
            # the location fitted on every row would count an outlier twice, once in
            # the residuals and once in the folds' locations it pulled (on 5 runs, 4
            # near 11 ms and one at 200, the median fell to 7 ms).
            z = (ylog[sel] - final.predict(X[sel])) / best["scale"].predict(X[sel])
        self.score_ = ScoreDistribution.from_scores(z)
        self.shape_: ShapeModel | None = None
        self.shape_reads_location_ = bool(best.get("reads_location"))
        if best["shaped"]:
            # The held-out locations, as the scores the shape model learns from are held out.
            Xs, kinds_s = self._shape_inputs(X[sel], best.get("oof"), kinds, self.shape_reads_location_)
            shape = self._shape_model(best["shaped"], kinds_s)
            zs = best["z"]
            if best.get("own_scores"):
                # The scores around the final location, as each fold's shape learnt them around its own.
                zs = (ylog[sel] - final.predict(X[sel])) / best["scale"].predict(X[sel])
            shape.fit(Xs, zs, self.score_, None if w is None else w[sel], self.random_state)
            shape.set_recalibration(best["pits"])
            self.shape_ = shape
        self.n_rows_ = n
        self.log_range_ = (float(ylog.min()), float(ylog.max()))

    @staticmethod
    def _shape_inputs(X: np.ndarray, location: np.ndarray, kinds: list[str], reads_location: bool) -> tuple[np.ndarray, list[str]]:
        """The columns and kinds a shape model reads: the features, and the location where
        it reads it (a LightGBM location, see ``_variants``)."""
        return (np.column_stack([X, location]), kinds + ["numeric"]) if reads_location else (X, kinds)

    def _regime_free(self) -> tuple[list[str], list[int]]:
        """The kinds and category counts of the columns but the regime column: what each
        kind of run's model reads."""
        j = self.regime_column
        return ([k for i, k in enumerate(self.kinds) if i != j], [c for i, c in enumerate(self.n_categories) if i != j])

    def _categories_for(self, kinds: Sequence[str]) -> list[int]:
        """The model's category counts for ``kinds``, with 0 for a column past the features
        (the location, read by the shape model of a boosted location)."""
        return list(self.n_categories) + [0] * (len(kinds) - len(self.n_categories))

    def _without_regime_column(self, X: np.ndarray) -> np.ndarray:
        return np.delete(X, self.regime_column, axis=1)

    def _fit_regimes(self, X: np.ndarray, y: np.ndarray, w: np.ndarray | None,
                     chosen: tuple[np.ndarray, dict[str, Any]]) -> None:
        """Fit a model to each value of the regime column and keep the pair (``regimes_``)
        when its held-out loss beats this model's by more than ``SELECTION_SE`` standard
        errors of the paired per-row difference (the one-standard-error rule).

        One location and one shared score distribution for first runs and repeats put the
        first runs' own spread into the repeats' score tails, and make a first run a repeat
        stretched by a factor, where it may take whatever the autotuner takes, nearly
        whatever the shape (708 to 1,237 ms on the H200 ResNet-50 trace). Two models, each
        chosen and calibrated on its own rows, keep the two apart.
        """
        j = self.regime_column
        flag = X[:, j] > 0.5
        sizes = [int((~flag).sum()), int(flag.sum())]
        self.regime_cv_ = {"column": j, "rows": sizes, "split": False}
        # Rows of weight 0 (a retraining's forgotten ones) tell a kind's model nothing.
        counted = np.ones(len(y), dtype=bool) if w is None else w > 0
        if min(int((~flag & counted).sum()), int((flag & counted).sum())) < REGIME_MIN_ROWS:
            self.regime_cv_["reason"] = (f"fewer than {REGIME_MIN_ROWS} training rows in a regime"
                                         + ("" if w is None else " (of weight above 0)"))
            return
        kinds, ncats = self._regime_free()
        Xr = self._without_regime_column(X)
        n = len(y)
        pooled = np.full(n, np.nan)
        sel, best = chosen
        pooled[sel] = best["row_loss"]
        split = np.full(n, np.nan)
        heldout_q = np.full((n, len(EVAL_LEVELS)), np.nan)  # the pair's held-out quantiles
        models, parts = [], []
        params = _params_without_column(self.params, j)
        for mask in (~flag, flag):
            rows = np.flatnonzero(mask)
            sub = QuantileModel(kinds, ncats, "auto", self.n_folds, params, self.random_state)
            part = (Xr[rows], y[rows], None if w is None else w[rows])
            try:
                sub_chosen = sub._choose(*part)
            except (ValueError, *lightgbm_errors()) as exc:
                # The model of all rows fitted: it serves, and the metrics say why no split.
                self.regime_cv_["reason"] = f"a model of one kind of run could not be fitted: {exc}"
                return
            sub_sel, sub_best = sub_chosen
            split[rows[sub_sel]] = sub_best["row_loss"]
            heldout_q[rows[sub_sel]] = sub_best["q"]
            models.append(sub)
            parts.append((part, sub_chosen))
        both = np.isfinite(pooled) & np.isfinite(split)
        d = split[both] - pooled[both]
        self.regime_cv_.update(
            pinball_loss=float(split[both].mean()), pooled_pinball_loss=float(pooled[both].mean()),
            models=[{"algorithm": b["family"], "rows": size, "pinball_loss": m.cv_[b["family"]]["pinball_loss"]}
                    for m, (_, (_, b)), size in zip(models, parts, sizes)])
        if len(d) >= REGIME_MIN_ROWS and clearly_lower(d):
            # Only a kept pair is fitted on all its rows. Its models' own shared factors are
            # never read (a batch's total carries this model's), and stay 0.
            try:
                for model, (part, sub_chosen) in zip(models, parts):
                    model._finish(*part, sub_chosen)
            except (ValueError, *lightgbm_errors()) as exc:
                self.regime_cv_["reason"] = f"a model of one kind of run could not be fitted: {exc}"
                return
            self.regimes_ = (models[0], models[1])
            self.regime_cv_["split"] = True
            # What serves is the pair: its held-out figures head the metrics (cv_summary),
            # which monitoring compares live accuracy with.
            scored = np.isfinite(split)
            self.regime_cv_["heldout"] = quantile_metrics(y[scored], heldout_q[scored], EVAL_LEVELS)
        else:
            self.regime_cv_["reason"] = "not better on held-out rows than one model of all rows"

    def _shared_log_sd(self, X: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> float:
        """Log sd of the model's error about the level of the runtimes, common to all its predictions.

        The mean runtime the model predicts is, in effect, estimated from the training
        rows' ratios to it: its relative standard error is the ratios' coefficient of
        variation over the square root of the (effective) number of rows. One task's
        calibrated distribution already holds it; the tasks of a queue share it.
        """
        n = len(y)
        rows = np.arange(n)
        if n > SHARED_SD_ROWS:
            rows = np.random.default_rng(self.random_state).choice(n, SHARED_SD_ROWS, replace=False)
        mean, _ = self.predict_distribution(X[rows]).mean_std()
        ratio = y[rows] / mean
        # A handful of far outliers (one warm-up run 1000x slower among a thousand) would set
        # the factor alone, and blur the total of every queue, whose tasks' own distributions
        # already hold such runs: the few highest ratios are capped, the highest one at
        # least. Not ten of fewer rows, where as many are a slow mode's: of 30 rows, 3 runs
        # 8x slower, whose share the model knows as badly as its level (all capped, a
        # 500-task total of such a model held the truth 0.30 of the time).
        capped = min(SHARED_SD_TAIL_ROWS, max(1, int(len(ratio) * SHARED_SD_TAIL_SHARE)))
        if len(ratio) > 2 * capped:
            # At the highest value left uncapped (a quantile interpolated toward the highest
            # one left a single far run among 30 three tenths of its ratio).
            ratio = np.minimum(ratio, np.partition(ratio, len(ratio) - capped - 1)[len(ratio) - capped - 1])
        ww = np.ones(len(rows)) if w is None else w[rows]
        mu = float(np.average(ratio, weights=ww))
        cv2 = float(np.average((ratio - mu) ** 2, weights=ww)) / (mu * mu)
        n_eff = n if w is None else float(w.sum() ** 2 / (w * w).sum())
        out = math.sqrt(math.log1p(cv2 / n_eff))
        return out if math.isfinite(out) else 0.0

    def _select(self, X: np.ndarray, y: np.ndarray, ylog: np.ndarray, w: np.ndarray | None) -> dict[str, Any]:
        """Cross-fit every candidate; fill ``cv_``; return the chosen one with its OOF scores."""
        n = len(y)
        fold = self._folds(X, ylog)
        # Each fold's held-out quantiles go on the other folds' repeated runtimes (_heldout).
        fold_atoms = [data_atoms(y[fold != k]) for k in range(int(fold.max()) + 1)]
        self.cv_: dict[str, dict[str, Any]] = {}
        # Rows each fold's fits learn from: a variant its folds cannot fit is not scored as one.
        fold_rows = n - int(np.bincount(fold).max())
        hetero_ok = bool(self.kinds) and fold_rows >= SCALE_MIN_ROWS
        shape_ok = bool(self.kinds) and bool(ShapeModel.knots_for(fold_rows))
        if "shape" in self.params:
            shape_ok = shape_ok and bool(self.params["shape"])
        qr_ok = (shape_ok and bool(self.params.get("quantile_shape", True))
                 and QuantileShapeModel.fits(self.kinds, self.n_categories))
        families = []
        for rank, family in enumerate(self.candidate_families(n)):
            t0 = time.perf_counter()
            variants = [(hetero, shaped) for hetero in ((False, True) if (hetero_ok and family != "empirical") else (False,))
                        for shaped in ((False, True) if shape_ok else (False,))]
            if qr_ok and family != "empirical":
                # Quantile regression follows the noise's features level by level: no scale model under it.
                variants.append((False, QUANTILE_SHAPE))
            fam = self._variants(family, rank, X, y, ylog, fold, fold_atoms, w, self.kinds, variants)
            families.append((family, fam, _choose(fam), time.perf_counter() - t0))
        # Dropping features lowered a family's held-out loss by about 4% at most on the
        # benchmark's sets: a family further than DROP_MARGIN behind the best one is not
        # going to catch up, and its elimination (up to p(p-1)/2 cross-fits) is skipped.
        leader = min(float(chosen["row_loss"].mean()) for _, _, chosen, _ in families)
        candidates: list[dict[str, Any]] = []
        described: dict[str, dict[str, Any]] = {}  # family -> the candidate its figures describe
        family_figures: dict[str, dict[str, Any]] = {}  # family -> its figures that no one variant has
        for family, fam, chosen, seconds in families:
            t0 = time.perf_counter()
            reduced = chosen
            if float(chosen["row_loss"].mean()) <= DROP_MARGIN * leader:
                reduced = self._drop_features(chosen, X, y, ylog, fold, fold_atoms, w)
            if reduced is not chosen:
                # The elimination preferred it to its parent (one-standard-error rule): it
                # replaces it, and the family's figures are its own.
                fam = [reduced if c is chosen else c for c in fam]
            # The family's own figures, whichever of its variants they end up describing.
            figures = {"variants_pinball_loss": {c["name"]: float(c["row_loss"].mean()) for c in fam},
                       "seconds": seconds + time.perf_counter() - t0}
            for key, tuned in (("best_iteration", "rounds"), ("hinges", "hinges"), ("regimes", "regimes")):
                if tuned in chosen["tuned"]:
                    figures[key] = chosen["tuned"][tuned]
            family_figures[family] = figures
            metrics = self._describe(reduced, y) | figures
            if reduced is not chosen:
                # Which features went, and the held-out loss with them.
                metrics["features_dropped"] = [j for j, k in enumerate(reduced["kinds"]) if k == UNUSED]
                metrics["pinball_loss_after_drop"] = metrics["pinball_loss"]
                metrics["relative_pinball_loss_after_drop"] = metrics["relative_pinball_loss"]
                metrics["pinball_loss_before_drop"] = float(chosen["row_loss"].mean())
                metrics["relative_pinball_loss_before_drop"] = float(chosen["row_loss"].mean() / y.mean())
            described[family] = reduced
            self.cv_[family] = metrics
            candidates += fam
        best = _choose(candidates)
        if described.get(best["family"]) is not best:
            # Another variant of the family won against every family: the figures are the
            # served one's, not those of the variant the elimination reduced.
            self.cv_[best["family"]] = self._describe(best, y) | family_figures[best["family"]]
        for c in candidates:
            if c is not best:  # the chosen one's held-out quantiles may score a split (_fit_regimes)
                c.pop("q", None)
                c.pop("oof", None)
        return best

    @staticmethod
    def _describe(candidate: dict[str, Any], y: np.ndarray) -> dict[str, Any]:
        """A candidate's held-out figures and what it is."""
        metrics = quantile_metrics(y, candidate["q"], EVAL_LEVELS)
        metrics["heteroscedastic"] = candidate["hetero"]
        if candidate["hetero"]:
            # Which features the noise's size depends on, the scale's ridge penalty and hinges.
            metrics["scale_features"] = [j for j, k in enumerate(candidate["scale"].kinds) if k != UNUSED]
            metrics["scale_alpha"] = candidate["scale"].alpha
            metrics["scale_hinges"] = candidate["scale"].hinges
            metrics["scale_link"] = candidate["scale"].link
        metrics["shape"] = bool(candidate["shaped"])
        if candidate["shaped"]:
            metrics["shape_model"] = SHAPE_MODELS[candidate["shaped"]].kind
        metrics["variant"] = candidate["name"]
        return metrics

    def _variants(self, family: str, rank: int, X, y, ylog, fold, fold_atoms, w, kinds: Sequence[str],
                  variants: Sequence[tuple[bool, bool]]) -> list[dict[str, Any]]:
        """Cross-fit ``family`` on the features ``kinds`` marks as used; one candidate per (hetero, shaped)."""
        kinds = list(kinds)
        oof0, tuned0, own0 = self._oof_location(family, X, ylog, fold, w, kinds)
        fam: list[dict[str, Any]] = []
        scales: dict[bool, tuple] = {}
        heldout: dict[tuple[bool, bool], tuple] = {}
        for hetero, shaped in variants:
            if hetero not in scales:
                # Constant and feature-dependent noise compete on the same held-out loss.
                oof, tuned, own = oof0, tuned0, own0
                scale, s = self._oof_scale(hetero, X, ylog - oof, fold, w, kinds)
                # A scale that found no feature to depend on is the constant one: weights
                # 1/s² would all be equal, and the refit would repeat the first fit.
                varies = bool(np.any(s != 1.0))
                weighted = (hetero and varies and family != "empirical"
                            and bool(self.params.get("weighted_location", True)))
                if weighted:
                    # Feasible weighted least squares: once the noise's size is known, rows
                    # with little noise say more about the location than noisy ones.
                    oof, tuned, own = self._oof_location(family, X, ylog, fold, location_weights(s, w), kinds)
                    scale, s = self._oof_scale(hetero, X, ylog - oof, fold, w, kinds)
                scales[hetero] = (scale, s, oof, tuned, weighted, varies, own)
            scale, s, oof, tuned, weighted, varies, own = scales[hetero]
            resid = ylog - oof
            z = resid / s
            # The same location and a constant scale: the constant variant's held-out quantiles.
            twin = heldout.get((False, shaped)) if hetero and not varies else None
            # Boosted trees' location carries the features' interactions: the shape of the
            # noise may follow the typical runtime (launch-bound small tasks spread widely,
            # compute-bound large ones hardly), which the shape's log-linear design cannot see.
            reads_location = (bool(shaped) and SHAPE_MODELS[shaped].reads_location and family == "lightgbm"
                              and bool(self.params.get("shape_location", True)))
            Xs, kinds_s = self._shape_inputs(X, oof, kinds, reads_location)
            zfit = None
            if shaped and own is not None:
                zfit = [(ylog[fold != k] - m) / s[fold != k] for k, m in enumerate(own)]
            q, pits = twin if twin is not None else self._heldout(Xs, fold_atoms, oof, s, z, fold, shaped, w, kinds_s, zfit=zfit)
            heldout[(hetero, shaped)] = (q, pits)
            fam.append({
                "family": family, "hetero": hetero, "shaped": shaped, "scale": scale, "z": z, "weighted": weighted,
                "reads_location": reads_location, "oof": oof,
                "pits": pits, "tuned": tuned, "q": q, "kinds": kinds, "rank": rank, "own_scores": zfit is not None,
                "name": ("hetero" if hetero else "const") + SHAPE_SUFFIX[shaped],
                "row_loss": pinball_losses(y, q, EVAL_LEVELS).mean(axis=1),
                "complexity": FAMILY_COMPLEXITY.get(family, rank) + int(hetero) + int(bool(shaped)),
            })
        return fam

    def _oof_scale(self, hetero: bool, X, resid, fold, w, kinds) -> tuple[ScaleModel, np.ndarray]:
        """The scale model fitted on every row, and each row's scale from a fit without its fold.

        A scale fitted on a row's own residual widens exactly the rows that turn out
        to be far off: held out like the location, it cannot flatter the
        feature-dependent variant (on pure noise it used to beat the constant one).

        The feature-dependent scale uses only the features that earn their place,
        with a ridge penalty chosen on the folds (:meth:`_scale_design`).
        """
        if not hetero:
            scale = ScaleModel([], []).fit(X[:, :0], resid, w)
            return scale, scale.predict(X[:, :0])
        kinds, alpha, hinges, link, s = self._scale_design(X, resid, fold, w, kinds)
        return ScaleModel(kinds, self.n_categories, alpha, hinges, link).fit(X, resid, w), s

    def _scale_design(self, X, resid, fold, w, kinds) -> tuple[list[str], float, int, str, np.ndarray]:
        """Features, ridge penalty, hinges and link of the feature-dependent scale, chosen on held-out residuals.

        Noise usually depends on one or two features (the load, the batch size),
        and on a hundred rows a scale on every feature is noisier than the noise
        it models: with every feature and a fixed penalty, the pinball loss was
        3.9% higher than with this choice (geometric mean over 8 draws of 140
        heteroscedastic rows, benchmarks/accuracy.py's many-seeds study).

        Forward selection on the cross-fitted Laplace deviance: a feature joins
        while it lowers the deviance by more than ``SELECTION_SE`` standard
        errors of the paired per-row difference (judged on at most
        ``SCALE_SELECT_ROWS`` rows, each feature by its log and raw value); then
        the penalty is the one of ``SCALE_ALPHAS`` with the lowest deviance, and
        the features' hinges (``LINEAR_HINGES``) are added only where they lower
        it by more than ``SELECTION_SE`` standard errors too. Hinges on every
        chosen feature made a scale on 40 rows noisier than the noise it models:
        the expected pinball loss was 5.5% above linear quantile regression's,
        1.1% with the hinges chosen so (benchmarks/small_data.py,
        heteroscedastic, 10 draws). Where the chosen features are all numeric,
        the straight scale is the log-linear or the linear one (``ScaleModel.LINKS``),
        whichever has the lower deviance: noise of 5% + 45% x load, which the
        log-linear scale bends, was 1.1% above linear quantile regression's
        expected loss at 40 and 80 rows with the log link alone, at most 0.2% with
        the choice. Returns the kinds (unused features marked), the penalty, the
        hinges, the link and each row's out-of-fold scale.
        """
        used = [j for j, k in enumerate(kinds) if k != UNUSED]

        def only(chosen: set[int]) -> list[str]:
            return [k if j in chosen else UNUSED for j, k in enumerate(kinds)]

        # Which features matter is clear on a sample; each trial costs a fit per fold.
        sub = np.arange(len(resid))
        if len(resid) > SCALE_SELECT_ROWS:
            sub = np.sort(np.random.default_rng(self.random_state).choice(len(resid), SCALE_SELECT_ROWS, replace=False))
        Xs, rs, fs, ws = X[sub], resid[sub], fold[sub], None if w is None else w[sub]
        chosen: set[int] = set()
        row_dev, _ = self._scale_deviance(Xs, rs, fs, ws, only(chosen), SCALE_ALPHAS[0], 0)
        while len(chosen) < len(used):
            trials = [(self._scale_deviance(Xs, rs, fs, ws, only(chosen | {j}), SCALE_ALPHAS[0], 0)[0], j)
                      for j in used if j not in chosen]
            trial_dev, j = min(trials, key=lambda t: t[0].mean())
            if not clearly_lower(trial_dev - row_dev):
                break
            chosen.add(j)
            row_dev = trial_dev
        kinds = only(chosen)
        if not chosen:
            # No feature earns its place: the "feature-dependent" scale is the constant
            # one, ties with it, and loses to it on complexity in _choose.
            return kinds, SCALE_ALPHAS[0], 0, "log", np.ones(len(resid))

        designs: dict = {}

        def best_penalty(hinges: int, link: str) -> tuple[np.ndarray, float, int, str, np.ndarray]:
            fits = [(self._scale_deviance(X, resid, fold, w, kinds, alpha, hinges, link, designs), alpha)
                    for alpha in SCALE_ALPHAS]
            (row_dev, s), alpha = min(fits, key=lambda f: f[0][0].mean())
            return row_dev, alpha, hinges, link, s

        # The link costs no parameter: the better of the two straight fits; hinges (on the
        # log link) must earn theirs. Noise per category is a factor (the log link): a
        # linear scale would add the categories' noise to the load's, and on a wide one-hot
        # design (300 values, 20,000 rows) it took twelve times as long to fit.
        links = ScaleModel.LINKS if all(kinds[j] == "numeric" for j in chosen) else ("log",)
        plain = min((best_penalty(0, link) for link in links), key=lambda f: f[0].mean())
        bent = best_penalty(LINEAR_HINGES, "log")
        _, alpha, hinges, link, s = bent if clearly_lower(bent[0] - plain[0]) else plain
        return kinds, alpha, hinges, link, s

    def _scale_deviance(self, X, resid, fold, w, kinds, alpha, hinges, link="log",
                        designs: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-row held-out Laplace deviance of a scale model, and the out-of-fold scales.

        The scale's overall level is absorbed by ``Z``, so it is profiled out: only
        how the scale varies between rows is judged. ``designs`` keeps each fold's
        design for the next call with the same features and hinges: fitting them was
        a quarter of the training time of 2,800 heteroscedastic rows.
        """
        s = np.empty(len(resid))
        for k in range(int(fold.max()) + 1):
            tr, te = fold != k, fold == k
            key = (tuple(kinds), hinges, k)
            design = None if designs is None else designs.get(key)
            part = ScaleModel(kinds, self.n_categories, alpha, hinges, link).fit(
                X[tr], resid[tr], None if w is None else w[tr], design)
            if designs is not None:
                designs[key] = part.design_
            s[te] = part.predict(X[te])
        a = np.abs(resid)
        ww = np.ones(len(a)) if w is None else w
        c = max(float((ww * a / s).sum() / ww.sum()), 1e-300)
        return ww / ww.mean() * (np.log(s * c) + a / (s * c)), s

    def _drop_features(self, best: dict[str, Any], X, y, ylog, fold, fold_atoms, w) -> dict[str, Any]:
        """Backward elimination of features for a family's chosen variant.

        With few rows, a weak feature costs more in estimation noise than it
        brings (prompt lengths next to a frame count that sets the runtime):
        while dropping one of the features the candidate uses does not raise its
        held-out loss on the log scale (:func:`_log_pinball`) by more than
        ``FEATURE_DROP_SE`` standard errors (of the paired per-row difference), the
        one whose removal costs least (in milliseconds) is dropped; its kind
        becomes ``"unused"``, which every design ignores.
        LightGBM is left out: its trees choose their own features, and each
        trial would cost a boosting run per fold. It takes up to p(p-1)/2
        cross-fits for p features, so it runs only while rows x p^2 is at most
        ``FEATURE_DROP_MAX_WORK`` (rows counted as at least ``FEATURE_DROP_ROW_FLOOR``):
        on small data, where it matters.
        """
        p = sum(k != UNUSED for k in best["kinds"])
        work = max(len(y), FEATURE_DROP_ROW_FLOOR) * p * p
        if best["family"] == "lightgbm" or work > FEATURE_DROP_MAX_WORK or not self.params.get("drop_features", True):
            return best
        if best["family"] == "empirical" and not (best["hetero"] or best["shaped"]):
            return best
        variant = [(best["hetero"], best["shaped"])]
        while True:
            used = [j for j, k in enumerate(best["kinds"]) if k != UNUSED]
            if len(used) < 2:
                return best
            trials = []
            for j in used:
                kinds = list(best["kinds"])
                kinds[j] = UNUSED
                trials += self._variants(best["family"], best["rank"], X, y, ylog, fold, fold_atoms, w, kinds, variant)
            trial = min(trials, key=lambda c: c["row_loss"].mean())
            d = _log_pinball(ylog, trial["q"]) - _log_pinball(ylog, best["q"])
            if d.mean() > FEATURE_DROP_SE * _mean_se(d):
                return best
            best = trial

    def _shape_model(self, shaped: bool | str, kinds: Sequence[str]) -> ShapeModel:
        """An unfitted shape model of the kind a candidate's ``shaped`` names."""
        if shaped == QUANTILE_SHAPE:  # (unpenalised, no hinges: shape_alpha and shape_hinges are the logistic one's)
            return QuantileShapeModel(kinds, self._categories_for(kinds))
        return ShapeModel(kinds, self._categories_for(kinds), **self._shape_params())

    def _shape_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "shape_alpha" in self.params:
            out["alpha"] = float(self.params["shape_alpha"])
        if "shape_hinges" in self.params:
            out["hinges"] = int(self.params["shape_hinges"])
        return out

    def _heldout(self, X, fold_atoms, oof, s, z, fold, shaped, w, kinds=None, zfit=None) -> tuple[np.ndarray, np.ndarray | None]:
        """Quantiles at EVAL_LEVELS for every row, from models that never saw its fold.

        Each fold is calibrated only with the other folds' scores, so these
        metrics are measured on rows that neither fitted nor calibrated the model.
        Quantiles are put on the other folds' repeated runtimes (``fold_atoms[k]``) as the
        model puts them on its training data's (:func:`snap_to_atoms`). ``zfit``, where
        given, holds per fold the scores of its training rows that its shape model learns from
        (around that fold's own location, :class:`_FoldLocations`); the held-out rows are scored
        by ``z`` either way.
        """
        n = len(z)
        n_folds = int(fold.max()) + 1
        levels = np.asarray(EVAL_LEVELS)
        q = np.empty((n, len(levels)))
        scores = [ScoreDistribution.from_scores(z[fold != k]) for k in range(n_folds)]
        ylog = oof + s * z
        bounds = _log_bounds(float(ylog.min()), float(ylog.max()))  # as the fitted model's
        if not shaped:
            for k in range(n_folds):
                te = fold == k
                zq = scores[k].quantile(levels)
                q[te] = snap_to_atoms(np.exp(np.clip(oof[te, None] + s[te, None] * zq[None, :], *bounds)),
                                      fold_atoms[k])
            return q, None
        pits = np.empty(n)
        fitted = []
        for k in range(n_folds):
            tr, te = fold != k, fold == k
            kinds_k = self.kinds if kinds is None else kinds
            shape = self._shape_model(shaped, kinds_k)
            shape.fit(X[tr], z[tr] if zfit is None else zfit[k], scores[k], None if w is None else w[tr], self.random_state)
            F = shape.raw_cdf(X[te])
            pits[te] = shape.pit(F, z[te], scores[k])
            fitted.append((shape, F))
        for k, (shape, F) in enumerate(fitted):
            te = fold == k
            x, yk = recalibration_map(pits[fold != k])
            Fc = _increasing(np.interp(F, x, yk))
            dist = RuntimeDistribution(oof[te], s[te], scores[k], shape.knots_, Fc, bounds,
                                       atoms=fold_atoms[k])
            q[te] = dist.quantiles(levels)
        return q, pits

    # ------------------------------------------------------------------ prediction

    def cv_summary(self) -> dict[str, Any]:
        """The fitted model's held-out figures, as a version's ``metrics`` store them.

        With a model for each kind of run (``regimes_``), the held-out figures
        (``pinball_loss``, ``coverage``, ``interval_coverage``, ``median_mape``...) are
        the pair's, which serves; ``algorithm``, ``variant``, ``cv_scores`` and the
        feature-elimination figures describe the model of all rows, and ``regime_split``
        the pair.
        """
        chosen = self.cv_[self.family_]
        split = dict(self.regime_cv_) if self.regime_cv_ is not None else None
        heldout = split.pop("heldout", None) if split is not None else None
        return {
            "algorithm": self.family_,
            "validation": "cross-validated (out-of-fold, calibrated without the held-out fold)",
            **{k: v for k, v in chosen.items() if k != "seconds"},
            **(heldout if self.regimes_ is not None and heldout is not None else {}),
            "cv_scores": {
                f: {k: m[k] for k in ("pinball_loss", "mean_abs_coverage_error", "variant") if k in m}
                for f, m in self.cv_.items()
            },
            "shared_log_sd": self.shared_log_sd_,
            **({"regime_split": split} if split is not None else {}),
        }

    def predict_distribution(self, X: np.ndarray) -> TaskDistributions:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError("X must be a 2-d array")
        if self.regimes_ is not None:
            first = X[:, self.regime_column] > 0.5
            Xr = self._without_regime_column(X)
            parts = tuple(model.predict_distribution(Xr[rows]) for model, rows in zip(self.regimes_, (~first, first)))
            return MixedDistribution.of(parts, first.astype(np.int64), self.shared_log_sd_)
        return self._own_distribution(X)

    def _own_distribution(self, X: np.ndarray) -> RuntimeDistribution:
        m = np.asarray(self.location_.predict(X), dtype=np.float64)
        bounds = self._bounds()
        if self.log_range_ is not None:
            lo, hi = self.log_range_
            m = np.clip(np.where(np.isnan(m), (lo + hi) / 2, m), *bounds)
        s = np.asarray(self.scale_.predict(X if self.scale_.kinds else X[:, :0]), dtype=np.float64)
        varies = not self.scale_.is_constant  # as describe_one reads it: one answer per task, in any batch
        if self.shape_ is not None and self.shape_.knots_:
            Xs, _ = self._shape_inputs(X, m, self.kinds, self.shape_reads_location_)
            return RuntimeDistribution(m, s, self.score_, self.shape_.knots_, self.shape_.cdf(Xs), bounds,
                                       self.shared_log_sd_, varies, self.atoms_)
        return RuntimeDistribution(m, s, self.score_, log_bounds=bounds, shared_log_sd=self.shared_log_sd_,
                                   scale_varies=varies, atoms=self.atoms_)

    def _set_atoms(self, atoms: np.ndarray) -> None:
        self.atoms_ = atoms
        self.atom_values_ = tuple(atoms.tolist())  # the single-task path bisects plain floats

    def _bounds(self) -> tuple[float, float]:
        """Never extrapolate the typical runtime, nor any quantile, beyond 100x the training extremes."""
        return LOG_BOUNDS if self.log_range_ is None else _log_bounds(*self.log_range_)

    def predict_quantiles(self, X: np.ndarray, levels: Sequence[float]) -> np.ndarray:
        return self.predict_distribution(X).quantiles(levels)

    def describe_one(self, x: Sequence[float], levels: tuple[float, ...]) -> tuple[list[float], float, float] | None:
        """Quantiles at ``levels``, mean and std of one task, in plain floats.

        The single-prediction fast path: the same numbers as
        ``predict_distribution`` on a one-row matrix (to rounding; a model with a
        feature-dependent scale interpolates its moments as a batch does), at a
        fraction of the cost. None for a location family without a single-row
        path; the caller then uses ``predict_distribution``.
        """
        if self.regimes_ is not None:  # (the regime's model checks the levels)
            j = self.regime_column
            return self.regimes_[int(x[j] > 0.5)].describe_one([*x[:j], *x[j + 1:]], levels)
        check_levels_in_unit_interval(levels)
        m = self.location_.predict_row(x)
        if m is None:
            return None
        bounds = self._bounds()
        if self.log_range_ is not None:
            lo, hi = self.log_range_
            if m != m:
                m = (lo + hi) / 2
            m = min(max(m, bounds[0]), bounds[1])
        s = self.scale_.predict_row(x)
        shape = self.shape_
        if shape is not None and shape.knots_:
            row = [*x, m] if self.shape_reads_location_ else x
            return describe_one(m, s, self.score_, levels, self.scale_.is_constant, shape.knots_, shape.cdf_row(row),
                                bounds, self.atom_values_)
        return describe_one(m, s, self.score_, levels, self.scale_.is_constant, log_bounds=bounds,
                            atoms=self.atom_values_)

    def check_loaded(self, probe: Sequence[float] | None = None) -> None:
        """Raise ValueError unless a probe task gets finite, ordered answers, the same on
        the single-row and the batch path.

        For a model rebuilt from a file: arrays that lost or gained an element parse
        well, then failed at prediction time (an unnamed 500), or were served. ``probe``
        is a row within the training data (the features' medians, say); by default each
        numeric feature is 1, which lies far outside the data of a feature near the float
        limit, where the two paths overflow differently.
        """
        if probe is not None and len(probe) != len(self.kinds):
            raise ValueError(f"a probe of {len(probe)} values for a model of {len(self.kinds)} columns")
        with _damage_as_value_error():
            self._check_loaded(probe)

    def _check_loaded(self, probe: Sequence[float] | None = None) -> None:
        if self.regimes_ is not None:
            j = self.regime_column
            for model in self.regimes_:
                model._check_loaded(None if probe is None else [*probe[:j], *probe[j + 1:]])
        x = list(probe) if probe is not None else [0.0 if k == "categorical" else 1.0 for k in self.kinds]
        levels = (0.05, 0.5, 0.95)
        dist = self.predict_distribution(np.array([x], dtype=np.float64))
        q = dist.quantiles(levels)[0]
        mean, std = (float(v[0]) for v in dist.mean_std())
        if not (np.all(np.isfinite(q)) and np.all(np.diff(q) >= 0) and math.isfinite(mean) and math.isfinite(std)):
            raise ValueError("its answers to a probe task are not finite, ordered runtimes")
        one = self.describe_one(x, levels)
        if one is not None and not (np.allclose(one[0], q, rtol=1e-6)
                                    and math.isclose(one[1], mean, rel_tol=1e-4) and math.isclose(one[2], std, rel_tol=1e-4, abs_tol=1e-9)):
            raise ValueError("its single-task and batch answers to a probe task differ")

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Median runtime, for scikit-learn-style use."""
        return self.predict_quantiles(X, [0.5])[:, 0]

    # ------------------------------------------------------------------ persistence

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 2,
            "algorithm": self.algorithm,
            "n_folds": self.n_folds,
            "params": self.params,
            "random_state": self.random_state,
            "kinds": self.kinds,
            "n_categories": self.n_categories,
            "family": self.family_,
            "location": self.location_.to_json(),
            "scale": self.scale_.to_json(),
            "score": self.score_.to_json(),
            "shape": None if self.shape_ is None else self.shape_.to_json(),
            "shape_reads_location": self.shape_reads_location_,
            "log_range": None if self.log_range_ is None else list(self.log_range_),
            "shared_log_sd": self.shared_log_sd_,
            "atoms": self.atoms_.tolist(),
            "features_used": getattr(self, "features_used_", None),
            "cv": self.cv_,
            "regime_column": self.regime_column,
            "regimes": None if self.regimes_ is None else [m.to_json() for m in self.regimes_],
            "regime_cv": self.regime_cv_,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "QuantileModel":
        """The model ``to_json`` wrote; ValueError for one that is damaged (a key missing, a
        value of the wrong type or size), however it shows."""
        with _damage_as_value_error():
            return cls._from_json(d)

    @classmethod
    def _from_json(cls, d: dict[str, Any]) -> "QuantileModel":
        if d.get("format") not in (1, 2):
            raise ValueError(f"unsupported model format {d.get('format')!r}")
        obj = cls(d["kinds"], d["n_categories"], d["algorithm"], d["n_folds"], d["params"], d["random_state"])
        obj.family_ = d["family"]
        obj.location_ = FAMILIES[obj.family_].from_json(d["location"], obj.kinds, obj.n_categories)
        obj.scale_ = ScaleModel.from_json(d["scale"], d["scale"]["kinds"], d["scale"]["n_categories"])
        obj.score_ = ScoreDistribution.from_json(d["score"])
        shape = d.get("shape")
        reads = d.get("shape_reads_location", False)  # models stored before it: the features only
        if not isinstance(reads, bool):
            raise ValueError(f"shape_reads_location is {shown(reads)}, not true or false")
        obj.shape_reads_location_ = reads
        shape_kinds = obj.kinds + ["numeric"] if reads else obj.kinds
        obj.shape_ = None if shape is None else _shape_from_json(shape, shape_kinds, obj._categories_for(shape_kinds), obj.score_)
        if obj.shape_ is not None and len(obj.shape_.design_.kinds) != len(shape_kinds):
            # The shape's design reads the columns its flag says: one more, the location, or none.
            raise ValueError(f"the shape model reads {len(obj.shape_.design_.kinds)} columns, not the "
                             f"{len(shape_kinds)} that shape_reads_location={reads} gives")
        lr = d.get("log_range")
        if lr is not None and not (isinstance(lr, list) and len(lr) == 2 and all(_finite_number(v) for v in lr)
                                   and lr[0] <= lr[1]):
            raise ValueError(f"log_range is {shown(lr)}, not the least and the greatest log runtime")
        obj.log_range_ = None if lr is None else (float(lr[0]), float(lr[1]))
        sd = d.get("shared_log_sd", 0.0)  # models stored before it: none
        if not (_finite_number(sd) and 0.0 <= sd <= 10.0):
            raise ValueError(f"shared_log_sd is {shown(sd)}, not a log standard deviation in [0, 10]")
        obj.shared_log_sd_ = float(sd)
        obj._set_atoms(_atoms_from_json(d.get("atoms", [])))  # models stored before them: none
        obj.cv_ = d.get("cv", {})
        obj.features_used_ = d.get("features_used") or [True] * len(obj.kinds)
        # Models stored before regimes: none.
        j = d.get("regime_column")
        if j is not None and (not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < len(obj.kinds)):
            raise ValueError(f"regime_column is {shown(j)}, not one of the model's {len(obj.kinds)} columns")
        obj.regime_column = j
        regimes = d.get("regimes")
        if regimes is not None:
            if j is None or not isinstance(regimes, list) or len(regimes) != 2 or not all(isinstance(r, dict) for r in regimes):
                raise ValueError("regimes must be two models, with a regime_column")
            models = tuple(cls._from_json(r) for r in regimes)
            rest, rest_categories = obj._regime_free()
            if any(m.kinds != rest or m.n_categories != rest_categories or m.regimes_ is not None for m in models):
                raise ValueError("a regime's model must read the model's columns but the regime column, and have no regimes")
            obj.regimes_ = (models[0], models[1])
        regime_cv = d.get("regime_cv")
        if regime_cv is not None and not isinstance(regime_cv, dict):
            raise ValueError(f"regime_cv is {shown(regime_cv)}, not an object")
        obj.regime_cv_ = regime_cv
        return obj


_LOG100 = float(np.log(100.0))


@contextlib.contextmanager
def _damage_as_value_error() -> Iterator[None]:
    """A damaged model shows however its damage makes Python fail (a key missing, a value
    of the wrong type or size, LightGBM's parser): one ValueError for them all."""
    try:
        yield
    except (KeyError, TypeError, IndexError, AttributeError, OverflowError, RecursionError,
            FloatingPointError, ZeroDivisionError, *lightgbm_errors()) as exc:
        raise ValueError(f"the model is damaged: {type(exc).__name__} {exc}") from None


def _finite_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _stored_number(v: Any, what: str) -> float:
    """A stored finite number (``float()`` reads the string "NaN" as one)."""
    if not _finite_number(v):
        raise ValueError(f"{what} is {shown(v)}, not a finite number")
    return float(v)


def _stored_numbers(values: Any, what: str, ndim: int = 1) -> np.ndarray:
    """A stored array of numbers, as floats; a null (NaN, as orjson writes it) reads as NaN.

    numpy alone reads the strings "NaN" or "1e9" as numbers: a damaged file was served.
    """
    a = np.asarray(values)
    if a.dtype == object:  # nulls, or integers beyond 64 bits, among the numbers
        flat = a.ravel().tolist()
        if not all(v is None or type(v) in (int, float) for v in flat):
            raise ValueError(f"{what} holds values that are not numbers")
        a = np.array([np.nan if v is None else v for v in flat], dtype=np.float64).reshape(a.shape)
    elif a.size and a.dtype.kind not in "iuf":
        raise ValueError(f"{what} holds values that are not numbers")
    if a.size and a.ndim != ndim:
        raise ValueError(f"{what} is not {'a list' if ndim == 1 else 'a table'} of numbers")
    return a.astype(np.float64)


def _stored_kinds(kinds: Any, n_categories: Any) -> list[str]:
    """A stored design's column kinds, checked against its category counts."""
    if not (isinstance(kinds, list) and all(k in ("numeric", "categorical", "unused") for k in kinds)):
        raise ValueError(f"kinds is {shown(kinds)}, not a list of numeric, categorical and unused")
    if not (isinstance(n_categories, list) and len(n_categories) == len(kinds)
            and all(type(n) is int and n >= 0 for n in n_categories)):
        raise ValueError(f"n_categories is {shown(n_categories)}, not a count of categories per column")
    return kinds


def _standardisation(d: dict[str, Any], width: int) -> tuple[np.ndarray, np.ndarray]:
    """A stored design's centres and spreads, ``width`` of each, the spreads positive (one
    of 0 divided by zero; a negative one turned every effect round).

    A null (NaN) is a statistic that overflowed in a model stored before 2026-11-28, for a
    feature near the float limit: read as training now writes it (centre 0, the largest
    spread), a column about zero."""
    center, spread = _stored_numbers(d["center"], "center"), _stored_numbers(d["spread"], "spread")
    if not len(center) == len(spread) == width:
        raise ValueError(f"center and spread hold {len(center)} and {len(spread)} values for {width} columns")
    overflowed = np.isnan(center) | np.isnan(spread)
    if overflowed.any():
        center = np.where(overflowed, 0.0, center)
        spread = np.where(overflowed, np.finfo(np.float64).max, spread)
    if not (np.all(np.isfinite(center)) and np.all(spread > 0) and np.all(np.isfinite(spread))):
        raise ValueError("center must be finite and spread positive")
    return center, spread


def _atoms_from_json(values: Any) -> np.ndarray:
    # Numbers only: numpy would read true as 1.0 and "3" as 3.0, and serve a damaged file.
    if not (isinstance(values, list) and len(values) <= MAX_ATOMS
            and all(type(v) in (int, float) for v in values)):
        raise ValueError(f"atoms must be a list of at most {MAX_ATOMS} numbers")
    atoms = np.asarray(values, dtype=np.float64)
    if not (np.all(np.isfinite(atoms)) and np.all(atoms > 0) and np.all(np.diff(atoms) > 0)):
        raise ValueError("atoms must be increasing positive runtimes")
    return atoms


# --------------------------------------------------------------------------- parameters

_EVERY = frozenset(ALGORITHMS)
_LINEAR = frozenset({"auto", "linear"})
_BOOSTED = frozenset({"auto", "lightgbm"})


def _flag(v: Any) -> bool:
    return isinstance(v, bool)


def _number(lo: float, hi: float, whole: bool = False, open_lo: bool = False) -> Any:
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (whole and not isinstance(v, int)):
            return False
        return (lo < v if open_lo else lo <= v) and v <= hi

    return ok


# The service's own model parameters: the algorithms that use each, what it must be, and the
# check. The bounds keep one request from asking for a design or a fit of absurd size.
MODEL_PARAMS: dict[str, tuple[frozenset[str], str, Any]] = {
    "alpha": (_LINEAR, "a number in (0, 1e6]", _number(0.0, 1e6, open_lo=True)),
    "huber_delta": (_LINEAR, "a number in (0, 100]", _number(0.0, 100.0, open_lo=True)),
    "redescend": (_LINEAR, "true or false", _flag),
    "max_levels": (_LINEAR, "a whole number in [0, 64]", _number(0, 64, whole=True)),
    "hinges": (_LINEAR, "a whole number in [0, 16]", _number(0, 16, whole=True)),
    "regimes": (_LINEAR | _BOOSTED, "true or false", _flag),
    "num_boost_round": (_BOOSTED, "a whole number in [1, 10000]", _number(1, 10_000, whole=True)),
    "lgb_huber_delta": (_BOOSTED, "a number in (0, 100]", _number(0.0, 100.0, open_lo=True)),
    "lgb_linear_base": (_BOOSTED, "true or false", _flag),
    "shape": (_EVERY, "true or false", _flag),
    "shape_alpha": (_EVERY, "a number in (0, 1e6]", _number(0.0, 1e6, open_lo=True)),
    "shape_hinges": (_EVERY, "a whole number in [0, 16]", _number(0, 16, whole=True)),
    "shape_location": (_BOOSTED, "true or false", _flag),
    "quantile_shape": (_EVERY - {"empirical"}, "true or false", _flag),
    "drop_features": (_EVERY - {"lightgbm"}, "true or false", _flag),
    "weighted_location": (_EVERY, "true or false", _flag),
}

# LightGBM parameters a request may set: those of fitting a regression's trees. The others
# read or write files (a path from a request must not reach the file system), use the
# network or a device, belong to other tasks (ranking, classification, prediction), or are
# the service's to set (num_iterations is num_boost_round; early stopping, features).
LIGHTGBM_PARAMS = frozenset({
    "bagging_fraction", "bagging_freq", "bagging_seed", "bin_construct_sample_cnt", "boost_from_average", "boosting",
    "cat_l2", "cat_smooth", "cegb_penalty_feature_coupled", "cegb_penalty_feature_lazy", "cegb_penalty_split",
    "cegb_tradeoff", "data_random_seed", "data_sample_strategy", "deterministic", "drop_rate", "drop_seed",
    "enable_bundle", "extra_seed", "extra_trees", "fair_c", "feature_fraction", "feature_fraction_bynode",
    "feature_fraction_seed", "feature_pre_filter", "force_col_wise", "force_row_wise", "histogram_pool_size",
    "interaction_constraints", "is_enable_sparse", "lambda_l1", "lambda_l2", "learning_rate", "linear_lambda",
    "linear_tree", "max_bin", "max_bin_by_feature", "max_cat_threshold", "max_cat_to_onehot", "max_delta_step",
    "max_depth", "max_drop", "metric", "min_data_in_bin", "min_data_in_leaf", "min_data_per_group",
    "min_gain_to_split", "min_sum_hessian_in_leaf", "monotone_constraints", "monotone_constraints_method",
    "monotone_penalty", "num_grad_quant_bins", "num_leaves", "objective", "other_rate", "path_smooth",
    "poisson_max_delta_step", "quant_train_renew_leaf", "reg_sqrt", "seed", "skip_drop", "stochastic_rounding",
    "top_rate", "tweedie_variance_power", "uniform_drop", "use_missing", "use_quantized_grad", "verbosity",
    "xgboost_dart_mode", "zero_as_missing",
})
# The location is a regression of log-runtime: objectives and validation metrics of that task only.
# (``num_threads`` is the service's: one request's 10,000 threads stalled every training.)
_REGRESSION_WORDS = frozenset({
    "regression", "regression_l2", "l2", "mean_squared_error", "mse", "l2_root", "root_mean_squared_error", "rmse",
    "regression_l1", "l1", "mean_absolute_error", "mae", "huber", "fair", "quantile", "mape",
    "mean_absolute_percentage_error",
})
# Parameters with one value per feature: checked when the model is fitted, on its own columns.
_PER_FEATURE_LGB_PARAMS = frozenset({"cegb_penalty_feature_coupled", "cegb_penalty_feature_lazy",
                                     "interaction_constraints", "max_bin_by_feature", "monotone_constraints"})


def check_params(params: dict[str, Any], algorithm: str) -> None:
    """Raise ``ValueError`` naming the first of ``params`` that ``algorithm`` does not take.

    The service's own parameters must be used by the algorithm and within their
    range; any other name must be a LightGBM parameter the service lets a request
    set (LightGBM's aliases included), with a value LightGBM accepts, and the
    algorithm must be one that can use LightGBM. Nothing is silently ignored.
    """
    foreign = {}
    for name, value in params.items():
        spec = MODEL_PARAMS.get(name)
        if spec is None:
            foreign[name] = value
            continue
        used_by, what, ok = spec
        if algorithm not in used_by:
            raise ValueError(f"'{name}' is not used by algorithm '{algorithm}' "
                             f"(only by {', '.join(a for a in ALGORITHMS if a in used_by)})")
        if not ok(value):
            raise ValueError(f"'{name}' must be {what}, got {shown(value)}")
    if foreign:
        _check_lightgbm_params(foreign, algorithm)


def _check_lightgbm_params(params: dict[str, Any], algorithm: str) -> None:
    import lightgbm as lgb

    canonical = _lightgbm_aliases()
    for name in params:
        base = canonical.get(name)
        if base is None:
            raise ValueError(f"unknown parameter '{name}': neither the service's ({', '.join(MODEL_PARAMS)}) "
                             "nor LightGBM's")
        if base == "num_iterations":
            raise ValueError(f"'{name}': the number of boosting rounds is 'num_boost_round'")
        if base not in LIGHTGBM_PARAMS:
            raise ValueError(f"'{name}' is a LightGBM parameter that a training request cannot set (it reads or "
                             "writes files, uses the network or a device, belongs to another task, or is set by "
                             "the service)")
        if algorithm not in _BOOSTED:
            raise ValueError(f"'{name}' is a LightGBM parameter; algorithm '{algorithm}' does not use LightGBM "
                             "('lightgbm' and 'auto' do)")
        if base in ("objective", "metric"):
            if not (isinstance(params[name], str) and params[name] in _REGRESSION_WORDS):
                raise ValueError(f"'{name}' must be a regression {base} of the log-runtime "
                                 f"({', '.join(sorted(_REGRESSION_WORDS))}), got {shown(params[name])}")
        value = params[name]
        if isinstance(value, int) and not isinstance(value, bool) and not -2**31 <= value < 2**31:
            # LightGBM reads an integer parameter into 32 bits: 2**31 came back as "(max_bin) > (1)".
            raise ValueError(f"'{name}' {value} is beyond the 32-bit integers LightGBM reads "
                             "(write it as a decimal number, 1e12, where a real number is meant)")
        if not _lightgbm_value(params[name]):
            # LightGBM joins parameters into one "key=value key=value" string: a value with a
            # space or an '=' in it would smuggle in another parameter (a file to read, say).
            raise ValueError(f"'{name}' must be a number, true or false, a word (letters, digits, '_', '-', '.'), "
                             f"or a list of numbers (or of lists of numbers), got {shown(params[name])}")
    # Values: one round on a few rows, so that a bad one is refused now, not only if LightGBM is chosen.
    scalar = {k: v for k, v in params.items() if canonical[k] not in _PER_FEATURE_LGB_PARAMS}
    if not scalar:
        return
    X = np.arange(40, dtype=np.float64).reshape(20, 2)
    trial = {**LightGBMLocation.DEFAULT_PARAMS, **scalar, "num_threads": 1, "verbosity": -1}
    try:
        with _native_stderr_silenced():
            lgb.train(trial, lgb.Dataset(X, X[:, 0], params={"verbosity": -1}), 1)
    except (lgb.basic.LightGBMError, TypeError, ValueError) as exc:
        message = str(exc).split(" at /")[0].strip()  # LightGBM's checks end with a source file path
        raise ValueError(f"LightGBM refuses {', '.join(map(repr, scalar))}: {message}") from None


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block: LightGBM writes "[LightGBM] [Fatal] ..."
    there from C++ (its logger callback does not get fatal messages) before it raises the
    same message, which the caller reports; the CLI printed both. The descriptor is the
    process's: this runs only where a training request's parameters are checked, in the
    training worker process or the CLI, never beside a serving thread."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _check_interaction_constraints(groups: Any, n_features: int) -> None:
    """LightGBM aborts the process on a feature number beyond the data's: refused here instead."""
    if groups is None:
        return
    if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
        raise ValueError(f"'interaction_constraints' must be a list of lists of feature numbers, got {shown(groups)}")
    for g in groups:
        for i in g:
            if isinstance(i, bool) or not isinstance(i, (int, float)) or i != int(i) or not 0 <= i < n_features:
                raise ValueError(f"'interaction_constraints' names feature {shown(i)}; the model has {n_features} "
                                 f"feature column(s), numbered 0 to {n_features - 1}")


_LGB_WORD = re.compile(r"[A-Za-z0-9_.+-]{1,64}")


def _lightgbm_value(v: Any, depth: int = 0) -> bool:
    """A value LightGBM reads as one token: numbers, booleans, plain words, lists of numbers."""
    if isinstance(v, bool):
        return True
    if isinstance(v, (int, float)):
        return math.isfinite(v)
    if isinstance(v, str):
        return _LGB_WORD.fullmatch(v) is not None
    if isinstance(v, (list, tuple)) and depth < 2 and len(v) <= 10_000:
        return all(not isinstance(x, str) and _lightgbm_value(x, depth + 1) for x in v)
    return False


def per_feature_param_problem(params: dict[str, Any], columns: Sequence[str]) -> tuple[str, str] | None:
    """The first of LightGBM's per-feature lists in ``params`` (``monotone_constraints`` and
    the like) whose length is not the model's number of columns, with what is wrong; None if
    none. Derived columns count: a list for the traces' own features alone was a
    "Check failed" from LightGBM's C++, which did not say that a derived column was the
    one it missed."""
    for name, value in params.items():
        canonical = None if name in MODEL_PARAMS else _lightgbm_aliases().get(name, name)
        if canonical not in _PER_FEATURE_LGB_PARAMS or canonical == "interaction_constraints":
            continue
        if isinstance(value, list):
            size = len(value) or None  # [] is LightGBM's "none given"
        elif isinstance(value, str):
            size = len(value.split(",")) if value.strip() else None
        else:
            size = 1 if isinstance(value, (int, float)) else None  # LightGBM reads a number as a list of one
        if size is not None and size != len(columns):
            shown_columns = ", ".join(columns[:20]) + (", ..." if len(columns) > 20 else "")
            derived = ("; first_of_shape is derived from the traces' timestamps ('first_of_shape': false "
                       "in the config leaves it out)" if "first_of_shape" in columns else "")
            return name, (f"'{name}' has {size} value(s), one per feature column, and the model has "
                          f"{len(columns)} ({shown_columns}){derived}")
    return None


def _params_without_column(params: dict[str, Any], j: int) -> dict[str, Any]:
    """``params`` for a model of the same columns but column ``j``: LightGBM's per-feature
    lists lose their entry ``j``, and ``interaction_constraints`` lose feature ``j`` and
    number the features after it one lower."""
    out = dict(params)
    for name, value in params.items():
        canonical = None if name in MODEL_PARAMS else _lightgbm_aliases().get(name, name)
        if canonical == "interaction_constraints":
            if isinstance(value, list):
                groups = []
                for group in value:
                    if isinstance(group, list):
                        group = [i - 1 if isinstance(i, int) and i > j else i for i in group if i != j]
                    if group != []:
                        groups.append(group)
                out[name] = groups
        elif canonical not in _PER_FEATURE_LGB_PARAMS:
            continue
        elif isinstance(value, list) and len(value) > j:
            out[name] = value[:j] + value[j + 1:]
        elif isinstance(value, str) and len(value.split(",")) > j:
            parts = value.split(",")
            out[name] = ",".join(parts[:j] + parts[j + 1:])
    return out


def lightgbm_errors() -> tuple[type[Exception], ...]:
    """LightGBM's error type (bad ``params`` such as ``num_leaves: -3``), once LightGBM is loaded."""
    lgb = sys.modules.get("lightgbm")
    return (lgb.basic.LightGBMError,) if lgb is not None else ()


def _lightgbm_aliases() -> dict[str, str]:
    """Every LightGBM parameter name and alias, mapped to its canonical name."""
    global _LGB_ALIASES
    if _LGB_ALIASES is None:
        from lightgbm.basic import _ConfigAliases  # the library's own table (from its C API)

        table = _ConfigAliases._get_all_param_aliases()
        _LGB_ALIASES = {alias: name for name, aliases in table.items() for alias in (name, *aliases)}
    return _LGB_ALIASES


_LGB_ALIASES: dict[str, str] | None = None
