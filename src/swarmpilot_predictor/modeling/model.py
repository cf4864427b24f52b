""":class:`QuantileModel`: cross-validated choice among the candidate models, calibration and serving.

It combines a location family (:mod:`.locations`), a scale (:mod:`.scale`) and
optionally a shape (:mod:`.shape`), chooses among the combinations by their held-out
pinball loss (the selection helpers here), and stores itself as JSON. The candidates
and their parts live in their own modules; this one holds the choice and the model.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.special import fdtrc

from ..distribution import (LOG_BOUNDS, MixedDistribution, RuntimeDistribution, ScoreDistribution, TaskDistributions,
                            check_levels_in_unit_interval, data_atoms, describe_one, snap_to_atoms)
from ..errors import shown
from ..traces import MAX_RUNTIME, MIN_RUNTIME, RUNTIME_RANGE
from .design import UNUSED, numeric_positions, single_threaded_blas
from .locations import (FAMILIES, MAX_BOOST_ROUNDS, EmpiricalLocation, LightGBMLocation, LinearLocation, LocationModel,
                        PowerLocation, regime_flags)
from .params import ALGORITHMS, MODEL_PARAMS, lightgbm_errors, params_without_column
from .scale import SCALE_MIN_ROWS, ScaleModel
from .scoring import EVAL_LEVELS, moment_metrics, pinball_losses, quantile_metrics
from .shape import (QUANTILE_SHAPE, SHAPE_MODELS, SHAPE_SUFFIX, QuantileShapeModel, ShapeModel, increasing,
                    recalibration_map, shape_from_json)
from .stored import atoms_from_json, finite_number, stretch_levels_from_json


# Training rows (a random sample above this) whose ratios to their predicted means measure
# the model's uncertainty about the runtimes' level.
SHARED_SD_ROWS = 20_000
# Those ratios are capped at the value this many rows exceed, at most this share of them
# but one at least (see QuantileModel._shared_log_sd).
SHARED_SD_TAIL_ROWS = 10
SHARED_SD_TAIL_SHARE = 0.01
# The most that log sd may be (a factor of e**10, 22,000, in one sd): a model's file holding
# more is refused as damaged. Runtimes that jump a billionfold between stretches of the
# training run (a file logged in seconds, then in nanoseconds) measured 10.9, and the model
# was stored, then every prediction of it was a 500.
SHARED_LOG_SD_MAX = 10.0
# The level of the runtimes wanders between stretches of a run (clocks, heat, neighbours):
# the training rows, in the order given, are cut into this many stretches of this many
# rows at least (fewer stretches of few rows; none below the least number), and their
# levels compared (stretch_levels); below this p-value the shared factor carries their spread.
LEVEL_STRETCHES = 10
LEVEL_STRETCH_MIN_ROWS = 30
LEVEL_MIN_STRETCHES = 4
LEVEL_P_VALUE = 1e-3
# A stretch's level is the mean of its log ratios less this share at either end: a slow
# mode of one run in ten (or a heavy tail) left in made a mean's error hide levels 6% apart.
LEVEL_TRIM = 0.25
# Welch's F is 2 to 3 times too ready to call runs of one level spread where the stretches
# are short (300 to 600 rows), and far more where the runtimes are few distinct values
# (5 ms runs in whole milliseconds: a stretch's middle half all one value has no error, and
# any other level "differs"; 23% of runs of 300 rows). So where its p-value is below
# LEVEL_PERMUTE_BELOW, a permutation test of the rows across the stretches decides, exact
# whatever the noise: LEVEL_PERMUTATIONS of them (at most one as far from one level is
# p = 2/2,001, below LEVEL_P_VALUE: a test of exactly that level; 4,999 made a training
# whose level moved 0.1 to 0.4 s slower), in batches, stopped once the p-value is plainly
# not below LEVEL_P_VALUE; on at most LEVEL_PERMUTE_MAX_ROWS rows, evenly spaced within
# each stretch. Welch's p decides alone only below LEVEL_WELCH_SURE on LEVEL_WELCH_SURE_ROWS
# rows or more, every stretch with some noise and most rows of a value of their own: runs
# of two modes, half and half, of 300 rows of one level had p < 1e-12 once in a thousand.
LEVEL_PERMUTE_BELOW = 5e-3
LEVEL_PERMUTE_MAX_ROWS = 2000
LEVEL_PERMUTATIONS = 2000
LEVEL_PERMUTATION_BATCH = 1000
LEVEL_WELCH_SURE = 1e-4
LEVEL_WELCH_SURE_ROWS = 1000


# Above this many rows, candidates are compared and calibrated on a random subsample.
SELECT_MAX_ROWS = 50_000
# Training rows on which the known values of a categorical column are compared, to answer
# a value training never saw (see QuantileModel._learn_unseen_categories).
UNSEEN_SAMPLE_ROWS = 200
# ... fewer (down to UNSEEN_MIN_ROWS) where the columns' values (and the unseen one) times
# the rows would pass this many predictions: a boosted model of 2,000 trees spent 38 s of
# a 102 s training answering 16 columns x 101 values x 200 rows. Many values make each
# row's answer an average over many already.
UNSEEN_PROBE_BUDGET = 50_000
UNSEEN_MIN_ROWS = 25
# Simpler candidates win unless a more complex one is clearly better on held-out rows.
FAMILY_COMPLEXITY = {"empirical": 0, "linear": 1, "power": 1, "lightgbm": 2}
SELECTION_SE = 1.0
# The logistic shape's penalty and hinges per feature where its folds prefer them to its
# defaults (ShapeModel: 10 and 3), on at most SHAPE_TUNE_MAX_ROWS rows (see QuantileModel._variants).
FLEXIBLE_SHAPE = {"alpha": 1.0, "hinges": 6}
SHAPE_TUNE_MAX_ROWS = 2_000
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


# Held-out figures a model for each kind of run gives as a pair, where the metrics head with it
# (cv_summary): each the pair's, or absent, never the model of all rows'.
_PAIR_FIGURES = ("expect_ratio", "error_ratio")


class HeldOut(NamedTuple):
    """A candidate's predictions of every training row by models that never saw its fold
    (:meth:`QuantileModel._heldout`): quantiles at ``EVAL_LEVELS``, the probability
    integral transforms its shape was recalibrated with (None without a shape), and what
    each fold's distributions are made of, to work out the rows' moments if the candidate
    serves: the rows' locations, scales and folds (the candidate's own arrays, not copies),
    each fold's scores and, with a shape, the shape's inputs and each fold's shape model and
    recalibration map (their CDFs, kept for every candidate tried, held a fifth more memory)."""

    q: np.ndarray
    pits: np.ndarray | None
    oof: np.ndarray
    scale: np.ndarray
    fold: np.ndarray
    scores: tuple[ScoreDistribution, ...]
    shape_inputs: np.ndarray | None
    shapes: tuple[tuple[ShapeModel | QuantileShapeModel, np.ndarray, np.ndarray], ...] | None
    bounds: tuple[float, float]
    atoms: Sequence[np.ndarray | None]

    def fold_distribution(self, k: int, rows: np.ndarray, raw_cdf: np.ndarray | None = None) -> RuntimeDistribution:
        """The distributions of fold ``k``'s ``rows`` (a mask of the training rows); with a
        shape, ``raw_cdf`` is its CDF of them before recalibration, where already known."""
        knots, cdf = None, None
        if self.shapes is not None:
            shape, x, yk = self.shapes[k]
            F = shape.raw_cdf(self.shape_inputs[rows]) if raw_cdf is None else raw_cdf
            knots, cdf = shape.knots_, increasing(np.interp(F, x, yk))
        return RuntimeDistribution(self.oof[rows], self.scale[rows], self.scores[k], knots, cdf, self.bounds,
                                   atoms=self.atoms[k])

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Each row's mean and sd: what its ``expect`` and ``error`` would have been (worked
        out for the candidate that serves, not for the dozens tried)."""
        n = len(self.q)
        mean, sd = np.empty(n), np.empty(n)
        for k in range(len(self.scores)):
            rows = self.fold == k
            mean[rows], sd[rows] = self.fold_distribution(k, rows).mean_std_once()
        return mean, sd


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


def unseen_spread(s: np.ndarray, score_sd: float, var: np.ndarray) -> np.ndarray:
    """The ``spread`` (see :class:`RuntimeDistribution`) that takes a task's log sd from its
    own ``s * score_sd`` to the square root of that squared plus ``var``: the sd of its own
    noise plus an independent unknown of variance ``var``. The spread term moves with the
    task's own noise level by level, so it adds less than ``var``'s root to reach that."""
    own = s * score_sd
    return np.where(var > 0, np.sqrt(own * own + var) - own, 0.0)


def _log_bounds(lo: float, hi: float) -> tuple[float, float]:
    """Log-runtimes a model extrapolates to from training extremes ``lo``, ``hi``: 100x beyond them."""
    return lo - _LOG100, hi + _LOG100


def _within_range(m: np.ndarray, ylog: np.ndarray) -> np.ndarray:
    """Held-out locations kept within the bounds of the training rows, as a fitted model keeps its own."""
    return np.clip(m, *_log_bounds(float(ylog.min()), float(ylog.max())))


def _mean_se(d: np.ndarray) -> float:
    """Standard error of the mean of ``d``: for paired per-row differences of losses."""
    return float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0


def clearly_lower(d: np.ndarray, se: float = SELECTION_SE) -> bool:
    """Whether paired per-row loss differences ``d`` (one model's minus another's) say the
    first is lower by more than ``se`` standard errors (``SELECTION_SE``: the one-standard-error rule)."""
    return bool(d.mean() < -se * _mean_se(d))


def location_pinball(ylog: np.ndarray, oof: np.ndarray, fold: np.ndarray) -> np.ndarray:
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
    return clearly_lower(location_pinball(ylog, richer, fold) - location_pinball(ylog, plainer, fold))


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


def stretch_levels(log_ratio: np.ndarray) -> dict[str, Any] | None:
    """How far the runtimes' level moved between stretches of the run, from the training
    rows' log ratios to their predicted means in the order given (the order their tasks
    ran: training sorts by the traces' timestamps, features._in_run_order):
    ``{"stretches", "p_value", "log_sd"}``,
    ``log_sd`` 0 where the stretches' levels differ no more than their rows' noise makes
    them (p at or above ``LEVEL_P_VALUE``); None for too few rows to cut.

    Each stretch's level is a trimmed mean of its log ratios, with Yuen's standard error
    (from the winsorized variance); the levels are compared by Welch's heteroscedastic F
    test on trimmed means (Wilcox's), and their spread beyond their standard errors (the
    method of moments' estimate of a random effect) is the level's. Where the level moves so (clocks, heat,
    other tenants) a later stretch's may differ as much, and every task of a queue, run in
    one stretch, shares it: the shared factor carries it. On the real traces of
    ``examples/data`` it was ten to thirty times the model's error about the level.
    """
    n = len(log_ratio)
    k = min(LEVEL_STRETCHES, n // LEVEL_STRETCH_MIN_ROWS)
    if k < LEVEL_MIN_STRETCHES or not np.isfinite(log_ratio).all():
        return None
    means, squared_errors, kept = _stretch_means(log_ratio[None, :], k)
    levels, errors = means[0], squared_errors[0]
    spread = float(levels.var(ddof=1))
    if spread <= 1e-24:
        # Runtimes of one level throughout (as exact as a clock's tick): their log ratios
        # differ by rounding alone (a model of 300 runs of 5 ms found levels 1e-16 apart
        # at p = 0, the stretches' errors 0).
        p_value = 1.0
    else:
        # The errors are estimated from a few rows each (16 of a stretch of 30): taken as
        # known (a chi-square test of heterogeneity), runs of one level of 300 rows were
        # called spread 9 to 14 times as often as LEVEL_P_VALUE says; Welch's F, its
        # denominator's degrees of freedom from the rows kept, 2 to 3 times at most
        # (benchmarks/queue_totals.py --false-spread).
        p_value = float(_welch_test(levels[None, :], errors[None, :], kept)[1][0])
        sure = (p_value < LEVEL_WELCH_SURE and n >= LEVEL_WELCH_SURE_ROWS and (errors > 0).all()
                and len(np.unique(log_ratio)) > n / 2)
        if p_value < LEVEL_PERMUTE_BELOW and not sure:
            p_value = _permutation_p_value(_evenly_within_stretches(log_ratio, k, LEVEL_PERMUTE_MAX_ROWS), k)
    var = max(0.0, spread - float(errors.mean())) if p_value < LEVEL_P_VALUE else 0.0
    return {"stretches": k, "p_value": p_value, "log_sd": math.sqrt(var)}


def _stretch_means(runs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Of each run (a row of ``runs``) cut into ``k`` stretches as ``np.array_split`` cuts
    it: each stretch's trimmed mean and its Yuen standard error's square, (runs, k), and the
    rows each mean rests on, (k,)."""
    n = runs.shape[1]
    size = np.full(k, n // k)
    size[: n % k] += 1  # as np.array_split: the first stretches one row longer
    means, errors, kept = np.empty((len(runs), k)), np.empty((len(runs), k)), np.empty(k)
    start = 0
    for m in np.unique(size)[::-1].tolist():  # the stretches of each length at once
        count = int((size == m).sum())
        g = int(LEVEL_TRIM * m)
        # The g-th lowest and highest in place, the middle between them (in no order): all a
        # trimmed mean and a winsorized variance need, in linear time.
        ordered = np.partition(runs[:, start:start + count * m].reshape(len(runs), count, m), [g, m - g - 1], axis=2)
        cols = np.flatnonzero(size == m)
        means[:, cols] = ordered[:, :, g:m - g].mean(axis=2)
        winsorized = np.clip(ordered, ordered[:, :, g:g + 1], ordered[:, :, m - g - 1:m - g])
        kept[cols] = h = m - 2 * g
        errors[:, cols] = winsorized.var(axis=2, ddof=1) * (m - 1) / (h * (h - 1))
        start += count * m
    return means, errors, kept


def _welch_test(levels: np.ndarray, errors: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Welch's heteroscedastic F test (on trimmed means: Wilcox's) of each row's stretch
    levels with these errors: its statistic and p-value (inf and 0 for a row with a stretch
    without noise: at different levels, nothing else can make them differ)."""
    k = levels.shape[1]
    quiet = (errors == 0.0).any(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = 1.0 / np.where(quiet[:, None], 1.0, errors)
        share = w / w.sum(axis=1, keepdims=True)
        centre = (share * levels).sum(axis=1, keepdims=True)
        between = (w * (levels - centre) ** 2).sum(axis=1) / (k - 1)
        unsure = ((1.0 - share) ** 2 / (kept - 1)).sum(axis=1)
        statistic = between / (1.0 + 2.0 * (k - 2) / (k * k - 1) * unsure)
        p = fdtrc(k - 1, (k * k - 1) / (3.0 * unsure), statistic)
    return np.where(quiet, np.inf, statistic), np.where(quiet, 0.0, p)


def _evenly_within_stretches(log_ratio: np.ndarray, k: int, most: int) -> np.ndarray:
    """``log_ratio`` itself if it has at most ``most`` rows, else about ``most`` of them,
    as many from each of its ``k`` stretches, evenly spaced within it, in the run's order."""
    if len(log_ratio) <= most:
        return log_ratio
    each = most // k
    return np.concatenate([part[np.linspace(0, len(part) - 1, each).round().astype(np.int64)]
                           for part in np.array_split(log_ratio, k)])


def _permutation_p_value(log_ratio: np.ndarray, k: int) -> float:
    """The share of permutations of the rows across the ``k`` stretches whose Welch statistic
    is at least the run's own (the run counted in): exact for runs of one level, whatever
    their noise. Each stretch's error is taken as at least a ten-thousandth of what all the
    rows make one: a stretch without noise has no statistic, and leaves any other run as far
    from one level as any other. Seeded, so a training gives the same answer every time."""
    floor = max(1e-4 * k * float(_stretch_means(log_ratio[None, :], 1)[1][0, 0]), 1e-300)
    means, errors, kept = _stretch_means(log_ratio[None, :], k)
    observed = float(_welch_test(means, np.maximum(errors, floor), kept)[0][0])
    rng = np.random.default_rng(0)
    at_least = int(math.ceil(LEVEL_P_VALUE * (LEVEL_PERMUTATIONS + 1)))  # as many and it is not below
    as_far = done = 0
    while done < LEVEL_PERMUTATIONS and as_far < at_least:
        batch = min(LEVEL_PERMUTATION_BATCH, LEVEL_PERMUTATIONS - done)
        runs = rng.permuted(np.broadcast_to(log_ratio, (batch, len(log_ratio))), axis=1)
        levels, errors, kept = _stretch_means(runs, k)
        as_far += int((_welch_test(levels, np.maximum(errors, floor), kept)[0] >= observed).sum())
        done += batch
    return (as_far + 1) / (done + 1)


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
        self.kinds, self.n_categories = _checked_columns(kinds, n_categories)
        self.algorithm = algorithm
        self.n_folds = n_folds
        self.params = dict(params or {})
        self.random_state = random_state
        if regime_column is not None and not 0 <= regime_column < len(self.kinds):
            raise ValueError(f"regime_column must be one of the {len(self.kinds)} columns, got {regime_column!r}")
        self.regime_column = regime_column
        self.log_range_: tuple[float, float] | None = None
        self.shared_log_sd_ = 0.0
        self.stretch_levels_: dict[str, Any] | None = None
        self.regimes_: tuple[QuantileModel, QuantileModel] | None = None
        self.regime_cv_: dict[str, Any] | None = None
        self.shape_reads_location_ = False
        self.unseen_shift_: list[float] = [0.0] * len(self.kinds)
        self.unseen_sd_: list[float] = [0.0] * len(self.kinds)

    # ------------------------------------------------------------------ fitting

    def _check_width(self, width: int) -> None:
        # A column more or fewer than the kinds was read without a word (the extra one
        # ignored, or an IndexError deep in a fit).
        if width != len(self.kinds):
            raise ValueError(f"X has {width} columns, not the {len(self.kinds)} that kinds names")

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

    @staticmethod
    def _weighted_folds(fold: np.ndarray, w: np.ndarray | None) -> np.ndarray:
        """``fold``, with the rows of weight above 0 dealt out over the folds in turn where
        some rows weigh 0 (a caller's forgotten ones): a fold whose other folds all weigh 0
        leaves its fits nothing to learn from (one weighted row among 40 failed in the ridge's
        penalty search). Unchanged where every row weighs something, as the service's fits do."""
        if w is None or (w > 0).all():
            return fold
        k = int(fold.max()) + 1
        weighted = np.flatnonzero(w > 0)
        out = fold.copy()
        # In the folds' own order of those rows, so a stratified deal keeps its spread.
        ranked = weighted[np.argsort(fold[weighted], kind="stable")]
        out[ranked] = np.arange(len(ranked)) % k
        return out

    def _oof_location(self, family, X, ylog, fold, w, kinds=None) -> tuple[np.ndarray, dict[str, int], list[np.ndarray] | None]:
        """Out-of-fold location predictions, what was tuned on the folds (``rounds``, ``hinges``),
        and each fold's location on its own rows (:class:`_FoldLocations`)."""
        kinds_used = self.kinds if kinds is None else kinds
        if family == "lightgbm":
            if "regimes" in self.params:
                oof, tuned = self._oof_boosted(X, ylog, fold, w, kinds, bool(self.params["regimes"]))
                return oof, {**tuned, "regimes": bool(self.params["regimes"])}, None
            oof, tuned = self._oof_boosted(X, ylog, fold, w, kinds, False)
            if self.params.get("lgb_linear_base", True) and regime_flags(X, kinds_used):
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
            if regime_flags(X, kinds_used):
                regimes = tuned["regimes"] = True
        if "hinges" in self.params:
            fits = self._oof_fit(family, X, ylog, fold, w, kinds, None, regimes)
        elif not numeric_positions(kinds_used):
            # No numeric feature, no hinge: the hinged design is the plain one (sixteen
            # 100-value features on 2,000 rows fitted each fold's 1,601 columns twice).
            fits, tuned["hinges"] = self._oof_fit(family, X, ylog, fold, w, kinds, 0, regimes), 0
        else:
            # Hinges bend the power law (fixed overheads plus per-unit costs); on a
            # hundred noisy rows their extra columns cost more than they bring. They
            # are kept when they lower the held-out pinball loss by more than a
            # standard error (the one-standard-error rule, as in _choose).
            bent = self._oof_fit(family, X, ylog, fold, w, kinds, LINEAR_HINGES, regimes)
            plain = self._oof_fit(family, X, ylog, fold, w, kinds, 0, regimes)
            hinges = LINEAR_HINGES if _pays_off(bent.oof, plain.oof, ylog, fold) else 0
            fits, tuned["hinges"] = (bent if hinges else plain), hinges
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
        # The final model's rounds: where the folds' mean validation loss is lowest. Each
        # fold's own are where the other folds' mean loss is lowest, its trees boosted on
        # past its early stop where needed: stopping a fold where its own held-out loss is
        # lowest (or taking that loss into the mean) tunes its trees on the rows that then
        # score them, and makes LightGBM look better than it is on small data. (Until
        # 2026-12-06 LightGBM cut each fold's booster at its own best round, and a fold
        # whose best came before the common number was scored with its own.)
        curves = [m.valid_curve_ for _, m in boosted]
        for k, (te, model) in enumerate(boosted):
            model.boost_to(common_rounds(curves[:k] + curves[k + 1:]))
            oof[te] = _within_range(model.predict(X[te]), ylog[~te])
        return oof, {"rounds": common_rounds(curves)}

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "QuantileModel":
        with single_threaded_blas():
            X, y, w = self._checked(X, y, sample_weight)
            chosen = self._choose(X, y, w)
            self._finish(X, y, w, chosen)
            self.regimes_, self.regime_cv_ = None, None
            if self.regime_column is not None and self.algorithm == "auto":
                self._fit_regimes(X, y, w, chosen)
            self.shared_log_sd_ = 0.0
            self.shared_log_sd_, self.stretch_levels_ = self._shared_log_sd(X, y, w)
        return self

    def _checked(self, X: Any, y: Any, sample_weight: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError("X must be a 2-d array")
        y = np.asarray(y, dtype=np.float64)
        if len(y) != len(X):
            raise ValueError("X and y have different numbers of rows")
        self._check_width(X.shape[1])
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
        if not (np.all(np.isfinite(w) & (w >= 0)) and int((w > 0).sum()) >= 2):
            # (A NaN weight was fitted without a word, and served quantiles far from the data.
            # One row of weight above 0 leaves the cross-validation a fold with nothing to fit.)
            raise ValueError("sample weights must be finite, at least 0, and above 0 on at least 2 rows")
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
        else:
            z = z if best.get("alone") is None else z[~best["alone"]]
        self.score_ = ScoreDistribution.from_scores(z)
        self.shape_: ShapeModel | None = None
        self.shape_reads_location_ = bool(best.get("reads_location"))
        if best["shaped"]:
            # The held-out locations, as the scores the shape model learns from are held out.
            Xs, kinds_s = self._shape_inputs(X[sel], best.get("oof"), kinds, self.shape_reads_location_)
            shape = self._shape_model(best["shaped"], kinds_s, best.get("shape_params"))
            zs = best["z"]
            if best.get("own_scores"):
                # The scores around the final location, as each fold's shape learnt them around its own.
                zs = (ylog[sel] - final.predict(X[sel])) / best["scale"].predict(X[sel])
            shape.fit(Xs, zs, self.score_, None if w is None else w[sel], self.random_state)
            shape.set_recalibration(best["pits"])
            self.shape_ = shape
        self.log_range_ = (float(ylog.min()), float(ylog.max()))
        self._learn_unseen_categories(X, best.get("unknown_alone", ()))

    def _fold_alone(self, X: np.ndarray, fold: np.ndarray, kinds: Sequence[str]) -> tuple[np.ndarray | None, tuple[int, ...]]:
        """The rows whose value of a categorical feature the location reads is on no row of the
        other folds (a value seen once, read as an unseen one; a value of two rows that fell in
        one fold), and the columns whose unseen-coded rows are one row, so left out.

        Such a row's held-out score measures how far an unseen category lies from the
        location, not the noise about a known category's: pooled with the others' scores, one
        training row of a value seen once (at 1000 ms among categories of 10 to 100 ms) made
        every category's 0.999 quantile 16 times the truth and its sd 8 times. Its scores are
        left out of the pool. An unknown level learned from one row alone says nothing of its
        spread: a new value is widened instead (:meth:`_learn_unseen_categories`); one learned
        from more rows keeps their level, as learned. None where leaving them out would leave
        out more than half the rows (two rows for each of many values, say): the pool is then
        all there is."""
        alone = np.zeros(len(X), dtype=bool)
        unknown: list[int] = []
        n_folds = int(fold.max()) + 1
        for j, kind in enumerate(kinds):
            if kind != "categorical":
                continue
            k = self.n_categories[j]
            c = X[:, j]
            with np.errstate(invalid="ignore"):
                known = (c >= 0) & (c < k) & (c == np.floor(c))
            code = np.where(known, np.nan_to_num(c), k).astype(np.int64)  # every unseen value one level: k
            pair = code * n_folds + fold
            per_pair = np.bincount(pair, minlength=(k + 1) * n_folds)
            per_code = np.bincount(code, minlength=k + 1)
            here = per_code[code] == per_pair[pair]
            alone |= here
            if (~known).sum() == 1 and here[~known].all():
                unknown.append(j)
        if not alone.any() or (~alone).sum() < len(X) / 2:
            return None, ()
        return alone, tuple(unknown)

    def _learn_unseen_categories(self, X: np.ndarray, unknown_alone: Sequence[int] = ()) -> None:
        """For each categorical column whose training rows all held a known value, how a
        value training never saw is answered: ``unseen_shift_``, what moves its location to
        the mean of the known values' (each value counted once, not by its rows: a new
        device is not more like the commonest one), and ``unseen_sd_``, the log sd of a new
        value's location about that mean (where among them it lies is not known: the known
        values' sample sd, times sqrt(1 + 1/k) for their mean's own error).
        Taken over up to ``UNSEEN_SAMPLE_ROWS`` training rows (fewer where the columns have
        many values: see ``UNSEEN_PROBE_BUDGET``), each answered with every known value in
        turn. A column with unseen-coded training rows (rare values, missing ones)
        has had its unknown level, and that level's spread, learned from them: it gets none,
        unless that was one row, left out of the scores (``unknown_alone``, see
        :meth:`_fold_alone`): then the unknown level, as learned from it, counts as one more
        value of the population a new one is drawn from."""
        self.unseen_shift_ = [0.0] * len(self.kinds)
        self.unseen_sd_ = [0.0] * len(self.kinds)
        self._widening_cache = None
        columns = [(j, k) for j, k in self._categories() if k >= 2 and self.features_used_[j]
                   and (j in unknown_alone or np.all(np.isfinite(X[:, j])))]
        if not columns:
            return
        rng = np.random.default_rng(self.random_state)
        answers = sum(k + 1 for _, k in columns)
        sample = min(len(X), UNSEEN_SAMPLE_ROWS, max(UNSEEN_MIN_ROWS, UNSEEN_PROBE_BUDGET // answers))
        rows = X[np.sort(rng.choice(len(X), sample, replace=False))]
        bounds = self._bounds()
        for j, k in columns:
            probe = np.repeat(rows[None, :, :], k + 1, axis=0)  # (known values + the unseen one, rows, columns)
            probe[:, :, j] = np.append(np.arange(k, dtype=np.float64), np.nan)[:, None]
            m = np.clip(self.location_.predict(probe.reshape(-1, X.shape[1])), *bounds).reshape(k + 1, len(rows))
            known = m if j in unknown_alone else m[:k]
            self.unseen_shift_[j] = float((known.mean(axis=0) - m[k]).mean())
            # A new value is drawn from the population the known ones sample: its spread
            # about their mean is their sample variance, and that mean's own, 1/k of it.
            self.unseen_sd_[j] = float(np.sqrt(known.var(axis=0, ddof=1).mean() * (1 + 1 / len(known))))

    def unseen_categories(self) -> dict[int, dict[str, Any]]:
        """Per column that answers a value training never saw among its known ones: the
        ``shift`` of the log location and the ``log_sd`` it adds (see ``_learn_unseen_categories``);
        with a model for each kind of run, which answer, each kind's (``repeats``, ``first_runs``)."""
        if self.regimes_ is not None:
            j = self.regime_column
            out: dict[int, dict[str, Any]] = {}
            for kind, model in zip(("repeats", "first_runs"), self.regimes_):
                for k, figures in model.unseen_categories().items():
                    out.setdefault(k if k < j else k + 1, {})[kind] = figures  # (a regime's model lacks column j)
            return out
        return {j: {"shift": self.unseen_shift_[j], "log_sd": self.unseen_sd_[j]}
                for j, _ in self._categories() if self.unseen_sd_[j] > 0 or self.unseen_shift_[j] != 0}

    def _categories(self) -> list[tuple[int, int]]:
        """(column, number of known values) of each categorical column."""
        return [(j, int(k)) for j, (kind, k) in enumerate(zip(self.kinds, self.n_categories)) if kind == "categorical"]

    def _widening(self) -> tuple[tuple[int, int, float, float], ...]:
        """(column, known values, shift, log variance) of each column that answers an unseen
        value among the known ones; cached (the single-row path asks on every prediction)."""
        got = self.__dict__.get("_widening_cache")
        if got is None:
            got = self._widening_cache = tuple(
                (j, k, self.unseen_shift_[j], self.unseen_sd_[j] ** 2) for j, k in self._categories()
                if self.unseen_sd_[j] > 0 or self.unseen_shift_[j] != 0)
        return got

    def _unseen_rows(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Per row, the location shift and the log variance its unseen categories add, or None
        where no row has one that widens."""
        shift = var = None
        for j, k, dj, vj in self._widening():
            c = X[:, j]
            with np.errstate(invalid="ignore"):
                unseen = ~((c >= 0) & (c < k) & (c == np.floor(c)))  # NaN: unseen
            if unseen.any():
                if shift is None:
                    shift, var = np.zeros(len(X)), np.zeros(len(X))
                shift += np.where(unseen, dj, 0.0)
                var += np.where(unseen, vj, 0.0)
        return None if shift is None else (shift, var)

    def _unseen_row(self, x: Sequence[float]) -> tuple[float, float]:
        """``_unseen_rows`` for one row, in plain floats: (shift, log variance)."""
        shift = var = 0.0
        for j, k, dj, vj in self._widening():
            c = x[j]
            if not (0 <= c < k and c == int(c)):  # False for NaN
                shift += dj
                var += vj
        return shift, var

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
        heldout_mean, heldout_sd = np.full(n, np.nan), np.full(n, np.nan)  # and means and sds
        models, parts = [], []
        params = params_without_column(self.params, j)
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
            heldout_mean[rows[sub_sel]], heldout_sd[rows[sub_sel]] = sub_best["mean_std"]
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
            self.regime_cv_["heldout"] = (quantile_metrics(y[scored], heldout_q[scored], EVAL_LEVELS)
                                          | moment_metrics(y[scored], heldout_mean[scored], heldout_sd[scored]))
        else:
            self.regime_cv_["reason"] = "not better on held-out rows than one model of all rows"

    def _shared_log_sd(self, X: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> tuple[float, dict[str, Any] | None]:
        """Log sd of the model's error about the level of the runtimes, common to all its predictions.

        The mean runtime the model predicts is, in effect, estimated from the training
        rows' ratios to it: its relative standard error is the ratios' coefficient of
        variation over the square root of the (effective) number of rows. To it is added
        how far the level moved between stretches of the training run (stretch_levels).
        One task's calibrated distribution already holds both; the tasks of a queue share them.
        Returns the log sd and the stretches' test.
        """
        n = len(y)
        rows = np.arange(n)
        if n > SHARED_SD_ROWS:
            # Sorted: the rows' order is the run's (stretch_levels).
            rows = np.sort(np.random.default_rng(self.random_state).choice(n, SHARED_SD_ROWS, replace=False))
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
        stretches = stretch_levels(np.log(ratio))
        spread = 0.0 if stretches is None else stretches["log_sd"]
        out = math.sqrt(math.log1p(cv2 / n_eff) + spread * spread)
        return (min(out, SHARED_LOG_SD_MAX) if math.isfinite(out) else 0.0), stretches

    def _select(self, X: np.ndarray, y: np.ndarray, ylog: np.ndarray, w: np.ndarray | None) -> dict[str, Any]:
        """Cross-fit every candidate; fill ``cv_``; return the chosen one with its OOF scores."""
        n = len(y)
        fold = self._weighted_folds(self._folds(X, ylog), w)
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
        # The served candidate's held-out expect and error (a queue total's centre and width):
        # its rows' moments, worked out for it alone (each fold's cost a table of the scale).
        best["mean_std"] = best.pop("held").mean_std()
        self.cv_[best["family"]] |= moment_metrics(y, *best["mean_std"])
        for c in candidates:
            if c is not best:  # the chosen one's held-out quantiles may score a split (_fit_regimes)
                for key in ("q", "oof", "held"):
                    c.pop(key, None)
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
            if candidate.get("shape_params"):  # the flexible logistic shape (FLEXIBLE_SHAPE)
                metrics["shape_alpha"] = candidate["shape_params"]["alpha"]
                metrics["shape_hinges"] = candidate["shape_params"]["hinges"]
        metrics["variant"] = candidate["name"]
        return metrics

    def _variants(self, family: str, rank: int, X, y, ylog, fold, fold_atoms, w, kinds: Sequence[str],
                  variants: Sequence[tuple[bool, bool]]) -> list[dict[str, Any]]:
        """Cross-fit ``family`` on the features ``kinds`` marks as used; one candidate per (hetero, shaped)."""
        kinds = list(kinds)
        alone, unknown_alone = self._fold_alone(X, fold, kinds) if family != "empirical" else (None, ())
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
            if twin is not None:
                held, shape_params, row_loss = twin
            else:
                held = self._heldout(Xs, fold_atoms, oof, s, z, fold, shaped, w, kinds_s, zfit=zfit, alone=alone)
                shape_params = None
                row_loss = pinball_losses(y, held.q, EVAL_LEVELS).mean(axis=1)
                if shaped is True and self._tunes_shape(len(y)):
                    # A penalty of 10 and 3 hinges smooth away a share of a slow or a fast mode
                    # that rises and falls along a feature (the real sglang traces: nearly every
                    # request of 529 to 593 input tokens aborted, almost none elsewhere, where a
                    # forest beat the service by 12% over twelve splits): the flexible shape
                    # serves where its folds show it clearly better.
                    flexible = self._heldout(Xs, fold_atoms, oof, s, z, fold, shaped, w, kinds_s, zfit=zfit,
                                             alone=alone, shape_params=FLEXIBLE_SHAPE)
                    flexible_loss = pinball_losses(y, flexible.q, EVAL_LEVELS).mean(axis=1)
                    if clearly_lower(flexible_loss - row_loss):
                        held, shape_params, row_loss = flexible, FLEXIBLE_SHAPE, flexible_loss
            heldout[(hetero, shaped)] = (held, shape_params, row_loss)
            q, pits = held.q, held.pits
            fam.append({
                "family": family, "hetero": hetero, "shaped": shaped, "shape_params": shape_params,
                "scale": scale, "z": z, "weighted": weighted,
                "reads_location": reads_location, "oof": oof,
                "pits": pits, "tuned": tuned, "q": q, "held": held, "kinds": kinds, "rank": rank,
                "own_scores": zfit is not None,
                "alone": alone, "unknown_alone": unknown_alone,
                "name": ("hetero" if hetero else "const") + SHAPE_SUFFIX[shaped],
                "row_loss": row_loss,
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
        best = min((best_penalty(0, link) for link in links), key=lambda f: f[0].mean())
        if numeric_positions(kinds):  # (hinges bend numeric features only)
            bent = best_penalty(LINEAR_HINGES, "log")
            if clearly_lower(bent[0] - best[0]):
                best = bent
        _, alpha, hinges, link, s = best
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

    def _shape_model(self, shaped: bool | str, kinds: Sequence[str], params: dict[str, Any] | None = None) -> ShapeModel:
        """An unfitted shape model of the kind a candidate's ``shaped`` names (a logistic one
        with ``params``, where its folds chose them, see :meth:`_variants`)."""
        if shaped == QUANTILE_SHAPE:  # (unpenalised, no hinges: shape_alpha and shape_hinges are the logistic one's)
            return QuantileShapeModel(kinds, self._categories_for(kinds))
        return ShapeModel(kinds, self._categories_for(kinds), **(params or self._shape_params()))

    def _tunes_shape(self, n: int) -> bool:
        """Whether the logistic shape's folds also try :data:`FLEXIBLE_SHAPE`: not where the
        config sets its penalty or hinges, nor above :data:`SHAPE_TUNE_MAX_ROWS` rows, where
        a penalty of 10 weighs little against the rows' likelihood (and the trial's time would)."""
        return n <= SHAPE_TUNE_MAX_ROWS and not ({"shape_alpha", "shape_hinges"} & set(self.params))

    def _shape_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "shape_alpha" in self.params:
            out["alpha"] = float(self.params["shape_alpha"])
        if "shape_hinges" in self.params:
            out["hinges"] = int(self.params["shape_hinges"])
        return out

    def _heldout(self, X, fold_atoms, oof, s, z, fold, shaped, w, kinds=None, zfit=None,
                 alone=None, shape_params: dict[str, Any] | None = None) -> HeldOut:
        """Quantiles at EVAL_LEVELS, mean and sd for every row, from models that never saw its fold.

        Each fold is calibrated only with the other folds' scores, so these
        metrics are measured on rows that neither fitted nor calibrated the model.
        Quantiles are put on the other folds' repeated runtimes (``fold_atoms[k]``) as the
        model puts them on its training data's (:func:`snap_to_atoms`). ``zfit``, where
        given, holds per fold the scores of its training rows that its shape model learns from
        (around that fold's own location, :class:`_FoldLocations`); the held-out rows are scored
        by ``z`` either way. The rows ``alone`` marks are left out of the folds' scores (see
        :meth:`_fold_alone`).
        """
        n = len(z)
        n_folds = int(fold.max()) + 1
        levels = np.asarray(EVAL_LEVELS)
        q = np.empty((n, len(levels)))
        pooled = np.ones(n, dtype=bool) if alone is None else ~alone
        scores = []
        for k in range(n_folds):
            rows = (fold != k) & pooled
            if not rows.any():  # every training row of the fold left out (few folds of few rows): all of them
                rows = fold != k
            scores.append(ScoreDistribution.from_scores(z[rows]))
        ylog = oof + s * z
        bounds = _log_bounds(float(ylog.min()), float(ylog.max()))  # as the fitted model's
        if not shaped:
            for k in range(n_folds):
                te = fold == k
                zq = scores[k].quantile(levels)
                q[te] = snap_to_atoms(np.exp(np.clip(scores[k].log_runtimes(oof[te, None], s[te, None], zq[None, :]),
                                                     *bounds)), fold_atoms[k])
            return HeldOut(q, None, oof, s, fold, tuple(scores), None, None, bounds, fold_atoms)
        pits = np.empty(n)
        fitted = []
        for k in range(n_folds):
            tr, te = fold != k, fold == k
            kinds_k = self.kinds if kinds is None else kinds
            shape = self._shape_model(shaped, kinds_k, shape_params)
            shape.fit(X[tr], z[tr] if zfit is None else zfit[k], scores[k], None if w is None else w[tr], self.random_state)
            F = shape.raw_cdf(X[te])
            pits[te] = shape.pit(F, z[te], scores[k])
            fitted.append((shape, F))
        shapes = tuple((shape, *recalibration_map(pits[fold != k])) for k, (shape, _) in enumerate(fitted))
        held = HeldOut(q, pits, oof, s, fold, tuple(scores), X, shapes, bounds, fold_atoms)
        for k, (_, F) in enumerate(fitted):
            te = fold == k
            q[te] = held.fold_distribution(k, te, F).quantiles(levels)
        return held

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
        pair = self.regimes_ is not None and heldout is not None
        return {
            "algorithm": self.family_,
            "validation": "cross-validated (out-of-fold, calibrated without the held-out fold)",
            # (The pair's held-out figures replace the model of all rows', those it lacks too.)
            **{k: v for k, v in chosen.items() if k != "seconds" and not (pair and k in _PAIR_FIGURES)},
            **(heldout if pair else {}),
            "cv_scores": {
                f: {k: m[k] for k in ("pinball_loss", "mean_abs_coverage_error", "variant") if k in m}
                for f, m in self.cv_.items()
            },
            "shared_log_sd": self.shared_log_sd_,
            "stretch_levels": self.stretch_levels_,
            **({"regime_split": split} if split is not None else {}),
        }

    def predict_distribution(self, X: np.ndarray) -> TaskDistributions:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError("X must be a 2-d array")
        self._check_width(X.shape[1])
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
        cdf = None
        if self.shape_ is not None and self.shape_.knots_:
            Xs, _ = self._shape_inputs(X, m, self.kinds, self.shape_reads_location_)
            cdf = self.shape_.cdf(Xs)
        spread = None
        if (unseen := self._unseen_rows(X)) is not None:
            shift, var = unseen
            m = np.clip(m + shift, *bounds)
            spread = unseen_spread(s, self.score_.log_sd(), var)
        return RuntimeDistribution(m, s, self.score_, self.shape_.knots_ if cdf is not None else None, cdf, bounds,
                                   self.shared_log_sd_, varies, self.atoms_, spread)

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
        self._check_width(len(x))
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
        cdf = None
        if shape is not None and shape.knots_:
            cdf = shape.cdf_row([*x, m] if self.shape_reads_location_ else x)
        shift, var = self._unseen_row(x)
        spread = 0.0
        if shift != 0 or var > 0:
            m = min(max(m + shift, bounds[0]), bounds[1])
            spread = float(unseen_spread(np.array([s]), self.score_.log_sd(), np.array([var]))[0])
        return describe_one(m, s, self.score_, levels, self.scale_.is_constant, shape.knots_ if cdf is not None else None,
                            cdf, bounds, self.atom_values_, spread)

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
            "stretch_levels": self.stretch_levels_,
            "atoms": self.atoms_.tolist(),
            "features_used": getattr(self, "features_used_", None),
            "cv": self.cv_,
            "regime_column": self.regime_column,
            "regimes": None if self.regimes_ is None else [m.to_json() for m in self.regimes_],
            "regime_cv": self.regime_cv_,
            "unseen_shift": self.unseen_shift_,
            "unseen_sd": self.unseen_sd_,
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
        obj.shape_ = None if shape is None else shape_from_json(shape, shape_kinds, obj._categories_for(shape_kinds), obj.score_)
        if obj.shape_ is not None and len(obj.shape_.design_.kinds) != len(shape_kinds):
            # The shape's design reads the columns its flag says: one more, the location, or none.
            raise ValueError(f"the shape model reads {len(obj.shape_.design_.kinds)} columns, not the "
                             f"{len(shape_kinds)} that shape_reads_location={reads} gives")
        lr = d.get("log_range")
        if lr is not None and not (isinstance(lr, list) and len(lr) == 2 and all(finite_number(v) for v in lr)
                                   and lr[0] <= lr[1]):
            raise ValueError(f"log_range is {shown(lr)}, not the least and the greatest log runtime")
        obj.log_range_ = None if lr is None else (float(lr[0]), float(lr[1]))
        sd = d.get("shared_log_sd", 0.0)  # models stored before it: none
        if not (finite_number(sd) and 0.0 <= sd <= SHARED_LOG_SD_MAX):
            raise ValueError(f"shared_log_sd is {shown(sd)}, not a log standard deviation in [0, {SHARED_LOG_SD_MAX:g}]")
        obj.shared_log_sd_ = float(sd)
        obj.stretch_levels_ = stretch_levels_from_json(d.get("stretch_levels"))  # models stored before it: none
        obj._set_atoms(atoms_from_json(d.get("atoms", [])))  # models stored before them: none
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
        # Models stored before 2026-12-01: an unseen category with a known one's spread.
        for name in ("unseen_shift", "unseen_sd"):
            got = d.get(name, [0.0] * len(obj.kinds))
            if not (isinstance(got, list) and len(got) == len(obj.kinds) and all(finite_number(v) and abs(v) <= 1e3 for v in got)
                    and (name == "unseen_shift" or all(v >= 0 for v in got))):
                raise ValueError(f"{name} is {shown(got)}, not a {'non-negative ' if name == 'unseen_sd' else ''}"
                                 f"number per column ({len(obj.kinds)})")
            setattr(obj, name + "_", [float(v) for v in got])
        obj._widening_cache = None
        return obj


_LOG100 = float(np.log(100.0))


def _checked_columns(kinds: Sequence[str], n_categories: Sequence[int]) -> tuple[list[str], list[int]]:
    """``kinds`` and ``n_categories`` as a model stores them, checked as :meth:`QuantileModel.from_json`
    reads them back: a model built from others (an unknown kind, a count missing) was fitted
    and stored, then could not be loaded."""
    kinds = list(kinds)
    if not all(isinstance(k, str) and k in ("numeric", "categorical", UNUSED) for k in kinds):
        raise ValueError(f"kinds must each be 'numeric', 'categorical' or {UNUSED!r}, got {shown(kinds)}")
    counts = list(n_categories)
    if len(counts) != len(kinds):
        raise ValueError(f"n_categories must hold one count per column of kinds ({len(kinds)}), got {shown(counts)}")
    checked = []
    for n in counts:
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n_categories must be whole numbers of at least 0, got {shown(counts)}")
        checked.append(int(n))
    return kinds, checked


@contextlib.contextmanager
def _damage_as_value_error() -> Iterator[None]:
    """A damaged model shows however its damage makes Python fail (a key missing, a value
    of the wrong type or size, LightGBM's parser): one ValueError for them all."""
    try:
        yield
    except (KeyError, TypeError, IndexError, AttributeError, OverflowError, RecursionError,
            FloatingPointError, ZeroDivisionError, *lightgbm_errors()) as exc:
        raise ValueError(f"the model is damaged: {type(exc).__name__} {exc}") from None
