"""Predicted runtime distributions, vectorised over a batch of tasks.

Every model in this package predicts, per task, a location ``m`` and a scale
``s`` on the log-runtime axis; the runtime is ``exp(m + s * Z)``. ``Z`` follows
a calibrated *score distribution* shared by all tasks of a model, stored as a
quantile function ``Q`` on a grid, optionally reshaped per task:

* without a shape model every task's ``Z`` has the quantile function ``Q``;
* with one, each task carries its own CDF values ``F_i(c_k)`` at a few knots
  ``c_k = Q(l_k)``; task ``i``'s quantile function is ``Q(phi_i(tau))`` where
  ``phi_i`` is the piecewise-linear map through ``(F_i(c_k), l_k)`` (and (0, 0),
  (1, 1)). Between two knots a task's ``Z`` is distributed like the shared
  ``Z`` between them, only the mass of each segment changes. That is how a
  task's chance of landing in a slow mode (a cold start, an aborted request)
  can depend on its features.

Quantiles at any level follow by interpolation, so they never cross and are
always positive. Moments are exact sums over the segments (precomputed
per segment, so a batch costs O(tasks x knots)), so ``expect`` and ``error``
are the mean and standard deviation of that distribution rather than summaries
of a few quantiles: of the distribution over the observed scores' range (the
mass beyond the most extreme score sits on it; the extrapolated tail gives
quantiles, not moments), capped at the log bounds as the quantiles are. Batch
totals are the distribution of the sum of independent tasks: a convolution on a
grid (FFT), exact for a short queue and for the tasks of a long one that matter
most; the many small ones are binned by mean and spread, and each bin's sum is that many
draws from its tasks' mixture (first three cumulants exact, slow modes kept).

A batch whose tasks two models answer (first runs of an input shape and repeats, each
with a model of its own) is a :class:`MixedDistribution`: each task keeps its model's
distribution, and the total sums all of them in one convolution. Tasks known only by
stored quantiles (a lookup table's records) are a :class:`StoredQuantileDistribution`,
summed the same way.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri  # scipy.special: loaded by the service anyway

# Batch totals, convolved on a grid of _SUM_GRID cells: every task of a queue of up to
# _EXACT_SUM_MAX_TASKS is a row of the FFT; of a longer queue, those with the largest
# variance (at most _LONG_QUEUE_OWN_ROWS, each with at least _EXACT_SUM_MIN_SHARE of the
# total variance), and the others are binned by mean and spread: at most _SUM_BINS bins,
# each at least _SUM_BIN_WIDTH wide in log mean and _SUM_BIN_CV_WIDTH in log coefficient of
# variation (_bins). A task is discretised with _SUM_ATOMS nodes; a binned one with fewer
# (TaskDistributions._sum_rows).
_EXACT_SUM_MAX_TASKS = 128
# A group of a queue's prefixes sharing one grid (``prefix_totals``): from its first to its last,
# the variance grows at most this many times (the standard deviation twice).
_PREFIX_GROUP_VAR = 4.0
_LONG_QUEUE_OWN_ROWS = 64
_EXACT_SUM_MIN_SHARE = 0.005
_SUM_BINS = 64
_SUM_BIN_WIDTH = 0.05
_SUM_BIN_CV_WIDTH = 0.25
_SUM_BIN_CV_FLOOR = 0.01  # a coefficient of variation below it: alike, nearly constant
_BIN_MIN_ATOMS = 16
# A task's bin across which its runtime grows by more than this factor (log) is split in _JUMP_SPLIT.
_JUMP_LOG_RATIO = math.log(2.0)
_JUMP_SPLIT = 8
_JUMP_MAX_BINS = 64  # split, at most (the tasks share one set of bins)
_BIN_SAMPLE = 512
_SUM_GRID = 2048
# The grid grows (to at most this many cells) to reach the far tail of one task: no mass
# of the sum's far tail wraps around into its low end. Past that, cells widen up to 4x.
_SUM_GRID_MAX = 8192
# Cells are halved while rounding the tasks' values to them changes the variance of their
# sum by more than _ROUNDING_VAR_ERROR, down to this many cells in the window.
_SUM_GRID_RESOLVE_MAX = 32768
_ROUNDING_VAR_ERROR = 0.005
_WRAP_MASS = 1e-5
# A total whose 1% quantile lies within _LOW_END_CELLS cells of the least it can be, or
# within _BULK_CELLS of its median (a far tail stretched the grid), is found again below
# its median on a fine grid of _LOW_END_GRID cells.
_LOW_END_CELLS = 64
_BULK_CELLS = 16
_LOW_END_GRID = 2048
# Then, while more than _ZOOM_LEVEL of the total lies within _ZOOM_CELLS cells of that
# least (a mode of near-zero runtimes, or tasks spanning decades), the grid is zoomed into
# those cells: each pass about 120 times finer, at most _LOW_END_PASSES passes in all.
_ZOOM_CELLS = 16
_ZOOM_LEVEL = 1e-3
_LOW_END_PASSES = 6
_SUM_ATOMS = 512
_SUM_NODES: dict[tuple[int, bool], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
# With a shared factor, the widest tasks (at most this many) bound the low end of the sum.
_BOUND_TASKS = 8
# The level a total's lower bound takes each task's least value at: where quantile functions stop.
_LEAST_LEVEL = 1e-12
# The least 1 - tau a score's level is read at: 1 less the highest level (1 - 1e-12, as
# ScoreDistribution.quantile clips levels), so that a share worked out apart ends where tau does.
_LEAST_ABOVE = 1 - (1 - 1e-12)
_MOST = [1.0]  # the level of the most a task can take, which bounds a total from above
_BOUND_LEVELS: np.ndarray | None = None
# Lower bounds of a total's quantiles with the shared factor: shares of a level's budget
# (-log(1 - p)) left to the factor, the rest to one task.
_FLOOR_FACTOR_SHARES = np.array([0.02, 0.1, 0.3, 0.7, 0.9])
# Moment quadrature: about this many probability nodes in all, split over segments; tasks
# summed by quadrature (clipped by the log bounds, or with a spread) this many at a time.
_MOMENT_NODES = 2048
_QUADRATURE_CHUNK = 256
# The moments take at least the levels from this to 1 minus it, extrapolated past the
# training scores where those stop short (fewer than 19 of them): with 4 or 8 rows, the
# mass beyond the extreme scores (1/(n+1) a side) laid on them left `error` a third of
# the spread the quantiles give, and up to all of a model's tasks answered moments that no
# distribution with those quantiles has (benchmarks/queue_totals.py --moments).
_MOMENT_BODY = 0.05
# Nodes of a task with a spread, whose moments are a quadrature per task where its scale or
# shape is its own: against 2,048, the mean within 0.04% and the sd within 0.2% for the
# unseen-category tasks of a model with a shape model, at a fifth of the time (100,000 of
# them 3.3 s, against 0.7 s for a known category).
_SPREAD_NODES = 512
# How far a task's spread term reaches, in its sds, where the caps look (see _capped_rows):
# at the level 1 - 1e-6 (a millionth of the mass lies above it; the moment nodes' top, 6.5
# sds, sent nearly every such task to the clipped quadrature: a single prediction took 213
# µs, not 32), and at the level 0.001 of the lower cap.
_SPREAD_TOP = 4.75
_SPREAD_LOW = -3.1
# Heteroscedastic moments: segment tables on a log-scale grid with this step, over
# log s in [-_LOG_SCALE_REACH, _LOG_SCALE_REACH].
_LOG_SCALE_STEP = 0.02
_LOG_SCALE_REACH = 3.0
_LOG_SCALE_POINTS = int(round(2 * _LOG_SCALE_REACH / _LOG_SCALE_STEP)) + 1
# Log-runtimes a quantile may take when nothing narrower is known: exp stays finite.
LOG_BOUNDS = (-700.0, 700.0)


# The outer scores a tail's slope is estimated from, at the least (when there are as many).
_TAIL_POINTS = 8
# The steepest a task's upper tail rises past the highest training score, in log runtime
# per unit of log tail probability: a Pareto tail of index 2, whose mean is finite (its
# variance only just not). A steeper slope is outer scores that straddle a slow mode's start
# (3 fast runs and 5 of a 300x slower mode among 400 gave 1.53, an index of 0.65, whose
# mean is infinite): summed over a queue of 20,000 tasks, such a tail put the total's
# median at 3.5 times its expect. Capped per task, in log runtime: a task's scale
# multiplies the scores' slope.
_TAIL_SLOPE_MAX = 0.5


def row_dot(a: Any, b: np.ndarray) -> np.ndarray:
    """``a @ b``, each row of ``a`` summed on its own, in the same order whatever the other rows.

    BLAS takes a row through kernels that depend on how many rows there are and where it
    falls among them: on an AVX-512 machine a task's quantiles moved by an ulp between a
    batch of 10 and one of 16. A task's answer must not depend on the batch it came in.
    (A SciPy CSR matrix already sums each row on its own.)"""
    if not isinstance(a, np.ndarray):
        return a @ b
    if a.ndim != 2 or np.ndim(b) not in (1, 2) or a.shape[1] != np.shape(b)[0]:
        # As matmul refuses them: einsum would broadcast a length of 1 (a damaged model's
        # one coefficient times every column).
        raise ValueError(f"row_dot: shapes {a.shape} and {np.shape(b)} do not match")
    return np.einsum("ij,j...->i...", np.ascontiguousarray(a), b)


def row_inner(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each row's ``a[i] @ b[i]``, as :func:`row_dot` sums it. einsum walks the arrays in
    their memory's order, and a fancy-indexed array of two rows came out column-major: the
    row's sum went in another order (a task's capped mean moved by an ulp)."""
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"row_inner: shapes {a.shape} and {b.shape} differ")
    return np.einsum("ij,ij->i", np.ascontiguousarray(a), np.ascontiguousarray(b))


def _robust_slope(x: np.ndarray, z: np.ndarray) -> float:
    """Siegel's repeated-median slope of |z| on |x|: for each point the median of its
    slopes to the others, then the median of those. Half the points can be outliers."""
    if len(x) < 2:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        slopes = np.abs(z[:, None] - z[None, :]) / np.abs(x[:, None] - x[None, :])
    np.fill_diagonal(slopes, np.nan)
    # Each row's median of its slopes but the NaNs (its own, and 0/0 for a repeated point):
    # np.nanmedian, which on rows this short goes through masked arrays at 4x the cost.
    ordered = np.sort(slopes, axis=1)  # NaNs last
    k = len(x) - np.isnan(slopes).sum(axis=1)
    rows = np.arange(len(x))
    with np.errstate(invalid="ignore"):
        medians = np.where(k > 0, 0.5 * (ordered[rows, np.maximum(k - 1, 0) // 2] + ordered[rows, k // 2]), np.nan)
    return float(np.median(medians))


@dataclass(frozen=True, eq=False)
class ScoreDistribution:
    """Quantile function of the standardised log-residual ``Z`` (levels -> values)."""

    levels: np.ndarray
    values: np.ndarray
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_scores(cls, scores: np.ndarray, max_points: int = 512) -> "ScoreDistribution":
        """Empirical quantile function with conformal plotting positions.

        The i-th smallest of n exchangeable scores is exceeded by a new score with
        probability (n + 1 - i) / (n + 1); placing it at level i / (n + 1) makes
        every level's coverage right on new data, not just on the training rows.
        """
        z = np.sort(np.asarray(scores, dtype=np.float64))
        z = z[np.isfinite(z)]
        n = len(z)
        if n == 0:
            raise ValueError("no scores to build a distribution from")
        levels = np.arange(1, n + 1) / (n + 1)
        if n > max_points:
            # Keep the extreme order statistics, thin the middle.
            grid = np.unique(np.concatenate([levels[:8], np.linspace(levels[0], levels[-1], max_points - 16), levels[-8:]]))
            z = np.interp(grid, levels, z)
            levels = grid
        return cls(levels, z)

    def quantile(self, tau: np.ndarray, above: np.ndarray | None = None) -> np.ndarray:
        """Z's quantiles at levels ``tau``; ``above``, where given, is ``1 - tau`` worked out
        without taking it from 1 (a shaped task's level, mapped onto Z's: near 1, ``1 - tau``
        kept an ulp of ``tau`` as its error, which the far tail read off its log magnified,
        see :func:`_upper_share`)."""
        tau = np.clip(np.asarray(tau, dtype=np.float64), 1e-12, 1 - 1e-12)
        p, z = self.levels, self.values
        out = np.interp(tau, p, z)
        if len(p) >= 2:
            # Beyond the observed scores, continue with an exponential tail fitted
            # to the outer part of each side instead of clamping to the extreme.
            slope_lo, slope_hi = self._tail_slopes()
            hi = tau > p[-1]
            if hi.any():
                left = 1 - tau[hi] if above is None else np.maximum(np.asarray(above, dtype=np.float64)[hi], _LEAST_ABOVE)
                out[hi] = z[-1] + slope_hi * (np.log(1 - p[-1]) - np.log(left))
            lo = tau < p[0]
            if lo.any():
                out[lo] = z[0] - slope_lo * (np.log(p[0]) - np.log(tau[lo]))
        return out

    def quantile_at(self, levels: tuple[float, ...]) -> np.ndarray:
        """``quantile`` for a small tuple of levels, cached: requests reuse a few level sets."""
        key = ("q", levels)
        got = self._cache.get(key)
        if got is None:
            got = self.quantile(np.asarray(levels, dtype=np.float64))
            got.setflags(write=False)
            if len(self._cache) < 256:
                self._cache[key] = got
        return got

    def _memo(self, key: Any, compute: Callable[[], Any], limit: int | None = 256) -> Any:
        """``compute()``, kept under ``key`` while the cache holds fewer than ``limit`` entries (None: always)."""
        got = self._cache.get(key)
        if got is None:
            got = compute()
            if limit is None or len(self._cache) < limit:
                self._cache[key] = got
        return got

    def highest_level(self) -> float:
        """The highest level of the grid, as a plain float: past it ``quantile_one`` reads the far tail."""
        return self._memo("lists", lambda: (self.levels.tolist(), self.values.tolist()))[0][-1]

    def quantile_one(self, tau: float, above: float | None = None) -> float:
        """``quantile`` of one level (and its ``above``), in plain floats."""
        p, z = self._memo("lists", lambda: (self.levels.tolist(), self.values.tolist()))
        if len(p) < 2:
            return z[0]
        tau = min(max(tau, 1e-12), 1 - 1e-12)
        if tau > p[-1]:
            left = 1 - tau if above is None else max(above, _LEAST_ABOVE)
            return z[-1] + self._tail_slopes()[1] * (math.log(1 - p[-1]) - math.log(left))
        if tau < p[0]:
            return z[0] - self._tail_slopes()[0] * (math.log(p[0]) - math.log(tau))
        k = min(bisect.bisect_right(p, tau), len(p) - 1)  # levels are strictly increasing
        p0, p1 = p[k - 1], p[k]
        return z[k - 1] + (tau - p0) / (p1 - p0) * (z[k] - z[k - 1])

    def quantile_list(self, levels: tuple[float, ...]) -> list[float]:
        """``quantile_at`` as a list of floats (cached)."""
        return self._memo(("qlist", levels), lambda: self.quantile_at(levels).tolist())

    def _tail_slopes(self) -> tuple[float, float]:
        """Slopes of the exponential tails beyond the extreme scores, per unit of log tail probability.

        Each is a repeated-median slope (robust to outliers) through the outer
        scores: those within four times the extreme's tail probability, and at least
        ``_TAIL_POINTS`` of them. A secant through the extreme score alone carried
        every level beyond one far outlier among a few dozen runs to the runtime
        cap; the median follows the other outer scores, ties included.
        """
        got = self._cache.get("tails")
        if got is None:
            p, z = self.levels, self.values
            n = len(p)
            k = max(min(int(np.searchsorted(p, 1 - 4 * (1 - p[-1]))), n - _TAIL_POINTS), 0)
            hi = _robust_slope(-np.log1p(-p[k:]), z[k:])
            k = min(max(int(np.searchsorted(p, 4 * p[0], side="right")), _TAIL_POINTS), n)
            lo = _robust_slope(-np.log(p[:k]), z[:k])
            got = self._cache["tails"] = (lo, hi)
        return got

    def upper_tail(self) -> tuple[float, float]:
        """The highest training score, and the largest scale whose task's tail past it rises
        as extrapolated: a larger scale multiplies the excess of Z over that score by this
        instead (inf where the tail is flat)."""
        got = self._cache.get("upper_tail")
        if got is None:
            slope = self._tail_slopes()[1] if len(self.levels) >= 2 else 0.0
            got = self._cache["upper_tail"] = (float(self.values[-1]), _TAIL_SLOPE_MAX / slope if slope > 0 else math.inf)
        return got

    def log_runtimes(self, location: Any, scale: Any, z: Any) -> Any:
        """``location + scale * z``, the log runtimes of scores ``z`` (arrays that broadcast),
        each task's tail past the highest training score rising at most ``_TAIL_SLOPE_MAX``
        per unit of log tail probability (an unseen category's spread term, added after,
        is normal: the mean stays finite)."""
        out = location + scale * z
        z_top, most = self.upper_tail()
        over = np.maximum(scale - most, 0.0)
        if not np.any(over):
            return out
        return out - over * np.maximum(z - z_top, 0.0)

    def log_runtime_one(self, location: float, scale: float, z: float) -> float:
        """``log_runtimes`` of one score, in plain floats."""
        z_top, most = self.upper_tail()
        if z <= z_top or scale <= most:
            return location + scale * z
        return location + scale * z_top + most * (z - z_top)

    # ------------------------------------------------------------------ moments

    def center(self) -> float:
        got = self._cache.get("center")
        if got is None:
            got = self._cache["center"] = float(np.interp(0.5, self.levels, self.values))
        return got

    def segment_nodes(self, knots: tuple[float, ...], nodes: int = _MOMENT_NODES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Quadrature nodes on the probability axis for the segments between knots.

        Returns ``(z, weight, segment)``: node values of ``Z``, their probability
        mass, and the index of the segment (0 .. len(knots)) they belong to. Each
        segment is cut into equal-probability bins; the outermost bins are cut
        again geometrically so that the tails' contribution is not lost. About
        ``nodes`` in all.
        """
        key = ("nodes", knots, nodes)
        got = self._cache.get(key)
        if got is not None:
            return got
        edges = np.concatenate([[0.0], np.asarray(knots, dtype=np.float64), [1.0]])
        per = max(8, nodes // (len(edges) - 1))
        us, ws, segs = [], [], []
        for k in range(len(edges) - 1):
            a, b = edges[k], edges[k + 1]
            e = np.linspace(a, b, per + 1)
            parts = [e]
            if a == 0.0:
                first = e[1]
                parts.append(first * 4.0 ** -np.arange(1, 12))
            if b == 1.0:
                last = 1 - e[-2]
                parts.append(1 - last * 4.0 ** -np.arange(1, 12))
            e = np.unique(np.concatenate(parts))
            e[0], e[-1] = a, b
            us.append((e[:-1] + e[1:]) / 2)
            ws.append(np.diff(e))
            segs.append(np.full(len(e) - 1, k))
        u = np.concatenate(us)
        self._cache[("node_levels", knots, nodes)] = u
        # Moments use the scores as observed: the mass beyond the most extreme score
        # sits on it. An extrapolated tail may hold quantiles, not mean and variance,
        # where a 1-in-a-million value would otherwise dominate: integrated (to the
        # 100x cap), it made a task's sd 1.14x the true one under lognormal noise of
        # sigma 1 and 8x under Pareto(2.5) noise, and long queues' totals too wide
        # (README, Modelling). Few scores leave the body's ends to the tails: those
        # ends are taken (moment_range).
        u = np.clip(u, *self.moment_range())
        got = (self.quantile(u), np.concatenate(ws), np.concatenate(segs))
        self._cache[key] = got
        return got

    def moment_range(self) -> tuple[float, float]:
        """The levels of ``Z`` the moments take: the training scores', and at least
        ``_MOMENT_BODY`` to ``1 - _MOMENT_BODY``; the mass beyond sits on the ends."""
        return min(float(self.levels[0]), _MOMENT_BODY), max(float(self.levels[-1]), 1.0 - _MOMENT_BODY)

    def segment_node_levels(self, knots: tuple[float, ...], nodes: int = _MOMENT_NODES) -> np.ndarray:
        """The levels of ``Z`` at the middles of ``segment_nodes``' bins, before they are
        kept within the observed scores' levels."""
        key = ("node_levels", knots, nodes)
        if key not in self._cache:
            self.segment_nodes(knots, nodes)
        return self._cache[key]

    def log_sd(self) -> float:
        """Standard deviation of ``Z`` over the observed scores' range (as the moments take it)."""
        got = self._cache.get("log_sd")
        if got is None:
            z, w, _ = self.segment_nodes(())
            mean = float(z @ w)
            got = self._cache["log_sd"] = math.sqrt(max(float((z - mean) ** 2 @ w), 0.0))
        return got

    def segment_moments(self, knots: tuple[float, ...], scale: float) -> np.ndarray:
        """Per segment, the mass-weighted sums of ``D**j`` (j = 1..4), ``D = exp(s (Z - z0)) - 1``.

        Shape (segments, 4); dividing by a segment's mass gives its conditional moments.
        Cached: a homoscedastic model asks for the same scale on every prediction.
        """
        key = ("moments", knots, scale)
        got = self._cache.get(key)
        if got is not None:
            return got
        z, w, seg = self.segment_nodes(knots)
        # (Past the highest score, where few scores leave the body to the tail, it rises as
        # a task's quantiles do: log_runtimes.)
        # (Infinite where a power overflows, as segment_moment_table's entries: a task at such
        # a scale reaches past the log bounds and takes the quadrature's moments.)
        with np.errstate(over="ignore", invalid="ignore"):
            d = np.expm1(self.log_runtimes(-scale * self.center(), scale, z))
            powers = np.stack([d, d * d, d * d * d, (d * d) * (d * d)], axis=1) * w[:, None]
        out = np.stack([np.bincount(seg, weights=p, minlength=len(knots) + 1) for p in powers.T], axis=1)
        if len(self._cache) < 64:
            self._cache[key] = out
        return out

    def central_factors(self, scale: float) -> tuple[float, float, float, float]:
        """Mean of ``D`` and central moments 2..4 of ``1 + D`` for the unshaped ``Z`` (cached)."""
        key = ("central", scale)
        got = self._cache.get(key)
        if got is None:
            raw = self.segment_moments((), scale)[0]
            with np.errstate(over="ignore", invalid="ignore"):  # (infinite raw moments: see above)
                mu = raw[0]
                c2 = max(raw[1] - mu**2, 0.0)
                c3 = raw[2] - 3 * mu * raw[1] + 2 * mu**3
                c4 = max(raw[3] - 4 * mu * raw[2] + 6 * mu**2 * raw[1] - 3 * mu**4, 0.0)
            got = (float(mu), float(c2), float(c3), float(c4))
            if len(self._cache) < 256:
                self._cache[key] = got
        return got

    def segment_moment_table(self, knots: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``segment_moments / s**j`` on a grid of ``log s``: (grid, table[grid, segment, j])."""
        key = ("table", knots)
        got = self._cache.get(key)
        if got is None:
            grid = np.arange(-_LOG_SCALE_REACH, _LOG_SCALE_REACH + _LOG_SCALE_STEP / 2, _LOG_SCALE_STEP)
            z, w, seg = self.segment_nodes(knots)
            s = np.exp(grid)[:, None]
            table = np.zeros((len(grid), len(knots) + 1, 4))
            # The grid reaches s = e^3: with scores 9 past the center (a heavy tail, t(3)
            # residuals), d**4 passes 1e308 from s = 18 on, and further out d**3, d**2 and d
            # do. Those entries are infinite, as the moments are (d**j <= (s d)**j, the raw
            # moment, for s >= 1). The mean and variance read only d and d**2, which
            # overflow where a task's highest score lies e^354 times past its median (such
            # a task of a model reaches past the model's log bounds, and takes the
            # quadrature's moments); the third and fourth moments feed no answer; and the
            # table is built whole, every scale, however few are asked (the warning came
            # from models whose tasks' scales are all below 1). So they are left infinite,
            # without a RuntimeWarning.
            with np.errstate(over="ignore"):
                d = np.expm1(self.log_runtimes(-s * self.center(), s, z[None, :])) / s  # (grid, nodes), ~ Z - z0 for small s
                # The nodes come segment by segment (segment_nodes): each segment's sum is one
                # slice's, all of them in one reduceat (a masked sum per segment and moment
                # took 85 ms of a model's first prediction, and of every training's end).
                # (A segment between equal knots has no node: its sums stay 0.)
                present = np.bincount(seg, minlength=len(knots) + 1) > 0
                starts = np.searchsorted(seg, np.flatnonzero(present))
                power = w[None, :] * d
                for j in range(4):
                    if j:
                        power = power * d
                    table[:, present, j] = np.add.reduceat(power, starts, axis=1)
            got = self._cache[key] = (grid, table)
        return got

    def segment_moments_list(self, knots: tuple[float, ...], scale: float) -> list[list[float]]:
        """``segment_moments`` as nested lists [j][segment] (cached alongside)."""
        return self._memo(("moments_list", knots, scale), lambda: self.segment_moments(knots, scale).T.tolist(), 64)

    def segment_moment_table_list(self, knots: tuple[float, ...]) -> tuple[float, list[list[list[float]]]]:
        """``segment_moment_table`` as (first grid point, nested lists [grid][j][segment])."""

        def compute():
            grid, table = self.segment_moment_table(knots)
            return float(grid[0]), table.transpose(0, 2, 1).tolist()

        return self._memo(("table_list", knots), compute, limit=None)

    def to_json(self) -> dict[str, Any]:
        return {"levels": self.levels.tolist(), "values": self.values.tolist()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ScoreDistribution":
        levels, values = d["levels"], d["values"]
        # Numbers only (numpy reads the string "NaN" as one); a stored quantile function
        # that is not one (levels out of order, values decreasing) served crossing quantiles.
        if not (isinstance(levels, list) and isinstance(values, list) and 1 <= len(levels) == len(values)
                and all(type(v) in (int, float) for v in levels + values)):
            raise ValueError("a score distribution needs as many levels as values, all of them numbers")
        p, z = np.asarray(levels, dtype=np.float64), np.asarray(values, dtype=np.float64)
        if not (np.all((p > 0) & (p < 1)) and np.all(np.diff(p) > 0) and np.all(np.isfinite(z)) and np.all(np.diff(z) >= 0)):
            raise ValueError("a score distribution's levels must increase within (0, 1), and its values with them")
        return cls(p, z)


def interval_levels(confidence_level: float) -> list[float]:
    """The two levels of the central interval holding ``confidence_level`` of the mass."""
    if not 0.0 <= confidence_level <= 1.0:  # NaN too: a reversed interval is no interval
        raise ValueError(f"confidence_level must lie in [0, 1], got {confidence_level!r}")
    a = (1.0 - confidence_level) / 2.0
    return [a, 1.0 - a]


def check_levels_in_unit_interval(levels: Any) -> None:
    """Raise ValueError unless every level lies in [0, 1] (a NaN level gave a NaN quantile,
    and one past the ends was clamped without a word)."""
    if isinstance(levels, (list, tuple)) and len(levels) <= 64:
        # A request's few levels: plain floats are checked in a fraction of numpy's call cost.
        for v in levels:
            if not 0.0 <= v <= 1.0:  # NaN too
                raise ValueError(f"quantile levels must lie in [0, 1], got {float(v)!r}")
        return
    arr = np.asarray(levels, dtype=np.float64)
    bad = ~((arr >= 0.0) & (arr <= 1.0))
    if bad.any():
        raise ValueError(f"quantile levels must lie in [0, 1], got {float(arr[bad][0])!r}")


class TaskDistributions:
    """What every batch of predicted task distributions offers: quantiles, intervals,
    moments and the distribution of the batch's total.

    A subclass gives ``__len__``, ``subset``, ``quantiles``, ``moments``,
    ``shared_log_sd`` and ``_node_values`` (its tasks discretised for a sum); the
    interval, mean and standard deviation and the total follow from them here.
    """

    shared_log_sd: float
    # Whether ``moments`` are those of the tasks' own quantile functions (a model's), not
    # figures stored beside a few of their quantiles (a lookup table's records).
    moments_are_own = True

    def __len__(self) -> int:
        raise NotImplementedError

    def subset(self, rows: np.ndarray) -> "TaskDistributions":
        raise NotImplementedError

    def quantiles(self, levels: np.ndarray | list[float]) -> np.ndarray:
        raise NotImplementedError

    def task_quantiles(self, levels: np.ndarray, spread_levels: np.ndarray | None = None) -> np.ndarray:
        """Each task's runtimes at levels of its own: ``levels`` is (tasks, k), each row
        increasing and within [0, 1]; so is the answer. ``spread_levels`` (as ``levels``, at
        least them), where given, are the levels a task's spread term is taken at (see
        :class:`RuntimeDistribution`): its moments keep its score within the observed
        range, not that normal term."""
        raise NotImplementedError

    def moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def moment_levels(self) -> tuple[np.ndarray, np.ndarray]:
        """Each task's levels (of its own distribution) between which ``moments`` take it (the
        mass beyond sits on them): every level, unless a subclass says otherwise."""
        return np.zeros(len(self)), np.ones(len(self))

    def distinct(self) -> tuple[np.ndarray, np.ndarray]:
        """Tasks of one distribution, told apart where that is cheap: the places of the
        distinct ones, and each task's among them (every task its own, unless a subclass
        says otherwise)."""
        every = np.arange(len(self))
        return every, every

    def _node_values(self, rows: np.ndarray, atoms: int = _SUM_ATOMS, stratum: np.ndarray | None = None,
                     strata: np.ndarray | None = None) -> list["_SumBlock"]:
        raise NotImplementedError

    def _sum_table(self, rows: np.ndarray) -> "_SumTable | None":
        """The tasks ``rows`` discretised for the sums of subsets of them at once (see
        :class:`_SumTable`), or None where a subclass cannot (then each sum discretises its own)."""
        return None

    def interval(self, confidence_level: float) -> np.ndarray:
        """Central interval holding ``confidence_level`` of the mass, shape (tasks, 2)."""
        return self.quantiles(interval_levels(confidence_level))

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        mean, var, _, _ = self.moments()
        return mean, np.sqrt(var)

    # ------------------------------------------------------------------ sums

    def total(self, shared_factor: bool = False) -> "TotalDistribution":
        """Distribution of the sum of these tasks' runtimes, tasks independent (with
        ``shared_factor``, times the model's shared factor: see the end).

        Each task is discretised and the sum convolved on a grid (FFT) spanning the
        total's likely range. In a queue of up to ``_EXACT_SUM_MAX_TASKS`` every task is
        a row of the convolution. In a longer one the tasks that carry most of the
        variance keep their own rows and the others are binned by mean and spread: the
        ``c`` tasks of a bin count as ``c`` draws from their mixture, each task stretched to
        the bin's mean first (by at most the bin's width in log mean: 5%, more in a
        queue of tasks so unlike that the bins widen to stay few), so that the bin's sum keeps
        their mean, and nearly their variance and third cumulant, and a rare slow mode keeps its steps (how
        many of the tasks run slow). Before, those tasks were summed by their moments (a
        shifted gamma), which smoothed the steps into one hump (a 200-task total 0.12 off
        in probability), left out the tails past the training scores (a 500-task total
        of a dozen-row model's tasks had its median 11% low) and jumped where one more
        task crossed into it. Tasks of the same distribution (the same features: the
        commonest long queue) are summed exactly, as one row. Mean and variance are the
        exact sums of the tasks' moments.

        With ``shared_factor`` the sum is then multiplied by the model's shared factor
        (``shared_log_sd``, less what the tasks' own distributions hold of it:
        :meth:`factor_log_sd`): a lognormal of mean 1, independent of the tasks' own noise.
        The model's error about the level of every runtime is one error for the whole
        queue; summed over many tasks, the tasks' own noise averages out and it does not.
        It is asked for, not the default: the HTTP contract's total is the sum of
        independent tasks.
        """
        n = len(self)
        mean, var, _, _ = self.moments()
        k1, k2 = float(mean.sum()), float(var.sum())
        if n == 1:
            return TotalDistribution(k1, k2, self)
        if n == 0 or k2 <= 0 or not np.isfinite(k2):
            # No task, none that varies, or a variance past the float range: all the mass at the mean.
            return TotalDistribution(k1, max(k2, 0.0), edges=np.array([k1, k1]), edge_cdf=np.array([0.0, 1.0]))
        order = np.argsort(var)[::-1]
        # A queue short enough is convolved whole: a row per task (128 take up to ~35 ms here).
        if n <= _EXACT_SUM_MAX_TASKS:
            own = order
        else:
            head = order[:_LONG_QUEUE_OWN_ROWS]
            own = head[var[head] >= _EXACT_SUM_MIN_SHARE * k2]
        edges, at_edges, cells = self._convolve(self._sum_rows(own, order[len(own):]), float(np.sqrt(k2)))
        # Rounding to cells may carry the top of the sum past the most it can be (0.1% where
        # two tasks reach the runtime bound).
        edges = np.minimum(edges, float(self.quantiles(_MOST).sum()))
        tau = self.factor_log_sd(mean) if shared_factor else 0.0
        return self._sum_total(k1, k2, edges, at_edges, cells, tau, order[:_BOUND_TASKS], self)

    def _sum_total(self, k1: float, k2: float, edges: np.ndarray, c: np.ndarray, cells: int, tau: float,
                   widest: np.ndarray | None, tasks: "TaskDistributions | None") -> "TotalDistribution":
        """The total of a sum of these tasks' (``c`` at ``edges``, found on ``cells`` cells; its
        mean ``k1`` and variance ``k2``), times the shared factor of log sd ``tau`` where it is
        above 0, bounded by the ``widest`` tasks (by variance) there; ``tasks``, those summed."""
        if tau <= 0:
            return TotalDistribution(k1, k2, edges=edges, edge_cdf=c, tasks=tasks)
        # S is at least each task: the widest tasks' CDFs bound S's where the grid is coarse.
        assert widest is not None
        edges, c = _times_shared_factor(edges, c, tau, self.subset(widest).quantiles(_bound_levels()), cells)
        return TotalDistribution(k1, _variance_times_shared_factor(k1, k2, tau), edges=edges, edge_cdf=c, tasks=tasks,
                                 shared_log_sd=tau)

    def for_totals(self, levels: Sequence[float], subsets: Sequence[np.ndarray] = ()) -> "TaskDistributions":
        """These tasks, for the totals of many subsets of them (a request's queues: their
        rows ``subsets``), each total read at ``levels`` (``TotalDistribution.quantiles``):
        the tasks' own quantiles that such a total reads are worked out here once, for all
        of them at once, rather than for each total a task is in (a request of 16 queues
        took 7 to 19% less time: ``benchmarks/latency.py --only queues``), and so, where
        they allow it, are the values the sums of short subsets take the tasks at
        (:class:`_BatchNodes`). Each total is the one the subset alone makes."""
        short = [np.asarray(rows, dtype=np.int64) for rows in subsets if 1 < len(rows) <= _EXACT_SUM_MAX_TASKS]
        summed = np.unique(np.concatenate(short)) if short else np.zeros(0, dtype=np.int64)
        return RememberedQuantiles(self, {_levels_key(asked): self.quantiles(asked)
                                          for asked in (_MOST, [_LEAST_LEVEL], list(levels))},
                                   _BatchNodes(self, summed), np.arange(len(self)))

    def subset_totals(self, subsets: Sequence[np.ndarray], levels: Sequence[float],
                      shared_factor: bool = False, read: Callable[["TotalDistribution"], Any] | None = None) -> list[Any]:
        """The total of each of ``subsets`` of these tasks (their rows: a request's queues,
        none empty), each the one the subset alone makes, read at ``levels``: see
        :meth:`_for_subsets`.

        With ``read``, each total is kept as what ``read`` makes of it as soon as it is made:
        a total holds its tasks (and the table its group worked out), so that 10,000 queues
        of 10 tasks, their totals kept, took 1.2 GB (what is worked out for a group was held
        for every group)."""
        return [read(total) if read is not None else total
                for total in (tasks.total(shared_factor) for tasks in self._for_subsets(subsets, levels))]

    def subset_prefix_totals(self, subsets: Sequence[np.ndarray], levels: Sequence[float], shared_factor: bool = False,
                             read: Callable[["TotalDistribution"], Any] | None = None) -> list[list[Any]]:
        """The totals of each prefix of each of ``subsets`` of these tasks (:meth:`prefix_totals`
        of each, in its rows' order), read at ``levels``: see :meth:`_for_subsets` (1,000
        queues of 10 tasks each worked out alone took a fifth longer)."""
        return [tasks.prefix_totals(shared_factor, read) for tasks in self._for_subsets(subsets, levels)]

    def _for_subsets(self, subsets: Sequence[np.ndarray], levels: Sequence[float]) -> Iterator["TaskDistributions"]:
        """Each of ``subsets`` of these tasks (their rows, none empty), for totals read at
        ``levels``: the subsets taken a few at a time (:meth:`for_totals` of the tasks of
        at most ``_BATCH_NODES_MAX_TASKS`` of theirs, one subset at least), so that what is
        worked out once for them is held for a bounded number of tasks."""
        start = 0
        while start < len(subsets):
            end, size = start + 1, len(subsets[start])
            while end < len(subsets) and size + len(subsets[end]) <= _BATCH_NODES_MAX_TASKS:
                size += len(subsets[end])
                end += 1
            rows = [np.asarray(r, dtype=np.int64) for r in subsets[start:end]]
            tasks = np.unique(np.concatenate(rows))
            local = [np.searchsorted(tasks, r) for r in rows]
            these = self.subset(tasks).for_totals(levels, local)
            for r in local:
                yield these.subset(r)
            start = end

    def prefix_totals(self, shared_factor: bool = False,
                      read: Callable[["TotalDistribution"], Any] | None = None) -> list[Any]:
        """The total of each prefix of these tasks, in their order: when each task of a queue
        run in this order is done (its own runtime plus those of the tasks before it), as
        ``self.subset(range(i)).total(shared_factor)`` for each ``i``, at a cost that grows
        about as the queue's length rather than as its square (the ``i``-th of those totals
        convolves ``i`` tasks: a queue of 500 tasks took 2.2 to 4.5 s that way, 0.3 to 0.4 s
        here: benchmarks/queue_totals.py --completion). The first is that task's and the
        last the queue's ``total``, as they are.

        With ``read``, each total is kept as what ``read`` makes of it as soon as it is made: a
        total holds its grid and its tasks, so that the totals of a queue of 2,000 tasks, all
        kept, took 700 MB.

        The prefixes are taken in groups whose variance grows at most ``_PREFIX_GROUP_VAR``
        times from a group's first to its last. A group's prefixes share the grid that
        :meth:`_convolve` makes for its last one (which a narrower prefix fits in, with at
        least half the cells per standard deviation): each task is a row of it, in order,
        and the running product of the rows' transforms is each prefix's sum. Each prefix
        is then placed, blurred and refined at its low end as its own total would be. A
        task is always a row of its own here, where a queue's total bins the tasks of a
        queue past ``_EXACT_SUM_MAX_TASKS`` by mean and spread.
        """
        n = len(self)
        if n == 0:
            return []
        mean, var, _, _ = self.moments()
        k1, k2 = np.cumsum(mean), np.cumsum(var)
        out: list[Any] = [None] * n
        kept = read if read is not None else (lambda total: total)
        out[0] = kept(self.subset(np.zeros(1, dtype=np.int64)).total(shared_factor))
        if n > 1:
            out[-1] = kept(self.total(shared_factor))  # the queue's own total, to the last bit
        plain = (k2 > 0) & np.isfinite(k2)
        for i in np.flatnonzero(~plain[1:-1]) + 2:
            # No task that varies, or a variance past the float range: as total() says.
            at = float(k1[i - 1])
            out[i - 1] = kept(TotalDistribution(at, max(float(k2[i - 1]), 0.0), edges=np.array([at, at]),
                                                edge_cdf=np.array([0.0, 1.0])))
        regular = (np.flatnonzero(plain[1:-1]) + 2).tolist()
        if not regular:
            return out
        blocks = self._node_values(np.arange(regular[-1]))
        R = regular[-1]
        # Each task's least value, its nodes' mean and variance: the window of each prefix.
        least = np.full(R, np.inf)
        node_mean, node_var = np.zeros(R), np.zeros(R)
        for b in blocks:
            np.minimum.at(least, b.row, b.x[:, 0])
            m = b.x @ b.w
            node_mean += np.bincount(b.row, weights=m, minlength=R)
            node_var += np.bincount(b.row, weights=((b.x - m[:, None]) ** 2) @ b.w, minlength=R)
        floors, means = np.cumsum(least), np.cumsum(node_mean)
        sds = np.sqrt(np.maximum(k2[:R], np.cumsum(node_var)))
        lows = np.maximum(means - 8.0 * sds, floors)
        most = np.cumsum(self.quantiles(_MOST)[:R, 0])
        low_ends = _PrefixLowEnds(blocks, least)
        bounds = _PrefixBounds(self.subset(np.arange(R)), mean[:R], var[:R], shared_factor)
        start = 0
        while start < len(regular):
            a = regular[start]
            end = start
            while end + 1 < len(regular) and k2[regular[end + 1] - 1] <= _PREFIX_GROUP_VAR * k2[a - 1]:
                end += 1
            group = regular[start:end + 1]
            sums = self._prefix_sums(blocks, group, least, floors, lows, float(np.sqrt(k2[group[-1] - 1])), low_ends)
            for i, (edges, c, cells) in zip(group, sums):
                edges = np.minimum(edges, float(most[i - 1]))
                tau = self.factor_log_sd(mean[:i]) if shared_factor else 0.0
                widest = np.argsort(var[:i])[::-1][:_BOUND_TASKS] if tau > 0 else None
                total = self._sum_total(float(k1[i - 1]), float(k2[i - 1]), edges, c, cells, tau, widest, None)
                out[i - 1] = kept(bounds.bound(total, i, tau > 0))
            start = end + 1
        return out

    def _prefix_sums(self, blocks: list["_SumBlock"], group: list[int], least: np.ndarray, floors: np.ndarray,
                     lows: np.ndarray, sd: float, low_ends: "_PrefixLowEnds") -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """The CDF of the sum of the first ``i`` tasks of ``blocks`` (each task its own row,
        in order) for each ``i`` of ``group`` (increasing), as :meth:`_convolve` finds it, on
        the grid it makes for the last of them (``sd`` its total's standard deviation), its
        low end first found again by ``low_ends``."""
        first, last = group[0], group[-1]
        rows, rows_first = _first_rows(blocks, last), _first_rows(blocks, first)
        mult = [np.ones(len(b.row)) for b in rows.blocks]
        G, h, _, _, _ = self._window(rows, mult, sd)
        G, h, offset, base, cells = self._resolved(rows, G, h, rows_first)
        losses = np.cumsum(self._row_rounding_losses(rows, h, base, cells))
        # Each task's share of the grid's shift (see _convolve), summed over each prefix.
        shifts = offset.copy()
        by_row = []  # each block's tasks in the order of their rows, and those rows
        for b, (t, cell) in zip(rows.blocks, cells):
            shifts -= np.bincount(b.row, weights=_rounding_errors(t, cell) @ b.w, minlength=last)
            order = np.argsort(b.row, kind="stable")
            by_row.append((order, b.row[order]))
        shifts = np.cumsum(shifts)
        lowest = np.floor(np.cumsum(_lowest_cells(rows, cells)))  # each prefix's lowest label (see _unwrapped)
        # The rows' transforms in chunks of about 2^22 values, their running product carried.
        chunk = max(1, (1 << 22) // G)
        running = np.ones(G // 2 + 1, dtype=np.complex128)
        wanted = iter(group)
        i = next(wanted)
        for lo in range(0, last, chunk):
            hi = min(lo + chunk, last)
            pmf = np.zeros((hi - lo) * G)
            for b, (_, cell), (order, sorted_rows) in zip(rows.blocks, cells, by_row):
                mine = order[np.searchsorted(sorted_rows, lo):np.searchsorted(sorted_rows, hi)]
                if len(mine):
                    idx = _residues(cell[mine], G)
                    pmf += np.bincount(((b.row[mine] - lo)[:, None] * G + idx).ravel(),
                                       weights=np.broadcast_to(b.w, idx.shape).ravel(), minlength=(hi - lo) * G)
            pmf = pmf.reshape(hi - lo, G)
            product = np.cumprod(np.fft.rfft(pmf, axis=1), axis=0) * running
            running = product[-1]
            while i is not None and i <= hi:
                f = product[i - 1 - lo]
                lost = float(losses[i - 1])
                if math.isfinite(lost) and lost > 0:
                    f = f * np.exp(-lost * _blur_frequencies(G))
                edges, c = _unwrapped(np.fft.irfft(f, n=G), float(lows[i - 1]), float(shifts[i - 1]), h,
                                      int(lowest[i - 1]) if lows[i - 1] <= floors[i - 1] else None)
                edges, c = self._low_end_refined(functools.partial(_first_rows, blocks, i), least[:i], float(floors[i - 1]),
                                                 h, edges, c, functools.partial(low_ends.of, i, float(floors[i - 1])))
                yield edges, c, G
                i = next(wanted, None)

    def total_moments(self, shared_factor: bool = False) -> tuple[float, float]:
        """The mean and variance of ``total(shared_factor)``, without its distribution: the
        tasks' moments summed, at a small part of the cost."""
        mean, var, _, _ = self.moments()
        k1, k2 = float(mean.sum()), float(var.sum())
        tau = self.factor_log_sd(mean) if shared_factor else 0.0
        if len(self) > 1 and tau > 0 and 0 < k2 < math.inf:  # as total() applies the factor
            k2 = _variance_times_shared_factor(k1, k2, tau)
        return k1, max(k2, 0.0)

    def factor_log_sd(self, mean: np.ndarray) -> float:
        """The log sd of the shared factor a total of these tasks (of means ``mean``) is
        multiplied by: ``shared_log_sd`` times sqrt(1 - sum of w_i^2), w_i each task's share of
        the total's mean. Each task's own distribution already holds the factor (its
        calibration is cross-validated across stretches), so the sum of the tasks holds it
        too, as much as its log variance takes from each task: sum of w_i^2 times its square,
        independently for each task, where it is one error for all. Multiplying the sum by
        the whole factor counted that part twice: all of it for one task (which a single
        task's total is left without, as it is), half for two alike, nothing in the limit of
        many (5-task totals of runs whose level moves between stretches held the truth up to
        0.918 of the time for 0.9; 0.907 now: benchmarks/queue_totals.py --stretches)."""
        tau = self.shared_log_sd
        total = float(mean.sum())
        if tau <= 0 or not 0 < total < math.inf:
            return tau
        w = mean / total
        return tau * math.sqrt(max(1.0 - float(w @ w), 0.0))

    def _sum_rows(self, own: np.ndarray, binned: np.ndarray) -> "_SumRows":
        """The rows of the total's convolution: each task of ``own`` alone, ``binned`` by mean and spread.

        Tasks are binned by mean and by spread (coefficient of variation), so that a bin's
        tasks are alike. The tasks of a bin make one mixture, which each of them samples
        at its own stratum of every probability bin (the bin's tasks at ``_SUM_ATOMS /
        tasks`` atoms, at least ``_BIN_MIN_ATOMS``): together as finely as one task at
        ``_SUM_ATOMS`` atoms or finer, for the cost of about one task in all. A bin of many
        tasks is represented by ``_BIN_SAMPLE`` of them, evenly spread over its tasks.
        """
        blocks = self._node_values(own) if len(own) else []
        count = np.ones(len(own), dtype=np.int64)
        size = np.ones(len(own), dtype=np.int64)
        if len(binned):
            task_mean, task_var = (m[binned] for m in self.moments()[:2])
            inv, cnt = _bins(np.log(np.maximum(task_mean, 1e-300)),
                             np.log(np.maximum(np.sqrt(task_var) / np.maximum(task_mean, 1e-300), _SUM_BIN_CV_FLOOR)))
            by_bin = np.argsort(inv, kind="stable")
            rank = np.empty(len(inv), dtype=np.int64)  # of each task in its bin
            rank[by_bin] = np.arange(len(inv)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            step = -(-cnt // _BIN_SAMPLE)
            kept = rank % step[inv] == 0
            members = -(-cnt // step)
            # A task sampled at a low stratum of every probability bin comes out narrower and
            # lower than it is, at a high one wider and higher. The tasks come in order of
            # variance: in that order the widest takes the middle stratum and each next two,
            # alike, mirror strata (bit-reversed, so any run of them spreads evenly). The
            # widest all at the low strata put a 10,000-task total of tasks of unequal
            # spread 2% low.
            sample = np.flatnonzero(kept)
            spread = np.lexsort((_stratum_keys(rank[sample] // step[inv[sample]]), inv[sample]))
            stratum = np.empty(len(inv), dtype=np.int64)
            stratum[sample[spread]] = np.arange(len(sample)) - np.repeat(np.cumsum(members) - members, members)
            atoms = np.maximum(_SUM_ATOMS >> np.floor(np.log2(members)).astype(np.int64), _BIN_MIN_ATOMS)
            # Stretched to its bin's mean (by at most the bin's width), a bin's tasks share
            # one: c draws from their mixture have the c tasks' mean, and their variance and
            # third cumulant to within twice and three times that width. Stretched, not
            # shifted: where a far tail sets the mean (a model fitted on one 1e12 ms run
            # among 5 ms ones), a shift of 2.5% of the mean moved a task's typical runtime
            # by thousands of times itself, and a 129-task total's 0.05 quantile fell to
            # one seventh of the truth (now within 0.3%). (The moments' means: a far tail
            # that the nodes reach, one task's more than another's, must not move a body.)
            stretch = np.bincount(inv, weights=task_mean)[inv] / cnt[inv] / np.maximum(task_mean, 1e-300)
            for a in np.unique(atoms[inv[kept]]):
                sel = np.flatnonzero(kept & (atoms[inv] == a))
                for block in self._node_values(binned[sel], int(a), stratum[sel], members[inv[sel]]):
                    # A block's rows are, so far, its tasks' places in ``sel``.
                    block.x *= stretch[sel][block.row][:, None]
                    block.row = len(own) + inv[sel][block.row]
                    blocks.append(block)
            count = np.concatenate([count, cnt])
            size = np.concatenate([size, members])
        return _SumRows(blocks, count, size)

    def _convolve(self, rows: "_SumRows", sd: float) -> tuple[np.ndarray, np.ndarray, int]:
        """The CDF of the sum of ``rows``: increasing values, the CDF at them (linear in
        between), and the number of cells of the grid it was found on.

        Circular convolution on an even grid of cells of ``32 sd / _SUM_GRID`` spanning
        [mean - 8 sd, mean + 24 sd] of the total, or further up to reach the largest value
        of any task plus the others' typical sum (then with more cells, up to
        ``_SUM_GRID_MAX``, and wider ones, up to 4x, where more than ``_WRAP_MASS`` would
        lie beyond): every value is put in the cell of its residue, so tasks need not fit
        the window one by one, only their sum does.

        A row's values are rounded to cells after a shift of the row's own (a fraction
        of a cell) that puts its median on a cell; the sum of the shifts and of the
        rounding's mean errors then moves the whole grid. So the sum's mean is exact
        however narrow the tasks are next to a cell, and a narrow task's rounding does not
        add up over the tasks: neither does it blur the total, as splitting each value's
        mass between two cells would.
        """
        count = rows.count
        R = len(count)
        mult = [rows.multiplicity(b) for b in rows.blocks]
        G, h, low, floor, least = self._window(rows, mult, sd)
        # A task whose spread is about a cell's is rounded into one or two cells: its share of
        # the total's variance grows or shrinks (identical tasks: the spread of 20,000 of them
        # came out 12% too wide, of 100,000 30% too narrow). The cells are halved (more of
        # them, the same window) until the rounded tasks' variance is within
        # _ROUNDING_VAR_ERROR of theirs.
        G, h, offset, base, cells = self._resolved(rows, G, h)
        lost = self._rounding_loss(rows, h, base, cells)
        shift = float(offset @ count)  # in cells: a sum of labels j stands for the value (j + shift) * h
        flat, weights = [], []
        for b, k, (t, cell) in zip(rows.blocks, mult, cells):
            # Each of a bin's c draws makes its tasks' mean error: c in all.
            shift -= float((_rounding_errors(t, cell) @ b.w) @ k)
            flat.append((b.row[:, None] * G + _residues(cell, G)).ravel())
            weights.append(rows.mixture_weights(b).ravel())
        pmf = np.bincount(np.concatenate(flat), weights=np.concatenate(weights), minlength=R * G).reshape(R, G)
        edges, c = _unwrapped(self._summed(pmf, count, lost, G), low, shift, h,
                              _lowest_label(rows, cells) if low <= floor else None)
        edges, c = self._low_end_refined(rows, least, floor, h, edges, c)
        return edges, c, G

    def _resolved(self, rows: "_SumRows", G: int, h: float, also: "_SumRows | None" = None
                  ) -> tuple[int, float, np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """``rows`` on ``G`` cells of width ``h``, halved (more of them, the same window) until
        the rounded tasks' variance is within ``_ROUNDING_VAR_ERROR`` of theirs, and that of
        ``also``'s (a shorter prefix's rows) too, or ``_SUM_GRID_RESOLVE_MAX`` cells: the
        number of cells, their width and :meth:`_cells`' rows on them."""
        medians = [b.at(0.5) for b in rows.blocks]
        also_medians = None if also is None else [b.at(0.5) for b in also.blocks]
        while True:
            offset, base, cells, rounding_error = self._cells(rows, h, medians)
            if G >= _SUM_GRID_RESOLVE_MAX or not (
                    rounding_error > _ROUNDING_VAR_ERROR
                    or (also is not None and self._cells(also, h, also_medians)[3] > _ROUNDING_VAR_ERROR)):
                return G, h, offset, base, cells
            G, h = 2 * G, h / 2

    @staticmethod
    def _window(rows: "_SumRows", mult: list[np.ndarray], sd: float) -> tuple[int, float, float, float, np.ndarray]:
        """The grid of the sum of ``rows``: its number of cells, their width, where it starts,
        the least the sum can be, and each row's least value (see :meth:`_convolve`)."""
        G = _SUM_GRID
        R = len(rows.count)
        # The window is placed about the mean of the sum as discretised (the tasks' far tails included).
        node_mean = [b.x @ b.w for b in rows.blocks]
        mean = float(sum(m @ k for m, k in zip(node_mean, mult)))
        # The sum's mass starts at the sum of the rows' lowest values (all c draws of a bin
        # may take its lowest).
        least = np.full(R, np.inf)
        for b in rows.blocks:
            np.minimum.at(least, b.row, b.x[:, 0])
        floor = float(least @ rows.count)
        reach = max(float((b.x[:, -1] - m).max()) for b, m in zip(rows.blocks, node_mean))  # the furthest one task lies above its mean
        # ``sd`` comes from the moments, which leave out tails extrapolated past the
        # observed scores; the nodes do not. Where such a tail is heavy, their mean lies
        # many moment ``sd`` above most of the sum's mass, which would wrap around: the
        # window is sized on the nodes' spread. It need not start below the sum of the
        # tasks' lowest values, where the sum's mass starts.
        node_var = sum(float((((b.x - m[:, None]) ** 2) @ b.w) @ k) for b, m, k in zip(rows.blocks, node_mean, mult))
        sd = max(sd, math.sqrt(node_var))
        h = 32.0 * sd / G
        top = mean + 24.0 * sd + max(reach - 16.0 * sd, 0.0) * (1 - 1e-9)
        low = max(mean - 8.0 * sd, floor)
        span = top - low

        def wraps(width: float) -> bool:
            # Whether more than _WRAP_MASS would wrap around a window this wide (one task
            # far up, the others typical): only then is the window worth its cost (the FFT's
            # grows with it: a 50-task total took 3x longer on 8192 cells than on 2048).
            beyond = 0.0
            for b, m, k in zip(rows.blocks, node_mean, mult):
                above = low + width - 8.0 * sd - mean + m  # per task
                beyond += float(((b.x > above[:, None]) @ b.w) @ k)
            return beyond > _WRAP_MASS

        if G * h < span:
            while G * h < span and G < _SUM_GRID_MAX and wraps(G * h):
                G *= 2
            # Still short of a task's farthest values: wider cells (up to 4x), unless the mass
            # that would wrap around is negligible.
            for widen in (1.0, 2.0, 4.0):
                if widen == 4.0 or not wraps(G * h * widen):
                    h *= widen
                    break
        return G, h, low, floor, least

    @staticmethod
    def _summed(pmf: np.ndarray, count: np.ndarray, lost: float, G: int) -> np.ndarray:
        """The sum's mass on the ``G`` cells (circular): each row's ``pmf`` to the power of its
        ``count`` of draws, all multiplied, blurred by what rounding took (``lost``)."""
        if len(count) == 1 and count[0] == 1:
            return pmf[0]
        f = np.fft.rfft(pmf, axis=1)
        # A bin's row to the power of its draws, by squaring in place, all such rows at
        # once (in polar form, or row by row, it cost several times the FFT).
        product = np.prod(f, axis=0, where=(count == 1)[:, None])
        more = np.where(count > 1, count, 0)
        while more.any():
            odd = (more & 1) == 1
            if odd.any():
                product *= np.prod(f, axis=0, where=odd[:, None])
            more = more >> 1
            if more.any():
                np.multiply(f, f, out=f, where=(more > 0)[:, None])
        if lost > 0:
            # What rounding took from the tasks' bodies, given back as a blur of the sum:
            # where most of each task's mass fell in one cell (a rare slow mode set the
            # cells: 5,000 tasks' 1% quantile was 0.13 off in probability), the sum of so
            # many bodies is about normal. The blur is a distribution on the cells of
            # that variance (the difference of two Poisson counts), never negative: a
            # normal's characteristic function cut at the grid's top frequency rang, and
            # the ringing, clipped at 0, put up to 0.7% of the mass far up the tail (a
            # 10-task total's 0.999 quantile at 4 times the truth).
            product *= np.exp(-lost * _blur_frequencies(G))
        return np.fft.irfft(product, n=G)

    @staticmethod
    def _low_end_refined(rows: "_SumRows | Callable[[], _SumRows]", least: np.ndarray, floor: float, h: float,
                         edges: np.ndarray, c: np.ndarray,
                         first: Callable[[float], tuple[np.ndarray, np.ndarray, float]] | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
        """The sum's CDF (``c`` at ``edges``, found on cells of width ``h``) with its low end
        found again on finer grids, where the cells were too coarse for it. (``rows`` may be
        a function that makes them: they are read only where the low end is found again.
        ``first``, given the first such grid's span, answers it instead, with the span it
        used: see ``prefix_totals``.)"""
        # Where the total's low quantiles lie within a few cells of the least it can be
        # (one task's spread dwarfs the others'), or of its median (one task's far tail
        # stretched the grid: a 200-task total's 5% quantile was 0.03 off in probability),
        # they are found again on a fine grid up to past the median; and again on a finer
        # one while that grid is still too coarse for them (a tail spanning decades: one
        # 1000x outlier among thirty runs).
        # Then, while a share of the total still lies within a few cells of that least
        # (a mode of near-zero runtimes, or tasks spanning decades: 2 tasks log-uniform over
        # 1e-3 to 1e7 ms had their 1% quantile at 48 times the true one, 0.054 off in
        # probability), the grid is zoomed into those cells.
        cell = h
        for k in range(_LOW_END_PASSES):
            span = _low_end_span(floor, cell, h, edges, c)
            if span is None:
                break
            if k == 0 and first is not None:
                low_x, low_c, span = first(span)
            else:
                if callable(rows):
                    rows = rows()
                low_x, low_c = _low_end(rows, least, floor, floor + span)
            cell = span / _LOW_END_GRID
            keep = edges > low_x[-1]
            edges = np.concatenate([low_x, edges[keep]])
            c = np.concatenate([low_c, np.maximum(c[keep], low_c[-1])])
        return edges, c

    @staticmethod
    def _cells(rows: "_SumRows", h: float, medians: list[np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]], float]:
        """The rows' values on cells of width ``h``: each row's shift (a fraction of a cell
        that puts its median, the mean of its tasks' ``medians``, on a cell) and that cell,
        each block's values in cells ``t`` and their cells, and how far the variance of the
        sum of the rounded values is from that of the values (relative)."""
        R = len(rows.count)
        mid = np.zeros(R)
        for b, m in zip(rows.blocks, medians):
            mid += np.bincount(b.row, weights=np.minimum(m / h, 2.0**52), minlength=R)
        mid /= rows.size
        base = np.floor(mid)
        offset = mid - base
        cells = []
        # Each row's (a bin's mixture's) first two moments about its median's cell, exact and
        # rounded, in cells: the variance of the sum is that of a row times its draws, summed.
        moments = np.zeros((4, R))
        with np.errstate(over="ignore", invalid="ignore"):
            for b in rows.blocks:
                t = np.minimum(b.x / h, 1e300) - offset[b.row][:, None]
                cell = np.rint(t)
                cells.append((t, cell))
                share = 1.0 / rows.size[b.row]
                for i, v in enumerate((t, cell)):
                    v = v - base[b.row][:, None]  # the median's t is its base
                    moments[2 * i] += np.bincount(b.row, weights=(v @ b.w) * share, minlength=R)
                    moments[2 * i + 1] += np.bincount(b.row, weights=((v * v) @ b.w) * share, minlength=R)
            exact = float((moments[1] - moments[0] ** 2) @ rows.count)
            rounded = float((moments[3] - moments[2] ** 2) @ rows.count)
            error = abs(rounded / exact - 1.0) if exact > 0 else 0.0
        return offset, base, cells, error if math.isfinite(error) else 0.0

    @staticmethod
    def _rounding_loss(rows: "_SumRows", h: float, base: np.ndarray, cells: list[tuple[np.ndarray, np.ndarray]]) -> float:
        """The variance (in cells squared) that rounding to :meth:`_cells`' cells took from
        the sum within a cell and a half of the medians of the rows whose body is narrower
        than a cell (none where it added some there)."""
        lost = float(TaskDistributions._row_rounding_losses(rows, h, base, cells) @ rows.count)
        return lost if math.isfinite(lost) and lost > 0 else 0.0

    @staticmethod
    def _row_rounding_losses(rows: "_SumRows", h: float, base: np.ndarray,
                             cells: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """What :meth:`_rounding_loss` counts of each row, for one of its draws."""
        R = len(rows.count)
        body, spread = np.zeros(R), np.zeros(R)
        with np.errstate(over="ignore", invalid="ignore"):
            for b, (t, cell) in zip(rows.blocks, cells):
                share = 1.0 / rows.size[b.row]
                d, dc = t - base[b.row][:, None], cell - base[b.row][:, None]
                near = np.abs(d) <= 1.5
                body += np.bincount(b.row, weights=(np.where(near, d * d - dc * dc, 0.0) @ b.w) * share, minlength=R)
                spread += np.bincount(b.row, weights=((b.at(0.75) - b.at(0.25)) / (1.349 * h)) ** 2 * share, minlength=R)
        # Only a row whose body (its interquartile range, as a normal's) is narrower than a
        # cell loses it: about a wider one's median, rounding takes a twelfth of a cell
        # squared per unit of mass as well, and gives more back further out.
        return np.where(spread < 1.0, body, 0.0)


@dataclass
class TotalReading:
    """What an answer reads of a total: its mean, standard deviation, quantiles at some
    levels and, where asked, its probability of being at most a deadline."""

    mean: float
    std: float
    quantiles: np.ndarray
    deadline_probability: float | None = None

    @classmethod
    def of(cls, total: "TotalDistribution", levels: Sequence[float], deadline: float | None = None) -> "TotalReading":
        return cls(float(total.mean), total.std, total.quantiles(levels),
                   None if deadline is None else total.cdf(deadline))


def _levels_key(levels: Any) -> tuple[float, ...] | None:
    """``levels`` as a key of :class:`RememberedQuantiles` (None: a list of levels it cannot be)."""
    a = np.asarray(levels, dtype=np.float64)
    return tuple(a.tolist()) if a.ndim == 1 else None


class RememberedQuantiles(TaskDistributions):
    """``tasks`` with their quantiles at a few sets of levels already worked out
    (``known``: each set's levels as a tuple, and every task's quantiles there), and so
    are the subsets made of it: see :meth:`TaskDistributions.for_totals`. Every other
    question is the tasks' own (a task's quantiles do not depend on the others asked with
    it), but for the values a sum takes them at, which ``batch`` (the batch these tasks
    are of, at ``places`` in it) may give."""

    def __init__(self, tasks: TaskDistributions, known: dict[tuple[float, ...] | None, np.ndarray],
                 batch: "_BatchNodes | None" = None, places: np.ndarray | None = None):
        self.tasks = tasks
        self.known = known
        self.batch = batch
        self.places = places
        self.shared_log_sd = tasks.shared_log_sd
        self.moments_are_own = tasks.moments_are_own

    def __len__(self) -> int:
        return len(self.tasks)

    def subset(self, rows: np.ndarray) -> "RememberedQuantiles":
        return RememberedQuantiles(self.tasks.subset(rows), {k: v[rows] for k, v in self.known.items()},
                                   self.batch, None if self.places is None else self.places[rows])

    def quantiles(self, levels: np.ndarray | list[float]) -> np.ndarray:
        known = self.known.get(_levels_key(levels))
        return self.tasks.quantiles(levels) if known is None else known.copy()

    def task_quantiles(self, levels: np.ndarray, spread_levels: np.ndarray | None = None) -> np.ndarray:
        return self.tasks.task_quantiles(levels, spread_levels)

    def moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.tasks.moments()

    def moment_levels(self) -> tuple[np.ndarray, np.ndarray]:
        return self.tasks.moment_levels()

    def distinct(self) -> tuple[np.ndarray, np.ndarray]:
        return self.tasks.distinct()

    def _node_values(self, rows: np.ndarray, atoms: int = _SUM_ATOMS, stratum: np.ndarray | None = None,
                     strata: np.ndarray | None = None) -> list["_SumBlock"]:
        if self.batch is not None and self.places is not None and atoms == _SUM_ATOMS and stratum is None:
            blocks = self.batch.of(self.places[np.asarray(rows, dtype=np.int64)])
            if blocks is not None:
                return blocks
        return self.tasks._node_values(rows, atoms, stratum, strata)


# The most tasks discretised for sums at once (:class:`_BatchNodes`; held while their subsets'
# totals are worked out, 9 kB a task or more): ``subset_totals`` takes a request's queues in
# groups of at most this many tasks; a larger batch given to ``for_totals`` has each
# subset work out its own.
_BATCH_NODES_MAX_TASKS = 4096


class _BatchNodes:
    """The tasks ``rows`` of a batch (those of a request's queues that are short enough to
    be summed a row per task) discretised for the sums at once, on first use, for the
    totals of subsets of them: see :class:`_SumTable`."""

    def __init__(self, tasks: TaskDistributions, rows: np.ndarray):
        self.tasks = tasks
        self.rows = rows

    @functools.cached_property
    def _table(self) -> "_SumTable | None":
        return self.tasks._sum_table(self.rows) if 0 < len(self.rows) <= _BATCH_NODES_MAX_TASKS else None

    def of(self, places: np.ndarray) -> list["_SumBlock"] | None:
        """The tasks at ``places`` of the batch as ``tasks._node_values(places)`` gives
        them, or None where they were not discretised at once."""
        return None if self._table is None else self._table.of(places)


class _SumTable:
    """Tasks discretised for the sums of subsets of them, at once: what
    ``_node_values(places)`` gives for a subset (its tasks at ``places``, each on a row of
    its own, at the bins of ``_sum_nodes(_SUM_ATOMS, fine_tails=True)``), value for value,
    the subset's rows of values worked out for all the tasks together (a request of 16
    queues of an LLM model's tasks took 9 to 21% less time in-process; one of a model with
    a slow mode, whose queues split bins, about as long: ``benchmarks/latency.py --only
    queues``).

    A task's values depend on the others asked with it only through the bins that are
    split, where some task's runtime jumps within one (a rare slow mode's start): a subset
    splits a bin only where the tasks together do, so a table keeps each task's values at
    the bins split and not."""

    def of(self, places: np.ndarray) -> list["_SumBlock"] | None:
        """The blocks of the tasks at ``places`` (among the distribution's), in the order
        and rows ``_node_values(places)`` gives them; None where a task is not in the table."""
        raise NotImplementedError


# The most values a table of one model's tasks holds (64 MB): a batch with more, where a slow
# mode's start splits many bins, has each queue work out its own.
_SUM_TABLE_MAX_VALUES = 1 << 23


class _RuntimeSumTable(_SumTable):
    """A :class:`RuntimeDistribution`'s tasks ``rows``, discretised: each task's rise across
    each bin (which bins a subset splits follows from its tasks' largest), and, each worked
    out when first needed, its values at the bins' middles (where a subset splits none) and
    at the nodes ``_split_bins`` makes of the bins a subset may split (where it splits some:
    the bins the tasks together split)."""

    def __init__(self, dist: "RuntimeDistribution", rows: np.ndarray):
        self.local = np.full(len(dist), -1, dtype=np.int64)  # each task's row here
        self.local[rows] = np.arange(len(rows))
        self.u, self.w, self.e = _sum_nodes(_SUM_ATOMS, fine_tails=True)
        self.reach = _sum_nodes()[0][[0, -1]]
        self.part = dist.subset(rows)
        self.rises = self.part._edge_rises(self.e, self.reach)
        self.may_split = self.rises.max(axis=0) > _JUMP_LOG_RATIO
        self._values: np.ndarray | None = None
        self._split_values: np.ndarray | None = None

    def size(self) -> int:
        """How many values the table may come to hold."""
        n, split = len(self.part), int(self.may_split.sum())
        return n * (len(self.u) + (len(self.w) + (_JUMP_SPLIT - 1) * split + split if split else 0))

    def of(self, places: np.ndarray) -> list["_SumBlock"] | None:
        local = self.local[places]
        if (local < 0).any():
            return None
        jump = _jumps(self.rises[local].max(axis=0))
        if not jump.any():
            if self._values is None:
                self._values = self.part._values_at(np.clip(self.u, *self.reach))
            return [_SumBlock(self.u, self.w, self._values[local], np.arange(len(places)))]
        if self._split_values is None:
            # Every bin a subset may split cut as _split_bins cuts it; then those bins'
            # middles as it puts them where it splits others.
            cut, _ = _split_bins(self.e[:-1], self.w, self.may_split)
            whole = self.e[:-1][self.may_split] + self.w[self.may_split] / 2
            self._split_values = self.part._values_at(np.clip(np.concatenate([cut, whole]), *self.reach))
            parts = np.where(self.may_split, _JUMP_SPLIT, 1)
            self._cut_at = np.cumsum(parts) - parts  # each bin's first column among ``cut``'s
            self._whole_at = len(cut) + np.cumsum(self.may_split) - 1  # a cut bin's middle's column
        u, w = _split_bins(self.e[:-1], self.w, jump)
        parts = np.where(jump, _JUMP_SPLIT, 1)
        bin_of = np.repeat(np.arange(len(jump)), parts)
        within = np.arange(len(bin_of)) - np.repeat(np.cumsum(parts) - parts, parts)
        columns = np.where(jump[bin_of] | ~self.may_split[bin_of], self._cut_at[bin_of] + within, self._whole_at[bin_of])
        # C-ordered, as a subset's own are: a matrix product of another layout rounds otherwise.
        x = np.ascontiguousarray(self._split_values[local][:, columns])
        return [_SumBlock(u, w, x, np.arange(len(places)))]


class _MixedSumTable(_SumTable):
    """A :class:`MixedDistribution`'s tasks, discretised: each part's table of its tasks."""

    def __init__(self, dist: "MixedDistribution", tables: list["_SumTable | None"]):
        self.dist = dist
        self.tables = tables

    def of(self, places: np.ndarray) -> list["_SumBlock"] | None:
        part_of = self.dist.part_of[places]
        blocks = []
        for p, table in enumerate(self.tables):
            at = np.flatnonzero(part_of == p)
            if not len(at):
                continue
            got = None if table is None else table.of(self.dist.index[places[at]])
            if got is None:
                return None
            blocks += _moved(got, at)
        return blocks


class _RemainingSumTable(_SumTable):
    """A :class:`RemainingDistribution`'s tasks, discretised: those not started by the
    table of their whole runtimes (``waiting``); the time left of those running (``running``)
    at the bins' middles, where a subset's running tasks split no bin (otherwise they are
    discretised for the subset, as :meth:`RemainingDistribution._left_nodes` splits them)."""

    def __init__(self, dist: "RemainingDistribution", waiting: "_SumTable | None", running: np.ndarray):
        self.dist = dist
        self.waiting = waiting
        self.local = np.full(len(dist), -1, dtype=np.int64)  # each running task's row here
        self.local[running] = np.arange(len(running))
        u = _sum_nodes(_SUM_ATOMS, fine_tails=True)[0]
        reach = _sum_nodes()[0][[0, -1]]
        self.left = (dist._left(running, np.broadcast_to(np.clip(u, *reach), (len(running), len(u))))
                     if len(running) else np.zeros((0, len(u))))

    def of(self, places: np.ndarray) -> list["_SumBlock"] | None:
        waiting, running = self.dist._running(places)
        blocks = []
        if len(waiting):
            got = None if self.waiting is None else self.waiting.of(places[waiting])
            if got is None:
                return None
            blocks += _moved(got, waiting)
        if len(running):
            local = self.local[places[running]]
            if (local < 0).any():
                return None
            blocks.append(self.dist._running_block(places, running, x=self.left[local]))
        return blocks


def _moved(blocks: list["_SumBlock"], places: np.ndarray) -> list["_SumBlock"]:
    """``blocks`` of some of the tasks asked for, each task's row made its place among them
    (``places[row]``)."""
    for block in blocks:
        block.row = places[block.row]
    return blocks


def _jumps(rise: np.ndarray) -> np.ndarray:
    """The bins to split, given the tasks' largest ``rise`` across each (in log runtime):
    those over ``_JUMP_LOG_RATIO``, the steepest ``_JUMP_MAX_BINS`` of them."""
    jump = rise > _JUMP_LOG_RATIO
    if jump.sum() > _JUMP_MAX_BINS:  # tasks whose slow modes start at many levels: the steepest
        jump &= rise >= np.partition(rise, -_JUMP_MAX_BINS)[-_JUMP_MAX_BINS]
    return jump


@dataclass
class RuntimeDistribution(TaskDistributions):
    """The predicted runtime distributions of a batch of tasks (in ms)."""

    location: np.ndarray  # m, per task, log-ms
    scale: np.ndarray  # s, per task
    score: ScoreDistribution
    knots: tuple[float, ...] | None = None  # levels l_k of the shared Z where tasks' CDFs are given
    cdf: np.ndarray | None = None  # (tasks, knots): F_i(Q(l_k)), strictly increasing along knots
    # Quantiles are kept within these log-runtimes (the model's: 100x beyond its training
    # extremes), so that a far tail extrapolated from a few wild rows stays finite and sane.
    log_bounds: tuple[float, float] = LOG_BOUNDS
    # The model's own uncertainty about the level of every runtime (log sd of a factor common
    # to all tasks): nothing for one task, whose calibration holds it, but a queue's tasks
    # share it, so it does not average out of their total.
    shared_log_sd: float = 0.0
    # The model's scale depends on the features: every task's moments are interpolated in
    # log s (``describe_one`` does too), even where a batch's scales happen to be equal (one
    # task, say), so that a task's answer never depends on the batch it came in.
    scale_varies: bool = False
    # Runtimes the training data repeated (sorted): a quantile that is one of them up to the
    # rounding of exp(log y) is answered as it (see :func:`snap_to_atoms`).
    atoms: np.ndarray | None = None
    # Per task (or None: none), the log sd of a normal term added to the log runtime at each
    # level (the runtime at level p is multiplied by exp(spread * ndtri(p))): what is not
    # known about the task beyond its own noise (a category training never saw, where it
    # lies among the known ones). Added level by level, it widens the distribution without
    # stretching the gaps between its modes as scaling Z would (README, Traces: a step of
    # 6.9x between two levels became 8.7x this way, 20.7x scaled).
    spread: np.ndarray | None = None
    _moments: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.location)

    def subset(self, rows: np.ndarray) -> "RuntimeDistribution":
        return RuntimeDistribution(self.location[rows], self.scale[rows], self.score, self.knots,
                                   None if self.cdf is None else self.cdf[rows], self.log_bounds, self.shared_log_sd,
                                   self.scale_varies, self.atoms, None if self.spread is None else self.spread[rows])

    def _spread_at(self, levels: np.ndarray) -> np.ndarray | float:
        """Each task's ``spread`` term at ``levels`` (the same for every task, or a row per
        task): (tasks, levels), or 0.0 where no task has one."""
        if self.spread is None:
            return 0.0
        levels = np.clip(np.asarray(levels, dtype=np.float64), 1e-12, 1 - 1e-12)
        return self.spread[:, None] * ndtri(levels if levels.ndim == 2 else levels[None, :])

    # ------------------------------------------------------------------ quantiles

    def score_quantiles(self, levels: np.ndarray) -> np.ndarray:
        """Quantiles of each task's ``Z`` at ``levels`` (the same for every task, or a row
        per task): (tasks, levels)."""
        levels = np.asarray(levels, dtype=np.float64)
        if self.cdf is None:
            if levels.ndim == 2:
                return self.score.quantile(levels)
            return np.broadcast_to(self.score.quantile(levels), (len(self), len(levels)))
        F = self.cdf
        n = len(F)
        lk = np.asarray(self.knots)
        Fp = np.concatenate([np.zeros((n, 1)), F, np.ones((n, 1))], axis=1)
        lp = np.concatenate([[0.0], lk, [1.0]])
        rows = np.arange(n)[:, None]
        per_task = levels if levels.ndim == 2 else levels[None, :]
        # The segment index, how many of a task's knots lie below the level: one search of
        # all tasks' knots at once, each task's lifted clear of the others' (by 2 a row).
        lift = 2.0 * np.arange(n)
        idx = (np.searchsorted((F + lift[:, None]).ravel(), np.clip(per_task, 0.0, 1.0) + lift[:, None])
               - (F.shape[1] * np.arange(n))[:, None])
        idx = np.clip(idx, 0, F.shape[1])  # a NaN level searches past every row: its quantile is NaN
        f0 = Fp[rows, idx]
        f1 = Fp[rows, idx + 1]
        width = np.maximum(f1 - f0, 1e-300)
        frac = (per_task - f0) / width
        u = lp[idx] + np.clip(frac, 0.0, 1.0) * (lp[idx + 1] - lp[idx])
        # 1 - u apart, where the score's far tail reads it: there alone (every entry cost the
        # quantiles of a batch of 10,000 tasks at 7 levels 4% more).
        tail = u > self.score.levels[-1]
        above = None
        if tail.any():
            top = lp[idx + 1][tail]
            above = np.full(u.shape, np.nan)
            above[tail] = _upper_share(top, top - lp[idx][tail], np.clip(
                (f1[tail] - np.broadcast_to(per_task, u.shape)[tail]) / width[tail], 0.0, 1.0))
            above = above.ravel()
        return self.score.quantile(u.ravel(), above).reshape(n, levels.shape[-1])

    def quantiles(self, levels: np.ndarray | list[float]) -> np.ndarray:
        """Runtime at each level, shape (tasks, levels); non-decreasing along levels."""
        check_levels_in_unit_interval(levels)
        if self.cdf is None and len(levels) <= 64:
            # One shared shape: Z's quantiles are the same for every task (and monotone in
            # the level, so no sorting is needed); only location and scale vary.
            z = self.score.quantile_at(tuple(float(v) for v in levels))
            log_q = self.score.log_runtimes(self.location[:, None], self.scale[:, None], z[None, :]) + self._spread_at(levels)
            return snap_to_atoms(np.exp(np.clip(log_q, *self.log_bounds)), self.atoms)
        levels = np.asarray(levels, dtype=np.float64)
        order = np.argsort(levels)
        z = self.score_quantiles(levels[order])
        z = np.maximum.accumulate(z, axis=1)
        q = np.exp(np.clip(self.score.log_runtimes(self.location[:, None], self.scale[:, None], z)
                           + self._spread_at(levels[order]), *self.log_bounds))
        out = np.empty_like(q)
        out[:, order] = q
        return snap_to_atoms(out, self.atoms)

    def task_quantiles(self, levels: np.ndarray, spread_levels: np.ndarray | None = None) -> np.ndarray:
        levels = np.asarray(levels, dtype=np.float64)
        z = np.maximum.accumulate(self.score_quantiles(levels), axis=1)
        log_q = (self.score.log_runtimes(self.location[:, None], self.scale[:, None], z)
                 + self._spread_at(levels if spread_levels is None else spread_levels))
        return snap_to_atoms(np.exp(np.clip(log_q, *self.log_bounds)), self.atoms)

    # ------------------------------------------------------------------ moments

    def moment_levels(self) -> tuple[np.ndarray, np.ndarray]:
        """The observed scores' range (``segment_nodes`` keeps the moments' nodes within it), as
        levels of each task's own distribution (through its shape's map, where it has one)."""
        ends = self.score.moment_range()
        n = len(self)
        if self.cdf is None:
            return np.full(n, ends[0]), np.full(n, ends[1])
        lk = np.concatenate([[0.0], np.asarray(self.knots, dtype=np.float64), [1.0]])
        Fp = np.concatenate([np.zeros((n, 1)), self.cdf, np.ones((n, 1))], axis=1)
        out = []
        for level in ends:  # Z's level in segment k: the task's by the segment's linear map
            k = int(np.clip(np.searchsorted(lk, level, side="right") - 1, 0, len(lk) - 2))
            f = (level - lk[k]) / (lk[k + 1] - lk[k])
            out.append(Fp[:, k] + f * (Fp[:, k + 1] - Fp[:, k]))
        return out[0], out[1]

    def _segment_masses(self) -> np.ndarray:
        if self.cdf is None:
            return np.ones((len(self), 1))
        n = len(self)
        Fp = np.concatenate([np.zeros((n, 1)), self.cdf, np.ones((n, 1))], axis=1)
        return np.diff(Fp, axis=1)

    def moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Mean, variance, and third and fourth central moments per task."""
        if self._moments is None:
            self._moments = self._compute_moments()
        return self._moments

    def mean_std_once(self) -> tuple[np.ndarray, np.ndarray]:
        """``mean_std`` of tasks whose score distribution answers nothing else (a
        cross-validation fold's): where their scales differ and they are fewer than the
        points of the log-scale grid, each task's quadrature over the moment nodes, which
        costs less than the grid's table (the same nodes: the table interpolates between
        them in log s); otherwise ``mean_std``."""
        s = self.scale
        if self.spread is None and 0 < len(self) < _LOG_SCALE_POINTS and (self.scale_varies or not np.all(s == s[0])):
            mean, var, _, _ = self._capped_moments()
            return mean, np.sqrt(var)
        return self.mean_std()

    def _compute_moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        moments = self._uncapped_moments()
        capped = self._capped_rows()
        if self.spread is not None:
            # The segment tables know nothing of the spread term.
            spread = (self.spread > 0) & ~capped
            if spread.any():
                for out, got in zip(moments, self.subset(spread)._spread_moments()):
                    out[spread] = got
        if capped.any():
            # Quantiles stop at the log bounds: so do the moments of these tasks.
            for out, got in zip(moments, self.subset(capped)._capped_moments()):
                out[capped] = got
        return moments

    def _spread_moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Moments of tasks with a spread, within the log bounds: a quadrature per distinct
        (scale, spread, shape), at location 0, times the location's factor (the tasks of an
        unseen category of a model whose scale does not vary share one). Per task, 100,000
        of them took 33 s and 13 GB."""
        key = np.column_stack([self.scale, self.spread] + ([self.cdf] if self.cdf is not None else []))
        distinct, inverse = np.unique(key, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        mean, var, c3, c4 = _unit_spread_moments(self.score, self.knots if self.cdf is not None else None, distinct)
        f = np.exp(self.location)
        return f * mean[inverse], f**2 * var[inverse], f**3 * c3[inverse], f**4 * c4[inverse]

    def _capped_rows(self) -> np.ndarray:
        """Tasks whose moments the log bounds change: their moment nodes (the observed
        scores' range) reach past the upper bound, or more than a thousandth of their mass
        lies below the lower one. Less than that below a floor 100x under the fastest
        training runtime moves the mean by under a thousandth of it, and a low score that
        reaches past the floor is common (one outlier among the training residuals) while
        the exact moments cost a quadrature per task."""
        z_low, z1 = _capping_scores(self.score)
        lo, hi = self.log_bounds
        m, s = self.location, self.scale
        if self.spread is None:
            return (m + s * z1 > hi) | (m + s * z_low < lo)
        # The spread term reaches its levels' normal quantiles further.
        return (m + s * z1 + _SPREAD_TOP * self.spread > hi) | (m + s * z_low + _SPREAD_LOW * self.spread < lo)

    def _capped_moments(self, nodes: int = _MOMENT_NODES) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Moments by direct quadrature over the moment nodes, runtimes clipped to the log bounds
        (and the spread term added, at each node's level of the task's own distribution); in
        chunks of tasks, each a row of the nodes."""
        n = len(self)
        if n > _QUADRATURE_CHUNK:
            parts = [self.subset(np.arange(a, min(a + _QUADRATURE_CHUNK, n)))._capped_moments(nodes)
                     for a in range(0, n, _QUADRATURE_CHUNK)]
            return tuple(np.concatenate(col) for col in zip(*parts))  # type: ignore[return-value]
        knots = self.knots if self.cdf is not None else ()
        z, w, seg = self.score.segment_nodes(knots, nodes)
        lk = np.concatenate([[0.0], np.asarray(knots, dtype=np.float64), [1.0]])
        masses = self._segment_masses()
        weights = (masses / np.diff(lk)[None, :])[:, seg] * w[None, :]  # (n, nodes)
        log_x = self.score.log_runtimes(self.location[:, None], self.scale[:, None], z[None, :])
        if self.spread is not None:
            u = self.score.segment_node_levels(knots, nodes)
            if self.cdf is not None:
                # A node of Z's segment k lies at this level of the task's distribution.
                below = np.concatenate([np.zeros((len(self), 1)), np.cumsum(masses, axis=1)], axis=1)[:, seg]
                u = below + (u - lk[seg])[None, :] * weights / w[None, :]
            log_x = log_x + self._spread_at(u)
        x = np.exp(np.clip(log_x, *self.log_bounds))
        mean = row_inner(weights, x)
        d = x - mean[:, None]
        d2 = d * d
        return mean, row_inner(weights, d2), row_inner(weights, d2 * d), row_inner(weights, d2 * d2)

    def _uncapped_moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        n = len(self)
        s = self.scale
        if n and self.cdf is None and not self.scale_varies and s.min() == s.max():
            # Shared shape and scale: the moments of exp(s (Z - z0)) are constants of the model.
            mu, c2, c3, c4 = self.score.central_factors(float(s[0]))
            base = np.exp(self.location + s * self.score.center())
            with np.errstate(over="ignore", invalid="ignore"):  # (as below)
                return base * (1 + mu), base**2 * c2, base**3 * c3, base**4 * c4
        knots = self.knots if self.cdf is not None else ()
        lk = np.concatenate([[0.0], np.asarray(knots, dtype=np.float64), [1.0]])
        global_mass = np.diff(lk)
        weights = self._segment_masses() / global_mass[None, :]  # (n, segments)
        s = self.scale
        if n == 0:
            e = np.zeros(0)
            return e, e, e, e
        if not self.scale_varies and np.all(s == s[0]):
            per_seg = self.score.segment_moments(knots, float(s[0]))  # (segments, 4)
            raw = row_dot(weights, per_seg)  # raw moments of D, (n, 4)
        else:
            grid, table = self.score.segment_moment_table(knots)
            t = (np.log(np.maximum(s, 1e-12)) - grid[0]) / _LOG_SCALE_STEP
            i0 = np.clip(np.floor(t).astype(np.int64), 0, len(grid) - 2)
            f = np.clip(t - i0, 0.0, 1.0)[:, None, None]
            # The table's entries are infinite where a power of the scores overflows (see
            # segment_moment_table): a task on a grid point beside one (f 0, or 1 past the
            # grid's end) takes the point's own, not inf * 0, a NaN.
            # (Told by the table, a few hundred numbers: the selects cost a batch's moments a third more.)
            lo, hi = table[i0], table[i0 + 1]
            if np.isfinite(table).all():
                tab = lo * (1 - f) + hi * f  # (n, segments, 4)
            else:
                with np.errstate(invalid="ignore"):
                    tab = np.where(f == 0.0, lo, np.where(f == 1.0, hi, lo * (1 - f) + hi * f))
            # C-ordered, as row_inner: each task's sum in one order whatever the batch.
            with np.errstate(over="ignore", invalid="ignore"):
                raw = (np.einsum("ns,nsj->nj", np.ascontiguousarray(weights), np.ascontiguousarray(tab))
                       * (s[:, None] ** np.arange(1, 5)[None, :]))
        # Infinite raw moments (and their powers) are those of tasks whose scores reach past
        # the log bounds: _compute_moments gives them the quadrature's moments. Put together
        # here they overflowed, or made inf - inf, with a RuntimeWarning in the service's log
        # at every such training.
        with np.errstate(over="ignore", invalid="ignore"):
            mu = raw[:, 0]
            c2 = np.maximum(raw[:, 1] - mu**2, 0.0)
            c3 = raw[:, 2] - 3 * mu * raw[:, 1] + 2 * mu**3
            c4 = np.maximum(raw[:, 3] - 4 * mu * raw[:, 2] + 6 * mu**2 * raw[:, 1] - 3 * mu**4, 0.0)
            base = np.exp(self.location + s * self.score.center())
            return base * (1 + mu), base**2 * c2, base**3 * c3, base**4 * c4

    # ------------------------------------------------------------------ sums

    def _node_values(self, rows: np.ndarray, atoms: int = _SUM_ATOMS, stratum: np.ndarray | None = None,
                     strata: np.ndarray | None = None) -> list["_SumBlock"]:
        """These tasks' runtimes in the probability bins of ``_sum_nodes(atoms)``, each task
        a row of its own: at each bin's middle, or, for a task of ``stratum`` (of
        ``strata``), at the middle of that stratum of each bin."""
        # A task alone in its row: finer tail bins (a two-task total's 0.999 quantile was 12%
        # low in value; a bin's tasks sample theirs at strata).
        u, w, e = _sum_nodes(atoms, fine_tails=stratum is None)
        # The middles of the outer bins of ``_SUM_ATOMS``: no level goes further into the
        # tails, where a far tail extrapolated past the scores would stretch the grid.
        reach = _sum_nodes()[0][[0, -1]]
        part = self.subset(rows)
        if stratum is not None:
            levels = np.clip(e[None, :-1] + w[None, :] * ((stratum + 0.5) / strata)[:, None], *reach)
        else:
            # A bin across which some task's runtime jumps (the start of a rare slow mode)
            # is split: its middle's value gave the slow mode up to a bin's mass too much
            # or too little (a 100-task total's quantiles 0.03 off in probability, a
            # 1000-task total's median 3% low). Strata do that for a bin's tasks.
            jump = _jumps(part._edge_rises(e, reach).max(axis=0))
            if jump.any():
                u, w = _split_bins(e[:-1], w, jump)
            levels = np.clip(u, *reach)
        return [_SumBlock(u, w, part._values_at(levels), np.arange(len(rows)))]

    def _edge_rises(self, e: np.ndarray, reach: np.ndarray) -> np.ndarray:
        """Each task's rise in log runtime across each probability bin of edges ``e`` (within
        ``reach``): (tasks, bins)."""
        return np.diff(self.score_quantiles(np.clip(e, *reach)), axis=1) * self.scale[:, None]

    def _values_at(self, levels: np.ndarray) -> np.ndarray:
        """Each task's runtime at ``levels`` (the same for every task, or a row per task;
        non-decreasing: tails included), within the log bounds: (tasks, levels)."""
        z = self.score_quantiles(levels)
        return np.exp(np.clip(self.score.log_runtimes(self.location[:, None], self.scale[:, None], z) + self._spread_at(levels),
                              *self.log_bounds))

    def _sum_table(self, rows: np.ndarray) -> "_SumTable | None":
        table = _RuntimeSumTable(self, rows)
        return table if table.size() <= _SUM_TABLE_MAX_VALUES else None


# Probability bins on which a stored quantile function's own mean is taken (within 0.01%
# of that on _SUM_ATOMS for a table of LLM tasks and one of a model with a slow mode, at
# a sixteenth of the cost).
_STRETCH_ATOMS = 32
# The most a stored tail's excess above its highest stored level is scaled up by, to reach
# the stored mean (a flat stored tail cannot take a mean that lies far above it).
_MAX_TAIL_SCALE = 1e3
# The bend of a stored quantile function that is all but a step (see StoredQuantileDistribution).
_STEP_BEND = 1e3
# Gauss-Legendre nodes over the normal score of a stored quantile function's tails, out to
# the levels 1e-12 and 1 - 1e-12 within which it is read (see StoredQuantileDistribution).
_TAIL_GAUSS = np.polynomial.legendre.leggauss(12)
_TAIL_SCORE = float(-ndtri(1e-12))


@dataclass
class StoredQuantileDistribution(TaskDistributions):
    """Tasks known by a quantile function each and their moments, such as a lookup table's
    records (their stored quantiles interpolated): ``quantile(rows, levels, bend)`` gives the
    values of the tasks ``rows`` (indices into what ``quantile`` knows) at ``levels``,
    (rows, levels), non-decreasing along the levels and finite at 0 and 1; ``levels`` is
    one array for all, or (rows, k), increasing along each row.

    A total is summed as a model's tasks are (the same grid, bins and bounds), each task's
    quantile function brought to its stored mean, which is the model's: a few stored
    levels, interpolated and extrapolated, make a mean of their own (of a model with a rare
    slow mode, from 2% below to 47% above the model's), which a long queue's total would add
    up (its median 8.5% high for 100 tasks). The part above the highest stored level
    (``top_level``, at ``top_value``: the tail extrapolated from the two outermost) takes the
    difference: its excess over ``top_value`` is scaled (``tail_scale``, at least 0). Where
    the body's mean is above the stored one even with that tail flat (a right-skewed
    record, linearly interpolated between a median of 5 ms and a 0.95 quantile of 60), the
    interpolation between stored levels is bent (``bend``, see :func:`~.lookup.quantile_function`),
    which keeps every stored quantile; and only what that cannot take stretches the whole
    function (``stretch``). Stretched whole, a record whose two outermost levels
    straddle a slow mode's start (0.975 at 8.3 ms, 0.99 at 58.5), and whose extrapolated tail
    reached 84,641 ms at 0.9999, had its body shrunk 18 times: two such tasks totalled a
    median of 4.7 ms against the model's 8.9, below the sum of their 5% quantiles.
    A normal law from the moments, which tables used before, put the median of two tasks
    of that model at 2.2 times the model's total's (29.6 ms for 13.6).
    """

    quantile: Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]  # (rows, levels, bend)
    rows: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    shared_log_sd: float = 0.0
    top_level: np.ndarray | None = None  # per task: its highest stored level (None: the tail is not told apart)
    top_value: np.ndarray | None = None  # per task: its quantile there
    tail_scale: np.ndarray | None = None  # per task: what its excess above top_value is multiplied by
    # Per task: the integral of its stored quantile function's rise over each interpolated
    # stretch, sum((upper level - lower level) * (upper value - lower value)) up to top_level
    # (None: no bend). Bent by ``bend`` the stretches' mean falls by body_spread * (1/2 - 1/(bend + 1)).
    body_spread: np.ndarray | None = None
    # Per task: its lowest stored level and the integral of its stored quantile function from
    # there to top_level (linear between stored levels: exact by trapezoids). With both, the
    # mean with a flat tail is that plus the tails' integrals over their normal scores (None:
    # a 32-bin quadrature of the whole, which a steep step between two close stored levels,
    # a slow mode's start, threw off by a tenth of the mean).
    bottom_level: np.ndarray | None = None
    body_mean: np.ndarray | None = None
    bend: np.ndarray | None = None  # per task: the power of the interpolation between its stored levels
    stretch: np.ndarray | None = None  # per task: what its whole quantile function is then multiplied by
    # The tail above ``top_level`` kept as extrapolated (``tail_scale`` 1), the body bent (or the
    # whole stretched) to bring the mean to the stored one: a running task's time left, whose
    # tail, flattened, put all the mass above the highest stored level on it (past it, stuck),
    # and scaled up to carry a mean above the body's (by up to 1,000 times), put a task past it
    # hundreds of times further from done than its record's answer does.
    kept_tail: bool = False
    moments_are_own = False  # the stored mean and error are the model's

    def __post_init__(self) -> None:
        n = len(self.rows)
        if self.top_level is None:
            self.top_level, self.top_value = np.ones(n), np.zeros(n)  # no tail of its own: all body
        if self.stretch is None:
            u, w, _ = _sum_nodes(_STRETCH_ATOMS)
            # Once per record: a queue often holds many tasks of one.
            records, first, back = np.unique(self.rows, return_index=True, return_inverse=True)

            @functools.cache
            def quadrature_values() -> np.ndarray:
                return self.quantile(records, u) if n else np.zeros((0, len(u)))

            if self.body_mean is not None and self.bottom_level is not None:
                base, excess = self._flat_mean_and_excess(records, first)
            else:
                x = quadrature_values()
                top_level, top_value = self.top_level[first][:, None], self.top_value[first][:, None]
                tail = u[None, :] > top_level
                base = row_dot(np.where(tail, top_value, x), w)
                excess = row_dot(np.where(tail, x - top_value, 0.0), w)
            mean = self.mean[first]
            if self.kept_tail:
                scale = np.ones(len(records))
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    scale = np.clip((mean - base) / excess, 0.0, _MAX_TAIL_SCALE)
            scale = np.where((excess > 0) & np.isfinite(scale), scale, 1.0)
            scale = np.where(mean > 0, scale, 1.0)  # (a stored mean of 0 says nothing of the tail)
            own = base + scale * excess
            bend = np.ones(len(records))
            if self.body_spread is not None:
                # Bent, the interpolated stretches' mean falls by spread * (1/2 - 1/(bend + 1)):
                # the bend that brings the mean with a flat tail (kept: as extrapolated) down
                # to the stored one, where one does (a step, each level at the
                # stored one below it, at the most).
                spread = self.body_spread[first]
                tailed = own if self.kept_tail else base
                heavy = (tailed > mean) & (mean > 0) & (spread > 0) & np.isfinite(tailed)
                with np.errstate(divide="ignore", invalid="ignore"):
                    inverse = np.where(heavy, 0.5 - (tailed - mean) / spread, 0.5)  # 1 / (bend + 1)
                    k = np.where(inverse > 0, 1.0 / inverse - 1.0, _STEP_BEND)
                bend = np.where(heavy, np.clip(np.nan_to_num(k, nan=1.0), 1.0, _STEP_BEND), 1.0)
                own = np.where(heavy, tailed - spread * (0.5 - 1.0 / (bend + 1.0)), own)
            ok = (own > 0) & np.isfinite(own) & (mean > 0)
            stretch = np.where(ok, mean / np.where(ok, own, 1.0), 1.0)
            at = back.ravel()
            self.tail_scale, self.bend, self.stretch = scale[at], bend[at], stretch[at]
            # A stored error of 0 beside quantiles that spread (a hand-written record): the sum
            # sizes its grid by the variances, and with none it put all its mass at the mean
            # (two tasks of 4 to 35 ms each totalled 24 ms at every level). The quantiles'
            # own variance stands in for it there.
            flat_var = (self.var <= 0) & np.isfinite(self.var)
            if flat_var.any():
                x = quadrature_values()
                spread_var = np.maximum(row_dot(x * x, w) - np.square(row_dot(x, w)), 0.0) * np.square(stretch)
                self.var = np.where(flat_var, spread_var[at], self.var)

    def _flat_mean_and_excess(self, records: np.ndarray, first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per record: its mean with the tail above ``top_level`` flat (the body's exact
        integral, the lower tail's and the flat tail's), and the tail's excess over it."""
        assert self.body_mean is not None and self.bottom_level is not None and self.top_level is not None
        assert self.top_value is not None
        t, g = _TAIL_GAUSS
        bottom, top = ndtri(self.bottom_level[first]), ndtri(self.top_level[first])
        top_value, top_mass = self.top_value[first], 1.0 - self.top_level[first]
        # Both tails' nodes at once, increasing along each row: the lower's, then the upper's.
        lo = np.column_stack([np.full(len(records), -_TAIL_SCORE), top])
        half = np.maximum(np.column_stack([bottom, np.full(len(records), _TAIL_SCORE)]) - lo, 0.0) / 2.0
        z = (lo[:, :, None] + half[:, :, None] * (t + 1.0)).reshape(len(records), -1)
        weights = (half[:, :, None] * g).reshape(len(records), -1) * np.exp(-z * z / 2.0) / math.sqrt(2.0 * math.pi)
        parts = (self.quantile(records, np.clip(ndtr(z), 1e-12, 1.0 - 1e-12), None) * weights).reshape(len(records), 2, -1)
        lower, upper = parts.sum(axis=2).T
        return lower + self.body_mean[first] + top_value * top_mass, upper - top_value * top_mass

    def _brought(self, x: np.ndarray, u: np.ndarray, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Values ``x`` of the tasks ``rows`` at levels ``u`` (shared, or one row per task) as
        they are summed: the tail's excess scaled, then the whole stretched."""
        top_level, top_value = self.top_level[rows][:, None], self.top_value[rows][:, None]
        x = np.where(u > top_level, top_value + self.tail_scale[rows][:, None] * (x - top_value), x)
        return x * self.stretch[rows][:, None]

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, rows: np.ndarray) -> "StoredQuantileDistribution":
        assert self.stretch is not None and self.tail_scale is not None
        return replace(self, rows=self.rows[rows], mean=self.mean[rows], var=self.var[rows],
                       top_level=self.top_level[rows], top_value=self.top_value[rows], tail_scale=self.tail_scale[rows],
                       body_spread=None if self.body_spread is None else self.body_spread[rows],
                       bottom_level=None if self.bottom_level is None else self.bottom_level[rows],
                       body_mean=None if self.body_mean is None else self.body_mean[rows],
                       bend=self.bend[rows], stretch=self.stretch[rows])

    def distinct(self) -> tuple[np.ndarray, np.ndarray]:
        """Tasks of the same record, mean and variance are one distribution (a queue's
        tasks often share a few records)."""
        if len(self) <= 1:
            return super().distinct()
        key = np.column_stack([self.rows.astype(np.float64), self.mean, self.var])
        _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
        return first, np.ravel(inverse)

    def quantiles(self, levels: np.ndarray | list[float]) -> np.ndarray:
        """Each task's quantiles, brought to its mean as it is summed (so that they bound the sum)."""
        check_levels_in_unit_interval(levels)
        assert self.stretch is not None
        u = np.asarray(levels, dtype=np.float64)
        return self._brought(self.quantile(self.rows, u, self.bend), u[None, :])

    def task_quantiles(self, levels: np.ndarray, spread_levels: np.ndarray | None = None) -> np.ndarray:
        assert self.stretch is not None
        return self._brought(self.quantile(self.rows, levels, self.bend), levels)

    def moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        zero = np.zeros(len(self.rows))  # (the third and fourth are not used by sums)
        return self.mean, self.var, zero, zero

    def _node_values(self, rows: np.ndarray, atoms: int = _SUM_ATOMS, stratum: np.ndarray | None = None,
                     strata: np.ndarray | None = None) -> list["_SumBlock"]:
        """As :meth:`RuntimeDistribution._node_values`, without the split of steep bins
        (a stored quantile function is linear between its levels), each task stretched."""
        assert self.stretch is not None
        u, w, e = _sum_nodes(atoms, fine_tails=stratum is None)
        reach = _sum_nodes()[0][[0, -1]]
        part = self.rows[rows]
        if stratum is None:
            levels = np.clip(u, *reach)[None, :]
        else:  # each task at its own stratum of every bin: levels of its own, (tasks, nodes)
            levels = np.clip(e[None, :-1] + w[None, :] * ((stratum + 0.5) / strata)[:, None], *reach)
        x = self.quantile(part, levels[0] if stratum is None else levels, self.bend[rows])
        return [_SumBlock(u, w, self._brought(x, levels, rows), np.arange(len(rows)))]


@dataclass
class MixedDistribution(TaskDistributions):
    """The distributions of a batch whose tasks different models answer (a model split by
    regime: first runs of an input shape and repeats): ``parts[p]`` holds the tasks of
    part ``p`` in the batch's order, ``part_of`` says each task's part and ``index`` its
    place there. Quantiles and moments are each task's own; a total sums every task's own
    discretisation, so a queue of first runs and repeats is one convolution."""

    parts: tuple[RuntimeDistribution, ...]
    part_of: np.ndarray
    index: np.ndarray
    shared_log_sd: float = 0.0
    _moments: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False)

    @classmethod
    def of(cls, parts: tuple[RuntimeDistribution, ...], part_of: np.ndarray, shared_log_sd: float) -> "TaskDistributions":
        """The batch whose task ``i`` is the next task of ``parts[part_of[i]]`` (each part's
        tasks in the batch's order); a batch of one part is that part."""
        used = np.unique(part_of)
        if len(used) <= 1:
            return replace(parts[int(used[0]) if len(used) else 0], shared_log_sd=shared_log_sd)
        index = np.empty(len(part_of), dtype=np.int64)
        for p in range(len(parts)):
            mine = part_of == p
            index[mine] = np.arange(int(mine.sum()))
        return cls(tuple(parts), np.asarray(part_of, dtype=np.int64), index, shared_log_sd)

    def __len__(self) -> int:
        return len(self.part_of)

    def _members(self) -> list[tuple[int, np.ndarray]]:
        """Each part with the batch's places of its tasks (in the part's order)."""
        return [(p, np.flatnonzero(self.part_of == p)) for p in range(len(self.parts))]

    def subset(self, rows: np.ndarray) -> "TaskDistributions":
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return replace(self.parts[0].subset(rows), shared_log_sd=self.shared_log_sd)
        part_of = self.part_of[rows]
        parts = tuple(part.subset(self.index[rows[part_of == p]]) for p, part in enumerate(self.parts))
        return MixedDistribution.of(parts, part_of, self.shared_log_sd)

    def quantiles(self, levels: np.ndarray | list[float]) -> np.ndarray:
        out = np.empty((len(self), len(levels)))
        for p, at in self._members():
            if len(at):
                out[at] = self.parts[p].quantiles(levels)
        return out

    def task_quantiles(self, levels: np.ndarray, spread_levels: np.ndarray | None = None) -> np.ndarray:
        out = np.empty(np.shape(levels))
        for p, at in self._members():
            if len(at):
                out[at] = self.parts[p].task_quantiles(levels[at], None if spread_levels is None else spread_levels[at])
        return out

    def moment_levels(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.zeros(len(self)), np.ones(len(self))
        for p, at in self._members():
            if len(at):
                lo[at], hi[at] = self.parts[p].moment_levels()
        return lo, hi

    def moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self._moments is None:
            out = tuple(np.empty(len(self)) for _ in range(4))
            for p, at in self._members():
                if len(at):
                    for o, got in zip(out, self.parts[p].moments()):
                        o[at] = got
            self._moments = out
        return self._moments

    def _node_values(self, rows: np.ndarray, atoms: int = _SUM_ATOMS, stratum: np.ndarray | None = None,
                     strata: np.ndarray | None = None) -> list["_SumBlock"]:
        rows = np.asarray(rows, dtype=np.int64)
        part_of = self.part_of[rows]
        blocks = []
        for p, part in enumerate(self.parts):
            at = np.flatnonzero(part_of == p)
            if not len(at):
                continue
            blocks += _moved(part._node_values(self.index[rows[at]], atoms, None if stratum is None else stratum[at],
                                               None if strata is None else strata[at]), at)
        return blocks

    def _sum_table(self, rows: np.ndarray) -> "_SumTable | None":
        part_of = self.part_of[rows]
        tables = [part._sum_table(self.index[rows[part_of == p]]) if (part_of == p).any() else None
                  for p, part in enumerate(self.parts)]
        return _MixedSumTable(self, tables)


# The level a running task's elapsed time has reached is searched for on the probit axis
# within +-_REACH_PROBIT (where quantile functions stop: 1e-12 and 1 - 1e-12), cut into
# _REACH_CELLS cells: each pass evaluates a grid of points across the bracket at once and
# keeps the cell the time falls in, to one cell (8.4e-7 on that axis) in all, then it is
# interpolated there, linearly in log runtime (exact for a lognormal task). A few tasks
# (at most _REACH_FEW) in 3 passes of 129 points and one of 9, where each call's own cost is
# what counts (halving the bracket 20 times, a call a halving, a single running task's
# prediction took a median 1.63 ms; so, 0.64 ms); more in 8 passes of 9 points, 72 values a
# task rather than 396 (2,895 running tasks at once took 9 µs a task, against 54). Tasks _REACH_CHUNK
# at a time. Every point is a whole number of cells from the bracket's start, its probit
# worked out from that number alone: both ways end in the same cell, read at the same
# points, so a task's level does not depend on how many others were asked with it (the
# bracket's ends, interpolated pass by pass, had differed in the last bits, and a queue's
# total within a request of many queues moved by 1e-10 from its batch's).
_REACH_PROBIT = 7.035
_REACH_CELLS = 1 << 24  # 128 ** 3 * 8 and 8 ** 8: both ways' passes end on single cells
# The points of each pass: a few tasks', then more tasks'. A cell of 1 << 21 (the last pass
# of 9 points left out) was up to 2.7e-6 wide in probability about the median, and where a
# task's quantile function bends inside it (a stored level of a table, a training score of a
# model of a few rows) the level interpolated there was off by up to that: a model of runs of 10,
# 10.1 and 1,000 ms read 0.2500012 at its own 0.25 quantile.
_REACH_FEW_PASSES = (129, 129, 129, 9)
_REACH_MANY_PASSES = (9,) * 8
_REACH_FEW = 16
_REACH_CHUNK = 4096
_REACH_CELL = 2.0 * _REACH_PROBIT / _REACH_CELLS
_REACH_STEPS = np.arange(129, dtype=np.int64)
_REACH_ENDS = ndtr(np.array([-_REACH_PROBIT, _REACH_PROBIT]))  # the levels of the search's first and last cells
# The first pass over a few tasks reads the same 129 levels whatever the time: worked out
# once, for one task's search (a single prediction's deadline), where ndtr's cost counts.
_REACH_FIRST_LEVELS = ndtr(_REACH_STEPS * (_REACH_CELLS // 128) * _REACH_CELL - _REACH_PROBIT)
_REACH_FIRST_LEVELS.setflags(write=False)


def levels_reached(tasks: TaskDistributions, elapsed: np.ndarray) -> np.ndarray:
    """``F_i(elapsed_i)`` for each task: the level of its runtime distribution that its elapsed
    time has reached, the share of such tasks that would have finished by then (found on its
    quantile function, all tasks at once)."""
    n = len(tasks)
    return levels_of_rows(lambda rows, levels: (tasks if len(rows) == n else tasks.subset(rows)).task_quantiles(levels),
                          elapsed)


def levels_of_rows(quantiles_of: Callable[[np.ndarray, np.ndarray], np.ndarray], values: np.ndarray) -> np.ndarray:
    """``F_i(values_i)`` for each row ``i`` of a quantile function that ``quantiles_of(rows,
    levels)`` evaluates for the rows ``rows`` (levels of shape (len(rows), k)), found as
    :func:`levels_reached` finds them, _REACH_CHUNK rows at a time."""
    n = len(values)
    out = np.empty(n)
    for a in range(0, n, _REACH_CHUNK):
        rows = np.arange(a, min(a + _REACH_CHUNK, n))
        out[rows] = _levels_at(lambda levels: quantiles_of(rows, levels), values[rows])
    return out


def _levels_at(quantile_rows: Callable[[np.ndarray], np.ndarray], elapsed: np.ndarray) -> np.ndarray:
    """``F_i(elapsed_i)`` for each row of a quantile function evaluated row by row
    (``quantile_rows(levels)``, levels of shape (rows, k), gives the rows' values there,
    non-decreasing along each row): see :func:`levels_reached`."""
    n = len(elapsed)
    if n == 1:
        return _level_at_one(quantile_rows, elapsed)
    rows = np.arange(n)
    lo, hi = np.zeros(n, dtype=np.int64), np.full(n, _REACH_CELLS, dtype=np.int64)  # in cells
    for stage, points in enumerate(_REACH_FEW_PASSES if n <= _REACH_FEW else _REACH_MANY_PASSES):
        steps = np.arange(points, dtype=np.int64)
        at = lo[:, None] + steps[None, :] * ((hi - lo) // (points - 1))[:, None]
        q = quantile_rows(ndtr(at * _REACH_CELL - _REACH_PROBIT))  # non-decreasing along each row
        # F(e) = P(T <= e): a runtime the model repeats (an atom) that equals the time run is
        # one such tasks would have finished by now (T > e rules it out).
        passed = (q <= elapsed[:, None]).sum(axis=1)
        if stage == 0:
            none, every = passed == 0, passed == points
        below, above = np.clip(passed - 1, 0, points - 1), np.clip(passed, 0, points - 1)
        lo, hi, q_lo, q_hi = at[rows, below], at[rows, above], q[rows, below], q[rows, above]
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.log(elapsed / q_lo) / np.log(q_hi / q_lo)
    t_lo = lo * _REACH_CELL - _REACH_PROBIT
    reached = ndtr(t_lo + np.clip(np.nan_to_num(share, nan=0.5), 0.0, 1.0) * ((hi * _REACH_CELL - _REACH_PROBIT) - t_lo))
    # Not even the lowest quantile passed: none of such tasks would have finished; every one: all.
    return np.where(none, 0.0, np.where(every, 1.0, reached))


def _level_at_one(quantile_rows: Callable[[np.ndarray], np.ndarray], elapsed: np.ndarray) -> np.ndarray:
    """:func:`_levels_at` of one row: the same passes (of a few tasks: 129 points, 3 times, then 9),
    its bookkeeping in plain numbers and its first pass's levels worked out once (the
    vectorised bookkeeping cost a lone task's deadline twice its quantiles' evaluations).
    It reads the same levels and compares alike, so it ends in the same cell: the same level."""
    value = elapsed[0]
    lo, hi = 0, _REACH_CELLS
    for stage, points in enumerate(_REACH_FEW_PASSES):
        at = lo + _REACH_STEPS[:points] * ((hi - lo) // (points - 1))
        levels = _REACH_FIRST_LEVELS if stage == 0 else ndtr(at * _REACH_CELL - _REACH_PROBIT)
        q = quantile_rows(levels[None, :])[0]
        passed = int(np.count_nonzero(q <= value))
        if stage == 0 and passed in (0, points):
            return np.array([0.0 if passed == 0 else 1.0])
        below, above = max(passed - 1, 0), min(passed, points - 1)
        lo, hi, q_lo, q_hi = int(at[below]), int(at[above]), q[below], q[above]
    # The last cell read as the vectorised search reads it, operation for operation, on numpy
    # scalars and floats (its array calls cost a lone search as much as one of its passes).
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.log(value / q_lo) / np.log(q_hi / q_lo)
    share = 0.5 if share != share else min(max(float(share), 0.0), 1.0)
    t_lo = lo * _REACH_CELL - _REACH_PROBIT
    return np.array([ndtr(t_lo + share * ((hi * _REACH_CELL - _REACH_PROBIT) - t_lo))])


# The level reached at which a running task is stuck (1 to ten decimals): nothing is left that
# the model can tell.
_STUCK_LEVEL = 1.0 - 5e-11


@dataclass
class RemainingDistribution(TaskDistributions):
    """The time left of tasks of which some have already run for a while: task ``i``, run for
    ``elapsed[i]`` ms (0: not started), is its runtime ``T_i`` given ``T_i > elapsed[i]``, less
    ``elapsed[i]``. Its quantile at ``tau`` is ``Q_i(p_i + tau (1 - p_i)) - elapsed[i]`` where
    ``p_i = reached[i] = F_i(elapsed[i])``; its moments are a quadrature over those quantiles,
    and a total sums it as any task. Tasks not started are ``tasks``' own.

    A task past every level its model reaches (``reached`` 1 to ten decimals: past the far
    tail extrapolated from the training scores, or past the model's runtime bound) has
    nothing left that the model can tell: its time left is 0 at every level."""

    tasks: TaskDistributions
    elapsed: np.ndarray
    reached: np.ndarray
    shared_log_sd: float = 0.0
    _moments: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False)

    @classmethod
    def of(cls, tasks: TaskDistributions, elapsed: np.ndarray) -> "RemainingDistribution":
        """``tasks``, of which those with a positive ``elapsed`` have run that long."""
        elapsed = np.asarray(elapsed, dtype=np.float64)
        reached = np.zeros(len(elapsed))
        running = np.flatnonzero(elapsed > 0)
        if len(running):
            found = levels_reached(tasks.subset(running), elapsed[running])
            # 1 to ten decimals is 1: stuck. (Run to its 1 - 3e-11 quantile, 385 ms, a task of a
            # median of 100 ms was answered a median of 10 ms left and 53 at 0.99, off the far
            # tail's last stretch, and not stuck until it ran past 1 - 1e-12, 438 ms.)
            reached[running] = np.where(found >= _STUCK_LEVEL, 1.0, found)
        return cls(tasks, elapsed, reached, tasks.shared_log_sd)

    def __len__(self) -> int:
        return len(self.elapsed)

    def subset(self, rows: np.ndarray) -> "RemainingDistribution":
        return RemainingDistribution(self.tasks.subset(rows), self.elapsed[rows], self.reached[rows], self.shared_log_sd)

    def _running(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Of ``rows`` (every task: None), the places of those not started and of those running."""
        started = self.elapsed > 0 if rows is None else self.elapsed[rows] > 0
        return np.flatnonzero(~started), np.flatnonzero(started)

    def _left(self, rows: np.ndarray, levels: np.ndarray, lo: np.ndarray | None = None,
              hi: np.ndarray | None = None) -> np.ndarray:
        """The time left of the running tasks ``rows`` at levels of their own (rows, k): each
        row increasing, within [0, 1]; with ``lo`` and ``hi`` (per task), its score's levels
        kept within them (a spread term's are not, as a whole runtime's moments take it)."""
        p = self.reached[rows][:, None]
        v = np.minimum(p + levels * (1.0 - p), 1.0)
        if lo is None or hi is None:
            x = self.tasks.subset(rows).task_quantiles(v)
        else:
            kept = np.minimum(p + np.clip(levels, lo[:, None], hi[:, None]) * (1.0 - p), 1.0)
            x = self.tasks.subset(rows).task_quantiles(kept, spread_levels=v)
        return np.where(p >= 1.0, 0.0, np.maximum(x - self.elapsed[rows][:, None], 0.0))

    def quantiles(self, levels: np.ndarray | list[float]) -> np.ndarray:
        check_levels_in_unit_interval(levels)
        out = self.tasks.quantiles(levels)
        _, running = self._running()
        if len(running):
            levels = np.asarray(levels, dtype=np.float64)
            order = np.argsort(levels)
            out[np.ix_(running, order)] = self._left(running, np.broadcast_to(levels[order], (len(running), len(levels))))
        return out

    def task_quantiles(self, levels: np.ndarray, spread_levels: np.ndarray | None = None) -> np.ndarray:
        out = self.tasks.task_quantiles(levels, spread_levels)
        _, running = self._running()
        if len(running):
            out[running] = self._left(running, levels[running])
        return out

    def moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """As ``tasks``' for tasks not started; of a running task's time left, a quadrature
        over the probability bins a total discretises a lone task with (fine in the tails),
        within the levels ``tasks``' own moments take (see ``moment_levels``); where those
        are stored figures, not the quantile function's own, its spread is brought to
        theirs (see :meth:`_spread_ratio`)."""
        if self._moments is None:
            base = self.tasks.moments()
            out = tuple(np.array(m, dtype=np.float64, copy=True) for m in base)
            _, running = self._running()
            # Run less than the least it takes (nothing ruled out): its runtime less the time run,
            # never below 0: a mean an ulp under that least (a lookup table's stored mean of a
            # runtime that never varies, 5 ms) less 5 ms was a time left of -8.9e-16 ms.
            unmoved = running[self.reached[running] == 0]
            out[0][unmoved] = np.maximum(out[0][unmoved] - self.elapsed[unmoved], 0.0)
            running = running[self.reached[running] > 0]
            u0, w0, _ = _sum_nodes(_SUM_ATOMS, fine_tails=True)
            ratio = None if self.tasks.moments_are_own else self._spread_ratio(running, u0, w0, base[1][running])
            for a in range(0, len(running), _QUADRATURE_CHUNK):
                rows = running[a:a + _QUADRATURE_CHUNK]
                # Within the levels the task's own moments take it to (the observed scores'
                # range: the mass beyond sits on its ends), so that they move continuously from
                # the whole runtime's as it starts.
                levels = self.tasks.subset(rows).moment_levels()
                u, w, x = self._left_nodes(rows, u0, w0, *levels)
                mean = row_dot(x, w)
                d = x - mean[:, None]
                d2 = d * d
                r = 1.0 if ratio is None else ratio[a:a + _QUADRATURE_CHUNK]
                for o, got in zip(out, (mean, r * row_dot(d2, w), r**1.5 * row_dot(d2 * d, w), r * r * row_dot(d2 * d2, w))):
                    o[rows] = got
            self._moments = out  # type: ignore[assignment]
        return self._moments  # type: ignore[return-value]

    def _spread_ratio(self, rows: np.ndarray, u: np.ndarray, w: np.ndarray, var: np.ndarray) -> np.ndarray:
        """Per running task of ``rows``, its whole runtime's variance ``var`` over that of the
        quadrature its time left's moments take, of the whole runtime (1 where either is 0
        or not finite). A lookup table's stored ``error`` is its model's, while the
        quadrature runs over the table's few stored quantiles, interpolated: their spread
        differs, and a task's ``error`` jumped by 12 to 14% as it started. Brought by this
        ratio, the time left's moments start from the whole runtime's. It does not depend on
        the time run: worked out once per distinct task (per chunk, 20,000 running tasks of
        200 records took half as long again)."""
        first, inverse = self.tasks.subset(rows).distinct()
        tasks, var = self.tasks.subset(rows[first]), var[first]
        out = np.ones(len(first))
        for a in range(0, len(first), _QUADRATURE_CHUNK):
            chunk = np.arange(a, min(a + _QUADRATURE_CHUNK, len(first)))
            part = tasks.subset(chunk)
            whole = RemainingDistribution(part, np.zeros(len(chunk)), np.zeros(len(chunk)))
            _, w0, x0 = whole._left_nodes(np.arange(len(chunk)), u, w, *part.moment_levels())
            own = row_dot(np.square(x0 - row_dot(x0, w0)[:, None]), w0)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = var[chunk] / own
            out[chunk] = np.where((own > 0) & (var[chunk] > 0) & np.isfinite(ratio), ratio, 1.0)
        return out[inverse]

    def _node_values(self, rows: np.ndarray, atoms: int = _SUM_ATOMS, stratum: np.ndarray | None = None,
                     strata: np.ndarray | None = None) -> list["_SumBlock"]:
        """As :meth:`StoredQuantileDistribution._node_values` for the running tasks (their
        time left at the same bins' levels), ``tasks``' own for the others."""
        rows = np.asarray(rows, dtype=np.int64)
        waiting, running = self._running(rows)
        blocks = []
        if len(waiting):
            blocks += _moved(self.tasks._node_values(rows[waiting], atoms, None if stratum is None else stratum[waiting],
                                                     None if strata is None else strata[waiting]), waiting)
        if len(running):
            blocks.append(self._running_block(rows, running, atoms, stratum, strata))
        return blocks

    def _running_block(self, rows: np.ndarray, running: np.ndarray, atoms: int = _SUM_ATOMS,
                       stratum: np.ndarray | None = None, strata: np.ndarray | None = None,
                       x: np.ndarray | None = None) -> "_SumBlock":
        """The block of ``_node_values(rows, ...)`` of its running tasks (their places
        ``running`` in ``rows``); ``x``, where given, their values at the bins' middles."""
        u, w, e = _sum_nodes(atoms, fine_tails=stratum is None)
        reach = _sum_nodes()[0][[0, -1]]
        if stratum is None or strata is None:
            u, w, x = self._left_nodes(rows[running], u, w, reach=reach, x=x)
        else:  # each task at its own stratum of every bin
            share = (stratum[running] + 0.5) / strata[running]
            x = self._left(rows[running], np.clip(e[None, :-1] + w[None, :] * share[:, None], *reach))
        return _SumBlock(u, w, x, running)

    def _sum_table(self, rows: np.ndarray) -> "_SumTable | None":
        waiting, running = self._running(rows)
        return _RemainingSumTable(self, self.tasks._sum_table(rows[waiting]) if len(waiting) else None, rows[running])

    def _left_nodes(self, rows: np.ndarray, u: np.ndarray, w: np.ndarray, lo: np.ndarray | None = None,
                    hi: np.ndarray | None = None, reach: np.ndarray | None = None, x: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The time left of the running tasks ``rows`` at the probability nodes ``u`` (the
        middles of bins of widths ``w``) of its own distribution (within ``reach``, where
        given), each task's score kept within its levels [``lo``, ``hi``] as :meth:`_left`
        keeps it: (nodes, widths, values); ``x``, where given, is those at ``u``. A bin next to which some task's
        runtime jumps (a slow mode's start) is split in ``_JUMP_SPLIT``, as
        :meth:`RuntimeDistribution._node_values` splits its own (a rare slow mode's start
        in the middle of a bin put a running task's mean up to 5% off)."""
        def at(u: np.ndarray) -> np.ndarray:
            levels = np.broadcast_to(u if reach is None else np.clip(u, *reach), (len(rows), len(u)))
            return self._left(rows, levels, lo, hi)

        if x is None:
            x = at(u)
        with np.errstate(divide="ignore", invalid="ignore"):
            rise = np.diff(np.log(x + self.elapsed[rows][:, None]), axis=1)
        rise = np.nan_to_num(rise, nan=0.0).max(axis=0) if len(rows) else np.zeros(len(u) - 1)
        steep = np.flatnonzero(rise > _JUMP_LOG_RATIO)
        if not len(steep):
            return u, w, x
        if len(steep) > _JUMP_MAX_BINS // 2:  # the steepest
            steep = np.sort(np.argsort(rise)[-(_JUMP_MAX_BINS // 2):])
        split = np.zeros(len(u), dtype=bool)
        split[steep] = split[steep + 1] = True  # the jump lies in one of the two bins about it
        u, w = _split_bins(u - w / 2, w, split)
        return u, w, at(u)


def _split_bins(start: np.ndarray, w: np.ndarray, split: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probability bins (their starts and widths) with those marked ``split`` cut in
    ``_JUMP_SPLIT`` equal parts, in order: (middles, widths)."""
    start = np.concatenate([start[~split], (start[split][:, None] + w[split][:, None]
                                            * np.arange(_JUMP_SPLIT) / _JUMP_SPLIT).ravel()])
    order = np.argsort(start, kind="stable")
    w = np.concatenate([w[~split], np.repeat(w[split] / _JUMP_SPLIT, _JUMP_SPLIT)])[order]
    return start[order] + w / 2, w


def _bins(log_mean: np.ndarray, log_cv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tasks binned by log mean (``_SUM_BIN_WIDTH`` wide) and log coefficient of variation
    (``_SUM_BIN_CV_WIDTH``), both widths doubled until at most ``_SUM_BINS`` bins are
    occupied: each task's bin, and each bin's count. (By mean alone, a bin could hold one
    wide task among narrow ones, sampled at one stratum of its probability bins: a
    750-task total 0.025 off in probability.)"""
    width, cv_width = _SUM_BIN_WIDTH, _SUM_BIN_CV_WIDTH
    while True:
        cv_code = np.floor((log_cv - log_cv.min()) / cv_width).astype(np.int64)
        key = np.floor((log_mean - log_mean.min()) / width).astype(np.int64) * (int(cv_code.max()) + 1) + cv_code
        _, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
        if len(cnt) <= _SUM_BINS:
            return inv.ravel(), cnt
        width, cv_width = 2 * width, 2 * cv_width


@dataclass
class _SumBlock:
    """Tasks discretised on one node set: runtimes ``x`` (tasks, nodes) at probability
    nodes ``u`` of weights ``w``, and the row of the total's convolution each task is in
    (as ``_node_values`` gives it: each task's place among the tasks it was asked for)."""

    u: np.ndarray
    w: np.ndarray
    x: np.ndarray
    row: np.ndarray

    def at(self, level: float) -> np.ndarray:
        """Each task's value at the first node at or above ``level`` (the last node past it)."""
        return self.x[:, min(int(np.searchsorted(self.u, level)), len(self.u) - 1)]


@dataclass
class _SumRows:
    """The rows of a total's convolution: the row of one task, or of ``size`` of a bin's
    tasks, whose mixture the sum draws ``count`` times."""

    blocks: list[_SumBlock]
    count: np.ndarray  # per row
    size: np.ndarray  # per row

    def multiplicity(self, block: _SumBlock) -> np.ndarray:
        """How many of the sum's draws each task of ``block`` stands for."""
        return self.count[block.row] / self.size[block.row]

    def mixture_weights(self, block: _SumBlock) -> np.ndarray:
        """Each node's probability in its row (a bin's row is its tasks' mixture): (tasks, nodes)."""
        return block.w[None, :] / self.size[block.row][:, None]


def _largest_tasks(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """The places of the ``_BOUND_TASKS`` largest tasks by mean and of those by variance,
    sorted: the tasks whose quantiles a total's bound with the shared factor also reads."""
    k = min(_BOUND_TASKS, len(mean))
    return np.unique(np.concatenate([np.argpartition(mean, -k)[-k:], np.argpartition(var, -k)[-k:]]))


class _PrefixBounds:
    """What bounds the total of each prefix of a queue's ``tasks`` (``TotalDistribution._floor``)
    without reading every task of each prefix: the bound is the most, over the prefix's
    tasks, of a task's quantile above its least value (and, with the shared factor, over its
    largest tasks by mean and variance), so only the tasks that lead it at some level count.
    A prefix's total is given those (the tasks leading it at one of ``_bound_levels()``, the
    most of ``_BOUND_TASKS`` by mean and by variance) and its tasks' least values' sum.
    Given all of a prefix's tasks, each prefix's quantiles and deadline read its tasks
    anew: the completion times of a queue of 10,000 tasks took 19 s, 84 s with the shared
    factor (the square of its length)."""

    def __init__(self, tasks: "TaskDistributions", mean: np.ndarray, var: np.ndarray, shared: bool):
        self.tasks, self.mean, self.var, self.shared = tasks, mean, var, shared
        self.least = tasks.quantiles([_LEAST_LEVEL])[:, 0]
        self.sum_least = np.cumsum(self.least)
        n = len(tasks)
        leader = np.zeros(len(_bound_levels()), dtype=np.int64)
        best = np.full(len(_bound_levels()), -np.inf)
        self.leaders: list[np.ndarray] = []
        # (each task's quantiles above its least value, a slice of tasks at a time)
        for lo in range(0, n, 1024):
            hi = min(n, lo + 1024)
            gain = tasks.subset(np.arange(lo, hi)).quantiles(_bound_levels()) - self.least[lo:hi, None]
            for j in range(hi - lo):
                ahead = gain[j] >= best
                best = np.where(ahead, gain[j], best)
                leader = np.where(ahead, lo + j, leader)
                self.leaders.append(np.unique(leader))

    def bound(self, total: "TotalDistribution", i: int, shared: bool) -> "TotalDistribution":
        """``total``, the sum of the first ``i`` tasks, bounded by them as its own total is."""
        lead = self.leaders[i - 1]
        top = None
        if shared:
            top = _largest_tasks(self.mean[:i], self.var[:i])
            lead = np.union1d(lead, top)
        total.tasks = self.tasks.subset(lead)
        total._floor_parts = (self.least[lead], float(self.sum_least[i - 1]),
                              None if top is None else (self.tasks.subset(top), self.least[top]))
        return total


def _rounding_errors(t: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Rounding's error at each value (``t`` in cells, rounded to ``cell``); none where a
    value's cell number is beyond exact floats."""
    err = cell - t
    err[t >= 2.0**50] = 0.0
    return err


def _residues(cell: np.ndarray, G: int) -> np.ndarray:
    """Each cell number modulo ``G``, the place of its mass on a circular grid. Taken in
    floating point (exact, G a power of 2): a far-tail value's cell number may not fit an integer."""
    return (cell - G * np.floor(cell / G)).astype(np.int64)


@functools.cache
def _blur_frequencies(G: int) -> np.ndarray:
    """``1 - cos(2 pi k / G)`` at the frequencies of a real transform of ``G`` cells: what
    blurs a sum by a variance of one cell squared, times it (``exp(-lost * this)``)."""
    out = 1.0 - np.cos(2.0 * np.pi * np.arange(G // 2 + 1) / G)
    out.flags.writeable = False
    return out


def _unwrapped(total: np.ndarray, low: float, shift: float, h: float,
               lowest: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A sum's CDF from its mass on a circular grid of cells ``h`` wide (cell ``j`` holds the
    labels ``j`` plus any multiple of the grid's length, label ``j`` standing for the value
    ``(j + shift) h``), unwrapped into the window from ``low``, or from the ``lowest`` label
    the sum takes where that is below it: increasing values, the CDF at them. Mass is spread
    evenly within each cell: the CDF is linear between cell edges.

    (A window from the sum's least value, ``low``, may start above its lowest label: each row
    rounds its values to the nearest cell, so the sum's lowest cell lies up to half a cell a
    row below. Its mass then wrapped to the window's top, where it lifted the far quantiles:
    4 tasks of log sd 2, their lowest cell holding 0.17% of the sum, had their total's 0.999
    quantile at the grid's end, 36,000 ms against about 3,000.)"""
    G = len(total)
    k0 = int(np.floor(low / h - shift))
    if lowest is not None:
        k0 = min(k0, lowest)
    cdf = np.cumsum(np.maximum(np.roll(total, -(k0 % G)), 0.0))
    cdf /= cdf[-1]
    return (k0 + np.arange(G + 1) - 0.5 + shift) * h, np.concatenate([[0.0], cdf])


def _lowest_cells(rows: _SumRows, cells: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Each row's lowest cell, ``rows``' values being in the cells ``cells`` (each block's, as
    :meth:`TaskDistributions._cells` gives them)."""
    least = np.full(len(rows.count), np.inf)
    for b, (_, cell) in zip(rows.blocks, cells):
        np.minimum.at(least, b.row, cell[:, 0])
    return least


def _lowest_label(rows: _SumRows, cells: list[tuple[np.ndarray, np.ndarray]]) -> int:
    """The lowest label of the sum of ``rows`` whose values are in the cells ``cells``: each
    row's lowest cell, times its draws, summed."""
    return int(np.floor(float(_lowest_cells(rows, cells) @ rows.count)))


def _first_rows(blocks: list[_SumBlock], i: int, start: int = 0) -> _SumRows:
    """The rows of the sum of the first ``i`` tasks of ``blocks`` (a row per task, by its
    place), or of those from ``start`` on (their rows then counted from it)."""
    kept = []
    for b in blocks:
        mine = (b.row < i) & (b.row >= start)
        if mine.any():
            kept.append(_SumBlock(b.u, b.w, b.x[mine], b.row[mine] - start))
    one = np.ones(i - start, dtype=np.int64)
    return _SumRows(kept, one, one)


# The tasks whose masses _PrefixLowEnds puts on a grid at once. A prefix of at most
# _PREFIX_LOW_END_SHORT tasks has its span rounded up to a power of 2 times the first such
# span asked for, on twice the cells; a longer one's is rounded up to a power of
# _PREFIX_SPAN_STEP times the first of theirs.
_PREFIX_LOW_END_CHUNK = 256
_PREFIX_LOW_END_SHORT = 32
_PREFIX_SPAN_STEP = 2.0 ** 0.25


@dataclass
class _RunningLowEnd:
    """The sum of a queue's first ``done`` tasks on one of :class:`_PrefixLowEnds`' grids,
    and the transforms of some tasks' masses on it (from task ``start`` on)."""

    done: int
    mass: np.ndarray
    start: int = 0
    spectra: np.ndarray | None = None


class _PrefixLowEnds:
    """The first grid of :func:`_low_end` for the sums of a queue's prefixes (each task its
    own row of ``blocks``, whose lowest values are ``least``), on spans rounded up so that
    the prefixes that ask for one such span share one running product of the tasks' masses,
    cut to the grid after each task: each prefix's sum below the grid's end, exactly as
    :func:`_low_end`'s pairwise product is. A rounded span serves the prefixes after the
    first that asks for it, for the cost of one more product of each task (that first one's).

    A prefix of more than ``_PREFIX_LOW_END_SHORT`` tasks has it on a span of the one it asks
    for rounded up to a power of ``_PREFIX_SPAN_STEP`` times the first such span asked for
    (at most 19% wider, its cells as much coarser; at twice, a 3-task sum's 0.001 quantile
    moved 1.2%). Its span grows about as its length, so a rounded span serves the next fifth
    or so of the prefixes. Worked out again for each prefix, the low ends of a queue of
    1,000 tasks with a rare slow mode cost the square of its length (7.9 s).

    A shorter prefix's span grows faster, by half from 2 tasks to 3: it is rounded up to a
    power of 2 times the first such span asked for, on twice ``_LOW_END_GRID`` cells, so
    that its cells are never coarser than on the span it asks for. Each found alone (about
    the tasks' number of products each), they took half the time of 16 queues' completions
    of 50 tasks of a model with a slow mode."""

    def __init__(self, blocks: list[_SumBlock], least: np.ndarray):
        self.blocks = blocks
        self.least = least
        self.units: dict[bool, float] = {}  # the first span asked for, of short prefixes and of long
        self.grids: dict[tuple[bool, int], _RunningLowEnd] = {}

    def of(self, i: int, floor: float, span: float) -> tuple[np.ndarray, np.ndarray, float]:
        """The low end of the sum of the first ``i`` tasks (whose lowest value is ``floor``)
        on a grid spanning at least ``span``: its values and CDF there, and the span of a grid
        of ``_LOW_END_GRID`` cells as fine as that one."""
        short = i <= _PREFIX_LOW_END_SHORT
        step, cells = (2.0, 2 * _LOW_END_GRID) if short else (_PREFIX_SPAN_STEP, _LOW_END_GRID)
        unit = self.units.setdefault(short, span)
        k = math.ceil(math.log(span / unit) / math.log(step) - 1e-9)
        wide = unit * step ** k
        h = wide / cells
        run = self.grids.get((short, k))
        if run is None or run.done > i:
            start = np.zeros(cells)
            start[0] = 1.0
            run = self.grids[short, k] = _RunningLowEnd(0, start)
        for other in self.grids.values():  # (8 MB each: only the grid in use keeps its tasks' transforms)
            if other is not run:
                other.spectra = None
        while run.done < i:
            r = run.done
            if run.spectra is None or not run.start <= r < run.start + len(run.spectra):
                end = min(len(self.least), r + _PREFIX_LOW_END_CHUNK)
                if short:  # (a short prefix's grid serves none past _PREFIX_LOW_END_SHORT tasks)
                    end = min(end, _PREFIX_LOW_END_SHORT)
                masses = _low_end_masses(_first_rows(self.blocks, end, r), self.least[r:end], h, cells)
                run.start, run.spectra = r, np.fft.rfft(masses, 2 * cells, axis=1)
            run.mass = np.maximum(np.fft.irfft(np.fft.rfft(run.mass, 2 * cells) * run.spectra[r - run.start],
                                               2 * cells)[:cells], 0.0)
            run.done += 1
        x, c = _low_end_cdf(run.mass, floor, h)
        return x, c, h * _LOW_END_GRID


def _stratum_keys(j: np.ndarray) -> np.ndarray:
    """Where in [0, 1) the ``j``-th task of a bin (in order of variance) samples: 1/2 for the
    first, then each next pair at ``v`` and ``1 - v``, ``v`` from van der Corput's sequence
    (the bits of the pair's number reversed behind the binary point) halved."""
    pair = (j.astype(np.int64) - 1) // 2
    v = np.zeros(len(j))
    f = 0.25
    bits = np.maximum(pair, 0)
    while bits.any():
        v += f * (bits & 1)
        bits = bits >> 1
        f /= 2
    return np.where(j == 0, 0.5, np.where(j % 2 == 1, v, 1.0 - v))


def _row_powers(a: np.ndarray, count: np.ndarray, times: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Each row of ``a`` to the power of its ``count`` (at least 1) under ``times``, by
    squaring; in place."""
    rows = np.flatnonzero(count > 1)
    if not len(rows):
        return a
    base = a[rows]
    out = base.copy()
    more = count[rows] - 1
    while more.any():
        odd = (more & 1) == 1
        if odd.any():
            out[odd] = times(out[odd], base[odd])
        more = more >> 1
        left = more > 0
        if left.any():
            base[left] = times(base[left], base[left])
    a[rows] = out
    return a


def _truncated_convolution(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row by row, the convolution of two mass functions of values from 0, cut to their grid."""
    G = a.shape[1]
    return np.maximum(np.fft.irfft(np.fft.rfft(a, 2 * G, axis=1) * np.fft.rfft(b, 2 * G, axis=1), 2 * G, axis=1)[:, :G], 0.0)


def _low_end_span(floor: float, cell: float, h: float, edges: np.ndarray, c: np.ndarray) -> float | None:
    """The span above ``floor`` of the next grid on which ``TaskDistributions._low_end_refined``
    finds the low end of a sum's CDF (``c`` at ``edges``, its last grid's cells ``cell`` wide,
    its first's ``h``), or None where it is fine enough."""
    p01, median = np.interp([0.01, 0.5], c + np.arange(len(c)) * 1e-15, edges)
    coarse = p01 - floor < _LOW_END_CELLS * cell or median - p01 < _BULK_CELLS * cell
    span = float(median + 4.0 * cell - floor) / 0.95
    if not (coarse and floor - 4.0 * cell < median < edges[-1]) or (
            cell < h and span > 0.5 * cell * _LOW_END_GRID):  # no finer than the last pass
        zoom = floor + _ZOOM_CELLS * cell
        if np.interp(zoom, edges, c) <= _ZOOM_LEVEL:
            return None
        span = _ZOOM_CELLS * cell / 0.95
    if not floor + span > floor:  # a total of constant tasks: no width left to find it on
        return None
    return span


def _low_end(rows: _SumRows, least: np.ndarray, floor: float, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """The CDF of the sum of ``rows`` (whose lowest values are ``least``, the sum's lowest
    ``floor``) below ``limit``: increasing values and the CDF at them (linear in between).

    Each value is counted above its row's lowest, so every part is positive and the sum,
    counted above the sum of the lowest values, is below ``limit`` only if every part is:
    each part's mass below it on a fine grid, convolved pairwise (a bin's row with itself,
    by squaring, as many times as it is drawn) and cut to the grid after each step, is the
    sum's exactly there. The grid starts where the sum's mass does, not at 0: a total far
    above 0 gets cells that fine relative to its spread. A value's mass is split between
    its two cells (its mean kept) rather than rounded: on this fine a grid it blurs little.
    """
    h = (limit - floor) / _LOW_END_GRID
    pmf = _row_powers(_low_end_masses(rows, least, h), rows.count, _truncated_convolution)
    while len(pmf) > 1:
        odd = pmf[-1:] if len(pmf) % 2 else None
        pairs = pmf[: len(pmf) // 2 * 2]
        pmf = _truncated_convolution(pairs[0::2], pairs[1::2])
        if odd is not None:
            pmf = np.concatenate([pmf, odd])
    return _low_end_cdf(pmf[0], floor, h)


def _low_end_masses(rows: _SumRows, least: np.ndarray, h: float, cells: int = _LOW_END_GRID) -> np.ndarray:
    """Each row's mass (one draw of it) on the ``cells`` cells of :func:`_low_end`'s grid of
    cells ``h`` wide, its values counted above its lowest (``least``): (rows, cells)."""
    G = cells
    R = len(rows.count)
    pmf = np.zeros((R, G + 1))
    for b in rows.blocks:
        t = np.maximum((b.x - least[b.row][:, None]) / h, 0.0)
        inside = t < G - 1
        cell = np.floor(np.where(inside, t, 0.0)).astype(np.int64)
        frac = np.where(inside, t, 0.0) - cell
        w = rows.mixture_weights(b) * inside
        base = b.row[:, None] * (G + 1)
        pmf += (np.bincount((base + cell).ravel(), weights=(w * (1.0 - frac)).ravel(), minlength=R * (G + 1))
                + np.bincount((base + cell + 1).ravel(), weights=(w * frac).ravel(), minlength=R * (G + 1))
                ).reshape(R, G + 1)
    return pmf[:, :G]


def _low_end_cdf(pmf: np.ndarray, floor: float, h: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_low_end`'s answer from the sum's mass on its cells (``h`` wide, from ``floor``)."""
    # Mass at j h stands for [j - 1/2, j + 1/2) h; kept below 0.95 limit, clear of the cut.
    keep = int(0.95 * len(pmf))
    return floor + (np.arange(keep + 1) - 0.5).clip(0.0) * h, np.concatenate([[0.0], np.cumsum(pmf[:keep])])


# A quantile this close (relatively) to a runtime the training data repeated is that runtime.
# exp(log y) is y only to about 1e-15, on either side; far above that, far below any real
# runtime's resolution.
ATOM_TOLERANCE = 1e-9
# Atoms kept: values on at least this share of the rows (and two of them), at most MAX_ATOMS,
# the heaviest. A quantile put an ulp off an atom misses at most that atom's mass in coverage:
# lighter ones are not worth their cost on every prediction.
ATOM_MIN_SHARE = 0.001
MAX_ATOMS = 256


def data_atoms(y: np.ndarray, limit: int = MAX_ATOMS) -> np.ndarray:
    """The runtimes ``y`` repeats (its atoms), sorted: those on at least
    :data:`ATOM_MIN_SHARE` of the rows, the ``limit`` heaviest if more.

    Runtimes recorded to whole milliseconds, or a stage that always takes the same time,
    put mass on single values. A quantile there is such a value itself, but computed as
    exp(log y) it came out an ulp or two off it, on either side: an interval [10.000000000000002,
    10.000000000000002] held none of a thousand runs of exactly 10 ms.
    """
    values, counts = np.unique(np.asarray(y, dtype=np.float64), return_counts=True)
    heavy = counts >= max(2, math.ceil(ATOM_MIN_SHARE * len(y)))
    values, counts = values[heavy], counts[heavy]
    if len(values) > limit:
        values = np.sort(values[np.argsort(-counts, kind="stable")[:limit]])
    return values


def snap_to_atoms(q: np.ndarray, atoms: np.ndarray | None) -> np.ndarray:
    """``q`` with every value within :data:`ATOM_TOLERANCE` of an atom replaced by it (by the
    lowest such atom, as :func:`snap_one` does)."""
    if atoms is None or not len(atoms):
        return q
    candidate = atoms.take(np.searchsorted(atoms, q * (1.0 - ATOM_TOLERANCE)), mode="clip")
    hit = candidate <= q * (1.0 + ATOM_TOLERANCE)
    hit &= candidate >= q * (1.0 - ATOM_TOLERANCE)  # clipped past the last atom: no atom above
    return np.where(hit, candidate, q) if hit.any() else q


def snap_one(v: float, atoms: tuple[float, ...] | None) -> float:
    """:func:`snap_to_atoms` for one value, in plain floats (``atoms`` a sorted tuple)."""
    if not atoms:
        return v
    i = bisect.bisect_left(atoms, v * (1.0 - ATOM_TOLERANCE))
    if i < len(atoms) and atoms[i] <= v * (1.0 + ATOM_TOLERANCE):
        return atoms[i]
    return v


def describe_one(
    location: float,
    scale: float,
    score: ScoreDistribution,
    levels: tuple[float, ...],
    constant_scale: bool,
    knots: tuple[float, ...] | None = None,
    cdf: list[float] | None = None,
    log_bounds: tuple[float, float] = LOG_BOUNDS,
    atoms: tuple[float, ...] | None = None,
    spread: float = 0.0,
) -> tuple[list[float], float, float]:
    """One task's quantiles at ``levels``, mean and standard deviation, in plain floats.

    The same distribution as a one-row :class:`RuntimeDistribution`, without its
    dozens of numpy calls on length-one arrays (a lone prediction's latency).
    ``constant_scale`` says the model's scale never varies, so the moment
    factors of that one scale are cached; otherwise they are interpolated in
    ``log s`` as a batch does. ``spread`` is :class:`RuntimeDistribution`'s.
    """
    if cdf is None:
        z = score.quantile_list(levels)
    else:
        z = _shaped_score_quantiles(score, levels, knots, cdf)
    lo, hi = log_bounds
    if spread > 0:
        extra = [spread * float(ndtri(min(max(v, 1e-12), 1 - 1e-12))) for v in levels]
        q = [math.exp(min(max(score.log_runtime_one(location, scale, v) + e, lo), hi)) for v, e in zip(z, extra)]
    else:
        q = [math.exp(min(max(score.log_runtime_one(location, scale, v), lo), hi)) for v in z]
    if atoms:
        q = [snap_one(v, atoms) for v in q]
    z_low, z_high = _capping_scores(score)
    if (location + scale * z_high + _SPREAD_TOP * spread > hi
            or location + scale * z_low + _SPREAD_LOW * spread < lo):  # as RuntimeDistribution._capped_rows
        # Clipped by the log bounds (far outside the training range): moments of the clipped runtime.
        one = RuntimeDistribution(np.array([location]), np.array([scale]), score, knots if cdf is not None else None,
                                  None if cdf is None else np.array([cdf], dtype=np.float64), log_bounds,
                                  spread=np.array([spread]) if spread > 0 else None)
        mean, std = one.mean_std()
        return q, float(mean[0]), float(std[0])
    if spread > 0:
        # As RuntimeDistribution._spread_moments: at location 0 (kept per scale, spread and
        # shape: the unseen-category tasks of a model whose scale does not vary share them).
        shape = tuple(cdf) if cdf is not None else ()
        mean0, var0 = score._memo(("spread", knots if cdf is not None else None, shape, scale, spread), lambda: tuple(
            float(v[0]) for v in _unit_spread_moments(score, knots if cdf is not None else None,
                                                      np.array([[scale, spread, *shape]]))[:2]))
        f = math.exp(location)
        return q, f * mean0, math.sqrt(f * f * var0)
    base = math.exp(location + scale * score.center())
    if cdf is None and constant_scale:
        mu, c2, _, _ = score.central_factors(scale)
        return q, base * (1 + mu), base * math.sqrt(c2)
    seg_knots = knots if cdf is not None else ()
    if cdf is None:
        weights = [1.0]
    else:
        bounds = [0.0, *cdf, 1.0]
        edges = [0.0, *seg_knots, 1.0]
        weights = [(bounds[k + 1] - bounds[k]) / (edges[k + 1] - edges[k]) for k in range(len(edges) - 1)]
    if constant_scale:
        cols = score.segment_moments_list(seg_knots, scale)  # [j][segment]
        raw1, raw2 = (sum(map(float.__mul__, weights, cols[j])) for j in (0, 1))
    else:
        grid0, table = score.segment_moment_table_list(seg_knots)  # [grid][j][segment]
        t = (math.log(max(scale, 1e-12)) - grid0) / _LOG_SCALE_STEP
        i0 = min(max(math.floor(t), 0), len(table) - 2)
        f = min(max(t - i0, 0.0), 1.0)
        lo, hi = table[i0], table[i0 + 1]

        def interpolated(j: int) -> float:
            # On a grid point (f 0, or 1 past the grid's end) the point's own sum, as a batch
            # takes it: beside an infinite entry (see segment_moment_table) the other's
            # 0 * inf was a NaN, where the batch's moments were finite. (Where both are
            # finite, (1 - 0) * a + 0 * b is a itself: the same bits as before.)
            if f == 0.0:
                return sum(map(float.__mul__, weights, lo[j]))
            if f == 1.0:
                return sum(map(float.__mul__, weights, hi[j]))
            return (1 - f) * sum(map(float.__mul__, weights, lo[j])) + f * sum(map(float.__mul__, weights, hi[j]))

        raw1, raw2 = (interpolated(j) * scale ** (j + 1) for j in (0, 1))
    mu = raw1
    c2 = max(raw2 - mu * mu, 0.0)
    return q, base * (1 + mu), base * math.sqrt(c2)


def _unit_spread_moments(score: ScoreDistribution, knots: tuple[float, ...] | None, rows: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Moments of tasks at location 0, each row of ``rows`` a task's (scale, spread, shape's
    CDF values...), by quadrature (not clipped: the caller's tasks lie within the bounds)."""
    unit = RuntimeDistribution(np.zeros(len(rows)), rows[:, 0], score, knots,
                               rows[:, 2:] if knots is not None else None, spread=rows[:, 1])
    return unit._capped_moments(_SPREAD_NODES)


def _shaped_score_quantiles(score: ScoreDistribution, levels: tuple[float, ...], knots: tuple[float, ...],
                            cdf: list[float]) -> list[float]:
    """``RuntimeDistribution.score_quantiles`` for one task (made non-decreasing as ``quantiles`` does)."""
    F = cdf
    Fp = [0.0, *F, 1.0]
    lp = [0.0, *knots, 1.0]
    order = sorted(range(len(levels)), key=levels.__getitem__)
    highest = score.highest_level()
    zs = []
    for i in order:
        tau = levels[i]
        k = bisect.bisect_left(F, tau)  # segment: the number of knots with F < tau
        f0, f1 = Fp[k], Fp[k + 1]
        width = max(f1 - f0, 1e-300)
        frac = min(max((tau - f0) / width, 0.0), 1.0)
        u = lp[k] + frac * (lp[k + 1] - lp[k])
        # 1 - u apart where the score's far tail reads it (as score_quantiles does): there alone,
        # which a lone task's quantiles paid a fifth more for at every level.
        above = _upper_share(lp[k + 1], lp[k + 1] - lp[k], min(max((f1 - tau) / width, 0.0), 1.0)) if u > highest else None
        zs.append(score.quantile_one(u, above))
    out = [0.0] * len(levels)
    top = -math.inf
    for i, v in zip(order, zs):
        top = max(top, v)
        out[i] = top
    return out


def _upper_share(top: Any, width: Any, rest: Any) -> Any:
    """``1 - u`` for a level ``u`` of Z that a shaped task's level maps into the segment of Z's
    levels of this ``width`` below ``top`` (``rest``: the share of the segment above ``u``, the
    task's CDF at the segment's top less its level, over the segment's mass), worked out
    without taking ``u`` from 1. Near 1, ``1 - u`` kept an ulp of ``u`` as its error, and the
    far tail is read off its log: a task's CDF an ulp apart, as the single-row path and a
    batch may make it, moved the quantile at 1 - 1e-9 by up to 2.2e-7 (relative; 3.9e-8
    between describe_one and a batch of a fitted model's task)."""
    return (1 - top) + rest * width


def _capping_scores(score: ScoreDistribution) -> tuple[float, float]:
    """The scores whose runtimes, past a log bound, make a task's moments those of the clipped
    runtime: its score at the level 0.001, and the highest its moments take."""
    return score.quantile_list((1e-3,))[0], score.quantile_one(score.moment_range()[1])


def _sum_nodes(atoms: int = _SUM_ATOMS, fine_tails: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probability bins for discretising one task, equal ones, finer in the tails: their
    midpoints, their widths and their edges. The outer bin is split 7 times in four, or
    with ``fine_tails`` 28 times by √2, to the same depth."""
    if (atoms, fine_tails) not in _SUM_NODES:
        e = np.linspace(0.0, 1.0, atoms + 1)
        tail = e[1] * (2.0 ** -(np.arange(1, 29) / 2) if fine_tails else 4.0 ** -np.arange(1, 8))
        e = np.unique(np.concatenate([e, tail, 1 - tail]))
        _SUM_NODES[atoms, fine_tails] = ((e[:-1] + e[1:]) / 2, np.diff(e), e)
    return _SUM_NODES[atoms, fine_tails]


def _bound_levels() -> np.ndarray:
    global _BOUND_LEVELS
    if _BOUND_LEVELS is None:
        _BOUND_LEVELS = np.unique(np.concatenate([np.geomspace(1e-9, 0.01, 64), np.linspace(0.01, 0.99, 385),
                                                  1 - np.geomspace(0.01, 1e-9, 64)]))
    return _BOUND_LEVELS


def _variance_times_shared_factor(mean: float, variance: float, tau: float) -> float:
    """Var(M S) for a sum S of this mean and variance times a lognormal M of mean 1 and log
    standard deviation ``tau``, independent of S."""
    return math.exp(tau * tau) * variance + math.expm1(tau * tau) * mean * mean


def _times_shared_factor(edges: np.ndarray, c: np.ndarray, tau: float, bound: np.ndarray | None = None,
                         cells: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The CDF of ``M S`` at increasing values, from that of ``S`` (``c`` at ``edges``, linear
    in between; found on a grid of ``cells`` cells), ``log M ~ N(-tau^2 / 2, tau^2)``
    independent of ``S``.

    ``bound`` holds some tasks' quantiles at :func:`_bound_levels` (one row each):
    ``S`` is at least each of them, so its CDF is at most theirs, which resolves the
    low end of a total that the even grid's cells are too wide for, and its far tail
    beyond the grid (the log grid reaches the tasks' quantiles at 1 - 1e-9).

    On a log scale the factor adds a normal variable: ``log S``'s mass, laid on an
    even grid of log values, is blurred by a normal kernel (one full convolution, so
    no mass is lost off either end). The result stays on that log grid, where its
    resolution is relative: a wide factor's long right tail needs no more cells.
    """
    G = len(edges) - 1 if cells is None else cells
    # Runtimes are positive: the log grid starts where the total's mass does (any mass
    # below a billionth of its top is put there).
    lo = float(np.interp(1e-12, c, edges)) if c[1] < 1e-12 else float(edges[0])
    lo = max(lo, edges[-1] * 1e-9, 1e-300)
    # Cells fine enough for S's shape on a log scale, or for the kernel if it is far wider
    # (S's detail is then blurred away): 2G + 1 values over S's span, a kernel of at most
    # 1201; then on, up to 2G more, to the bounding tasks' far tail (any mass past it is
    # put on the last value).
    span = math.log(edges[-1]) - math.log(lo)
    du = max(span / (2 * G), tau / 100) if span > 0 else tau / 100
    if bound is not None:
        span = max(span, min(math.log(max(float(bound.max()), 1e-300)) - math.log(lo), span + 2 * G * du))
    u = math.log(lo) + du * np.arange(int(math.ceil(span / du)) + 1)
    F = np.interp(np.exp(u), edges, c, left=0.0, right=1.0)
    if bound is not None:
        levels = _bound_levels()
        for row in np.log(np.maximum(bound, 1e-300)):
            F = np.minimum(F, np.interp(u, row, levels, left=0.0, right=1.0))
    F[-1] = 1.0
    mass = np.diff(F, prepend=0.0)
    half = int(math.ceil(6.0 * tau / du))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * du / tau) ** 2)
    size = len(mass) + len(kernel) - 1
    nfft = 1 << (size - 1).bit_length()
    blurred = np.fft.irfft(np.fft.rfft(mass, nfft) * np.fft.rfft(kernel / kernel.sum(), nfft), nfft)[:size]
    blurred = np.maximum(blurred, 0.0)  # length len(u) + 2 half
    F = np.cumsum(blurred)
    F /= F[-1]
    at = np.exp(u[0] - half * du - tau * tau / 2 + du * np.arange(len(F)))  # E[M] = 1
    return np.concatenate([[0.0], at]), np.concatenate([[0.0], F])


@dataclass
class TotalDistribution:
    """The distribution of a batch's total runtime: exact mean and variance, and its CDF at
    increasing values (piecewise linear between them); one task's total is that task."""

    mean: float
    variance: float
    single: TaskDistributions | None = None
    tasks: TaskDistributions | None = None  # the tasks summed: their quantiles bound the total's
    edges: np.ndarray | None = None
    edge_cdf: np.ndarray | None = None
    shared_log_sd: float = 0.0
    _floor_parts: tuple | None = field(default=None, init=False, repr=False)

    @property
    def std(self) -> float:
        return float(np.sqrt(self.variance))

    def quantiles(self, levels: np.ndarray | list[float]) -> np.ndarray:
        if self.single is not None:  # (which checks the levels)
            return self.single.quantiles(levels)[0]
        check_levels_in_unit_interval(levels)
        levels = np.asarray(levels, dtype=np.float64)
        assert self.edges is not None and self.edge_cdf is not None
        xs, cs = self.edges, self.edge_cdf
        cs = cs + np.arange(len(cs)) * 1e-15  # strictly increasing for interpolation
        out = np.maximum(np.interp(levels * cs[-1], cs, xs), 0.0)
        if self.tasks is not None:
            # Below one grid cell (one task whose spread dwarfs the others' sets the cell
            # size) and beyond the grid's far end, a bound that holds for any tasks does better.
            out = np.maximum(out, self._floor(levels))
        return out

    def _floor(self, levels: np.ndarray) -> np.ndarray:
        """A lower bound on the total's quantile at each level, from the tasks' own quantiles.

        The total is ``M (X_1 + ... + X_n)``, all independent and positive (``M = 1``
        without the shared factor). If ``M > q_M(a0)`` and ``X_c >= q_c(a)`` for one task
        ``c``, the total exceeds ``q_M(a0) (q_c(a) + sum of the others' least values)``;
        that happens with probability at least ``(1 - a0) (1 - a)``. Where this is
        ``1 - p``, the total's ``p``-quantile is at least that value. Without the factor
        ``a = p``: the total's quantile is never below any task's. With it, every task
        with ``1 - a0 = 1 - a``, and the largest tasks (by mean and variance) with a few
        other splits of the level: the one that suits the top levels leaves ``M`` near 1.
        """
        tasks = self.tasks
        assert tasks is not None
        tau = self.shared_log_sd
        p = levels  # (checked to lie in [0, 1] by quantiles)
        if self._floor_parts is None:
            least = tasks.quantiles([_LEAST_LEVEL])[:, 0]
            cand = None
            if tau > 0:
                cand = _largest_tasks(*tasks.moments()[:2])
                cand = (tasks.subset(cand), least[cand])
            self._floor_parts = (least, float(least.sum()), cand)
        least, sum_least, cand = self._floor_parts
        if tau <= 0:
            return (tasks.quantiles(p) - least[:, None]).max(axis=0) + sum_least
        budget = -np.log1p(-np.minimum(p, 1.0 - 1e-15))  # -log(1 - p)
        shares = np.concatenate([[0.5], _FLOOR_FACTOR_SHARES])  # of the budget, M's
        a = -np.expm1(-budget[:, None] * (1.0 - shares)[None, :])  # (L, F): the level of task c
        a0 = -np.expm1(-budget[:, None] * shares[None, :])  # and of M
        gain = np.empty(a.shape)
        gain[:, 0] = (tasks.quantiles(a[:, 0]) - least[:, None]).max(axis=0)
        sub, sub_least = cand
        gain[:, 1:] = (sub.quantiles(a[:, 1:].ravel()).reshape(len(sub), len(p), -1) - sub_least[:, None, None]).max(axis=0)
        value = (gain + sum_least) * np.exp(tau * ndtri(a0) - tau * tau / 2)
        return value.max(axis=1)

    def interval(self, confidence_level: float) -> np.ndarray:
        return self.quantiles(interval_levels(confidence_level))

    def cdf(self, value: float) -> float:
        """``P(total <= value)``: the level at which the quantile function :meth:`quantiles`
        answers (its bounds included) reaches ``value``, so that the two agree."""
        at = np.array([float(value)])
        if self.single is not None:
            return float(levels_reached(self.single, at)[0])
        assert self.edges is not None and self.edge_cdf is not None
        xs, cs = self.edges, self.edge_cdf
        # The grid's CDF, read at once, is the answer wherever the tasks' bound does not lift
        # the quantile there; a search on the quantile function costs 396 evaluations of it
        # (2 ms more on a queue of 100 tasks than its quantiles alone).
        k = int(np.searchsorted(xs, at[0], side="right"))  # right of equal values: P(total <= value)
        if k == 0:
            return 0.0  # below the grid, where every quantile is (the bound only lifts them)
        if k < len(xs):
            width = xs[k] - xs[k - 1]
            p = float((cs[k - 1] + (cs[k] - cs[k - 1]) * ((at[0] - xs[k - 1]) / width if width > 0 else 1.0)) / cs[-1])
            if 0.0 < p < 1.0 and (self.tasks is None or self._floor(np.array([p]))[0] <= at[0]):
                return p
        # Past the total's quantile at the search's top level the search answers 1, short of
        # that at its lowest level 0: one evaluation tells (a deadline past its far tail, as a
        # scheduler asks of most of its queues, searched 387 levels: 1,000 queues of 10 tasks
        # took 0.97 s, against 0.53; one below the grid's mass, as the first completions of a
        # long queue with the shared factor ask, whose grid starts near 0, did too: two
        # queues' completion times of 1,000 tasks each took 5.5 s profiled, against 4.4 s).
        ends = self.quantiles(_REACH_ENDS)
        if ends[0] > at[0]:
            return 0.0
        if ends[1] <= at[0]:
            return 1.0
        return float(_levels_at(lambda levels: self.quantiles(levels[0])[None, :], at)[0])
