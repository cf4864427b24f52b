"""RuntimeDistribution: quantiles, moments and batch totals against closed forms and Monte Carlo."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
from scipy.special import ndtr, ndtri

from swarmpilot_predictor.distribution import MixedDistribution, RuntimeDistribution, ScoreDistribution, describe_one


def normal_score() -> ScoreDistribution:
    """The standard normal quantile function on a fine grid (tails extrapolated beyond it)."""
    levels = np.concatenate([np.geomspace(1e-7, 0.01, 200), np.linspace(0.01, 0.99, 2000)[1:-1], 1 - np.geomspace(0.01, 1e-7, 200)])
    return ScoreDistribution(levels, ndtri(levels))


def lognormal_moments(m, s):
    mean = np.exp(m + s**2 / 2)
    var = (np.exp(s**2) - 1) * np.exp(2 * m + s**2)
    return mean, np.sqrt(var)


# --------------------------------------------------------------------------- score distribution


def test_from_scores_uses_conformal_plotting_positions():
    z = np.array([3.0, 1.0, 2.0, 4.0])
    sd = ScoreDistribution.from_scores(z)
    np.testing.assert_allclose(sd.levels, [0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(sd.values, [1.0, 2.0, 3.0, 4.0])
    # In between: linear interpolation; beyond the last score: a tail, still increasing.
    assert sd.quantile(np.array([0.5]))[0] == pytest.approx(2.5)
    tail = sd.quantile(np.array([0.8, 0.9, 0.99, 0.999999]))
    assert np.all(np.diff(tail) > 0)
    head = sd.quantile(np.array([1e-6, 0.01, 0.1, 0.2]))
    assert np.all(np.diff(head) > 0)


def test_from_scores_thins_large_samples_but_keeps_extremes():
    z = np.random.default_rng(0).standard_normal(20_000)
    sd = ScoreDistribution.from_scores(z)
    assert len(sd.levels) <= 512
    assert sd.values[0] == pytest.approx(z.min()) and sd.values[-1] == pytest.approx(z.max())
    np.testing.assert_allclose(sd.quantile(np.array([0.1, 0.5, 0.9])), ndtri([0.1, 0.5, 0.9]), atol=0.03)


def test_score_distribution_json_round_trip():
    sd = ScoreDistribution.from_scores(np.random.default_rng(1).standard_normal(300))
    back = ScoreDistribution.from_json(json.loads(json.dumps(sd.to_json())))
    u = np.linspace(0.0001, 0.9999, 77)
    np.testing.assert_array_equal(back.quantile(u), sd.quantile(u))


# --------------------------------------------------------------------------- quantiles


def test_quantiles_match_lognormal_at_any_level_in_any_order():
    m = np.array([0.0, 3.0, 7.5])
    s = np.array([0.3, 0.3, 0.3])
    dist = RuntimeDistribution(m, s, normal_score())
    levels = [0.9, 0.001, 0.5, 0.123, 0.999, 0.25]
    q = dist.quantiles(levels)
    expected = np.exp(m[:, None] + s[:, None] * ndtri(levels)[None, :])
    np.testing.assert_allclose(q, expected, rtol=1e-4)
    iv = dist.interval(0.8)
    np.testing.assert_allclose(iv, np.exp(m[:, None] + 0.3 * ndtri([0.1, 0.9])[None, :]), rtol=1e-4)


def test_quantiles_never_cross_and_are_positive_even_far_in_the_tails():
    rng = np.random.default_rng(2)
    sd = ScoreDistribution.from_scores(rng.standard_t(2, 50))  # few, heavy-tailed scores
    dist = RuntimeDistribution(rng.normal(0, 5, 40), rng.uniform(0.05, 3, 40), sd)
    levels = np.concatenate([[1e-9, 1e-6, 1e-3], np.linspace(0.01, 0.99, 99), [1 - 1e-3, 1 - 1e-6]])
    q = dist.quantiles(levels)
    assert np.all(q > 0) and np.all(np.isfinite(q))
    assert np.all(np.diff(q, axis=1) >= 0)


def shaped(n_tasks: int = 3) -> RuntimeDistribution:
    """Tasks whose chance of the upper half of Z differs: 10%, 50% and 90%."""
    knots = (0.1, 0.5, 0.9)
    cdf = np.array([[0.05, 0.9, 0.99], [0.1, 0.5, 0.9], [0.01, 0.1, 0.95]])[:n_tasks]
    return RuntimeDistribution(np.zeros(n_tasks), np.full(n_tasks, 0.5), normal_score(), knots, cdf)


def test_shaped_quantiles_follow_each_tasks_cdf():
    dist = shaped()
    # At a knot's own CDF value, the quantile is the shared distribution's value at the knot.
    for i, row in enumerate(dist.cdf):
        q = dist.quantiles(row)[i]
        np.testing.assert_allclose(np.log(q) / 0.5, ndtri(dist.knots), atol=1e-5)
    # The middle task's CDF is the shared one: it is the plain lognormal.
    levels = np.linspace(0.01, 0.99, 23)
    np.testing.assert_allclose(dist.quantiles(levels)[1], np.exp(0.5 * ndtri(levels)), rtol=1e-6)
    q = dist.quantiles(np.linspace(0.0005, 0.9995, 301))
    assert np.all(np.diff(q, axis=1) >= 0) and np.all(q > 0)
    # Task 0 is mostly low, task 2 mostly high.
    med = dist.quantiles([0.5])[:, 0]
    assert med[0] < med[1] < med[2]


def test_a_shaped_tasks_far_tail_moves_by_rounding_when_its_cdf_moves_by_an_ulp():
    # The single-row path's CDF of a task may be an ulp off the batch's. Past the top knot a
    # level maps onto Z's as 1 less a small share, and taking that share from 1 kept the
    # ulp as its error: the quantile at 1 - 1e-9 moved by 2.2e-7 (relative), 3.9e-8 between
    # describe_one and a batch of a fitted model's task, where they agree to 1e-12.
    score = ScoreDistribution.from_scores(ndtri(np.arange(1, 80) / 80))
    knots = (0.1, 0.5, 0.8)
    row = [0.05, 0.1, 0.2177498299560409]
    nudged = [*row[:-1], math.nextafter(row[-1], 1.0)]
    levels = (0.5, 0.999, 1 - 1e-6, 1 - 1e-9)
    batch = RuntimeDistribution(np.array([2.0]), np.array([1.0]), score, knots, np.array([row])).quantiles(list(levels))[0]
    moved = RuntimeDistribution(np.array([2.0]), np.array([1.0]), score, knots, np.array([nudged])).quantiles(list(levels))[0]
    np.testing.assert_allclose(moved, batch, rtol=1e-13)
    np.testing.assert_allclose(describe_one(2.0, 1.0, score, levels, True, knots, nudged)[0], batch, rtol=1e-13)
    # Read at the share itself, the tail is the exponential one past the top score.
    above = (1 - levels[-1]) / (1 - row[-1]) * (1 - knots[-1])  # 1 less Z's level, as a share of the top segment
    top_z = score.values[-1] + score._tail_slopes()[1] * (math.log(1 - score.levels[-1]) - math.log(above))
    assert batch[-1] == pytest.approx(math.exp(2.0 + top_z), rel=1e-12)


def test_shaped_quantiles_at_a_row_of_levels_per_task():
    dist = shaped()
    levels = np.array([[0.01, 0.3, 0.97], [0.2, 0.5, 0.6], [0.001, 0.9, 0.999]])
    expected = [dist.subset(np.array([i])).score_quantiles(levels[i])[0] for i in range(3)]
    np.testing.assert_allclose(dist.score_quantiles(levels), expected, rtol=1e-12)
    plain = RuntimeDistribution(np.zeros(3), np.full(3, 0.5), normal_score())
    np.testing.assert_allclose(plain.score_quantiles(levels), ndtri(levels), rtol=1e-3, atol=1e-6)


def test_subset_keeps_rows():
    dist = shaped()
    sub = dist.subset(np.array([2, 0]))
    np.testing.assert_array_equal(sub.quantiles([0.3, 0.7]), dist.quantiles([0.3, 0.7])[[2, 0]])


# --------------------------------------------------------------------------- moments


@pytest.mark.parametrize("s", [0.01, 0.25, 0.8])
def test_mean_std_match_analytic_lognormal_shared_scale(s):
    m = np.array([-1.0, 2.0, 9.0])
    dist = RuntimeDistribution(m, np.full(3, s), normal_score())
    mean, std = dist.mean_std()
    em, es = lognormal_moments(m, s)
    np.testing.assert_allclose(mean, em, rtol=2e-4)
    np.testing.assert_allclose(std, es, rtol=3e-3)


def test_mean_std_match_analytic_lognormal_per_task_scale():
    m = np.linspace(-2, 8, 50)
    s = np.geomspace(0.01, 1.0, 50)
    mean, std = RuntimeDistribution(m, s, normal_score()).mean_std()
    em, es = lognormal_moments(m, s)
    np.testing.assert_allclose(mean, em, rtol=5e-4)
    np.testing.assert_allclose(std, es, rtol=5e-3)


@pytest.mark.parametrize("n", [50, 400])
def test_moments_asked_once_are_the_moments(n):
    # A cross-validation fold's tasks: fewer than the log-scale grid's points are summed
    # over the moment nodes task by task, more read the table; the same moments either way.
    m = np.linspace(-2, 8, n)
    s = np.geomspace(0.01, 1.0, n)
    dist = RuntimeDistribution(m, s, normal_score())
    mean, std = dist.mean_std_once()
    assert (dist._moments is None) == (n < 301)  # the table's moments are kept, a quadrature's not
    em, es = lognormal_moments(m, s)
    np.testing.assert_allclose(mean, em, rtol=5e-4)
    np.testing.assert_allclose(std, es, rtol=5e-3)
    np.testing.assert_allclose(mean, dist.mean_std()[0], rtol=6e-4)
    np.testing.assert_allclose(std, dist.mean_std()[1], rtol=5e-3)
    same = shaped()  # one scale: the segments' moments, which cost little, as mean_std gives them
    np.testing.assert_array_equal(same.mean_std_once()[0], same.mean_std()[0])


def test_moments_of_shaped_tasks_match_monte_carlo():
    dist = shaped()
    rng = np.random.default_rng(3)
    u = rng.random(400_000)
    mean, std = dist.mean_std()
    _, _, m3, _ = dist.moments()
    for i in range(3):
        x = dist.subset(np.array([i])).quantiles(u)[0]
        assert mean[i] == pytest.approx(x.mean(), rel=3e-3)
        assert std[i] == pytest.approx(x.std(), rel=1e-2)
        assert np.sign(m3[i]) == np.sign(((x - x.mean()) ** 3).mean())


# --------------------------------------------------------------------------- totals


def mc_total(dist: RuntimeDistribution, n_samples: int = 100_000, seed: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    total = np.zeros(n_samples)
    for i in range(len(dist)):
        total += dist.subset(np.array([i])).quantiles(rng.random(n_samples))[0]
    return total


@pytest.mark.parametrize("n_tasks", [5, 200])
def test_total_of_iid_lognormals_matches_monte_carlo(n_tasks):
    s = 0.6
    dist = RuntimeDistribution(np.full(n_tasks, 3.0), np.full(n_tasks, s), normal_score())
    tot = dist.total()
    em, es = lognormal_moments(3.0, s)
    assert tot.mean == pytest.approx(n_tasks * em, rel=1e-3)
    assert tot.std == pytest.approx(np.sqrt(n_tasks) * es, rel=5e-3)
    ref = mc_total(dist, 50_000 if n_tasks > 50 else 100_000)
    levels = [0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
    np.testing.assert_allclose(tot.quantiles(levels), np.quantile(ref, levels), rtol=0.015)
    lo, hi = tot.interval(0.9)
    assert lo < tot.mean < hi
    # The total is much narrower, relatively, than adding up the tasks' quantiles.
    added = dist.quantiles([0.95])[:, 0].sum()
    assert tot.quantiles([0.95])[0] < added


def test_total_of_mixed_shaped_tasks_matches_monte_carlo():
    dist = shaped()
    tot = dist.total()
    ref = mc_total(dist)
    levels = [0.1, 0.5, 0.9]
    np.testing.assert_allclose(tot.quantiles(levels), np.quantile(ref, levels), rtol=0.02)
    assert tot.mean == pytest.approx(ref.mean(), rel=5e-3)


@functools.cache
def sums_of_iid_tasks(n_tasks: int) -> np.ndarray:
    """200,000 draws (mc_total) of the sum of ``n_tasks`` tasks of log location 3 and log sd
    0.6, read-only. A task alone holds no shared factor: the draws are the same whatever the
    factor, so each queue's are drawn once (400 tasks take seconds)."""
    s = mc_total(RuntimeDistribution(np.full(n_tasks, 3.0), np.full(n_tasks, 0.6), normal_score()), 200_000)
    s.flags.writeable = False
    return s


@pytest.mark.parametrize("n_tasks, shared", [(5, 0.02), (400, 0.02), (400, 0.3)])
def test_a_shared_factor_multiplies_the_total(n_tasks, shared):
    # The model's uncertainty about the level is one lognormal factor (mean 1) for the whole
    # queue: the total is M * S, S the sum of the tasks' independent runtimes.
    dist = RuntimeDistribution(np.full(n_tasks, 3.0), np.full(n_tasks, 0.6), normal_score(), shared_log_sd=shared)
    tot = dist.total(shared_factor=True)
    s = sums_of_iid_tasks(n_tasks)
    m = np.exp(shared * np.random.default_rng(9).standard_normal(len(s)) - shared**2 / 2)
    ref = m * s
    assert tot.mean == pytest.approx(s.mean(), rel=2e-3)  # E[M] = 1: the same mean
    em, es = lognormal_moments(3.0, 0.6)
    sd = np.sqrt(np.exp(shared**2) * n_tasks * es**2 + np.expm1(shared**2) * (n_tasks * em) ** 2)
    assert tot.std == pytest.approx(sd, rel=5e-3)
    levels = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
    np.testing.assert_allclose(tot.quantiles(levels), np.quantile(ref, levels), rtol=0.015)
    # The 90% interval widens as the standard deviation does (a 400-task total's ninefold at 0.3).
    independent = RuntimeDistribution(dist.location, dist.scale, dist.score).total()
    width = np.diff(tot.interval(0.9))[0] / np.diff(independent.interval(0.9))[0]
    assert width == pytest.approx(tot.std / independent.std, rel=0.05)
    # One task's calibrated distribution already holds the model's uncertainty: left as it is.
    one = dist.subset(np.array([0]))
    np.testing.assert_allclose(one.total(shared_factor=True).quantiles(levels), one.quantiles(levels)[0])


@pytest.mark.parametrize("location, scale, shared", [
    ([0.0, 10.0], [1.0, 0.3], 0.5),  # one task dwarfs the other: the per-task bound must hold under M
    ([3.0] * 10, [0.6] * 10, 1.0),  # a factor wider than the tasks' own noise
    ([3.0] * 300, [0.6] * 300, 2.0),  # ... far wider: a long right tail
])
def test_the_shared_factor_at_the_edges(location, scale, shared):
    dist = RuntimeDistribution(np.array(location), np.array(scale), normal_score(), shared_log_sd=shared)
    tau = dist.factor_log_sd(dist.mean_std()[0])  # what the tasks' own distributions do not hold
    s = mc_total(dist, 100_000)
    rng = np.random.default_rng(9)
    ref = s[rng.integers(0, len(s), 400_000)] * np.exp(tau * rng.standard_normal(400_000) - tau**2 / 2)
    levels = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
    np.testing.assert_allclose(dist.total(shared_factor=True).quantiles(levels), np.quantile(ref, levels), rtol=0.03)


def test_the_factor_a_total_takes_is_what_its_tasks_do_not_hold_already():
    # Each task's calibrated distribution holds the model's error about the level, as if it
    # were its own: the sum holds it by the squares of the tasks' shares of the mean, and
    # the factor supplies the rest, so that the total's log variance has it once.
    score = normal_score()
    one = RuntimeDistribution(np.array([3.0]), np.array([0.3]), score, shared_log_sd=0.2)
    assert one.factor_log_sd(one.mean_std()[0]) == 0.0  # a single task's total is the task
    np.testing.assert_allclose(one.total(shared_factor=True).quantiles([0.05, 0.95]), one.quantiles([0.05, 0.95])[0])
    for n in (2, 5, 500):
        alike = RuntimeDistribution(np.full(n, 3.0), np.full(n, 0.3), score, shared_log_sd=0.2)
        assert alike.factor_log_sd(alike.mean_std()[0]) == pytest.approx(0.2 * np.sqrt(1 - 1 / n))
    # A task that dwarfs the others leaves the factor nearly nothing: two tasks' total is
    # about the large one (it was the large one times the whole factor, twice as wide).
    pair = RuntimeDistribution(np.array([0.0, 8.0]), np.array([0.3, 0.3]), score, shared_log_sd=0.2)
    assert pair.factor_log_sd(pair.mean_std()[0]) < 0.01
    levels = [0.05, 0.5, 0.95]
    np.testing.assert_allclose(pair.total(shared_factor=True).quantiles(levels), pair.total().quantiles(levels), rtol=0.01)
    big = pair.subset(np.array([1])).quantiles(levels)[0]
    np.testing.assert_allclose(pair.total(shared_factor=True).quantiles(levels), big, rtol=0.01)
    # The total's moments take the same factor.
    mean, var = pair.total_moments(shared_factor=True)
    assert var == pytest.approx(pair.total(shared_factor=True).variance) and var < 1.001 * pair.total_moments()[1]


def test_the_shared_factor_keeps_the_mass_of_a_total_spanning_decades():
    # Two very wide tasks: the total's mass starts near 0 and its top is ten decades up.
    # The factor is applied to the sum as the model has it, all of its mass kept.
    dist = RuntimeDistribution(np.array([0.0, 0.5]), np.array([2.5, 2.5]), normal_score(), shared_log_sd=0.05)
    alone = RuntimeDistribution(dist.location, dist.scale, dist.score).total()
    rng = np.random.default_rng(3)
    ref = alone.quantiles(rng.random(400_000)) * np.exp(0.05 * rng.standard_normal(400_000) - 0.05**2 / 2)
    levels = [0.25, 0.5, 0.75, 0.9, 0.95, 0.99]
    np.testing.assert_allclose(dist.total(shared_factor=True).quantiles(levels), np.quantile(ref, levels), rtol=0.03)


@pytest.mark.parametrize("location, scale, shared", [
    ([2.0], [0.4], 0.3), ([3.0] * 5, [0.6] * 5, 0.0), ([3.0] * 5, [0.6] * 5, 0.2),
    (list(np.linspace(0, 5, 300)), [0.5] * 300, 0.1), ([1.0, 2.0], [0.0, 0.0], 0.2),
])
def test_the_totals_moments_alone_are_the_totals(location, scale, shared):
    dist = RuntimeDistribution(np.array(location), np.array(scale), normal_score(), shared_log_sd=shared)
    for factor in (False, True):
        tot = dist.total(shared_factor=factor)
        mean, variance = dist.total_moments(shared_factor=factor)
        assert mean == pytest.approx(tot.mean, rel=1e-12) and variance == pytest.approx(tot.variance, rel=1e-12, abs=1e-12)


def test_total_of_one_task_is_the_task():
    dist = RuntimeDistribution(np.array([2.0]), np.array([0.4]), normal_score())
    tot = dist.total()
    np.testing.assert_allclose(tot.quantiles([0.1, 0.9]), dist.quantiles([0.1, 0.9])[0])
    assert tot.mean == pytest.approx(dist.mean_std()[0][0])


def test_total_quantiles_are_monotone_and_positive():
    rng = np.random.default_rng(5)
    for n in (3, 64, 65, 1000):
        dist = RuntimeDistribution(rng.normal(3, 1, n), rng.uniform(0.1, 1.5, n), normal_score())
        q = dist.total().quantiles(np.linspace(0.001, 0.999, 50))
        assert np.all(np.diff(q) >= 0) and np.all(q > 0)


def test_total_quantiles_are_at_least_each_tasks_even_below_one_grid_cell():
    # Fourteen 10 ms tasks and one whose spread reaches 1e12 ms: the grid's cells are far
    # wider than the small tasks, yet the total is never below any task's runtime.
    loc = np.log(np.r_[np.full(14, 10.0), 1e9])
    dist = RuntimeDistribution(loc, np.r_[np.full(14, 0.1), 3.0], normal_score())
    levels = [0.01, 0.05, 0.5, 0.99]
    q = dist.total().quantiles(levels)
    per_task = dist.quantiles(levels)
    assert np.all(q >= per_task.max(axis=0))
    assert q[0] > 1.0 and np.all(np.diff(q) > 0)


def test_quantiles_stay_within_the_log_bounds_however_far_the_level():
    sd = ScoreDistribution.from_scores(np.r_[np.zeros(7), 10.0, 15.0, 20.0, 25.0, 30.0, 35.0])  # a wild tail
    free = RuntimeDistribution(np.zeros(2), np.ones(2), sd)
    bounded = RuntimeDistribution(np.zeros(2), np.ones(2), sd, log_bounds=(-5.0, 40.0))
    levels = [0.5, 1 - 1e-9, 1 - 1e-12]  # (the tail past the scores rises at most 0.5 per unit of log tail probability)
    assert free.quantiles(levels)[0, -1] > np.exp(40.0)
    np.testing.assert_allclose(bounded.quantiles(levels)[0], [1.0, *np.exp([40.0, 40.0])])
    assert bounded.subset(np.array([1])).quantiles(levels)[0, -1] == pytest.approx(np.exp(40.0))
    assert describe_one(0.0, 1.0, sd, tuple(levels), True, log_bounds=(-5.0, 40.0))[0] == pytest.approx(
        bounded.quantiles(levels)[0].tolist())


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_an_upper_tail_is_never_extrapolated_with_an_infinite_mean(scale):
    # 395 fast runs and 5 of a 300x slower mode, of tasks 1x to 8x apart (the scores of a
    # location that ignores the size): the outer scores the tail's slope is read from
    # straddle the slow mode's start, and the slope through them (1.5 at a scale of 1, a
    # Pareto index of 0.65) gave each task a tail of infinite mean. A queue of 20,000 such
    # tasks had a total median 3.5 times its expect (10.7 times at a scale of 3); each
    # task's tail is now that of a Pareto index of 2 at most, in log runtime.
    rng = np.random.default_rng(3)
    z = np.log(rng.integers(1, 9, 400)) + 0.05 * rng.standard_normal(400) + np.log(300.0) * (np.arange(400) < 5)
    sd = ScoreDistribution.from_scores(z)
    top = sd.levels[-1]
    bounds = (np.log(5.0) + scale * z.min() - np.log(100.0), np.log(40.0) + scale * z.max() + np.log(100.0))
    dist = RuntimeDistribution(np.log(rng.uniform(5, 40, 20_000)), np.full(20_000, scale), sd, log_bounds=bounds)
    far = np.log(dist.subset(np.arange(1)).quantiles([top, 1 - 1e-6])[0])
    assert far[1] - far[0] <= 0.5 * np.log((1 - top) / 1e-6) + 1e-9
    assert np.log(describe_one(float(dist.location[0]), scale, sd, (top, 1 - 1e-6), False, log_bounds=bounds)[0]) == (
        pytest.approx(far))
    median = dist.total().quantiles([0.5])[0]
    expect = dist.mean_std()[0].sum()
    # Above it (the moments leave the tail past the slowest run out, the total does not), by
    # at most that tail's mean: twice the slowest run's share, 1 / 401 of each task's runs.
    runs = np.exp(scale * z)
    assert 1.0 < median / expect < 1.0 + 2 * runs.max() / 401 / runs.mean()


def test_moments_follow_the_observed_scores_not_an_extrapolated_tail():
    # Two modes (warm and cold starts) and one warm-up outlier, as in real vision traces:
    # the exponential tail beyond the outlier must not turn the mean and variance absurd.
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(0.0, 0.1, 900), rng.normal(2.5, 0.1, 100), [5.3]])
    dist = RuntimeDistribution(np.array([np.log(5.0)]), np.array([1.0]), ScoreDistribution.from_scores(z))
    mean, std = dist.mean_std()
    y = 5.0 * np.exp(z)
    assert mean[0] == pytest.approx(y.mean(), rel=0.05)
    assert std[0] == pytest.approx(y.std(), rel=0.15)
    # Extreme levels still extrapolate, increasing.
    q = dist.quantiles([0.999, 0.9999, 0.99999])[0]
    assert np.all(np.diff(q) > 0)


# --------------------------------------------------------------------------- totals: discretisation, tails, caps


def slow_mode_score() -> ScoreDistribution:
    """97% of runs near the typical time (log sd 0.05), 3% 50x slower (a cold start)."""
    rng = np.random.default_rng(0)
    z = 0.05 * rng.standard_normal(5000) + np.where(rng.random(5000) < 0.03, np.log(50.0), 0.0)
    return ScoreDistribution.from_scores(z)


def mc_sum(dist: RuntimeDistribution, n_samples: int, seed: int) -> np.ndarray:
    """Sums of independent draws from unshaped tasks' quantile functions (vectorised)."""
    rng = np.random.default_rng(seed)
    u = rng.random((n_samples, len(dist)))
    z = dist.score.quantile(u.ravel()).reshape(u.shape)
    return np.exp(np.clip(dist.location + dist.scale * z, *dist.log_bounds)).sum(axis=1)


def test_far_quantiles_of_a_short_total_match_monte_carlo():
    # Two lognormal tasks (sigma 1): the total's 0.999 quantile was 10% low in value, its
    # tasks' outer probability bins too coarse (1/512, then a quarter of it).
    dist = RuntimeDistribution(np.log([20.0, 30.0]), np.ones(2), normal_score(), log_bounds=(np.log(1e-3), np.log(1e9)))
    levels = np.array([0.5, 0.99, 0.999])
    truth = np.quantile(mc_sum(dist, 1_000_000, 1), levels)  # the 0.999 quantile's sampling error: about 1%
    np.testing.assert_allclose(dist.total().quantiles(levels), truth, rtol=0.02)


@pytest.mark.parametrize("case", ["ten decades", "a fifth near zero", "a twentieth near zero"])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_low_quantiles_of_a_few_tasks_whose_runtimes_span_decades(case, k):
    # Most of a few tasks' low total lies within the first cell of a grid up to its median:
    # 2 tasks log-uniform over 1e-3 to 1e7 ms had their 1% quantile at 48 times the true one.
    rng = np.random.default_rng(6)
    if case == "ten decades":
        z = rng.uniform(-5, 5, 2000) * np.log(10.0)
    else:  # some runs take a millionth of the others (aborted at once)
        share = 0.2 if case == "a fifth near zero" else 0.05
        z = 0.1 * rng.standard_normal(2000) + np.where(rng.random(2000) < share, np.log(1e-6), 0.0)
    bounds = (z.min() - np.log(100.0), z.max() + np.log(100.0))
    dist = RuntimeDistribution(np.zeros(k), np.ones(k), ScoreDistribution.from_scores(z), log_bounds=bounds)
    levels = np.array([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5])
    s = mc_sum(dist, 400_000, 2)
    q = dist.total().quantiles(levels)
    # In time, where a level falls among the values of its mode (not in a gap between modes).
    assert off_in_probability(q, levels, s, tol=0.02) <= max(0.1 * levels.min(), 0.0001)
    assert off_in_probability(q, levels, s) <= 0.005


@pytest.mark.parametrize("k", [10, 20, 50])
def test_a_total_of_tasks_narrower_than_a_grid_cell_is_not_shifted(k):
    # k identical 6 ms tasks, 3% of runs 50x slower: the total's cells (set by the slow
    # mode's spread) are wider than a typical run, which rounding to a cell once moved by
    # up to half a cell per task. The sum has modes (how many tasks ran slow): compared
    # in probability, where the total's quantiles fall within the true sum's distribution.
    dist = RuntimeDistribution(np.full(k, np.log(6.0)), np.ones(k), slow_mode_score())
    levels = [0.05, 0.25, 0.5, 0.75, 0.95]
    q = dist.total().quantiles(levels)
    s = mc_sum(dist, 200_000, 1)
    np.testing.assert_allclose([(s <= v).mean() for v in q], levels, atol=0.02)


@pytest.mark.parametrize("slow, n_slow, k", [(30.0, 2, 20), (1000.0, 1, 2), (30.0, 6, 5)])
def test_a_total_of_tasks_with_a_heavy_extrapolated_tail_matches_monte_carlo(slow, n_slow, k):
    # Forty runs (thirty for one 1000x outlier), a few of them far slower: each task's tail,
    # extrapolated past the slowest run, carries much of its mass beyond what its moments
    # (the observed scores' range) describe. The total's window was placed and sized by
    # those moments, above where most of the sum lies: its median came out 60x too high.
    rng = np.random.default_rng(11)
    n = 30 if slow == 1000.0 else 40
    z = np.concatenate([0.05 * rng.standard_normal(n - n_slow), np.log(slow) + 0.05 * rng.standard_normal(n_slow)])
    # Bounded as a model bounds them: 100x beyond the training runtimes.
    bounds = (np.log(10.0) + z.min() - np.log(100.0), np.log(10.0) + z.max() + np.log(100.0))
    dist = RuntimeDistribution(np.full(k, np.log(10.0)), np.ones(k), ScoreDistribution.from_scores(z), log_bounds=bounds)
    levels = [0.05, 0.25, 0.5, 0.75, 0.95]
    q = dist.total().quantiles(levels)
    s = mc_sum(dist, 200_000, 7)
    np.testing.assert_allclose([(s <= v).mean() for v in q], levels, atol=0.01)


def test_a_short_queue_of_tasks_of_different_sizes_with_a_slow_mode_matches_monte_carlo():
    # Twenty tasks of 5 to 50 ms, each 50x slower 3% of the time: the small ones, each under
    # half a percent of the total's variance, were summed by moments (a shifted gamma),
    # which put the total's median at 641 ms against 584.
    dist = RuntimeDistribution(np.log(np.random.default_rng(0).uniform(5, 50, 20)), np.ones(20), slow_mode_score())
    levels = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
    q = dist.total().quantiles(levels)
    s = mc_sum(dist, 200_000, 11)
    np.testing.assert_allclose([(s <= v).mean() for v in q], levels, atol=0.01)


def rare_slow_mode(k: int, seed: int = 1, sizes: tuple[float, float] = (10.0, 50.0), scale: tuple[float, float] = (1.0, 1.0)
                   ) -> RuntimeDistribution:
    """``k`` tasks of ``sizes`` ms, 0.5% of runs 200x slower, bounded as a model bounds them."""
    rng = np.random.default_rng(seed)
    z = 0.1 * rng.standard_normal(20_000) + np.where(rng.random(20_000) < 0.005, np.log(200.0), 0.0)
    bounds = (np.log(sizes[0]) + scale[1] * z.min() - np.log(100.0), np.log(sizes[1]) + scale[1] * z.max() + np.log(100.0))
    return RuntimeDistribution(np.log(rng.uniform(*sizes, k)), rng.uniform(*scale, k), ScoreDistribution.from_scores(z),
                               log_bounds=bounds)


def off_in_probability(q: np.ndarray, levels: np.ndarray, s: np.ndarray, tol: float = 0.01) -> float:
    """How far the levels lie outside the sum's CDF between ``q (1 - tol)`` and ``q (1 + tol)``:
    where a quantile falls in a gap between modes (how many tasks ran slow), any value in
    the gap is right."""
    s = np.sort(s)
    below, above = np.searchsorted(s, q * (1 - tol)) / len(s), np.searchsorted(s, q * (1 + tol)) / len(s)
    return float(np.maximum(np.maximum(below - levels, levels - above), 0.0).max())


@pytest.mark.parametrize("k", [80, 120])
def test_a_queue_of_a_hundred_tasks_with_a_rare_slow_mode_matches_monte_carlo(k):
    # 0.5% of runs 200x slower: beyond 64 tasks all but a few were summed by moments, which
    # smeared the total's all-fast mode (61% of a 100-task queue's mass) over the gaps:
    # 0.47 off in probability. Up to 128 tasks are now convolved whole. Each task's slow
    # mode began inside one of its probability bins, which its middle's value gave wholly
    # to one mode: 0.035 off, until such bins were split.
    dist = rare_slow_mode(k)
    levels = np.array([0.01, 0.05, 0.25, 0.5, 0.95, 0.99])
    assert off_in_probability(dist.total().quantiles(levels), levels, mc_sum(dist, 40_000, 3)) <= 0.01


@pytest.mark.parametrize("k", [129, 200])
def test_a_long_queue_whose_tasks_means_a_far_tail_sets_keeps_its_typical_total(k):
    # A model fitted on one 1e12 ms run among 5 ms ones: each task's mean is its far tail's,
    # alike across tasks whose typical runtimes differ tenfold. Past 128 tasks, binned
    # tasks were shifted to their bin's mean by 2.5% of it, far more than their typical
    # runtime: the total's 0.01 to 0.25 quantiles came out at a third of the truth.
    rng = np.random.default_rng(2)
    z = 0.1 * rng.standard_normal(3000)
    z[rng.random(3000) < 1 / 300] += np.log(1e10)
    loc = np.log(rng.uniform(5, 50, k))
    bounds = (loc.min() + z.min() - np.log(100.0), loc.max() + z.max() + np.log(100.0))
    dist = RuntimeDistribution(loc, np.ones(k), ScoreDistribution.from_scores(z), log_bounds=bounds)
    levels = np.array([0.01, 0.05, 0.25, 0.95])
    q = dist.total().quantiles(levels)
    truth = np.quantile(mc_sum(dist, 40_000, 3), levels)
    # The sum of typical runtimes lies in a grid cell of the far tail's width: within 15%.
    np.testing.assert_allclose(q, truth, rtol=0.15)


@pytest.mark.parametrize("k", [129, 200, 500])
def test_a_long_queue_with_a_rare_slow_mode_matches_monte_carlo(k):
    # Past 128 tasks, the tasks with under 0.5% of the variance each were summed by
    # moments (a shifted gamma): 0.066, 0.121 and 0.015 off. Binned, they keep the steps.
    dist = rare_slow_mode(k, seed=k)
    levels = np.array([0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    assert off_in_probability(dist.total().quantiles(levels), levels, mc_sum(dist, 40_000, 3)) <= 0.01


def test_a_long_queue_of_one_repeated_task_is_summed_exactly():
    # 300 runs of the same request (0.069 off, by moments): one row, drawn 300 times.
    dist = rare_slow_mode(300, sizes=(30.0, 30.0))
    levels = np.array([0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    assert off_in_probability(dist.total().quantiles(levels), levels, mc_sum(dist, 40_000, 3), tol=0.002) <= 0.01


@pytest.mark.parametrize("n", [2_000, 20_000, 100_000])
def test_a_long_queue_of_one_repeated_task_has_the_spread_of_its_sum(n):
    # Cells as wide as one task's spread changed its share of the total's variance: the
    # 90% interval of 20,000 runs held 93% of their sum, of 100,000 runs 78%. The sum of
    # so many is normal to well within these tolerances (its skewness is under 0.01).
    dist = RuntimeDistribution(np.full(n, np.log(100.0)), np.full(n, 0.3), normal_score())
    mean, sd = dist.mean_std()
    tot = dist.total()
    levels = np.array([0.05, 0.25, 0.75, 0.95])
    z = (tot.quantiles(levels) - mean.sum()) / np.sqrt((sd**2).sum())
    np.testing.assert_allclose(ndtr(z), levels, atol=0.006)


def test_a_total_is_never_above_the_most_its_tasks_can_take():
    # Both tasks reach the runtime bound above their medians: rounded to cells, the total's
    # 0.99 quantile was 0.15% above twice the bound.
    cap = np.log(1.5e9)
    dist = RuntimeDistribution(np.log([1.4e9, 1.4e9, 3.0]), np.full(3, 0.3), normal_score(), log_bounds=(0.0, cap))
    most = dist.quantiles([1.0]).sum()
    assert most == pytest.approx(2 * 1.5e9, rel=1e-6)
    for tasks in ([0, 1], [0, 2], [0, 1, 2]):
        sub = dist.subset(np.array(tasks))
        q = sub.total().quantiles([0.5, 0.9, 0.99, 1.0])
        assert np.all(q <= sub.quantiles([1.0]).sum()) and np.all(np.diff(q) >= 0)
    with pytest.raises(ValueError, match="confidence_level"):
        dist.interval(-0.5)
    with pytest.raises(ValueError, match="confidence_level"):
        dist.total().interval(2.0)


def test_a_long_queue_of_narrow_tasks_with_a_rare_slow_mode_keeps_the_spread_of_their_bodies():
    # 5,000 tasks (log sd 0.1), 0.03% of runs 300x slower: the slow mode sets the cells, each
    # task's body fell into one of them, and the sum of the bodies had no spread left (its
    # 1% quantile 0.13 off in probability). What rounding took is given back as a normal blur.
    rng = np.random.default_rng(7)
    z = 0.1 * rng.standard_normal(20_000)
    z[rng.random(20_000) < 3e-4] += np.log(300.0)
    loc = np.log(rng.uniform(20, 40, 5000))
    bounds = (loc.min() + z.min() - np.log(100.0), loc.max() + z.max() + np.log(100.0))
    dist = RuntimeDistribution(loc, np.ones(5000), ScoreDistribution.from_scores(z), log_bounds=bounds)
    levels = np.array([0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    s = mc_sum(dist, 3000, 9)
    assert off_in_probability(dist.total().quantiles(levels), levels, s, tol=0.0) <= 0.02


def test_a_short_queue_of_narrow_tasks_with_a_rare_slow_mode_keeps_its_upper_tail():
    # The blur for rounding's loss, built as a normal's characteristic function cut at the
    # grid's top frequency, rang; clipped at 0, the ringing put mass far up the tail: this
    # 10-task total's 0.95 quantile came out at 2.2 times the truth, its 0.999 at 4.2 times.
    rng = np.random.default_rng(1)
    z = 0.1 * rng.standard_normal(20_000) + np.where(rng.random(20_000) < 0.005, np.log(200.0), 0.0)
    bounds = (np.log(10.0) + z.min() - np.log(100.0), np.log(50.0) + z.max() + np.log(100.0))
    dist = RuntimeDistribution(np.log(rng.uniform(10, 50, 10)), np.ones(10), ScoreDistribution.from_scores(z),
                               log_bounds=bounds)
    levels = np.array([0.5, 0.95, 0.99, 0.999])
    s = mc_sum(dist, 400_000, 3)
    np.testing.assert_allclose(dist.total().quantiles(levels) / np.quantile(s, levels), 1.0, atol=0.1)


def test_a_long_queue_of_tasks_of_unequal_spread_matches_monte_carlo():
    # Log-scales from 0.5 to 1.5 (the slow mode 30x to 2800x): a bin's tasks differ in
    # shape, so which of them samples which stratum of the probability bins matters; in
    # order of variance, the widest at the lowest, the median was 0.03 low in probability.
    # (Bins now also split tasks by spread.)
    dist = rare_slow_mode(1000, seed=5, sizes=(1.0, 1000.0), scale=(0.5, 1.5))
    levels = np.array([0.05, 0.5, 0.95])
    s = np.concatenate([mc_sum(dist, 5000, seed) for seed in range(4)])
    np.testing.assert_allclose([(s <= v).mean() for v in dist.total().quantiles(levels)], levels, atol=0.01)


def test_a_long_queue_of_wide_tasks_among_constant_ones_matches_monte_carlo():
    # 150 wide tasks (log sd 1.5) and 600 of exactly their means: binned by mean alone, a
    # wide task shared its bin with constant ones and sampled one stratum of every
    # probability bin for the bin's mixture (0.025 low in probability at the median).
    m = np.log(np.geomspace(5, 500, 150))
    dist = RuntimeDistribution(np.r_[m, np.repeat(m + 1.125, 4)], np.r_[np.full(150, 1.5), np.zeros(600)], normal_score())
    levels = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
    s = mc_sum(dist, 20_000, 3)
    np.testing.assert_allclose([(s <= v).mean() for v in dist.total().quantiles(levels)], levels, atol=0.01)


@pytest.mark.parametrize("k", [128, 129, 500])
def test_a_long_queue_of_a_small_models_tasks_keeps_their_tails(k):
    # A model of a dozen rows: the tails extrapolated past its scores hold much of a task's
    # mean, which moments leave out. Summed by moments, a 500-task total's median was 11%
    # under the sum of the tasks' own quantile functions, and one task more (128 to 129)
    # moved it by 2% of the total.
    z = 0.5 * np.random.default_rng(5).standard_normal(12)
    bounds = (np.log(20.0) + z.min() - np.log(100.0), np.log(40.0) + z.max() + np.log(100.0))
    dist = RuntimeDistribution(np.log(np.random.default_rng(7).uniform(20, 40, k)), np.ones(k),
                               ScoreDistribution.from_scores(z), log_bounds=bounds)
    levels = np.array([0.05, 0.5, 0.95])
    s = mc_sum(dist, 20_000, 3)
    q = dist.total().quantiles(levels)
    np.testing.assert_allclose(q, np.quantile(s, levels), rtol=0.01)


@pytest.mark.parametrize("outlier", [10.0, 100.0])
def test_a_queue_of_constant_tasks_with_a_rare_outlier(outlier):
    # 999 runs of exactly 5 ms and one outlier: 100 such tasks sum to 500 ms unless one of
    # them hits the outlier (9.5% of queues), then to 495 ms plus the outlier's time.
    z = np.concatenate([np.zeros(999), [np.log(outlier)]])
    bounds = (np.log(5.0) - np.log(100.0), np.log(5.0 * outlier) + np.log(100.0))
    dist = RuntimeDistribution(np.full(100, np.log(5.0)), np.ones(100), ScoreDistribution.from_scores(z), log_bounds=bounds)
    q05, q50, q95 = dist.total().quantiles([0.05, 0.5, 0.95])
    assert q05 == pytest.approx(500.0, rel=1e-4) and q50 == pytest.approx(500.0, rel=1e-4)
    assert q95 == pytest.approx(495.0 + 5.0 * outlier, rel=0.01)


def test_a_total_stretched_by_one_far_tail_resolves_its_bulk():
    # One run in 3000 took 200x the others: the grid reaches that far, and a 200-task
    # total's bulk fell within a few of its cells (summed by moments, the whole total was
    # far off: its median below every sum). Found again on a fine grid from 0, the tasks'
    # values split between cells blurred it (0.03 off); from the least the sum can be, not.
    rng = np.random.default_rng(2)
    z = np.concatenate([0.05 * rng.standard_normal(2999), [np.log(200.0)]])
    bounds = (np.log(40.0) + z.min() - np.log(100.0), np.log(60.0) + z.max() + np.log(100.0))
    dist = RuntimeDistribution(np.log(rng.uniform(40, 60, 200)), np.ones(200), ScoreDistribution.from_scores(z),
                               log_bounds=bounds)
    levels = np.array([0.01, 0.05, 0.25, 0.5])  # the fine grid reaches past the median
    s = mc_sum(dist, 40_000, 3)
    np.testing.assert_allclose([(s <= v).mean() for v in dist.total().quantiles(levels)], levels, atol=0.01)


def test_a_long_queue_of_narrow_tasks_keeps_the_mean_of_its_total():
    rng = np.random.default_rng(2)
    dist = RuntimeDistribution(np.log(rng.uniform(5.0, 200.0, 300)), np.ones(300), slow_mode_score())
    tot = dist.total()
    u = (np.arange(40_000) + 0.5) / 40_000
    implied = tot.quantiles(u).mean()  # the mean of the distribution the total's quantiles describe
    assert implied == pytest.approx(tot.mean, rel=2e-3)
    assert tot.mean == pytest.approx(mc_sum(dist, 20_000, 3).mean(), rel=5e-3)


@pytest.mark.parametrize("shared", [0.0, 0.04])
def test_far_quantiles_of_a_total_are_not_cut_off(shared):
    # One task's spread reaches its cap (3e4 ms) far above the total's mean + 24 sd: the
    # total's far quantiles must reach it (the total is at least each task, times M).
    dist = RuntimeDistribution(np.log([20.0, 30.0]), np.array([1.5, 0.3]), normal_score(),
                               log_bounds=(np.log(0.01), np.log(3e4)), shared_log_sd=shared)
    levels = np.array([0.99, 0.999, 0.99999, 1 - 1e-7])
    q = dist.total(shared_factor=True).quantiles(levels)
    shared = dist.factor_log_sd(dist.mean_std()[0])  # the factor the sum is multiplied by
    assert np.all(np.diff(q) >= 0)
    # P(M X_1 <= v): Gauss-Hermite over log M, X_1's CDF from its quantiles.
    lv = np.concatenate([np.linspace(1e-4, 0.999, 2000), 1 - np.geomspace(1e-3, 1e-11, 400)[1:]])
    log_qx = np.log(dist.quantiles(lv)[0])
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    weights = weights / weights.sum()
    log_m = shared * nodes - shared**2 / 2
    cdf = np.array([weights @ np.interp(np.log(v) - log_m, log_qx, lv, left=0.0, right=1.0) for v in q])
    assert np.all(1 - cdf <= 1.1 * (1 - levels))
    # Against the sum itself at the levels a sample can check.
    s = mc_sum(dist, 1_000_000, 5)
    if shared:
        s *= np.exp(shared * np.random.default_rng(6).standard_normal(len(s)) - shared**2 / 2)
    np.testing.assert_allclose([(s > v).mean() for v in q[:2]], 1 - levels[:2], rtol=0.15)


def test_moments_are_those_of_the_runtime_the_quantiles_cap():
    # Far outside the training range the location sits near the cap: the quantiles stop at
    # it, and so must the mean and standard deviation (a total's mean never exceeds the
    # sum of the tasks' largest runtimes).
    bounds = (0.0, np.log(1000.0))
    m = np.array([np.log(950.0), np.log(10.0)])
    dist = RuntimeDistribution(m, np.array([0.3, 0.3]), normal_score(), log_bounds=bounds)
    mean, std = dist.mean_std()
    u = (np.arange(200_000) + 0.5) / 200_000
    x = dist.quantiles(u)
    np.testing.assert_allclose(mean, x.mean(axis=1), rtol=2e-3)
    np.testing.assert_allclose(std, x.std(axis=1), rtol=1e-2)
    assert mean[0] < 1000.0
    em, es = lognormal_moments(m[1], 0.3)  # far from the cap: the plain lognormal
    assert mean[1] == pytest.approx(em, rel=2e-4) and std[1] == pytest.approx(es, rel=3e-3)
    ten = RuntimeDistribution(np.full(10, m[0]), np.full(10, 0.3), normal_score(), log_bounds=bounds)
    assert ten.total().mean < 10 * 1000.0
    # The single-task path agrees, with a constant or a varying scale, shaped or not.
    for constant in (True, False):
        q, mu, sd = describe_one(m[0], 0.3, normal_score(), (0.5,), constant, log_bounds=bounds)
        assert mu == pytest.approx(mean[0], rel=1e-3) and sd == pytest.approx(std[0], rel=1e-2)
    shaped_dist = RuntimeDistribution(m[:1], np.array([0.5]), normal_score(), (0.1, 0.5, 0.9),
                                      np.array([[0.01, 0.1, 0.95]]), log_bounds=bounds)
    x = shaped_dist.quantiles(u)[0]
    mu_b, sd_b = shaped_dist.mean_std()
    assert mu_b[0] == pytest.approx(x.mean(), rel=2e-3) and mu_b[0] < 1000.0
    _, mu, sd = describe_one(m[0], 0.5, normal_score(), (0.5,), True, (0.1, 0.5, 0.9), [0.01, 0.1, 0.95], bounds)
    assert mu == pytest.approx(mu_b[0], rel=1e-3) and sd == pytest.approx(sd_b[0], rel=1e-2)


def one_wide_task_and_fifty_small(shared: float) -> RuntimeDistribution:
    """A 1000 ms task of log sd 2 and fifty 1 ms tasks of log sd 0.1."""
    return RuntimeDistribution(np.log(np.r_[1000.0, np.full(50, 1.0)]), np.r_[2.0, np.full(50, 0.1)], normal_score(),
                               shared_log_sd=shared)


@functools.cache
def sums_of_one_wide_task_and_fifty_small() -> np.ndarray:
    """Their sum's draws (mc_sum) without the shared factor, the same for every factor: drawn
    once, read-only."""
    s = mc_sum(one_wide_task_and_fifty_small(0.0), 200_000, 7)
    s.flags.writeable = False
    return s


@pytest.mark.parametrize("shared", [0.0, 0.02])
def test_low_quantiles_of_a_total_dominated_by_one_wide_task_count_the_small_ones(shared):
    # One 1000 ms task of log sd 2 sets the grid's cells far wider than fifty ~1 ms tasks;
    # their 50 ms must still show in the total's low quantiles.
    dist = one_wide_task_and_fifty_small(shared)
    s = sums_of_one_wide_task_and_fifty_small()
    if shared:
        s = s * np.exp(shared * np.random.default_rng(8).standard_normal(len(s)) - shared**2 / 2)
    levels = [0.01, 0.05, 0.25, 0.5]
    np.testing.assert_allclose(dist.total(shared_factor=True).quantiles(levels), np.quantile(s, levels), rtol=0.03)


@pytest.mark.parametrize("shared", [0.0, 0.05])
def test_total_quantiles_stay_monotone_and_positive_at_extreme_levels(shared):
    rng = np.random.default_rng(11)
    levels = np.concatenate([[1e-9, 1e-6, 1e-3], np.linspace(0.01, 0.99, 99), [1 - 1e-3, 1 - 1e-6, 1 - 1e-9]])
    for loc, scale in [(rng.normal(3, 1, 5), rng.uniform(0.1, 2.5, 5)),
                       (np.log(np.r_[1000.0, np.full(50, 1.0)]), np.r_[2.0, np.full(50, 0.1)]),
                       (np.log(np.full(30, 6.0)), np.ones(30))]:
        score = slow_mode_score() if len(loc) == 30 else normal_score()
        q = RuntimeDistribution(loc, scale, score, shared_log_sd=shared).total(shared_factor=True).quantiles(levels)
        assert np.all(np.isfinite(q)) and np.all(q > 0) and np.all(np.diff(q) >= 0)


def test_a_first_total_does_not_load_scipy_signal():
    # scipy.signal takes seconds to import: a process's first batch request paid for it.
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from swarmpilot_predictor.distribution import RuntimeDistribution, ScoreDistribution\n"
            "score = ScoreDistribution.from_scores(np.random.default_rng(0).standard_normal(200))\n"
            "RuntimeDistribution(np.zeros(3), np.full(3, 0.3), score, shared_log_sd=0.02).total(shared_factor=True).quantiles([0.5])\n"
            "print('scipy.signal' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- tasks of two models


def first_runs_and_repeats(k_first: int, k_repeat: int, seed: int = 2) -> tuple[MixedDistribution, list[int]]:
    """A queue of repeats (about 5 ms, a slight slow mode) and first runs of their shapes
    (about 900 ms, or as fast as a repeat one time in three), each kind from a model of its
    own, interleaved in the queue; and each task's kind."""
    rng = np.random.default_rng(seed)
    z_first = np.where(rng.random(3000) < 1 / 3, np.log(5.0 / 900.0), 0.0) + 0.2 * rng.standard_normal(3000)
    first = RuntimeDistribution(np.log(rng.uniform(800, 1000, k_first)), np.ones(k_first),
                                ScoreDistribution.from_scores(z_first), log_bounds=(np.log(0.01), np.log(1e5)))
    repeat = rare_slow_mode(k_repeat, seed=seed, sizes=(4.0, 6.0))
    kinds = rng.permutation(np.r_[np.zeros(k_repeat, dtype=np.int64), np.ones(k_first, dtype=np.int64)])
    return MixedDistribution.of((repeat, first), kinds, 0.0), kinds.tolist()


def test_a_mixed_batch_answers_each_task_from_its_own_model():
    dist, kinds = first_runs_and_repeats(6, 9)
    repeat, first = dist.parts
    kinds = np.array(kinds)
    levels = [0.05, 0.5, 0.95]
    q = dist.quantiles(levels)
    np.testing.assert_array_equal(q[kinds == 0], repeat.quantiles(levels))
    np.testing.assert_array_equal(q[kinds == 1], first.quantiles(levels))
    mean, std = dist.mean_std()
    np.testing.assert_array_equal(mean[kinds == 1], first.mean_std()[0])
    np.testing.assert_array_equal(std[kinds == 0], repeat.mean_std()[1])
    # A subset keeps each task's answer, in the order asked for; a subset of one kind is that kind's.
    rows = np.array([14, 0, 3, 7])
    np.testing.assert_array_equal(dist.subset(rows).quantiles(levels), q[rows])
    only_first = np.flatnonzero(kinds == 1)[:2]
    assert isinstance(dist.subset(only_first), RuntimeDistribution)
    assert len(dist.subset(np.array([], dtype=np.int64))) == 0


@pytest.mark.parametrize("k_first, k_repeat", [(1, 1), (3, 20), (5, 200)])
def test_the_total_of_first_runs_and_repeats_matches_monte_carlo(k_first, k_repeat):
    # One convolution of every task's own distribution: how many first runs ran fast is a
    # step of the total (a gap between modes), which the total keeps.
    dist, _ = first_runs_and_repeats(k_first, k_repeat)
    tot = dist.total()
    mean, std = dist.mean_std()
    assert tot.mean == pytest.approx(mean.sum()) and tot.std == pytest.approx(np.sqrt((std**2).sum()))
    rng = np.random.default_rng(5)
    u = rng.random((40_000, len(dist)))
    samples = np.stack([dist.subset(np.array([i])).quantiles(u[:, i])[0] for i in range(len(dist))], axis=1).sum(axis=1)
    levels = np.array([0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    assert off_in_probability(tot.quantiles(levels), levels, samples) <= 0.01
    # Never below any one task's quantile.
    assert np.all(tot.quantiles(levels) >= dist.quantiles(levels).max(axis=0) * (1 - 1e-12))


def test_a_long_queue_whose_bins_hold_tasks_of_both_models_matches_monte_carlo():
    # Tasks alike in mean and spread share a bin of the long-queue sum whichever model
    # answered them: each is discretised by its own model and moved to the bin's mean.
    a, b = rare_slow_mode(200, seed=11), rare_slow_mode(150, seed=12, scale=(0.8, 1.2))
    kinds = np.random.default_rng(3).permutation(np.r_[np.zeros(200, dtype=np.int64), np.ones(150, dtype=np.int64)])
    dist = MixedDistribution.of((a, b), kinds, 0.0)
    rng = np.random.default_rng(8)
    samples = np.zeros(40_000)
    for part, n in ((a, 200), (b, 150)):
        u = rng.random((40_000, n))
        samples += np.exp(np.clip(part.location + part.scale * part.score.quantile(u.ravel()).reshape(u.shape),
                                  *part.log_bounds)).sum(axis=1)
    levels = np.array([0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    assert off_in_probability(dist.total().quantiles(levels), levels, samples) <= 0.01


def test_a_total_of_constant_tasks_is_exact_and_warns_of_nothing():
    # Every run took 3 ms: a queue of three totals 9 ms at every level, without a division by
    # the zero width of the grid's last pass (a RuntimeWarning, an error under -W error).
    import warnings

    from swarmpilot_predictor.modeling import QuantileModel

    x = np.random.default_rng(8).integers(1, 20, 60).astype(float)[:, None]
    model = QuantileModel(["numeric"], [0], algorithm="power").fit(x, np.full(60, 3.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        total = model.predict_distribution(x[:3]).total()
        np.testing.assert_allclose(total.quantiles([0.01, 0.5, 0.99]), [9.0, 9.0, 9.0], rtol=1e-12)


# --------------------------------------------------------------------------- running tasks' time left


def test_a_running_tasks_time_left_is_its_runtime_given_what_it_has_run():
    # Lognormal tasks, closed forms: T - e given T > e.
    from swarmpilot_predictor.distribution import RemainingDistribution

    m, s = np.log(np.array([100.0, 100.0, 200.0, 50.0])), np.array([0.5, 0.5, 0.3, 0.8])
    dist = RuntimeDistribution(m, s, normal_score())
    elapsed = np.array([0.0, 150.0, 100.0, 60.0])
    left = RemainingDistribution.of(dist, elapsed)
    z_e = (np.log(np.maximum(elapsed, 1e-300)) - m) / s
    p = ndtr(z_e)
    np.testing.assert_allclose(left.reached, p, atol=2e-4)
    assert left.reached[0] == 0.0
    taus = np.array([0.9, 0.05, 0.5, 0.99])  # any order
    true = np.exp(m[:, None] + s[:, None] * ndtri(p[:, None] + taus[None, :] * (1 - p[:, None]))) - elapsed[:, None]
    np.testing.assert_allclose(left.quantiles(taus), true, rtol=2e-3)
    # A task not started is its model's own, exactly.
    np.testing.assert_array_equal(left.quantiles(taus)[0], dist.quantiles(taus)[0])
    # Moments: E[T 1{T > e}] = exp(m + s^2/2) Phi(s - z_e), E[T^2 1{T > e}] = exp(2m + 2s^2) Phi(2s - z_e).
    tail = 1 - p
    first = np.exp(m + s**2 / 2) * ndtr(s - z_e) / tail
    second = np.exp(2 * m + 2 * s**2) * ndtr(2 * s - z_e) / tail
    mean, sd = left.mean_std()
    np.testing.assert_allclose(mean, first - elapsed, rtol=3e-3)
    np.testing.assert_allclose(sd, np.sqrt(second - first**2), rtol=1e-2)
    assert mean[0] == dist.mean_std()[0][0]


def test_a_queue_with_a_running_task_totals_its_time_left_and_the_others_runtimes():
    from swarmpilot_predictor.distribution import RemainingDistribution

    m, s = np.log(np.array([100.0, 100.0, 200.0, 50.0])), np.array([0.5, 0.5, 0.3, 0.8])
    elapsed = np.array([0.0, 150.0, 0.0, 60.0])
    left = RemainingDistribution.of(RuntimeDistribution(m, s, normal_score()), elapsed)
    rng = np.random.default_rng(3)
    total = np.zeros(400_000)
    for i in range(4):
        t = np.exp(m[i] + s[i] * rng.standard_normal(4_000_000))
        total += t[t > elapsed[i]][:400_000] - elapsed[i]
    levels = [0.05, 0.5, 0.95, 0.99]
    got = left.total()
    np.testing.assert_allclose(got.quantiles(levels), np.quantile(total, levels), rtol=0.01)
    assert got.mean == pytest.approx(left.mean_std()[0].sum()) and got.mean == pytest.approx(total.mean(), rel=0.005)
    # A long queue (binned tasks) too, its running tasks among them.
    n = 300
    long = RemainingDistribution.of(RuntimeDistribution(np.full(n, np.log(100.0)), np.full(n, 0.5), normal_score()),
                                    np.where(np.arange(n) % 50 == 0, 150.0, 0.0))
    draws = np.exp(np.log(100.0) + 0.5 * rng.standard_normal((20_000, n)))
    running = np.arange(n) % 50 == 0
    cond = np.exp(np.log(100.0) + 0.5 * rng.standard_normal(2_000_000))
    cond = cond[cond > 150.0] - 150.0
    draws[:, running] = rng.choice(cond, size=(20_000, int(running.sum())))
    np.testing.assert_allclose(long.total().quantiles([0.05, 0.5, 0.95]), np.quantile(draws.sum(axis=1), [0.05, 0.5, 0.95]),
                               rtol=0.005)


def test_a_task_past_all_its_model_reaches_has_no_time_left_it_can_tell():
    from swarmpilot_predictor.distribution import RemainingDistribution

    dist = RuntimeDistribution(np.log(np.array([100.0])), np.array([0.5]), normal_score(), log_bounds=(0.0, np.log(1e4)))
    left = RemainingDistribution.of(dist, np.array([2e4]))  # past the runtime bound
    assert left.reached[0] == 1.0
    np.testing.assert_array_equal(left.quantiles([0.1, 0.5, 0.99]), [[0.0, 0.0, 0.0]])
    assert left.mean_std()[0][0] == 0.0


def test_a_task_at_its_models_level_1_to_ten_decimals_is_stuck():
    # Past its 1 - 5e-11 quantile (1 to ten decimals), a task is stuck: nothing left that the
    # model can tell. Run to its 1 - 3e-11 quantile (385 ms of a median of 100), it was answered
    # off its quantile function's last stretch before 1 - 1e-12 (438 ms): a median of 10 ms
    # left, 53 at 0.99, and not stuck.
    from swarmpilot_predictor.distribution import RemainingDistribution, levels_reached

    dist = RuntimeDistribution(np.log(np.array([100.0, 100.0])), np.array([0.2, 0.2]), normal_score())
    at = dist.quantiles([1 - 1e-9, 1 - 3e-11])[0]
    left = RemainingDistribution.of(dist, at)  # the first run to its 1 - 1e-9 quantile, the second further
    assert left.reached[0] < 1.0 and left.quantiles([0.5])[0, 0] > 0.0  # (1 - 1e-9: not stuck)
    assert left.reached[1] == 1.0
    np.testing.assert_array_equal(left.quantiles([0.1, 0.5, 0.99])[1], [0.0, 0.0, 0.0])
    assert left.mean_std()[0][1] == 0.0 and left.mean_std()[1][1] == 0.0
    assert levels_reached(left.subset(np.array([1])), np.array([1e-3]))[0] == 1.0  # done by any deadline
    assert left.subset(np.array([1])).total().quantiles([0.5, 0.99]).tolist() == [0.0, 0.0]


def test_tasks_of_two_models_and_stored_quantiles_take_levels_of_their_own():
    # task_quantiles, which the time left reads, agrees with quantiles where every task has the same levels.
    from swarmpilot_predictor.distribution import RemainingDistribution

    mixed, kinds = first_runs_and_repeats(3, 4)
    levels = np.array([0.01, 0.3, 0.5, 0.97])
    same = np.broadcast_to(levels, (len(mixed), len(levels)))
    np.testing.assert_allclose(mixed.task_quantiles(same), mixed.quantiles(levels), rtol=1e-12)
    own = np.sort(np.random.default_rng(0).random((len(mixed), 3)), axis=1)
    for i in range(len(mixed)):
        np.testing.assert_allclose(mixed.task_quantiles(own)[i], mixed.subset(np.array([i])).quantiles(own[i])[0],
                                   rtol=1e-12)
    # A first run that has run past its fast mode (as fast as a repeat, one time in three) has
    # only its slow mode left (800 to 1000 ms, and a spread of 0.2 in log); a repeat, its little.
    first, repeat = kinds.index(1), kinds.index(0)
    left = RemainingDistribution.of(mixed, np.where(np.arange(len(mixed)) == first, 50.0, 0.0))
    assert left.reached[first] == pytest.approx(1 / 3, abs=0.03)
    q = left.quantiles([0.05, 0.5])
    assert q[first, 0] > 400 and q[first, 1] > 600
    np.testing.assert_array_equal(q[repeat], mixed.quantiles([0.05, 0.5])[repeat])


def test_the_level_reached_is_the_same_bits_for_one_task_and_for_many():
    from swarmpilot_predictor.distribution import levels_reached

    rng = np.random.default_rng(0)
    n = 50  # past the few tasks searched on a fine grid: many are searched on coarser ones, more times
    m, s = np.log(rng.uniform(50, 500, n)), rng.uniform(0.1, 1.0, n)
    elapsed = np.exp(m + s * rng.normal(0.0, 1.5, n))
    dist = RuntimeDistribution(m, s, normal_score())
    many = levels_reached(dist, elapsed)
    one_by_one = np.concatenate([levels_reached(dist.subset(np.array([i])), elapsed[i:i + 1]) for i in range(n)])
    # Exactly: a queue's total within a request of many queues had moved by 1e-10 from its
    # own batch's, the tasks' levels an ulp apart.
    np.testing.assert_array_equal(many, one_by_one)
    np.testing.assert_allclose(many, ndtr((np.log(elapsed) - m) / s), atol=1e-5)


def test_the_level_reached_at_a_bend_of_the_quantile_function_is_its_level():
    from swarmpilot_predictor.distribution import levels_reached
    from swarmpilot_predictor.modeling import QuantileModel

    # Runs of 10, 10.1 and 1,000 ms: the quantile function bends at each training score's
    # level (1/4, 1/2, 3/4). Where a bend lay inside the search's last cell (2.7e-6 wide in
    # probability about the median), the level interpolated there was off by up to that: at the
    # task's own 0.25 quantile 0.2500012, where README promises 1e-6.
    model = QuantileModel([], [], algorithm="empirical").fit(np.zeros((3, 0)), np.array([10.0, 10.1, 1000.0]))
    levels = np.array([0.25, 0.5, 0.75])
    for n in (1, 2, 20):  # a lone task, a few and many: each way of searching
        dist = model.predict_distribution(np.zeros((n, 0)))
        for level, q in zip(levels, dist.quantiles(levels)[0]):
            np.testing.assert_allclose(levels_reached(dist, np.full(n, q)), level, rtol=0, atol=3e-7)


def test_a_lone_tasks_search_ends_where_a_few_tasks_search_does_to_the_last_bit():
    from swarmpilot_predictor.distribution import RemainingDistribution, levels_reached

    # One task is searched with its bookkeeping in plain numbers (a single prediction's
    # deadline): on the levels, and with the arithmetic, of a search of a few tasks at once.
    rng = np.random.default_rng(3)
    m, s = np.log(rng.uniform(50, 500, 6)), rng.uniform(0.1, 1.0, 6)
    knots = (0.1, 0.5, 0.9)
    bent = RuntimeDistribution(m, s, normal_score(), knots, np.tile([0.05, 0.5, 0.95], (6, 1)))
    cases = [RuntimeDistribution(m, s, normal_score()), bent, two_runtimes(),
             RuntimeDistribution(m, s, normal_score(), spread=np.full(6, 0.4)),
             RemainingDistribution.of(RuntimeDistribution(m, s, normal_score()), np.r_[150.0, np.zeros(5)])]
    for dist in cases:
        for i in range(len(dist)):
            one = dist.subset(np.array([i]))
            own = one.quantiles([1e-9, 0.1, 0.5, 0.9, 1 - 1e-9])[0]
            for value in [*own, *(own * 1.001), 10.0, 20.0, 5e-324, 1e-3, 1e300]:
                alone = levels_reached(one, np.array([value]))
                assert alone.shape == (1,)
                beside = levels_reached(dist.subset(np.array([i, (i + 1) % len(dist)])), np.array([value, value]))
                assert alone[0] == beside[0], (dist, i, value)
    # Before the least runtime none is done, past the far tail every one: 0 and 1 exactly.
    one = cases[0].subset(np.array([0]))
    assert levels_reached(one, np.array([1e-3]))[0] == 0.0 and levels_reached(one, np.array([1e300]))[0] == 1.0


def two_runtimes() -> RuntimeDistribution:
    """A task that takes exactly 10 ms 60% of the time and exactly 20 ms otherwise (runtimes
    recorded in whole milliseconds: the model's atoms)."""
    z = np.log(np.r_[np.full(600, 10.0), np.full(400, 20.0)])
    return RuntimeDistribution(np.zeros(1), np.ones(1), ScoreDistribution.from_scores(z),
                               log_bounds=(np.log(0.1), np.log(2000.0)), atoms=np.array([10.0, 20.0]))


def test_an_elapsed_time_equal_to_a_repeated_runtime_leaves_only_longer_runs():
    from swarmpilot_predictor.distribution import RemainingDistribution

    dist = two_runtimes()
    np.testing.assert_array_equal(dist.quantiles([0.1, 0.5, 0.7, 0.9]), [[10.0, 10.0, 20.0, 20.0]])
    # Run 10 ms and not finished: T > 10, so T = 20 and 10 ms are left at every level;
    # 60% of such tasks would have finished by now.
    left = RemainingDistribution.of(dist, np.array([10.0]))
    assert left.reached[0] == pytest.approx(0.6, abs=0.01)
    np.testing.assert_allclose(left.quantiles([0.1, 0.5, 0.9]), [[10.0, 10.0, 10.0]])
    assert left.mean_std()[0][0] == pytest.approx(10.0, rel=0.01)  # (the model ramps from 10 to 20 over 0.004 of its levels)
    # Run 20 ms, its longest runtime: past all the model knows (stuck), every such task finished.
    assert RemainingDistribution.of(dist, np.array([20.0])).reached[0] == 1.0


def pareto_tailed(n: int = 2) -> RuntimeDistribution:
    rng = np.random.default_rng(0)
    score = ScoreDistribution.from_scores(np.log1p(rng.pareto(2.5, 400)))
    return RuntimeDistribution(np.log(np.full(n, 500.0)), np.ones(n), score, log_bounds=(np.log(1.0), np.log(1e6)))


def test_a_task_that_has_run_less_than_it_can_take_keeps_its_moments():
    from swarmpilot_predictor.distribution import RemainingDistribution

    dist = pareto_tailed()
    mean, sd = dist.mean_std()
    least = float(dist.quantiles([1e-12])[0, 0])
    # Less than the least it can take: nothing is ruled out, the time left is the runtime less
    # the time run (its quantiles are, exactly); so are its mean and sd.
    for e in (1e-9, least / 2):
        left = RemainingDistribution.of(dist, np.array([e, 0.0]))
        assert left.reached[0] == 0.0
        np.testing.assert_allclose(left.quantiles([0.1, 0.5, 0.99])[0] + e, dist.quantiles([0.1, 0.5, 0.99])[0], rtol=1e-12)
        m, s = left.mean_std()
        assert m[0] == pytest.approx(mean[0] - e, rel=1e-9) and s[0] == pytest.approx(sd[0], rel=1e-9)
    # Just started (a millionth of such tasks would have finished): the moments move continuously.
    e = float(dist.quantiles([1e-6])[0, 0])
    m, s = RemainingDistribution.of(dist, np.array([e, 0.0])).mean_std()
    assert m[0] + e == pytest.approx(mean[0], rel=0.01) and s[0] == pytest.approx(sd[0], rel=0.02)
    # A task of a category training never saw (a spread term: normal, not extrapolated) too.
    rng = np.random.default_rng(1)
    unseen = RuntimeDistribution(np.log(np.full(2, 500.0)), np.full(2, 0.2), ScoreDistribution.from_scores(rng.normal(size=400)),
                                 spread=np.full(2, 0.8))
    mean_u, sd_u = unseen.mean_std()
    e = float(unseen.quantiles([1e-6])[0, 0])
    m, s = RemainingDistribution.of(unseen, np.array([e, 0.0])).mean_std()
    assert m[0] + e == pytest.approx(mean_u[0], rel=0.01) and s[0] == pytest.approx(sd_u[0], rel=0.03)
    # So does a queue's total: one task just started does not widen it.
    queue = pareto_tailed(10)
    started = RemainingDistribution.of(queue, np.r_[e, np.zeros(9)]).total()
    assert started.std == pytest.approx(queue.total().std, rel=0.01)


def test_a_running_tasks_moments_resolve_a_rare_slow_modes_start():
    from swarmpilot_predictor.distribution import RemainingDistribution

    # 0.5% of runs 200x slower: the time left's mean within 1% of a fine quadrature of its
    # quantile function, wherever the slow mode's start falls among the probability bins.
    dist = rare_slow_mode(1, seed=2, sizes=(4.0, 6.0))
    lv = dist.score.levels
    u = (np.arange(2_000_000) + 0.5) / 2_000_000
    worst = 0.0
    for e in np.geomspace(2.0, 30.0, 25):
        left = RemainingDistribution.of(dist, np.array([e]))
        p = left.reached[0]
        fine = dist.task_quantiles((p + np.clip(u, lv[0], lv[-1]) * (1 - p))[None, :])[0] - e
        got = left.mean_std()[0][0]
        worst = max(worst, abs(got / np.maximum(fine, 0.0).mean() - 1))
    assert worst < 0.01
    # A queue of such tasks just started totals as the same queue not started.
    queue = rare_slow_mode(100, seed=2, sizes=(4.0, 6.0))
    levels = [0.05, 0.5, 0.75, 0.95]
    np.testing.assert_allclose(RemainingDistribution.of(queue, np.full(100, 1e-9)).total().quantiles(levels),
                               queue.total().quantiles(levels), rtol=0.01)
    assert RemainingDistribution.of(queue, np.full(100, 1e-9)).total().mean == pytest.approx(queue.total().mean, rel=0.005)


# --------------------------------------------------------------------------- many totals of one batch


@pytest.mark.parametrize("shared_factor", [False, True])
def test_totals_of_subsets_with_quantiles_worked_out_once_are_the_subsets_own(monkeypatch, shared_factor):
    # A request's queues: subsets of one batch, sharing tasks (a queue and the same with one task more).
    from swarmpilot_predictor.distribution import RemainingDistribution

    rng = np.random.default_rng(5)
    n = 40
    whole = RuntimeDistribution(np.log(rng.uniform(20, 400, n)), rng.uniform(0.2, 0.7, n), normal_score(), shared_log_sd=0.1)
    elapsed = np.where(np.arange(n) % 5 == 0, rng.uniform(10, 300, n), 0.0)  # some running
    first_runs = RuntimeDistribution(np.log(rng.uniform(1000, 3000, 14)), np.full(14, 0.3), normal_score(), shared_log_sd=0.1)
    cdf = np.sort(rng.uniform(0.01, 0.99, (n, 3)), axis=1)  # a shape model's: each task's own
    shapes = RuntimeDistribution(whole.location, whole.scale, normal_score(), (0.1, 0.5, 0.9), cdf, shared_log_sd=0.1)
    batches = {"runtimes": whole, "time left": RemainingDistribution.of(whole, elapsed),
               "two kinds of run": MixedDistribution.of((whole.subset(np.arange(n - 14)), first_runs),
                                                        np.r_[np.zeros(n - 14, np.int64), np.ones(14, np.int64)], 0.1),
               "a shape per task": shapes, "a rare slow mode": rare_slow_mode(n, seed=3)}
    levels = [0.5, 0.9, 0.99, 0.025, 0.975]
    queues = [np.arange(a, a + k) for a, k in ((0, 1), (0, 2), (3, 7), (3, 8), (10, 30), (25, 15))]
    for name, dist in batches.items():
        unlisted = np.array([2, 39])  # a subset not named to for_totals: task 2 is in no queue
        owns = [dist.subset(rows).total(shared_factor) for rows in [*queues, unlisted]]
        remembered = dist.for_totals(levels, queues)
        discretised = []
        real_nodes = type(dist)._node_values
        monkeypatch.setattr(type(dist), "_node_values", lambda self, *a, **k: discretised.append(1) or real_nodes(self, *a, **k))
        for rows, own in zip([*queues, unlisted], owns):
            fast = remembered.subset(rows).total(shared_factor)
            assert (fast.mean, fast.variance) == (own.mean, own.variance), name
            np.testing.assert_array_equal(fast.quantiles(levels), own.quantiles(levels), err_msg=name)
        monkeypatch.undo()
        # The values the sums take the tasks at were worked out once, for the tasks of all the
        # queues (the unlisted subset's for it alone), and are each queue's own, value for value,
        # where a slow mode's start splits bins too (a queue splits those of its own tasks).
        assert len(discretised) == 1, name
        split = 0
        for rows in queues[1:]:
            own, fast = dist.subset(rows)._node_values(np.arange(len(rows))), remembered.subset(rows)._node_values(np.arange(len(rows)))
            assert len(own) == len(fast), name
            for a, b in zip(own, fast):
                for got, want in ((b.u, a.u), (b.w, a.w), (b.x, a.x), (b.row, a.row)):
                    np.testing.assert_array_equal(got, want, err_msg=name)
            split += sum(len(a.u) > 568 for a in own)
        assert (split >= 3) if name == "a rare slow mode" else (split == 0), name
        # What the totals read at those levels was worked out once, for the whole batch.
        asked = []
        real = type(dist).quantiles
        monkeypatch.setattr(type(dist), "quantiles", lambda self, lv: asked.append(list(np.ravel(lv))) or real(self, lv))
        for rows in queues:
            remembered.subset(rows).total(shared_factor).quantiles(levels)
        monkeypatch.undo()
        assert [lv for lv in asked if lv in ([1.0], [1e-12], levels)] == [], name


def test_a_batch_too_large_to_hold_discretised_leaves_each_queue_its_own(monkeypatch):
    from swarmpilot_predictor import distribution

    rng = np.random.default_rng(6)
    n = 30
    dist = RuntimeDistribution(np.log(rng.uniform(20, 400, n)), rng.uniform(0.2, 0.7, n), normal_score())
    queues = [np.arange(0, 10), np.arange(10, 30)]
    monkeypatch.setattr(distribution, "_BATCH_NODES_MAX_TASKS", 29)
    remembered = dist.for_totals([0.5, 0.9], queues)
    discretised = []
    real_nodes = RuntimeDistribution._node_values
    monkeypatch.setattr(RuntimeDistribution, "_node_values", lambda self, *a, **k: discretised.append(len(a[0])) or real_nodes(self, *a, **k))
    for rows in queues:
        np.testing.assert_array_equal(remembered.subset(rows).total().quantiles([0.5, 0.9]),
                                      dist.subset(rows).total().quantiles([0.5, 0.9]))
    assert discretised == [10, 10, 20, 20]  # each queue its own, for the remembered total and the plain one


@pytest.mark.parametrize("shared_factor", [False, True])
def test_the_totals_of_many_subsets_taken_a_few_at_a_time_are_each_subsets_own(monkeypatch, shared_factor):
    from swarmpilot_predictor import distribution
    from swarmpilot_predictor.distribution import RemainingDistribution

    rng = np.random.default_rng(7)
    n = 60
    whole = RuntimeDistribution(np.log(rng.uniform(20, 400, n)), rng.uniform(0.2, 0.7, n), normal_score(), shared_log_sd=0.1)
    batch = RemainingDistribution.of(whole, np.where(np.arange(n) % 7 == 0, 50.0, 0.0))
    # Queues of 1 to 20 tasks, some sharing tasks, one longer than a chunk may hold.
    subsets = [rng.choice(n, int(k), replace=False) for k in rng.integers(1, 21, 12)] + [np.arange(n)]
    monkeypatch.setattr(distribution, "_BATCH_NODES_MAX_TASKS", 25)
    chunks = []
    real = RemainingDistribution.for_totals
    monkeypatch.setattr(RemainingDistribution, "for_totals", lambda self, levels, rows=(): chunks.append(len(self)) or real(self, levels, rows))
    levels = [0.05, 0.5, 0.95]
    got = batch.subset_totals(subsets, levels, shared_factor)
    assert len(got) == len(subsets) and len(chunks) > 3 and max(chunks[:-1]) <= 25 and chunks[-1] == n
    for rows, total in zip(subsets, got):
        own = batch.subset(rows).total(shared_factor)
        assert (total.mean, total.variance) == (own.mean, own.variance)
        np.testing.assert_array_equal(total.quantiles(levels), own.quantiles(levels))


def test_a_long_queue_beside_short_ones_sharing_its_tasks_totals_as_its_own():
    # A queue long enough to be binned: its widest tasks keep rows of their own, which may
    # be tasks the short queues' table holds (a rare slow mode: bins split).
    from swarmpilot_predictor.distribution import RemainingDistribution

    n = 300
    batch = RemainingDistribution.of(rare_slow_mode(n, seed=4, scale=(0.5, 3.0)), np.where(np.arange(n) % 50 == 0, 5.0, 0.0))
    rng = np.random.default_rng(8)
    subsets = [np.arange(0, 200), *(rng.choice(200, 8, replace=False) for _ in range(10)), np.arange(195, 205)]
    levels = [0.05, 0.5, 0.95]
    for rows, total in zip(subsets, batch.subset_totals(subsets, levels)):
        own = batch.subset(rows).total()
        assert (total.mean, total.variance) == (own.mean, own.variance)
        np.testing.assert_array_equal(total.quantiles(levels), own.quantiles(levels))


def test_the_moment_table_of_a_heavy_tailed_score_distribution_builds_without_overflow_warnings():
    # Scores 10 past the center (t(3) residuals): d**4 passes 1e308 at the grid's largest
    # scales, and a soak's server logged "overflow encountered in power" for such models.
    # Those entries are infinite (not NaN); the mean and variance answered are finite at
    # every scale of the grid, and no warning is raised building the table.
    import warnings

    from scipy.stats import t as student

    levels = np.linspace(0.001, 0.999, 199)
    score = ScoreDistribution(levels, student.ppf(levels, 3.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grid, table = score.segment_moment_table(())
    assert not np.isnan(table).any() and np.isinf(table[:, :, 3]).any()
    assert np.isfinite(table[:, :, :2]).all()
    # (At the largest scales the fourth central moment, which no answer reads, overflows
    # as it is put together from the raw ones: that is not this table's.)
    with np.errstate(over="ignore", invalid="ignore"):
        mean, var, _, _ = RuntimeDistribution(np.zeros(300), np.exp(np.linspace(-3, 3, 300)), score,
                                              scale_varies=True).moments()
    assert np.isfinite(mean).all() and np.isfinite(var).all()


def test_the_moments_of_tasks_at_the_moment_tables_largest_scales_are_put_together_without_warnings():
    # The table's entries past where d**4 (and at the top d**3...) overflow are infinite, and
    # the tasks there are capped: their moments are the quadrature's. Read off the table
    # first, interpolated (inf * 0, at a grid point) and put together (mu**4), they warned
    # "invalid value encountered in multiply" and "overflow encountered in power" in the
    # service's log: a training on a fuzzed CSV (benchmarks/fuzz_api.py --seed 21, files 977).
    import warnings

    from scipy.stats import t as student

    levels = np.linspace(0.001, 0.999, 199)
    score = ScoreDistribution(levels, student.ppf(levels, 3.0))
    grid = score.segment_moment_table(())[0]
    for scales in (np.exp(np.linspace(-3, 3, 300)), np.exp(grid[-40:]), np.full(4, 25.0), np.full(4, 18.0)):
        for varies in (True, False):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                mean, var, _, _ = RuntimeDistribution(np.zeros(len(scales)), scales, score,
                                                      scale_varies=varies).moments()
            assert np.isfinite(mean).all() and np.isfinite(var).all() and (var > 0).all()


def test_a_lone_task_on_a_grid_point_beside_an_infinite_table_entry_has_its_batch_s_moments():
    # describe_one interpolates the moment table as a batch does. A batch's task on a grid
    # point beside an infinite entry takes the point's own (518c4b5); the lone task's
    # (1 - 0) * a + 0 * inf was a NaN: its error was null where its batch's was a number.
    from scipy.stats import t as student

    levels = np.linspace(0.001, 0.999, 199)
    # Scores that far out (34 t(3)'s) make the table's d**2 infinite from the grid point
    # after s = 1 (log s = 0, a grid point) on: the mean's column is finite there.
    score = ScoreDistribution(levels, 34.3903 * student.ppf(levels, 3.0))
    grid, table = score.segment_moment_table(())
    at = int(np.flatnonzero(np.isclose(grid, 0.0))[0])
    assert np.isfinite(table[at, 0, :2]).all() and np.isinf(table[at + 1, 0, 1]) and np.isfinite(table[at + 1, 0, 0])
    task = RuntimeDistribution(np.zeros(1), np.ones(1), score, scale_varies=True)
    assert not task._capped_rows()[0]
    mean, var, _, _ = task.moments()
    _, one_mean, one_std = describe_one(0.0, 1.0, score, (0.5,), False)
    assert np.isfinite(var[0]) and (one_mean, one_std) == (float(mean[0]), math.sqrt(var[0]))
    # Off the grid's points, and where the table is finite, as before.
    for scale in (1.01, 0.5):
        mean, var, _, _ = RuntimeDistribution(np.zeros(1), np.full(1, scale), score, scale_varies=True).moments()
        _, one_mean, one_std = describe_one(0.0, scale, score, (0.5,), False)
        assert one_mean == pytest.approx(float(mean[0]), rel=1e-12) and one_std == pytest.approx(math.sqrt(var[0]), rel=1e-9)


@pytest.mark.parametrize("knots", [(0.1, 0.5, 0.9), (0.2, 0.2, 0.7), ()])
def test_the_moment_table_holds_each_segment_s_sums_of_the_powers_of_the_scores(knots):
    # Each entry is the quadrature's sum over one segment's nodes of w * d**j; a segment
    # between equal knots has no node and sums to 0.
    levels = np.linspace(0.01, 0.99, 99)
    score = ScoreDistribution(levels, ndtri(levels) * 0.4 + 0.3 * levels**3)
    grid, table = score.segment_moment_table(knots)
    z, w, seg = score.segment_nodes(knots)
    d = np.expm1(np.exp(grid)[:, None] * (z - score.center())[None, :]) / np.exp(grid)[:, None]
    for k in range(len(knots) + 1):
        for j in range(4):
            np.testing.assert_allclose(table[:, k, j], (d[:, seg == k] ** (j + 1) * w[seg == k]).sum(axis=1),
                                       rtol=1e-12, atol=1e-300)
    if len(knots) == 3 and knots[0] == knots[1]:
        assert not (seg == 1).any() and (table[:, 1] == 0).all()
    # The segments together are the whole distribution's: the first power's sum is the mean of d.
    np.testing.assert_allclose(table[:, :, 0].sum(axis=1), d @ w, rtol=1e-12)


def test_a_totals_probability_of_a_deadline_inverts_its_quantiles():
    rng = np.random.default_rng(3)
    n = 40
    m, s = np.log(rng.uniform(50, 500, n)), rng.uniform(0.1, 1.0, n)
    total = RuntimeDistribution(m, s, normal_score()).total()
    levels = np.array([0.001, 0.05, 0.3, 0.5, 0.9, 0.99, 0.9999])
    q = total.quantiles(levels)
    np.testing.assert_allclose([total.cdf(x) for x in q], levels, atol=2e-5)
    # Below everything no task can take, none finishes; far past the total's tail, all do.
    assert total.cdf(1e-3) == 0.0
    assert total.cdf(q[-1] * 1e3) == 1.0
    # The probability grows with the deadline.
    grid = np.linspace(q[0], q[-1], 50)
    assert np.all(np.diff([total.cdf(x) for x in grid]) >= 0)


def test_one_tasks_total_has_that_tasks_probability_of_a_deadline():
    from swarmpilot_predictor.distribution import levels_reached

    dist = RuntimeDistribution(np.log([200.0]), np.array([0.5]), normal_score())
    total = dist.total()
    for deadline in (50.0, 200.0, 400.0):
        exact = float(ndtr((np.log(deadline) - np.log(200.0)) / 0.5))
        assert total.cdf(deadline) == pytest.approx(exact, abs=1e-5)
        assert float(levels_reached(dist, np.array([deadline]))[0]) == pytest.approx(exact, abs=1e-5)


def test_a_totals_probability_of_a_deadline_is_that_of_its_bounded_quantiles_everywhere():
    from swarmpilot_predictor.distribution import _levels_at

    # One task whose spread dwarfs the others' sets the grid's cell, below which the tasks'
    # own quantiles bound the total's: the probability read off the grid must give way there.
    m = np.log(np.r_[1e4, np.full(50, 10.0)])
    s = np.r_[2.0, np.full(50, 0.1)]
    total = RuntimeDistribution(m, s, normal_score()).total()
    values = total.quantiles(np.r_[1e-9, 1e-6, 1e-4, np.linspace(0.01, 0.99, 25), 1 - 1e-6])
    for x in np.unique(np.r_[values, values * 1.01]):
        searched = float(_levels_at(lambda levels: total.quantiles(levels[0])[None, :], np.array([x]))[0])
        assert total.cdf(x) == pytest.approx(searched, abs=1e-5), x


def _counting_quantiles(total):
    """``total``'s own quantile function, and the list of how many levels each of its later
    evaluations (``total.quantiles``, which now counts them there) asked for."""
    asked: list[int] = []
    quantiles = total.quantiles

    def counted(levels):
        asked.append(np.size(levels))
        return quantiles(levels)

    total.quantiles = counted
    return quantiles, asked


def test_a_deadline_past_a_totals_far_tail_is_answered_without_a_search():
    from swarmpilot_predictor.distribution import _levels_at

    rng = np.random.default_rng(5)
    m, s = np.log(rng.uniform(50, 500, 10)), rng.uniform(0.1, 0.6, 10)
    total = RuntimeDistribution(m, s, normal_score()).total()
    quantiles, asked = _counting_quantiles(total)
    top = float(quantiles(np.array([1 - 1e-12]))[0])
    # Past the grid's end, where a search on the quantile function evaluated 387 levels.
    assert top > total.edges[-1]
    for x in (top * 1.0001, top * 10, 1e9, 1e300):
        asked.clear()
        assert total.cdf(x) == 1.0 and sum(asked) <= 2, (x, asked)
    # Between the grid's end and the far tail the search still answers, as it did.
    x = float(quantiles(np.array([1 - 1e-10]))[0])
    if x > total.edges[-1]:
        searched = float(_levels_at(lambda levels: quantiles(levels[0])[None, :], np.array([x]))[0])
        assert total.cdf(x) == searched


def test_a_deadline_below_where_a_shared_factors_total_has_mass_is_answered_without_a_search():
    from swarmpilot_predictor.distribution import _REACH_ENDS, _levels_at

    # The shared factor's log grid starts near 0, far below the total's mass: a deadline there
    # (the first tasks' of a long queue) was searched over 129 levels to answer 0.
    rng = np.random.default_rng(0)
    total = RuntimeDistribution(np.log(rng.uniform(50, 500, 10)), np.full(10, 0.05), normal_score(),
                                shared_log_sd=0.05).total(shared_factor=True)
    quantiles, asked = _counting_quantiles(total)
    empty = total.edges[np.argmax(total.edge_cdf > 0) - 1]  # the grid holds no mass up to it
    assert total.edges[0] < empty < float(quantiles(_REACH_ENDS[:1])[0])
    for x in (total.edges[0] + f * (empty - total.edges[0]) for f in (0.001, 0.5, 0.999)):
        asked.clear()
        searched = float(_levels_at(lambda levels: quantiles(levels[0])[None, :], np.array([x]))[0])
        assert total.cdf(x) == searched == 0.0 and sum(asked) <= 2, (x, asked)
    # Where the grid holds mass it answers, as it did.
    for level in (1e-9, 1e-3, 0.5):
        assert total.cdf(float(quantiles(np.array([level]))[0])) == pytest.approx(level, rel=1e-3)


def test_a_totals_lowest_cell_does_not_wrap_around_to_its_far_tail():
    # Tasks of log sd 2 set cells wider than their bodies: each row rounds its values to the
    # nearest cell, so the sum's lowest cell lay below the window's start, and its mass
    # (0.17% for 4 tasks) wrapped around to the window's top: the total's 0.999 quantile was
    # the grid's end, 36,321 ms, where Monte Carlo sums of the tasks put it at about 2,980
    # (and the same 4 tasks as a prefix of a longer queue at 2,862).
    dist = RuntimeDistribution(np.full(6, 1.0), np.full(6, 2.0), normal_score())
    prefixes = dist.prefix_totals()
    for i, truth in ((4, 2978.0), (5, 3270.0)):  # Monte Carlo, 10^6 sums of the tasks' own distributions
        total = dist.subset(np.arange(i)).total()
        assert total.quantiles([0.999])[0] == pytest.approx(truth, rel=0.1)
        assert total.cdf(truth) == pytest.approx(0.999, abs=5e-4)
        np.testing.assert_allclose(total.quantiles([0.5, 0.9, 0.999]), prefixes[i - 1].quantiles([0.5, 0.9, 0.999]),
                                   rtol=0.02)


# --------------------------------------------------------------------------- completion times


def _queues_to_complete() -> dict[str, object]:
    from swarmpilot_predictor.distribution import RemainingDistribution

    rng = np.random.default_rng(11)
    return {
        "alike": RuntimeDistribution(np.full(40, 3.0), np.full(40, 0.6), normal_score()),
        "unlike": RuntimeDistribution(rng.normal(3, 1, 30), rng.uniform(0.05, 1.5, 30), normal_score()),
        # A narrow task ahead of a wide one, then narrow ones: prefixes whose spread grows by decades.
        "decades": RuntimeDistribution(np.array([0.0, 8.0, 0.0, 2.0, 1.0]), np.array([0.01, 1.0, 0.02, 0.3, 0.5]),
                                       normal_score()),
        # Narrow tasks, then wide ones: the first prefixes are too narrow for the last one's grid.
        "narrow_then_wide": RuntimeDistribution(np.repeat([1.0, 4.0], 20), np.repeat([0.05, 0.8], 20), normal_score()),
        "shaped": shaped(3),
        "running": RemainingDistribution.of(RuntimeDistribution(np.log([100.0, 100.0, 200.0, 50.0]),
                                                                np.array([0.5, 0.5, 0.3, 0.8]), normal_score()),
                                            np.array([150.0, 0.0, 0.0, 60.0])),
        "shared": RuntimeDistribution(rng.normal(3, 0.3, 12), np.full(12, 0.4), normal_score(), shared_log_sd=0.2),
    }


@pytest.mark.parametrize("name", ["alike", "unlike", "decades", "narrow_then_wide", "shaped", "running", "shared"])
def test_each_prefix_of_a_queue_totals_as_that_queue_alone(name):
    dist = _queues_to_complete()[name]
    shared = name == "shared"
    levels = [0.001, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999]
    got = dist.prefix_totals(shared)
    assert len(got) == len(dist)
    for i, total in enumerate(got, start=1):
        alone = dist.subset(np.arange(i)).total(shared)
        # (Tasks of unlike scales have their moments interpolated between scales: asked with
        # other tasks, a task's mean may move by 1e-5 of itself.)
        assert (total.mean, total.variance) == pytest.approx((alone.mean, alone.variance), rel=1e-4)
        if i in (1, len(dist)):  # the first task itself, the whole queue's own total: the same to the bit
            np.testing.assert_array_equal(total.quantiles(levels), alone.quantiles(levels))
        else:  # on the grid of a longer prefix: up to its rounding
            np.testing.assert_allclose(total.quantiles(levels)[1:], alone.quantiles(levels)[1:], rtol=4e-3)
            # The 0.001 quantile may lie where the sum's CDF is all but flat (between two of
            # the nodes of a task's far low tail, 1/1024 of its mass apart): there the grids'
            # cells move it by up to 1% ("decades": 142.75 against 141.68), 3e-5 in probability.
            low = float(total.quantiles([0.001])[0])
            assert low == pytest.approx(float(alone.quantiles([0.001])[0]), rel=1e-2)
            assert alone.cdf(low) == pytest.approx(0.001, abs=1e-4)


def test_a_constant_task_ahead_of_others_is_done_at_its_runtime_and_moves_the_rest():
    dist = RuntimeDistribution(np.array([np.log(50.0), np.log(50.0), 3.0]), np.array([0.0, 0.0, 0.5]), normal_score())
    got = dist.prefix_totals()
    assert got[0].quantiles([0.1, 0.9]).tolist() == pytest.approx([50.0, 50.0])
    assert got[1].quantiles([0.1, 0.9]).tolist() == pytest.approx([100.0, 100.0])
    third = dist.subset(np.array([2])).quantiles([0.1, 0.9])[0] + 100.0
    np.testing.assert_allclose(got[2].quantiles([0.1, 0.9]), third, rtol=2e-3)
    assert dist.subset(np.zeros(0, dtype=np.int64)).prefix_totals() == []


def test_the_completion_times_of_a_long_queue_match_monte_carlo():
    # Past _EXACT_SUM_MAX_TASKS a queue's total bins its tasks; a prefix keeps a row per task.
    rng = np.random.default_rng(12)
    n = 160
    dist = RuntimeDistribution(rng.normal(3, 0.7, n), rng.uniform(0.1, 0.9, n), normal_score())
    draws = np.cumsum(np.stack([dist.subset(np.array([i])).quantiles(rng.random(100_000))[0] for i in range(n)]), axis=0)
    levels = np.array([0.01, 0.1, 0.5, 0.9, 0.99])
    got = dist.prefix_totals()
    for i in (2, 10, 80, 130, 159, 160):
        reached = np.searchsorted(np.sort(draws[i - 1]), got[i - 1].quantiles(levels)) / draws.shape[1]
        np.testing.assert_allclose(reached, levels, atol=0.006)


@pytest.mark.parametrize("k", [60, 150])
def test_the_completion_times_of_tasks_with_a_rare_slow_mode_match_monte_carlo(k):
    # 0.5% of runs 200x slower: the low end of each prefix past the thirty-second is found on
    # a grid it shares with the prefixes of about its length (a quantile in a gap between
    # modes, how many tasks ran slow, may be anywhere in it: compared in probability).
    dist = rare_slow_mode(k)
    levels = np.array([0.01, 0.05, 0.25, 0.5, 0.95, 0.99])
    got = dist.prefix_totals()
    for i in (2, 33, 40, 59, 129, 140):
        if i <= k:
            s = mc_sum(dist.subset(np.arange(i)), 40_000, i)
            assert off_in_probability(got[i - 1].quantiles(levels), levels, s) <= 0.01, i


def test_completion_times_are_read_as_each_is_made():
    # A total holds its grid and its tasks: a queue of 2,000 tasks' totals, all kept, took 700 MB.
    import weakref

    dist = RuntimeDistribution(np.full(40, 3.0), np.full(40, 0.6), normal_score())
    made: list[weakref.ref] = []
    most_alive = 0

    def read(total):
        nonlocal most_alive
        made.append(weakref.ref(total))
        most_alive = max(most_alive, sum(ref() is not None for ref in made))
        return float(total.quantiles([0.5])[0])

    got = dist.prefix_totals(read=read)
    assert len(made) == 40 and most_alive == 1
    assert got == [float(t.quantiles([0.5])[0]) for t in dist.prefix_totals()] and got == sorted(got)


@pytest.mark.parametrize("shared", [False, True])
def test_the_completion_times_of_a_long_queue_read_each_task_a_few_times(monkeypatch, shared):
    # Each prefix's total is bounded by its tasks' quantiles: read for all of its tasks at
    # each prefix, a queue's completion times cost the square of its length (10,000 tasks of
    # the H100 vision model took 19 s, 84 s with the shared factor).
    rng = np.random.default_rng(13)
    n = 1500
    dist = RuntimeDistribution(rng.normal(3, 0.7, n), rng.uniform(0.1, 0.9, n), normal_score(),
                               shared_log_sd=0.2 if shared else 0.0)
    levels = [0.001, 0.05, 0.5, 0.95]
    rows = []
    own = RuntimeDistribution.quantiles

    def counted(self, at):
        rows.append(len(self))
        return own(self, at)

    monkeypatch.setattr(RuntimeDistribution, "quantiles", counted)
    got = dist.prefix_totals(shared, read=lambda total: (total.quantiles(levels), total.cdf(total.mean)))
    monkeypatch.undo()
    assert len(got) == n
    assert sum(rows) < 100 * n, sum(rows)  # (each prefix reading all its tasks: about n^2)
    for i in (2, 40, 700, 1499):  # as the queue of those tasks alone, bounded by them as it is
        alone = dist.subset(np.arange(i)).total(shared)
        np.testing.assert_allclose(got[i - 1][0], alone.quantiles(levels), rtol=4e-3)
        assert got[i - 1][1] == pytest.approx(alone.cdf(alone.mean), abs=3e-3)
