"""QuantileModel: calibration on synthetic data, model choice, robustness and persistence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import ndtri

from swarmpilot_predictor.modeling import (
    ALGORITHMS,
    EVAL_LEVELS,
    LINEAR_HINGES,
    LinearLocation,
    LogLinearDesign,
    MAX_BOOST_ROUNDS,
    PowerLocation,
    QuantileModel,
    QuantileShapeModel,
    ScaleModel,
    check_params,
    common_rounds,
    location_weights,
    moment_metrics,
    pinball_losses,
    quantile_metrics,
)
from swarmpilot_predictor.modeling import locations
from swarmpilot_predictor.modeling.locations import bounded_step
from swarmpilot_predictor.modeling.model import location_pinball
from swarmpilot_predictor.modeling.shape import quantile_regression

from .conftest import autotuned_traces

LEVELS = np.asarray(EVAL_LEVELS)
NUM2 = (["numeric", "numeric"], [0, 0])


def llm_like(n: int, seed: int, sigma: float = 0.25):
    """Runtime = overhead + per-token costs, lognormal noise; plus a useless feature."""
    rng = np.random.default_rng(seed)
    inp = rng.integers(16, 2048, n)
    out = rng.integers(8, 512, n)
    junk = rng.uniform(0, 1, n)
    base = 20 + 0.02 * inp + 12.0 * out
    y = base * np.exp(sigma * rng.standard_normal(n))
    return np.column_stack([inp, out, junk]).astype(float), y, base


VIDEO_LEVELS = {30.0: 100.0, 60.0: 180.0, 90.0: 400.0, 120.0: 450.0}


def video_like(n: int, seed: int):
    """Runtime set by a frame count with four values (not a power law of it), 0.3% noise; two useless prompt lengths."""
    rng = np.random.default_rng(seed)
    frames = rng.choice(list(VIDEO_LEVELS), n)
    prompts = rng.uniform(400, 700, (n, 2)).round()
    base = np.array([VIDEO_LEVELS[f] for f in frames])
    y = base * np.exp(0.003 * rng.standard_normal(n))
    return np.column_stack([prompts, frames]), y, base


def coverage(model: QuantileModel, X: np.ndarray, y: np.ndarray, levels=LEVELS) -> np.ndarray:
    return (y[:, None] <= model.predict_quantiles(X, levels)).mean(axis=0)


@pytest.fixture(scope="module")
def llm_model():
    X, y, _ = llm_like(800, seed=1)
    return QuantileModel(["numeric"] * 3, [0, 0, 0]).fit(X, y)


# --------------------------------------------------------------------------- calibration


def test_coverage_matches_nominal_levels_on_new_data(llm_model):
    Xt, yt, base = llm_like(4000, seed=2)
    cov = coverage(llm_model, Xt, yt)
    assert np.abs(cov - LEVELS).max() < 0.035, cov
    m = quantile_metrics(yt, llm_model.predict_quantiles(Xt, LEVELS), LEVELS)
    assert 0.87 <= m["interval_coverage"]["0.9"] <= 0.93
    assert m["mean_abs_coverage_error"] < 0.02
    # And the quantiles are close to the true conditional ones.
    true_q = base[:, None] * np.exp(0.25 * ndtri(LEVELS))[None, :]
    rel = np.abs(llm_model.predict_quantiles(Xt, LEVELS) / true_q - 1)
    assert rel.mean(axis=0).max() < 0.08


def test_heteroscedastic_noise_is_calibrated_in_each_regime():
    rng = np.random.default_rng(3)

    def draw(n):
        tokens = rng.integers(10, 1000, n)
        load = rng.uniform(0, 1, n)
        y = (30 + 2.0 * tokens) * np.exp((0.05 + 0.45 * load) * rng.standard_normal(n))
        return np.column_stack([tokens, load]).astype(float), y

    X, y = draw(1500)
    model = QuantileModel(*NUM2).fit(X, y)
    assert model.cv_[model.family_]["heteroscedastic"]
    Xt, yt = draw(4000)
    for part in (Xt[:, 1] < 0.3, Xt[:, 1] > 0.7):
        lo, hi = model.predict_quantiles(Xt[part], [0.05, 0.95]).T
        inside = ((yt[part] >= lo) & (yt[part] <= hi)).mean()
        assert 0.84 <= inside <= 0.96, inside


def test_mixing_weight_that_depends_on_a_feature_is_learned():
    """Cold starts (10x slower) whose share falls with a feature, like first-seen input shapes."""
    rng = np.random.default_rng(4)

    def draw(n):
        seq = rng.uniform(0, 1000, n)
        size = rng.integers(1, 64, n)
        p_cold = 0.8 * np.exp(-seq / 250) + 0.1
        cold = rng.random(n) < p_cold
        y = (3 + 0.05 * size) * np.where(cold, 12.0, 1.0) * np.exp(0.08 * rng.standard_normal(n))
        return np.column_stack([seq, size]).astype(float), y, p_cold

    X, y, _ = draw(1500)
    model = QuantileModel(*NUM2).fit(X, y)
    assert model.shape_ is not None
    Xt, yt, p = draw(3000)
    q = model.predict_quantiles(Xt, LEVELS)
    early, late = p > 0.6, p < 0.2
    # Early tasks' medians are in the slow mode, late tasks' in the fast one.
    assert np.median(q[early, 3] / q[late, 3].mean()) > 5
    for part in (early, late):
        cov = (yt[part, None] <= q[part]).mean(axis=0)
        assert np.abs(cov - LEVELS).mean() < 0.05, cov


def test_the_shape_model_is_recalibrated_and_each_fold_on_the_others_only(monkeypatch):
    """The shape model's probabilities are recalibrated on its held-out ones (the served model
    on all of them); in cross-validation each fold's on the other folds' alone: on its own, a
    fold would calibrate itself and the reported held-out figures would flatter the model."""
    from swarmpilot_predictor.modeling import model as model_module
    from swarmpilot_predictor.modeling import shape as shape_module

    rng = np.random.default_rng(4)
    n = 1500
    seq, size = rng.uniform(0, 1000, n), rng.integers(1, 64, n)
    cold = rng.random(n) < 0.8 * np.exp(-seq / 250) + 0.1
    y = (3 + 0.05 * size) * np.where(cold, 12.0, 1.0) * np.exp(0.08 * rng.standard_normal(n))
    X = np.column_stack([seq, size]).astype(float)
    sizes: list[int] = []
    real = shape_module.recalibration_map

    def recording(pits, *args, **kw):
        sizes.append(len(pits))
        return real(pits, *args, **kw)

    # Looked up where it is called: the served model's in shape (ShapeModel.set_recalibration),
    # each fold's in model (QuantileModel's cross-validation).
    monkeypatch.setattr(shape_module, "recalibration_map", recording)
    monkeypatch.setattr(model_module, "recalibration_map", recording)
    model = QuantileModel(*NUM2).fit(X, y)
    assert model.shape_ is not None and model.shape_.recal_ is not None
    assert sizes[-1] == n  # the served model: every held-out probability
    in_folds = sizes[:-1]
    assert in_folds and all(0.6 * n < k < n for k in in_folds), sizes


def test_tens_of_rows_are_cross_validated_on_ten_folds():
    """Five folds would score every candidate on fits to 80% of a few dozen rows, not the
    model served; ten below 100 rows, five up to 20,000, three above; n_folds overrides."""
    def folds(model, n):
        rng = np.random.default_rng(n)
        fold = model._folds(rng.uniform(1, 64, (n, 2)), rng.normal(size=n))
        counts = np.bincount(fold)
        assert counts.max() - counts.min() <= 1  # as many rows in each, give or take one
        return len(counts)

    model = QuantileModel(*NUM2)
    assert [folds(model, n) for n in (3, 40, 99, 100, 19_999, 20_000)] == [3, 10, 10, 5, 5, 3]
    assert [folds(QuantileModel(*NUM2, n_folds=4), n) for n in (40, 500, 50_000)] == [4, 4, 4]
    X, y, _ = llm_like(60, seed=3)
    fitted = QuantileModel(["numeric"] * 3, [0] * 3).fit(X, y)
    assert fitted.n_folds is None
    assert QuantileModel.from_json(json.loads(json.dumps(fitted.to_json()))).n_folds is None


def cold_runs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runtimes that grow with the batch; a tenth of the runs are cold (10x)."""
    rng = np.random.default_rng(seed)
    batch = rng.integers(1, 65, n).astype(float)
    cold = np.zeros(n, dtype=bool)
    cold[rng.choice(n, n // 10, replace=False)] = True
    y = (0.5 + batch) * np.where(cold, 10.0, 1.0) * rng.lognormal(0, 0.1, n)
    return batch[:, None], np.log(y), cold


def test_folds_of_tens_of_rows_are_stratified_by_the_noise():
    """Below 100 rows, the rows sorted by their residual from a robust fit are dealt out k
    at a time, one to each fold: the 4 cold runs among 40 land in 4 folds (random folds put
    two of them in one here), while the batch sizes, which sorting by runtime would share
    out as well, stay where chance puts them."""
    model = QuantileModel(["numeric"], [0])
    X, ylog, cold = cold_runs(40, seed=3)
    fold = model._folds(X, ylog)
    assert np.bincount(fold).tolist() == [4] * 10
    assert len(set(fold[cold])) == 4
    assert np.array_equal(fold, model._folds(X, ylog))  # the same rows, the same folds (random_state)
    # Each block of ten rows in the order of the noise is dealt one row per fold.
    noise = ylog - LinearLocation(["numeric"], [0]).fit(X, ylog).predict(X)
    for block in np.argsort(noise).reshape(4, 10):
        assert sorted(fold[block]) == list(range(10))
    # The fastest ten runs are not dealt out the same way: they are not one block.
    assert sorted(fold[np.argsort(ylog)[:10]]) != list(range(10))
    # Without features the runtimes themselves are the noise.
    y = np.random.default_rng(4).lognormal(size=43)
    fold = QuantileModel([], [])._folds(np.zeros((43, 0)), np.log(y))
    for block in np.argsort(y)[:40].reshape(4, 10):
        assert sorted(fold[block]) == list(range(10))
    assert len(set(fold[np.argsort(y)[40:]])) == 3
    # From 100 rows on, five folds of 20 rows or more hold their share by chance: random folds.
    X, ylog, cold = cold_runs(150, seed=3)
    assert np.array_equal(model._folds(X, ylog), np.random.default_rng(model.random_state).permutation(150) % 5)


def hidden_accelerators(n: int, seed: int, models: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Runs of several models on five accelerators the traces do not name: each model's
    runtimes are a mixture of five modes, a 32B one offloaded (5x) on the two small cards."""
    rng = np.random.default_rng(seed)
    flops = np.array([1.0, 0.45, 3.5, 8.0, 0.6])
    memory = np.array([1.0, 0.6, 3.0, 3.4, 0.45])
    noise = np.array([0.05, 0.05, 0.15, 0.35, 0.05])
    size = np.resize([8, 7, 32, 3.8, 3.5, 1.5], models)
    bound = np.resize([1, 1, 1, 1, 0, 0.3], models)
    card, model, tokens = rng.integers(0, 5, n), rng.integers(0, models, n), rng.integers(16, 512, n)
    offloaded = (size[model] > 20) & ((card == 2) | (card == 3))
    per_token = size[model] * (bound[model] * memory[card] + (1 - bound[model]) * flops[card]) * 1.2 * np.where(offloaded, 5, 1)
    y = (30 + tokens * per_token) * np.exp(noise[card] * rng.standard_normal(n))
    return np.column_stack([model, tokens]).astype(float), y


def shape_scores(monkeypatch) -> list[np.ndarray]:
    """Records the scores every shape model's fit learns from, of either kind (the served model's last)."""
    import swarmpilot_predictor.modeling as modeling

    seen: list[np.ndarray] = []
    real = modeling.ShapeModel.fit  # (QuantileShapeModel.fit ends in it too)

    def recording(self, X, z, *args, **kw):
        seen.append(np.array(z))
        return real(self, X, z, *args, **kw)

    monkeypatch.setattr(modeling.ShapeModel, "fit", recording)
    return seen


@pytest.mark.parametrize("algorithm", ["linear", "power"])
def test_the_shape_model_learns_the_scores_around_the_location_it_is_served_with(monkeypatch, algorithm):
    """A model's runtimes as a mixture of hidden accelerators: the shape model learns the
    scores of the training rows around the location it serves with (each fold's around
    its own), not around the other folds' locations, which a fold's share of each mode
    moves and which blurred the modes."""
    X, y = hidden_accelerators(1750, seed=1)
    seen = shape_scores(monkeypatch)
    model = QuantileModel(["categorical", "numeric"], [6, 0], algorithm=algorithm).fit(X, y)
    assert model.shape_ is not None
    own = (np.log(y) - model.location_.predict(X)) / model.scale_.predict(X)
    np.testing.assert_allclose(seen[-1], own, rtol=1e-9, atol=1e-9)


def test_with_few_rows_per_coefficient_the_shape_model_learns_held_out_scores(monkeypatch):
    """Forty values of a categorical feature on 600 runs: a location fitted on its own rows
    leaves them residuals narrower than new runs', so the shape learns held-out ones."""
    rng = np.random.default_rng(3)
    n = 600
    group, load = rng.integers(0, 40, n), rng.uniform(0, 1, n)
    slow = rng.random(n) < 0.05 + 0.9 * load
    y = 5 * np.exp(0.3 * (group % 10)) * np.where(slow, 8.0, 1.0) * np.exp(0.05 * rng.standard_normal(n))
    X = np.column_stack([group, load]).astype(float)
    seen = shape_scores(monkeypatch)
    model = QuantileModel(["categorical", "numeric"], [40, 0], algorithm="linear").fit(X, y)
    assert model.shape_ is not None and all(model.features_used_)
    own = (np.log(y) - model.location_.predict(X)) / model.scale_.predict(X)
    assert np.abs(seen[-1] - own).max() > 0.01



def assert_alone_as_in_a_batch_and_after_a_round_trip(model: QuantileModel, Xt: np.ndarray) -> dict:
    """One task at a time answers as in a batch, and the stored model as the fitted one; returns what was stored."""
    q = model.predict_quantiles(Xt[:50], LEVELS)
    mean, std = model.predict_distribution(Xt[:50]).mean_std()
    for i, x in enumerate(Xt[:50].tolist()):
        one = model.describe_one(x, tuple(LEVELS))
        np.testing.assert_allclose(one[0], q[i], rtol=1e-6)
        assert one[1] == pytest.approx(mean[i], rel=1e-4) and one[2] == pytest.approx(std[i], rel=1e-4)
    stored = json.loads(json.dumps(model.to_json()))
    again = QuantileModel.from_json(stored)
    again.check_loaded()
    np.testing.assert_array_equal(again.predict_quantiles(Xt, LEVELS), model.predict_quantiles(Xt, LEVELS))
    return stored


def test_quantile_regression_reaches_the_linear_programs_loss():
    """The MM solver against the exact linear program (HiGHS) on each level."""
    from scipy.optimize import linprog

    rng = np.random.default_rng(0)
    n = 300
    A = rng.uniform(0, 1, (n, 3))
    y = 1 + A @ [2.0, -1.0, 0.5] + (0.1 + A[:, 0]) * rng.standard_normal(n)
    levels = (0.05, 0.25, 0.5, 0.9, 0.99)
    B = quantile_regression(A, y, levels)
    A1 = np.column_stack([np.ones(n), A])
    for k, t in enumerate(levels):
        # min t 1'u + (1 - t) 1'v  subject to  A1 b + u - v = y,  u, v >= 0.
        c = np.concatenate([np.zeros(4), np.full(n, t), np.full(n, 1 - t)])
        lp = linprog(c, A_eq=np.hstack([A1, np.eye(n), -np.eye(n)]), b_eq=y,
                     bounds=[(None, None)] * 4 + [(0, None)] * (2 * n), method="highs")
        exact = lp.fun / n
        got = pinball_losses(y, (A1 @ B[:, k])[:, None], [t]).mean()
        assert exact <= got <= exact * 1.005, (t, got, exact)


def test_a_mixture_whose_shape_follows_a_feature_is_fitted_level_by_level():
    """Six models' runs on five accelerators the traces do not name: each model's runtimes
    are a mixture of its own shape. Quantile regression of the scores, a slope per level,
    follows each model's mixture better than the penalised logistic shape, and the folds
    choose it."""
    kinds, ncats = ["categorical", "numeric"], [6, 0]
    X, y = hidden_accelerators(1750, seed=1)
    Xt, yt = hidden_accelerators(20_000, seed=2)
    model = QuantileModel(kinds, ncats, algorithm="power").fit(X, y)
    # (The logistic shape at its default penalty: the flexible one its folds may choose came
    # within 0.7% of quantile regression here, 2977 against 2958.)
    without = QuantileModel(kinds, ncats, algorithm="power", params={"quantile_shape": False, "shape_alpha": 10.0}).fit(X, y)
    assert model.cv_["power"]["variant"] == "const+quantiles" and model.cv_["power"]["shape_model"] == "quantile"
    assert isinstance(model.shape_, QuantileShapeModel)
    assert "const+quantiles" not in without.cv_["power"]["variants_pinball_loss"]
    loss = {name: pinball_losses(yt, m.predict_quantiles(Xt, LEVELS), LEVELS).mean()
            for name, m in (("quantiles", model), ("without", without))}
    assert loss["quantiles"] < 0.98 * loss["without"], loss  # 2961 against 3044
    # (Both hold 0.475 at the median: these 1,750 runs' draw.)
    np.testing.assert_allclose(coverage(model, Xt, yt), LEVELS, atol=0.03)
    stored = assert_alone_as_in_a_batch_and_after_a_round_trip(model, Xt)
    assert stored["shape"]["kind"] == "quantile"
    with pytest.raises(ValueError, match="the shape model's kind is 'spline'"):
        QuantileModel.from_json({**stored, "shape": {**stored["shape"], "kind": "spline"}})


def aborted_in_a_band(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """LLM requests of 100-200 or 400-700 input tokens, about 3.7 s each, most of those of
    520 to 600 tokens aborted at about 70 ms, 3% of the others (the real sglang traces:
    nearly every request of 529 to 593 tokens aborted, none of the short ones)."""
    rng = np.random.default_rng(seed)
    long = rng.random(n) < 0.5
    tokens = np.where(long, rng.integers(400, 700, n), rng.integers(100, 200, n)).astype(float)
    y = 3700 * np.exp(np.where(long, 0.03, 0.15) * rng.standard_normal(n))
    aborted = rng.random(n) < np.where((tokens >= 520) & (tokens < 600), 0.85, 0.03)
    y[aborted] = 70 * np.exp(0.3 * rng.standard_normal(int(aborted.sum())))
    return tokens[:, None], y


def test_a_share_of_aborted_requests_in_a_band_of_lengths_takes_the_flexible_shape():
    """The logistic shape's default penalty (10) and hinges (3) smooth a bump in the share of
    aborted requests away: on 140 rows the folds choose a penalty of 1 and 6 hinges, and on
    new requests the quantiles of the band's lengths are the aborted ones'."""
    X, y = aborted_in_a_band(140, seed=2)
    Xt, yt = aborted_in_a_band(20_000, seed=99)
    model = QuantileModel(["numeric"], [0]).fit(X, y)
    fixed = QuantileModel(["numeric"], [0], params={"shape_alpha": 10.0}).fit(X, y)
    chosen = model.cv_[model.family_]
    assert (chosen["shape_alpha"], chosen["shape_hinges"]) == (1.0, 6)
    assert (model.shape_.alpha, model.shape_.hinges) == (1.0, 6)
    # A penalty the config sets is the one fitted: no other is tried.
    assert "shape_alpha" not in fixed.cv_[fixed.family_] and fixed.shape_.alpha == 10.0
    loss = {name: pinball_losses(yt, m.predict_quantiles(Xt, LEVELS), LEVELS).mean()
            for name, m in (("tuned", model), ("fixed", fixed))}
    assert loss["tuned"] < 0.85 * loss["fixed"], loss
    band, short = model.predict_quantiles(np.array([[560.0], [150.0]]), [0.05, 0.25])
    assert band[1] < 200 and short[0] > 2000, (band, short)  # the band mostly aborted, the short ones never
    # The default penalty's: as if short requests were aborted too.
    assert fixed.predict_quantiles(np.array([[150.0]]), [0.05])[0, 0] < 200
    np.testing.assert_allclose(coverage(model, Xt, yt), LEVELS, atol=0.05)
    stored = assert_alone_as_in_a_batch_and_after_a_round_trip(model, Xt)
    assert (stored["shape"]["alpha"], stored["shape"]["hinges"]) == (1.0, 6)


def test_above_the_row_limit_the_shape_keeps_its_default_penalty(monkeypatch):
    from swarmpilot_predictor.modeling import model as model_module

    monkeypatch.setattr(model_module, "SHAPE_TUNE_MAX_ROWS", 139)
    X, y = aborted_in_a_band(140, seed=2)
    model = QuantileModel(["numeric"], [0]).fit(X, y)
    assert "shape_alpha" not in model.cv_[model.family_]
    assert model.shape_ is None or model.shape_.alpha == 10.0


def test_no_quantile_regression_shape_on_a_wide_design():
    """A categorical feature of 40 values makes 40 one-hot columns: no quantile-regression
    shape is tried (its Gram matrices grow with the square of the width)."""
    rng = np.random.default_rng(4)
    X = np.column_stack([rng.integers(0, 40, 600), rng.uniform(1, 100, 600)]).astype(float)
    y = (5 + X[:, 0]) * np.exp(0.2 * rng.standard_normal(600))
    assert not QuantileShapeModel.fits(["categorical", "numeric"], [40, 0])
    assert QuantileShapeModel.fits(["categorical", "numeric"], [6, 0])
    model = QuantileModel(["categorical", "numeric"], [40, 0], algorithm="linear").fit(X, y)
    assert "const+quantiles" not in model.cv_["linear"]["variants_pinball_loss"]
    assert "const+shape" in model.cv_["linear"]["variants_pinball_loss"]


# --------------------------------------------------------------------------- distribution properties


def test_quantiles_never_cross_never_negative_at_any_level(llm_model):
    Xt, _, _ = llm_like(300, seed=5)
    # Beyond the training range too, and with made-up values.
    Xt = np.vstack([Xt, [[0, 0, 0], [1e7, 1e6, 50], [-5, -5, -5], [np.nan, 3, 0.5]]])
    levels = np.concatenate([[1e-6, 0.001], np.linspace(0.01, 0.99, 99), [0.999, 1 - 1e-6]])
    q = llm_model.predict_quantiles(Xt, levels)
    assert np.all(np.isfinite(q)) and np.all(q > 0)
    assert np.all(np.diff(q, axis=1) >= 0)
    unsorted = [0.9, 0.1, 0.5, 0.37]
    np.testing.assert_allclose(llm_model.predict_quantiles(Xt, unsorted), llm_model.predict_quantiles(Xt, sorted(unsorted))[:, [3, 0, 2, 1]])


def test_mean_std_and_total_come_from_the_distribution(llm_model):
    Xt, _, _ = llm_like(50, seed=6)
    dist = llm_model.predict_distribution(Xt)
    mean, std = dist.mean_std()
    # Lognormal noise with sigma 0.25: mean = median * exp(sigma^2 / 2), cv = sqrt(exp(sigma^2) - 1).
    med = dist.quantiles([0.5])[:, 0]
    assert np.median(mean / med) == pytest.approx(np.exp(0.25**2 / 2), rel=0.03)
    assert np.median(std / mean) == pytest.approx(np.sqrt(np.exp(0.25**2) - 1), rel=0.12)
    tot = dist.total()
    assert tot.mean == pytest.approx(mean.sum())
    assert tot.std == pytest.approx(np.sqrt((std**2).sum()))  # independent tasks: the variances add up
    # Asked for, the model's shared uncertainty about the level, which does not average out.
    tau = dist.factor_log_sd(mean)  # the model's, less what the tasks hold of it
    assert 0 < tau < llm_model.shared_log_sd_
    shared = dist.total(shared_factor=True)
    assert shared.std == pytest.approx(np.sqrt(np.exp(tau**2) * (std**2).sum() + np.expm1(tau**2) * mean.sum() ** 2))
    lo, hi = tot.interval(0.9)
    assert lo < tot.mean < hi
    assert hi < dist.quantiles([0.95])[:, 0].sum()  # not the sum of the tasks' quantiles


def test_moment_metrics_compare_a_sum_of_runtimes_with_its_expect_and_error():
    y, expect = np.array([120.0, 90.0]), np.array([100.0, 100.0])
    m = moment_metrics(y, expect, np.array([10.0, 10.0]))
    assert m["expect_ratio"] == pytest.approx(210 / 200, rel=1e-12)
    assert m["error_ratio"] == pytest.approx(math.sqrt((20**2 + 10**2) / (10**2 + 10**2)), rel=1e-12)
    assert moment_metrics(y, expect, np.array([20.0, 10.0]))["error_ratio"] == pytest.approx(1.0, rel=1e-12)
    # Runtimes that never vary: errors of 0 and deviations of rounding, no ratio to give.
    same = QuantileModel(["numeric"], [0]).fit(np.arange(40.0)[:, None], np.full(40, 10.0)).cv_summary()
    assert same["expect_ratio"] == pytest.approx(1.0, rel=1e-12) and "error_ratio" not in same
    assert moment_metrics(y, expect, np.zeros(2))["error_ratio"] > 1e8  # errors of 0, runtimes that vary
    assert "error_ratio" not in moment_metrics(expect, expect * (1 + 1e-15), np.zeros(2))


def test_the_held_out_expect_and_error_read_what_new_data_shows(llm_model):
    # Each training row's mean and sd from models that never saw its fold, as monitoring
    # compares observations' runtimes with their expects: on new data the same figures.
    summary = llm_model.cv_summary()
    assert 0.98 < summary["expect_ratio"] < 1.02 and 0.9 < summary["error_ratio"] < 1.1
    Xt, yt, _ = llm_like(4000, seed=7)
    mean, std = llm_model.predict_distribution(Xt).mean_std()
    new = moment_metrics(yt, mean, std)
    assert abs(new["expect_ratio"] - summary["expect_ratio"]) < 0.02
    assert abs(new["error_ratio"] - summary["error_ratio"]) < 0.08
    # The served candidate's alone: its rows' moments cost a table of the scale per fold.
    assert [f for f, m in llm_model.cv_.items() if "expect_ratio" in m] == [llm_model.family_]
    # Runtimes 30% longer than the model was trained on read 1.3 on the same predictions.
    assert moment_metrics(1.3 * yt, mean, std)["expect_ratio"] == pytest.approx(1.3 * new["expect_ratio"])


def _answers_in_every_batch(make, n: int) -> dict[str, int]:
    """How many tasks' quantiles, means or sds differ by any bit between the batch of all
    ``n`` tasks and batches of 1 to 33 of them from several places (``make(rows)``: those
    tasks' distributions)."""
    levels = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
    whole = make(np.arange(n))
    q, (mean, std) = whole.quantiles(levels), whole.mean_std()
    differ = {"quantiles": 0, "mean": 0, "std": 0}
    for size in (1, 2, 3, 7, 9, 10, 16, 17, 33):
        for start in (0, 5, 11):
            rows = np.arange(start, min(start + size, n))
            part = make(rows)
            m, s = part.mean_std()
            differ["quantiles"] += int((part.quantiles(levels) != q[rows]).any(axis=1).sum())
            differ["mean"] += int((m != mean[rows]).sum())
            differ["std"] += int((s != std[rows]).sum())
    return differ


@pytest.mark.parametrize("algorithm", ["empirical", "linear", "power", "lightgbm"])
def test_a_tasks_answer_does_not_depend_on_the_batch_it_came_in(algorithm):
    # BLAS sums a row differently by where it falls in the batch (AVX-512: a task's
    # quantiles moved by an ulp between batches of 10 and 16 tasks): row by row instead.
    X, y, _ = llm_like(400, seed=3)
    rng = np.random.default_rng(4)
    group = rng.integers(0, 5, len(y))
    model = QuantileModel(["categorical", "numeric", "numeric"], [5, 0, 0], algorithm=algorithm).fit(
        np.column_stack([group, X[:, :2]]), y * (1 + group))
    Xt, _, _ = llm_like(50, seed=4)
    Xt[::7, 1] *= 40  # far past training: quantiles and moments capped at the model's bounds
    Xt = np.column_stack([rng.integers(0, 7, len(Xt)), Xt[:, :2]])  # categories 5 and 6 are new
    assert _answers_in_every_batch(lambda rows: model.predict_distribution(Xt[rows]), len(Xt)) == dict.fromkeys(
        ["quantiles", "mean", "std"], 0)


def test_a_task_of_a_batch_that_two_models_answer_has_one_answer_in_any_batch_and_a_running_one_nearly():
    # As a model split by first runs answers: each part's tasks by its own model.
    from swarmpilot_predictor.distribution import MixedDistribution, RemainingDistribution

    X, y, _ = llm_like(300, seed=3)
    models = [QuantileModel(["numeric"] * 3, [0] * 3, algorithm=a).fit(X, y * f) for a, f in (("power", 1), ("empirical", 8))]
    Xt, _, _ = llm_like(50, seed=4)
    part_of = (np.arange(len(Xt)) % 3 == 0).astype(np.int64)

    def batch(rows):
        mine = part_of[rows]
        return MixedDistribution.of(tuple(m.predict_distribution(Xt[rows][mine == p]) for p, m in enumerate(models)),
                                    mine, 0.0)

    assert isinstance(batch(np.arange(len(Xt))), MixedDistribution)
    same = dict.fromkeys(["quantiles", "mean", "std"], 0)
    assert _answers_in_every_batch(batch, len(Xt)) == same
    # A running task's time left is a quadrature whose bins are split where any task of its
    # batch jumps (a slow mode's start): its moments can move by rounding between batches.
    elapsed = np.where(np.arange(len(Xt)) % 2 == 0, 0.0, models[0].predict_quantiles(Xt, [0.3])[:, 0])
    whole = RemainingDistribution.of(batch(np.arange(len(Xt))), elapsed)
    part = RemainingDistribution.of(batch(np.arange(5, 15)), elapsed[5:15])
    np.testing.assert_array_equal(part.quantiles([0.1, 0.5, 0.9]), whole.quantiles([0.1, 0.5, 0.9])[5:15])
    np.testing.assert_allclose(np.column_stack(part.mean_std()), np.column_stack(whole.mean_std())[5:15],
                               rtol=1e-12)


# --------------------------------------------------------------------------- choosing a family


def test_cv_metrics_are_reported_for_every_family_tried(llm_model):
    assert set(llm_model.cv_) == {"empirical", "linear", "power", "lightgbm"}
    for metrics in llm_model.cv_.values():
        for key in ("pinball_loss", "relative_pinball_loss", "mean_abs_coverage_error", "coverage",
                    "interval_coverage", "median_mape", "variant"):
            assert key in metrics
    assert llm_model.family_ in llm_model.cv_
    chosen = llm_model.cv_[llm_model.family_]["pinball_loss"]
    assert chosen <= 1.05 * min(m["pinball_loss"] for m in llm_model.cv_.values())
    assert llm_model.cv_["empirical"]["pinball_loss"] > chosen


def overhead_and_power(n: int, seed: int, sigma: float = 0.1):
    """Vision-like: a fixed 2 ms overhead plus work proportional to batch x pixels."""
    rng = np.random.default_rng(seed)
    batch = rng.integers(1, 65, n).astype(float)
    image = rng.choice(np.arange(128.0, 513.0, 32.0), n)
    base = 2.0 + 0.03 * batch * (image / 224.0) ** 2
    return np.column_stack([batch, image]), base * np.exp(sigma * rng.standard_normal(n)), base


def test_power_law_with_overhead_recovers_the_overhead_and_the_exponents():
    X, y, _ = overhead_and_power(1000, seed=1)
    loc = PowerLocation(*NUM2).fit(X, np.log(y))
    assert np.exp(loc.log_overhead_) == pytest.approx(2.0, rel=0.1)
    exponents = loc.coef_ / loc.spread_  # per log feature, before standardising
    np.testing.assert_allclose(exponents, [1.0, 2.0], rtol=0.1)
    # Outliers (aborted requests at a tenth of the runtime) barely move it: the loss is robust.
    y_bad = y.copy()
    y_bad[::20] *= 0.1
    robust = PowerLocation(*NUM2).fit(X, np.log(y_bad))
    np.testing.assert_allclose(robust.coef_ / robust.spread_, [1.0, 2.0], rtol=0.1)


def eight_50_value_features():
    """400 training rows of eight categorical features of 50 values (401 design columns,
    noise 0.25 on the log scale), and 2,000 new rows with their true log means."""
    rng = np.random.default_rng(2)
    effects = rng.normal(0.0, 0.5, (8, 50))

    def draw(n):
        codes = rng.integers(0, 50, (n, 8))
        mean = 1.0 + effects[np.arange(8), codes].sum(axis=1)
        return codes.astype(float), mean + 0.25 * rng.standard_normal(n), mean

    X, ylog, mean = draw(400)
    X_new, _, mean_new = draw(2000)
    return X, ylog, mean, X_new, mean_new


def test_the_power_law_reads_the_noise_s_scale_from_a_fit_that_does_not_interpolate():
    # Eight categorical features of 50 values (401 columns) on 400 rows. The soft-L1
    # loss's scale was read from the starting log-linear fit alone, whose light fixed
    # penalty let it go through every row: the scale read was far too small, and the power
    # fit missed the true log mean of new rows by 1.45 (root mean square). Where the fit
    # whose penalty generalised cross-validation chooses leaves larger residuals, the
    # scale is theirs: 0.98.
    X, ylog, _, X_new, mean_new = eight_50_value_features()
    loc = PowerLocation(["categorical"] * 8, [50] * 8).fit(X, ylog)
    assert np.sqrt(np.mean((loc.predict(X_new) - mean_new) ** 2)) < 1.2


def test_the_power_model_s_dual_step_solves_its_levenberg_marquardt_system():
    """Fewer rows than columns: the step through the n-square dual matrix is the step of
    the (d + 2)-square system, down to an overhead whose damping is ~1e-9."""
    import scipy.sparse as sp

    from swarmpilot_predictor.modeling.locations import _dual_step_solver

    rng = np.random.default_rng(5)
    n, d = 60, 150
    Jb = sp.random(n, d, density=0.05, random_state=5, format="csr") + sp.csr_matrix(
        (np.ones(n), (np.arange(n), rng.integers(0, d, n))), shape=(n, d))
    J2 = np.column_stack([rng.uniform(0, 1e-4, n), rng.uniform(0.5, 1.0, n)])
    v = rng.uniform(0.1, 1.0, n)
    damp2 = np.array([1e-9, 1e-3])
    diag_b = rng.uniform(0.01, 1.0, d)
    J = np.hstack([J2, Jb.toarray()])
    D = J.T @ (J * v[:, None]) + np.diag(np.concatenate([damp2, diag_b]))
    side = J2.T @ (Jb.toarray() * v[:, None])
    solve = _dual_step_solver(J2.T @ (J2 * v[:, None]), side, Jb, v, damp2, diag_b)
    for g in (rng.normal(size=d + 2), np.eye(d + 2)[0]):
        np.testing.assert_allclose(solve(g), np.linalg.solve(D, g), rtol=1e-7, atol=1e-9 * np.abs(np.linalg.solve(D, g)).max())


def test_the_robust_linear_fit_reads_the_noise_s_scale_corrected_for_its_degrees_of_freedom():
    # The same design. The fit GCV picks spends most of its 400 rows on the 401 columns,
    # so its residuals read the noise's scale short, and Tukey's weights then dropped good
    # rows: on clean data the robust fit missed the true log mean of new rows by 0.84
    # where a plain ridge missed by 0.57, and with 5% of the runs 20 times faster by 0.93
    # where the ridge, which they pull, missed by 0.85. Now 0.57 and 0.79.
    X, ylog, _, X_new, mean_new = eight_50_value_features()
    aborted = ylog.copy()
    aborted[::20] -= math.log(20)

    def error(y, **params):
        loc = LinearLocation(["categorical"] * 8, [50] * 8, **params).fit(X, y)
        return np.sqrt(np.mean((loc.predict(X_new) - mean_new) ** 2))

    assert error(ylog) < 1.05 * error(ylog, huber_delta=1e9, redescend=False)
    assert error(aborted) < 0.97 * error(aborted, huber_delta=1e9, redescend=False)


@pytest.mark.parametrize("columns", [3, 30])
def test_gcv_gives_the_degrees_of_freedom_of_the_fit_at_its_penalty(columns):
    # The trace of the hat matrix, read column by column from the fits of unit targets.
    from swarmpilot_predictor.modeling import design

    rng = np.random.default_rng(columns)
    A = rng.normal(size=(40, columns))
    y = A @ rng.normal(size=columns) + rng.normal(size=40)
    w = rng.uniform(0.2, 1.0, 40)
    alpha, df = design.gcv_choice(A, y, w)
    assert alpha == design.gcv_alpha(A, y, w)
    trace = 0.0
    for i in range(40):
        unit = np.zeros(40)
        unit[i] = 1.0
        b, coef = design.ridge_regression(A, unit, alpha, w)
        trace += b + A[i] @ coef
    assert df == pytest.approx(trace, rel=1e-6)
    assert 1.0 < df <= columns + 1


def test_the_degrees_of_freedom_correction_is_bounded_to_wide_fits_of_many_rows():
    from swarmpilot_predictor.modeling.locations import dof_inflation

    assert dof_inflation(1600, 1360) == pytest.approx(1 / math.sqrt(0.15))
    assert dof_inflation(80, 76) == 1.0  # tens of rows: their fits want the aggressive weights
    assert dof_inflation(1000, 240) == 1.0  # under a quarter: the scale read at most 13% short
    assert dof_inflation(1000, 250) == pytest.approx(1 / math.sqrt(0.75))
    assert dof_inflation(200, 199.9) == pytest.approx(math.sqrt(20))  # bounded


def test_auto_chooses_the_power_law_where_runtimes_are_overhead_plus_power_law():
    X, y, base = overhead_and_power(140, seed=2)
    model = QuantileModel(*NUM2).fit(X, y)
    assert model.family_ == "power"
    assert model.cv_["power"]["pinball_loss"] < model.cv_["linear"]["pinball_loss"]
    Xt, _, base_t = overhead_and_power(2000, seed=3)
    med = model.predict_quantiles(Xt, [0.5])[:, 0]
    assert np.mean(np.abs(med / base_t - 1)) < 0.03


@pytest.mark.parametrize("sparse", [False, True])
def test_a_power_law_step_that_would_cross_the_overhead_s_bound_holds_it_there(sparse):
    # The other parameters then solve the system without the overhead's row and column,
    # its step fixed: found through the one factorisation of the whole system.
    import scipy.sparse as sp

    from swarmpilot_predictor.modeling.design import dense_factor, sparse_lu

    rng = np.random.default_rng(0)
    J = rng.standard_normal((300, 40))
    D = J.T @ J + np.diag(rng.uniform(0.1, 1.0, 40))
    solve = sparse_lu(sp.csc_matrix(D), symmetric=True) if sparse else dense_factor(D, symmetric=True)
    for overhead, bounds, held in [(2.0, (-5.0, 5.0), None), (2.0, (-5.0, 1.0), 1.0), (-2.0, (-0.5, 5.0), -0.5)]:
        free = np.r_[overhead, rng.standard_normal(39)]
        g = D @ free
        step = bounded_step(solve, g, 0.0, bounds)
        if held is None:
            np.testing.assert_allclose(step, free, rtol=1e-9)
            continue
        assert step[0] == held
        rest = np.linalg.solve(D[1:, 1:], g[1:] - D[1:, 0] * held)
        np.testing.assert_allclose(step[1:], rest, rtol=1e-9, atol=1e-12)
        assert np.abs(step[1:] - free[1:]).max() > 1e-3  # held, the others step elsewhere


def test_power_law_with_a_dropped_feature_survives_json():
    X, y, _ = overhead_and_power(200, seed=4)
    X = np.column_stack([X, np.random.default_rng(5).uniform(0, 1, len(y))])  # a useless third feature
    model = QuantileModel(["numeric"] * 3, [0] * 3, algorithm="power").fit(X, y)
    assert model.features_used_ == [True, True, False]
    loaded = QuantileModel.from_json(json.loads(json.dumps(model.to_json())))
    np.testing.assert_allclose(loaded.predict_quantiles(X[:50], LEVELS), model.predict_quantiles(X[:50], LEVELS), rtol=1e-12)


def test_boosted_trees_need_enough_rows_to_be_a_candidate():
    model = QuantileModel(["numeric"], [0])
    assert model.candidate_families(199) == ["empirical", "linear", "power"]
    assert model.candidate_families(200) == ["empirical", "linear", "power", "lightgbm"]
    # Forced, it is used whatever the size.
    assert QuantileModel(["numeric"], [0], algorithm="lightgbm").candidate_families(60) == ["lightgbm"]


def test_every_fold_is_scored_with_one_number_of_boosting_rounds():
    # A fold that stopped early keeps its last loss for the later rounds.
    curves = [np.array([1.0, 0.5, 0.4, 0.45]), np.array([1.0, 0.6, 0.55])]
    assert common_rounds(curves) == 3
    assert common_rounds([np.array([0.3, 0.2, 0.1])]) == 3
    assert common_rounds([]) == 1
    X, y, _ = llm_like(400, seed=8)
    model = QuantileModel(["numeric"] * 3, [0] * 3, algorithm="lightgbm")
    fold = model._folds(X, np.log(y))
    _, tuned, _ = model._oof_location("lightgbm", X, np.log(y), fold, None)
    assert tuned["rounds"] >= 1


def test_a_fold_s_boosting_rounds_are_not_tuned_on_the_rows_it_scores():
    # A step in x that every fold but one shows: the one fold's own rows, flat, would stop
    # its boosting at once. Its held-out predictions are those of the rounds the other
    # folds chose, the step learnt from them; LightGBM cut each fold's booster at its own
    # best round, and this fold's predictions missed the step by 0.105 on average (in log
    # runtime), fitted towards its own rows, against 0.026 now.
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, 400)
    step = 3.0 + np.where(x > 5, 1.0, 0.0) + 0.5 * np.sin(2 * x)
    ylog = step + 0.05 * rng.standard_normal(400)
    model = QuantileModel(["numeric"], [0], algorithm="lightgbm")
    X = x[:, None]
    fold = model._folds(X, ylog)
    own = fold == 0
    ylog[own] = 3.5 + 0.05 * rng.standard_normal(int(own.sum()))
    oof, tuned = model._oof_boosted(X, ylog, fold, None, model.kinds)
    assert tuned["rounds"] > 10
    assert np.abs(oof[own] - step[own]).mean() < 0.05


def test_boosting_stops_once_rounds_gain_nothing_on_noise_free_runtimes(monkeypatch):
    # A two-valued runtime, an exact function of the batch size (a constant-time kernel on a
    # coarse clock): from about 400 rounds on the folds' held-out loss fell by less than 5e-9
    # in 30 rounds, and they boosted on to the 2,000-round cap (a minute and more of training
    # on 100,000 rows). Rounds that gain less than MIN_ROUND_GAIN no longer count: the folds
    # stop at 547, their held-out predictions 0.02% off the runtimes on average.
    rng = np.random.default_rng(0)
    batch, image = rng.integers(1, 65, 2000).astype(float), rng.integers(64, 1025, 2000).astype(float)
    X, ylog = np.column_stack([batch, image]), np.log(np.where(batch < 16, 10.0, 20.0))
    model = QuantileModel(*NUM2, algorithm="lightgbm")
    fold = model._folds(X, ylog)
    oof, tuned, _ = model._oof_location("lightgbm", X, ylog, fold, None)
    assert tuned["rounds"] < 1000, tuned
    assert np.abs(oof - ylog).mean() < 1e-3
    # On noisy runtimes no round gains that little before early stopping ends the folds: the
    # same rounds and the same held-out predictions as without the minimum gain.
    noisy = ylog + 0.02 * rng.standard_normal(2000)
    runs = []
    for gain in (locations.MIN_ROUND_GAIN, 0.0):
        monkeypatch.setattr(locations, "MIN_ROUND_GAIN", gain)
        runs.append(model._oof_location("lightgbm", X, noisy, fold, None)[:2])
    assert runs[0][1] == runs[1][1]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])


def padding_buckets(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An embedding model's runs: sequences padded to buckets, batches not a multiple of 8 slower."""
    rng = np.random.default_rng(seed)
    length = np.clip(np.round(rng.lognormal(4.3, 0.9, n)), 4, 512)
    batch = rng.integers(1, 129, n).astype(float)
    bucket = np.array([32, 64, 128, 256, 512])[np.searchsorted([32, 64, 128, 256, 512], length)]
    y = (3.0 + 0.0009 * batch * bucket * (1 + bucket / 1024)) * np.where(batch % 8 == 0, 1.0, 1.25)
    return np.column_stack([length, batch]), y * np.exp(0.02 * rng.standard_normal(n))


def test_boosting_goes_on_while_the_folds_held_out_loss_falls():
    # Step-like costs take many small trees: here the folds' loss still fell at 300
    # rounds, where an earlier cap stopped them (and the final model).
    X, y = padding_buckets(600, seed=0)
    held_out = {}
    for cap in (None, 300):
        model = QuantileModel(["numeric"] * 2, [0] * 2, algorithm="lightgbm", params=cap and {"num_boost_round": cap})
        oof, tuned, _ = model._oof_location("lightgbm", X, np.log(y), model._folds(X, np.log(y)), None)
        held_out[cap] = (tuned["rounds"], float(np.mean(np.abs(oof - np.log(y)))))
    assert held_out[300][0] == 300 and 300 < held_out[None][0] < MAX_BOOST_ROUNDS
    assert held_out[None][1] < 0.97 * held_out[300][1]
    # The final booster, fitted on more rows, boosts a little longer, but never past the cap.
    model = QuantileModel(["numeric"] * 2, [0] * 2, algorithm="lightgbm", params={"num_boost_round": 20}).fit(X, y)
    assert model.cv_["lightgbm"]["best_iteration"] == 20
    assert model.location_.booster_.num_trees() == 20


def test_the_folds_choose_whether_the_linear_design_has_hinges():
    plain, bent = [], []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        # A power law seen through 40 noisy rows: hinges only fit the noise ...
        x = rng.uniform(1, 1000, 40)
        y = 3 * x**0.8 * np.exp(0.5 * rng.standard_normal(40))
        plain.append(QuantileModel(["numeric"], [0], algorithm="linear").fit(x[:, None], y).cv_["linear"]["hinges"])
        # ... a fixed overhead plus a per-unit cost is not a power law: they bend it.
        x = rng.uniform(1, 1000, 600)
        y = (200 + 0.5 * x) * np.exp(0.05 * rng.standard_normal(600))
        bent.append(QuantileModel(["numeric"], [0], algorithm="linear").fit(x[:, None], y).cv_["linear"]["hinges"])
    assert plain.count(0) >= 4, plain
    assert bent == [3] * 8, bent
    forced = QuantileModel(["numeric"], [0], algorithm="linear", params={"hinges": 1}).fit(x[:, None], y)
    assert "hinges" not in forced.cv_["linear"] and forced.location_.hinges == 1


def test_categorical_features_alone_are_not_fitted_again_with_hinges(monkeypatch):
    # Hinges bend numeric features: without one, the hinged designs of the linear location
    # and of the scale are the plain ones, and fitting them twice only cost time.
    from swarmpilot_predictor.modeling import model as model_module

    made = []
    for cls in (LinearLocation, ScaleModel):
        def recording(*args, cls=cls, **kwargs):
            made.append(instance := cls(*args, **kwargs))
            return instance
        monkeypatch.setattr(model_module, cls.__name__, recording)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 6, (600, 2))
    # Each value of the first feature its own level and noise, so that the scale uses it.
    y = np.exp(rng.normal(0, 0.5, 6)[codes[:, 0]] + rng.uniform(0.05, 0.6, 6)[codes[:, 0]] * rng.standard_normal(600))
    model = QuantileModel(["categorical"] * 2, [6, 6], algorithm="linear").fit(codes.astype(float), y)
    assert model.cv_["linear"]["hinges"] == 0 and model.cv_["linear"]["scale_features"] == [0]
    assert {m.hinges for m in made if isinstance(m, LinearLocation)} == {0}
    assert {m.hinges for m in made if isinstance(m, ScaleModel) and m.kinds} == {0}  # (not the constant scale)
    # A numeric feature beside them: both are compared again.
    made.clear()
    X = np.column_stack([codes, rng.uniform(1, 100, 600)])
    QuantileModel(["categorical"] * 2 + ["numeric"], [6, 6, 0], algorithm="linear").fit(X, y * X[:, 2] ** 0.5)
    assert {m.hinges for m in made if isinstance(m, LinearLocation)} == {0, LINEAR_HINGES}


def test_locations_are_judged_by_held_out_pinball_loss():
    # The judge behind the hinge choice: a constant-scale distribution around each
    # out-of-fold location, its pinball loss over the evaluation levels.
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 3, 400)
    ylog = 1.0 + x + 0.2 * rng.standard_normal(400)
    fold = np.arange(400) % 5
    right = location_pinball(ylog, 1.0 + x, fold)
    assert right.shape == (400,) and np.all(right >= 0)
    # A constant offset is absorbed by the residuals' quantiles ...
    np.testing.assert_allclose(location_pinball(ylog, 3.0 + x, fold), right, rtol=1e-9)
    # ... a wrong slope is not.
    assert location_pinball(ylog, 1.0 + 0.7 * x, fold).mean() > 1.2 * right.mean()


def test_feature_dependent_scale_does_not_flatter_itself_on_pure_noise():
    # The scale of a held-out row comes from a fit without its fold. Fitted on every
    # row, it widened exactly the rows that were far off, and on noise that no feature
    # explains the feature-dependent variant scored better than the constant one.
    # Now no feature earns a place in the scale, so the two variants tie and the
    # simpler one is chosen.
    for seed in range(3):
        rng = np.random.default_rng(seed)
        X = rng.uniform(1, 100, (300, 3))
        y = 50 * np.exp(0.3 * rng.standard_normal(300))
        model = QuantileModel(["numeric"] * 3, [0] * 3, algorithm="linear", params={"drop_features": False}).fit(X, y)
        variants = model.cv_["linear"]["variants_pinball_loss"]
        assert variants["hetero"] >= variants["const"], variants
        assert model.cv_["linear"]["variant"] == "const"
        assert not model.scale_.coef_.any()


def test_scale_depends_only_on_the_features_the_noise_depends_on():
    # Noise grows with the load (column 1); tokens set the runtime but not its spread,
    # and column 2 is noise. On 140 rows a scale on all three is noisier than the noise.
    picked = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        n = 140
        X = np.column_stack([rng.integers(10, 1000, n), rng.uniform(0, 1, n), rng.uniform(0, 1, n)]).astype(float)
        y = (30 + 2.0 * X[:, 0]) * np.exp((0.05 + 0.45 * X[:, 1]) * rng.standard_normal(n))
        model = QuantileModel(["numeric"] * 3, [0] * 3, algorithm="linear", params={"drop_features": False}).fit(X, y)
        cv = model.cv_["linear"]
        assert cv["variant"].startswith("hetero"), cv["variant"]
        picked.append(cv["scale_features"])
        assert cv["scale_alpha"] in (2.0, 8.0, 32.0, 128.0)
        assert model.scale_.kinds[cv["scale_features"][0]] == "numeric"
        # The scale follows the load (ten times the noise at full load as at none) ...
        quiet, loud = model.scale_.predict(np.array([[500.0, 0.0, 0.5], [500.0, 1.0, 0.5]]))
        assert 3 < loud / quiet < 20, (quiet, loud)
        # ... and nothing else.
        s = model.scale_.predict(np.array([[10.0, 0.5, 0.0], [1000.0, 0.5, 1.0]]))
        assert s[0] == s[1]
    assert picked == [[1]] * 4, picked
    # The choice survives a round trip through the registry's JSON.
    again = QuantileModel.from_json(json.loads(json.dumps(model.to_json())))
    np.testing.assert_allclose(again.predict_quantiles(X[:5], LEVELS), model.predict_quantiles(X[:5], LEVELS))


def test_scale_bends_only_where_the_folds_want_it():
    # Noise loud only in the middle of a feature's range: a log-linear curve of the
    # feature's log and raw value cannot follow it, its hinges can.
    rng = np.random.default_rng(5)
    n = 3000
    x = np.exp(rng.uniform(0, 8, n))
    loud = (np.log(x) > 3) & (np.log(x) < 5)
    y = 100 * np.exp(np.where(loud, 0.5, 0.05) * rng.standard_normal(n))
    model = QuantileModel(["numeric"], [0], algorithm="linear",
                          params={"drop_features": False, "quantile_shape": False}).fit(x[:, None], y)
    cv = model.cv_["linear"]
    assert cv["variant"].startswith("hetero") and cv["scale_hinges"] == 3, cv
    quiet_low, middle, quiet_high = model.scale_.predict(np.exp([[1.0], [4.0], [7.0]]))
    assert middle > 3 * quiet_low and middle > 3 * quiet_high, (quiet_low, middle, quiet_high)
    again = QuantileModel.from_json(json.loads(json.dumps(model.to_json())))
    assert again.scale_.hinges == 3
    np.testing.assert_allclose(again.predict_quantiles(x[:5, None], LEVELS), model.predict_quantiles(x[:5, None], LEVELS))
    # Noise that grows along a straight line in the load needs no bends: on tens of
    # rows, hinges on every feature made the scale noisier than the noise it models.
    hinges = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        n = 60
        X = np.column_stack([rng.integers(10, 1000, n), rng.uniform(0, 1, n)]).astype(float)
        y = (30 + 2.0 * X[:, 0]) * np.exp((0.05 + 0.45 * X[:, 1]) * rng.standard_normal(n))
        cv = QuantileModel(["numeric"] * 2, [0] * 2, algorithm="linear",
                           params={"drop_features": False, "quantile_shape": False}).fit(X, y).cv_["linear"]
        if cv["variant"].startswith("hetero"):
            hinges.append(cv["scale_hinges"])
    assert hinges and set(hinges) == {0}, hinges


def test_a_scale_that_grows_along_a_straight_line_is_fitted_on_the_identity_link():
    # Residual size 0.05 + 0.45 load: a log-linear scale bends it into an exponential
    # (too quiet at half load, too loud at the ends); the identity link is the line.
    rng = np.random.default_rng(0)
    load = rng.uniform(0, 1, 20_000)[:, None]
    resid = (0.05 + 0.45 * load[:, 0]) * rng.standard_normal(len(load))
    probe = np.array([[0.0], [0.5], [1.0]])
    line = ScaleModel(["numeric"], [0], alpha=2.0, hinges=0, link="identity").fit(load, resid)
    s = line.predict(probe)
    np.testing.assert_allclose(s / s[0], [1.0, 5.5, 10.0], rtol=0.1)
    bent = ScaleModel(["numeric"], [0], alpha=2.0, hinges=0, link="log").fit(load, resid).predict(probe)
    assert bent[1] / bent[0] < 5.0 and abs(bent[2] / bent[0] - 10.0) > 1.0, bent / bent[0]
    again = ScaleModel.from_json(json.loads(json.dumps(line.to_json())), ["numeric"], [0])
    assert again.link == "identity"
    np.testing.assert_array_equal(again.predict(probe), s)
    # A stored log-linear scale reads as before the option existed; an unknown link is refused.
    assert "link" not in ScaleModel(["numeric"], [0], hinges=0).fit(load, resid).to_json()
    with pytest.raises(ValueError, match="link"):
        ScaleModel.from_json(line.to_json() | {"link": "sqrt"}, ["numeric"], [0])


def test_the_scale_link_is_chosen_on_the_folds(monkeypatch):
    # Noise along a straight line in the load, and noise exponential in it: each link
    # is exact for one of them, and the folds tell which.
    rng = np.random.default_rng(2)
    n = 3000
    load = rng.uniform(0, 1, n)[:, None]
    params = {"drop_features": False, "quantile_shape": False, "shape": False}
    links = {}
    for name, sigma in (("straight", lambda v: 0.05 + 0.45 * v), ("exponential", lambda v: 0.03 * np.exp(3.0 * v))):
        y = 100 * np.exp(sigma(load[:, 0]) * rng.standard_normal(n))
        model = QuantileModel(["numeric"], [0], algorithm="linear", params=params).fit(load, y)
        cv = model.cv_["linear"]
        assert cv["variant"].startswith("hetero") and cv["scale_features"] == [0], cv
        links[name] = cv["scale_link"]
        # The 10%-90% spread at half and at full load against none is the truth's.
        probe = np.array([0.0, 0.5, 1.0])
        q = model.predict_quantiles(probe[:, None], [0.1, 0.9])
        spread = np.log(q[:, 1] / q[:, 0])
        np.testing.assert_allclose(spread / spread[0], sigma(probe) / sigma(0.0), rtol=0.15, err_msg=name)
    assert links == {"straight": "identity", "exponential": "log"}, links
    # Noise set by a category is a factor per category: the log link, never tried linear.
    tried = []
    fit = ScaleModel.fit
    monkeypatch.setattr(ScaleModel, "fit", lambda self, *a, **k: tried.append(self.link) or fit(self, *a, **k))
    group = rng.integers(0, 3, n)
    y = 100 * np.exp(np.array([0.05, 0.2, 0.5])[group] * rng.standard_normal(n))
    cv = QuantileModel(["categorical"], [3], algorithm="linear", params=params).fit(group[:, None], y).cv_["linear"]
    assert cv["variant"].startswith("hetero") and cv["scale_link"] == "log", cv
    assert tried and set(tried) == {"log"}, set(tried)


def two_noise_regimes(n: int, seed: int):
    """One power law for every row; noise 2% in group 0 and 60% in group 1."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(10, 1000, n)
    group = rng.integers(0, 2, n)
    y = np.exp(1.0 + 0.7 * np.log(x) + np.where(group == 0, 0.02, 0.6) * rng.standard_normal(n))
    return np.column_stack([x, group]), y


def test_location_is_weighted_by_the_noise_when_the_noise_depends_on_features():
    np.testing.assert_allclose(location_weights(np.array([1.0, 2.0]), None), [1.6, 0.4])
    for seed in (0, 1, 3):
        X, y = two_noise_regimes(150, seed)
        Xt, yt = two_noise_regimes(4000, 100 + seed)
        quiet = Xt[:, 1] == 0
        losses = {}
        for weighted in (True, False):
            # (Quantile regression of the scores, which needs no scale, is not the subject.)
            model = QuantileModel(["numeric", "categorical"], [0, 2], algorithm="linear",
                                  params={"weighted_location": weighted, "hinges": 3, "quantile_shape": False}).fit(X, y)
            assert model.scale_.coef_.any()
            q = model.predict_quantiles(Xt[quiet], LEVELS)
            losses[weighted] = quantile_metrics(yt[quiet], q, LEVELS)["relative_pinball_loss"]
        # The quiet rows pin the shared curve down; unweighted, the noisy ones blur it.
        assert losses[True] < 0.8 * losses[False], (seed, losses)


def test_tiny_data_falls_back_to_the_empirical_family():
    for n in (2, 3, 7):
        X = np.arange(n, dtype=float)[:, None]
        y = 100 + np.arange(n, dtype=float)
        model = QuantileModel(["numeric"], [0]).fit(X, y)
        assert model.family_ == "empirical"
        q = model.predict_quantiles(X, [0.1, 0.5, 0.9])
        assert np.all(q > 0) and np.all(np.diff(q, axis=1) >= 0)


def test_no_features_and_constant_runtimes():
    y = np.full(40, 12.5)
    model = QuantileModel().fit(np.zeros((40, 0)), y)
    q = model.predict_quantiles(np.zeros((3, 0)), [0.01, 0.5, 0.99])
    np.testing.assert_allclose(q, 12.5)
    mean, std = model.predict_distribution(np.zeros((2, 0))).mean_std()
    np.testing.assert_allclose(mean, 12.5)
    np.testing.assert_allclose(std, 0.0, atol=1e-9)


def test_quantiles_stay_within_100x_of_the_training_extremes():
    # Ten runtimes near 20 ms and two wild ones: the tail extrapolated from them would
    # reach 1e38 ms at the 0.999999 level.
    y = np.r_[np.random.default_rng(3).uniform(12, 35, 10), 1e12, 1e15]
    model = QuantileModel().fit(np.zeros((12, 0)), y)
    levels = (0.001, 0.5, 0.99, 0.999999)
    q = model.predict_quantiles(np.zeros((1, 0)), levels)[0]
    assert y.max() < q[-2] < 100 * y.max() and q[-1] == pytest.approx(100 * y.max())
    assert q[0] >= y.min() / 100
    assert model.describe_one([], levels)[0] == pytest.approx(q.tolist())
    # The held-out metrics see the same bounds: finite.
    assert np.isfinite(model.cv_["empirical"]["pinball_loss"])


def test_a_few_runs_with_one_far_outlier_keep_their_tail_near_the_outlier():
    # Seven runs near 10 ms and one at 1000: the tail beyond the outlier once took
    # its slope from the jump to it, and put the 0.99 quantile at the 100x cap (100 s).
    y = np.array([10, 11, 9, 10.5, 12, 9.5, 10, 1000.0])
    model = QuantileModel().fit(np.zeros((8, 0)), y)
    q = model.predict_quantiles(np.zeros((1, 0)), (0.5, 0.9, 0.99))[0]
    assert 9.5 <= q[0] <= 12
    assert 1000 <= q[1] < 1100 and 1000 < q[2] < 2000


@pytest.mark.parametrize("rows", [2, 3, 4, 5, 8, 12])
def test_a_model_of_few_rows_answers_moments_its_quantiles_allow(rows):
    # The moments took the training scores' range alone, the mass beyond laid on the extreme
    # scores (two thirds of it with two rows): two rows answered an `error` of 1.9 ms beside
    # a 0.99 quantile 21 of those above `expect`, which no distribution has (Cantelli's
    # inequality: at most 1 / (1 + k^2) of the mass lies k sds above the mean, or below).
    rng = np.random.default_rng(rows)
    X = rng.integers(1, 100, size=(rows, 1)).astype(float)
    y = (5 + 2 * X[:, 0]) * rng.lognormal(0, 0.2, rows)
    model = QuantileModel(["numeric"], [0]).fit(X, y)
    dist = model.predict_distribution(np.array([[10.0], [50.0], [90.0]]))
    levels = np.array([0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99])
    q = dist.quantiles(levels)
    mean, sd = dist.mean_std()
    k2 = ((q - mean[:, None]) / sd[:, None]) ** 2
    most = 1 / (1 + k2)  # the mass that can lie as far from the mean as q, on its side
    assert np.all(np.where(q > mean[:, None], 1 - levels, 0) <= most * (1 + 1e-9))
    assert np.all(np.where(q < mean[:, None], levels, 0) <= most * (1 + 1e-9))
    # The body's spread is the moments' too: at least that of the central 90% between q0.05 and q0.95.
    assert np.all(sd >= (q[:, 7] - q[:, 1]) / 2 / 1.645 * 0.5)
    assert np.all((q[:, 1] < mean) & (mean < q[:, 7]))


def test_the_readme_example_of_five_runs_and_one_far_outlier():
    # README, "A handful of rows with an outlier": the figures it gives.
    y = np.array([4.8, 4.9, 5.0, 5.1, 5.2, 5000.0])
    model = QuantileModel().fit(np.zeros((6, 0)), y)
    q = model.predict_quantiles(np.zeros((1, 0)), (0.5, 0.9, 0.95, 0.99))[0]
    assert q[0] == pytest.approx(5.05, abs=0.01)
    assert q[1] == pytest.approx(5164, abs=1) and q[3] == pytest.approx(6361, abs=1)
    assert q[2] < 10_000  # a slope through the jump to the outlier put it at the cap, 500,000 ms
    mean, _ = model.predict_distribution(np.zeros((1, 0))).mean_std()
    assert mean[0] == pytest.approx(865, abs=1)


def test_the_median_of_a_few_runs_is_their_median():
    # Five runs, one far off: each row's score was taken around a location the outlier
    # pulled in half the folds, and the median fell below four of the five runs (7 ms).
    y = np.array([10, 12, 11, 13, 200.0])
    model = QuantileModel().fit(np.zeros((5, 0)), y)
    q = model.predict_quantiles(np.zeros((1, 0)), (0.05, 0.5, 0.99))[0]
    assert q[1] == pytest.approx(12.0)
    assert 5 < q[0] <= 10 and 200 < q[2] < 1000


@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a != "auto"])
def test_each_algorithm_can_be_forced(algorithm):
    X, y, _ = llm_like(300, seed=7)
    model = QuantileModel(["numeric"] * 3, [0, 0, 0], algorithm=algorithm).fit(X, y)
    assert model.family_ == algorithm and list(model.cv_) == [algorithm]
    assert np.all(np.diff(model.predict_quantiles(X[:20], LEVELS), axis=1) >= 0)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError):
        QuantileModel(algorithm="xgboost")
    with pytest.raises(ValueError):
        QuantileModel(["numeric"], [0]).fit(np.ones((5, 1)), np.array([1.0, 2.0, 0.0, 3.0, 4.0]))
    with pytest.raises(ValueError):
        QuantileModel(["numeric"], [0]).fit(np.ones((1, 1)), np.array([1.0]))
    with pytest.raises(ValueError, match="'lightgbm' needs at least one feature"):
        QuantileModel(algorithm="lightgbm").fit(np.ones((30, 0)), np.arange(1.0, 31.0))
    # The service's runtime range: 1e300 ms fitted, then gave an infinite standard deviation.
    with pytest.raises(ValueError, match=r"runtimes must be numbers in \[1e-12, 1e\+15\]"):
        QuantileModel().fit(np.ones((3, 0)), np.array([1e300, 1.0, 2.0]))


@pytest.mark.parametrize("weights, message", [
    (np.ones(5), r"one weight per row \(40\), got shape \(5,\)"),
    (np.ones((40, 1)), r"one weight per row \(40\), got shape \(40, 1\)"),
    (np.r_[np.nan, np.ones(39)], "finite, at least 0, and above 0 on at least 2 rows"),  # was fitted, and served far-off quantiles
    (-np.ones(40), "finite, at least 0, and above 0 on at least 2 rows"),
    (np.zeros(40), "finite, at least 0, and above 0 on at least 2 rows"),
    (np.r_[1.0, np.zeros(39)], "above 0 on at least 2 rows"),  # was a LinAlgError of the ridge's penalty search
])
def test_sample_weights_are_checked(weights, message):
    X = np.arange(1.0, 41.0)[:, None]
    with pytest.raises(ValueError, match=message):
        QuantileModel(["numeric"], [0], "empirical").fit(X, 5 * X[:, 0], sample_weight=weights)


@pytest.mark.parametrize("weighted", [2, 3, 12])
def test_rows_of_weight_0_leave_every_fold_something_to_fit(weighted):
    rng = np.random.default_rng(0)
    X = rng.uniform(1, 100, (40, 1))
    y = 5 + X[:, 0] * rng.lognormal(0, 0.2, 40)
    w = np.zeros(40)
    w[:weighted] = 1.0  # the first rows alone: a random deal put them in one fold (LinAlgError)
    model = QuantileModel(["numeric"], [0]).fit(X, y, sample_weight=w)
    q = model.predict_quantiles(X[:3], [0.05, 0.5, 0.95])
    assert np.all(np.isfinite(q)) and np.all(np.diff(q, axis=1) >= 0) and np.all(q > 0)
    # The rows of weight above 0 are dealt over the folds in turn; where every row weighs
    # something (the service's fits), the folds are those drawn.
    fold = np.arange(40) % 5
    assert QuantileModel._weighted_folds(fold, np.ones(40)) is fold
    w = np.zeros(40)
    w[[0, 5, 10]] = 1.0  # all three in fold 0
    dealt = QuantileModel._weighted_folds(fold, w)
    assert sorted(dealt[[0, 5, 10]].tolist()) == [0, 1, 2] and np.array_equal(dealt[w == 0], fold[w == 0])


@pytest.mark.parametrize("level", [math.nan, -0.1, 1.5])
def test_a_quantile_level_outside_zero_to_one_is_refused_on_every_path(level):
    X = np.arange(1.0, 41.0)[:, None]
    model = QuantileModel(["numeric"], [0], "linear").fit(X, 5 * X[:, 0] * np.exp(0.1 * np.sin(X[:, 0])))
    dist = model.predict_distribution(X[:3])
    for answer in (lambda: dist.quantiles([0.5, level]), lambda: dist.total().quantiles([level]),
                   lambda: model.describe_one([5.0], (level,))):
        with pytest.raises(ValueError, match="quantile levels must lie in \\[0, 1\\]"):
            answer()


def test_categorical_features_and_sample_weights():
    rng = np.random.default_rng(8)
    n = 600
    cat = rng.integers(0, 3, n)
    x = rng.uniform(1, 100, n)
    y = (10 + x) * np.array([1.0, 2.0, 5.0])[cat] * np.exp(0.1 * rng.standard_normal(n))
    X = np.column_stack([x, cat]).astype(float)
    model = QuantileModel(["numeric", "categorical"], [0, 3]).fit(X, y, sample_weight=rng.uniform(0.5, 1.5, n))
    med = model.predict_quantiles(np.array([[50.0, 0], [50.0, 1], [50.0, 2], [50.0, np.nan]]), [0.5])[:, 0]
    np.testing.assert_allclose(med[:3], 60 * np.array([1.0, 2.0, 5.0]), rtol=0.08)
    assert np.isfinite(med[3]) and med[3] > 0  # an unseen category still gets an answer


def _devices(n: int = 500, seed: int = 0, rare: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Five devices, each twice as slow as the one before (1x to 16x), and a token count;
    with ``rare``, that many rows of other devices, each seen once (read as unseen)."""
    rng = np.random.default_rng(seed)
    dev = rng.integers(0, 5, n).astype(float)
    tokens = rng.uniform(10, 500, n)
    y = 2.0 ** dev * (5 + 0.1 * tokens) * np.exp(0.2 * rng.standard_normal(n))
    dev[:rare] = np.nan
    y[:rare] = 3.0 * (5 + 0.1 * tokens[:rare]) * np.exp(0.2 * rng.standard_normal(rare))
    return np.column_stack([dev, tokens]), y


@pytest.mark.parametrize("algorithm", ["auto", "linear", "lightgbm"])
def test_a_category_training_never_saw_is_answered_among_the_known_ones_and_as_widely(algorithm):
    X, y = _devices()
    model = QuantileModel(["categorical", "numeric"], [5, 0], algorithm).fit(X, y)
    known = np.array([[d, 100.0] for d in range(5)])
    medians = model.predict_quantiles(known, [0.5])[:, 0]  # 15 ms x 1, 2, 4, 8, 16
    q = model.predict_quantiles(np.array([[np.nan, 100.0], [7.0, 100.0]]), [0.05, 0.5, 0.95])
    np.testing.assert_allclose(q[0], q[1])  # a NaN and a code past the known ones: both unseen
    low, median, high = q[0]
    # About the middle device (the known ones' mean log location), and a 90% interval that
    # holds every device's median: before, the middle device's own interval (45 to 87 ms).
    assert median == pytest.approx(medians[2], rel=0.1)
    assert low < medians[0] and high > medians[4]
    assert high / low < 80  # and not unboundedly wide: log sd about 1.2, 0.2 of it noise
    sd = model.unseen_categories()[0]["log_sd"]
    # The sample sd of {0, 1, 2, 3, 4} ln 2, times sqrt(1 + 1/5) for their mean's own error.
    assert sd == pytest.approx(np.log(2.0) * np.sqrt(2.5 * 1.2), rel=0.1)
    # A known device's answer is its own, in any batch.
    alone = model.predict_quantiles(known[:1], [0.05, 0.5, 0.95])
    beside = model.predict_quantiles(np.array([known[0], [np.nan, 100.0]]), [0.05, 0.5, 0.95])[:1]
    np.testing.assert_allclose(alone, beside, rtol=1e-12)  # (LightGBM's sums may round apart in another batch)
    # The single-row path and the JSON round trip agree.
    one = model.describe_one([np.nan, 100.0], (0.05, 0.5, 0.95))
    np.testing.assert_allclose(one[0], q[0], rtol=1e-12)
    again = QuantileModel.from_json(json.loads(json.dumps(model.to_json())))
    np.testing.assert_allclose(again.predict_quantiles(np.array([[np.nan, 100.0]]), [0.05, 0.5, 0.95])[0], q[0],
                               rtol=1e-12)


def test_an_unseen_value_of_many_valued_columns_is_learned_from_fewer_rows_to_the_same_figures(monkeypatch):
    """Every known value (and the unseen one) answers each sampled row: with many values the
    rows are fewer, within UNSEEN_PROBE_BUDGET answers, and the figures from 30 rows those of 200."""
    from swarmpilot_predictor.modeling import model as model_module

    rng = np.random.default_rng(5)
    n, k = 2000, 150
    device, other = rng.integers(0, k, n), rng.integers(0, k, n)
    size = rng.integers(1, 64, n).astype(float)
    effect = rng.normal(0, 0.5, (2, k))
    y = (2 + size) * np.exp(effect[0][device] + effect[1][other] + 0.1 * size / 64 * effect[0][device]
                            + rng.normal(0, 0.2, n))
    X = np.column_stack([size, device, other]).astype(float)
    model = QuantileModel(["numeric", "categorical", "categorical"], [0, k, k], "lightgbm").fit(X, y)
    answered = []
    real = model.location_.predict
    monkeypatch.setattr(model.location_, "predict", lambda A: answered.append(len(A)) or real(A))
    model._learn_unseen_categories(X)
    assert sum(answered) <= model_module.UNSEEN_PROBE_BUDGET
    assert sum(answered) == 2 * (k + 1) * (model_module.UNSEEN_PROBE_BUDGET // (2 * (k + 1)))  # 165 rows
    monkeypatch.setattr(model_module, "UNSEEN_PROBE_BUDGET", 30 * 2 * (k + 1))  # as 16 columns of 100 values have
    answered.clear()
    model._learn_unseen_categories(X)
    assert sum(answered) == 30 * 2 * (k + 1)
    fewer = model.unseen_categories()
    monkeypatch.setattr(model_module, "UNSEEN_PROBE_BUDGET", 10**9)
    answered.clear()
    model._learn_unseen_categories(X)
    assert sum(answered) == 2 * (k + 1) * 200
    full = model.unseen_categories()
    for j in (1, 2):
        assert fewer[j]["log_sd"] == pytest.approx(full[j]["log_sd"], rel=0.01)
        assert abs(fewer[j]["shift"] - full[j]["shift"]) < 0.01 * full[j]["log_sd"]


def test_with_a_model_for_each_kind_of_run_each_kind_reports_its_own_unseen_figures():
    rng = np.random.default_rng(1)
    n = 1500
    dev = rng.integers(0, 5, n).astype(float)
    tokens = rng.uniform(10, 2000, n)
    first = (rng.random(n) < 0.3).astype(float)
    speed = 2.0 ** dev
    y = np.where(first > 0, 700 * np.sqrt(speed) * np.exp(0.6 * rng.standard_normal(n)),
                 speed * (2 + 0.05 * tokens) * np.exp(0.1 * rng.standard_normal(n)))
    model = QuantileModel(["categorical", "numeric", "numeric"], [5, 0, 0], regime_column=2).fit(
        np.column_stack([dev, tokens, first]), y)
    assert model.regimes_ is not None
    got = model.unseen_categories()
    assert set(got) == {0} and set(got[0]) == {"repeats", "first_runs"}
    # What each kind's model answers with: repeats spread as the devices' speeds (log2 steps),
    # first runs as their square roots.
    assert got[0]["repeats"] == model.regimes_[0].unseen_categories()[0]
    assert got[0]["repeats"]["log_sd"] == pytest.approx(np.log(2.0) * np.sqrt(3.0), rel=0.15)
    assert got[0]["first_runs"]["log_sd"] == pytest.approx(np.log(2.0) * np.sqrt(3.0) / 2, rel=0.3)


def test_an_unseen_category_learned_from_rare_training_values_is_not_widened_again():
    """Rows of values seen too rarely to learn are read as unseen in training: the unknown
    level, and its spread, are learned from them."""
    X, y = _devices(rare=60)
    model = QuantileModel(["categorical", "numeric"], [5, 0], "linear").fit(X, y)
    assert model.unseen_categories() == {}
    low, median, high = model.predict_quantiles(np.array([[np.nan, 100.0]]), [0.05, 0.5, 0.95])[0]
    assert median == pytest.approx(3.0 * 15.0, rel=0.15)  # what those rows ran at
    assert high / low < 3


def test_one_training_row_of_a_value_seen_once_leaves_the_known_categories_noise_alone():
    """Its held-out score measured how far an unseen value lies (no other fold had it), not
    the noise: pooled, one row at 1000 ms among categories of 10 to 100 ms made every
    category's 0.999 quantile 16 times the truth and its sd 8 times. The new value is
    answered among the known ones and the lone one, as widely as they lie apart."""
    rng = np.random.default_rng(1)
    kind = rng.integers(0, 3, 300).astype(float)
    y = np.array([10.0, 30.0, 100.0])[kind.astype(int)] * np.exp(0.25 * rng.standard_normal(300))
    levels = [0.05, 0.5, 0.95, 0.999]
    without = QuantileModel(["categorical"], [3], "linear").fit(kind[:, None], y)
    model = QuantileModel(["categorical"], [3], "linear").fit(np.append(kind, np.nan)[:, None], np.append(y, 1000.0))
    known = np.array([[0.0], [1.0], [2.0]])
    np.testing.assert_allclose(model.predict_quantiles(known, levels), without.predict_quantiles(known, levels), rtol=0.05)
    mean, sd = model.predict_distribution(known).mean_std()
    np.testing.assert_allclose(sd, without.predict_distribution(known).mean_std()[1], rtol=0.05)
    assert sd[0] == pytest.approx(10.3 * np.sqrt(np.exp(0.25**2) - 1), rel=0.1)  # the truth: 2.6 ms
    # A new value (or the lone one's): among the four levels, log 10 to log 1000 ms, as widely as they lie.
    low, median, high, _ = model.predict_quantiles(np.array([[np.nan]]), levels)[0]
    assert low < 10.0 and high > 1000.0 and 30.0 < median < 300.0
    assert model.unseen_categories()[0]["log_sd"] == pytest.approx(
        np.std(np.log([10.0, 30.0, 100.0, 1000.0]), ddof=1) * np.sqrt(1.25), rel=0.1)


def test_which_rows_no_other_fold_shares_a_value_with():
    model = QuantileModel(["categorical", "numeric"], [3, 0])
    code = np.array([0, 1, 2] * 10 + [np.nan, np.nan, 2.5])  # two missing, one past the known: all unseen
    X = np.column_stack([code, np.arange(33.0)])
    fold = np.arange(33) % 5
    alone, unknown = model._fold_alone(X, fold, model.kinds)
    assert alone is None and unknown == ()  # the unseen rows are in every fold: their level is learned
    fold[30:] = 1  # all three unseen rows in one fold: each alone, a level of three rows, kept as learned
    alone, unknown = model._fold_alone(X, fold, model.kinds)
    assert np.flatnonzero(alone).tolist() == [30, 31, 32] and unknown == ()
    alone, unknown = model._fold_alone(X[:31], fold[:31], model.kinds)  # one unseen row: its level unlearned
    assert np.flatnonzero(alone).tolist() == [30] and unknown == (0,)
    code[:30] = np.repeat([0, 1, 2], 10)  # each known value in one fold of its own too: more than half alone
    assert model._fold_alone(np.column_stack([code, np.arange(33.0)]), np.repeat([0, 1, 2, 1], [10, 10, 10, 3]),
                             model.kinds) == (None, ())


def test_an_unseen_category_keeps_the_gap_to_a_slow_mode_and_its_moments_are_its_distribution_s():
    rng = np.random.default_rng(3)
    n = 900
    dev = rng.integers(0, 3, n).astype(float)
    slow = rng.random(n) < 0.1
    y = np.array([10.0, 20.0, 40.0])[dev.astype(int)] * np.exp(0.1 * rng.standard_normal(n)) * np.where(slow, 8.0, 1.0)
    model = QuantileModel(["categorical"], [3]).fit(dev[:, None], y)
    levels = np.array([0.05, 0.5, 0.85, 0.95, 0.99])
    unseen = model.predict_distribution(np.array([[np.nan]]))
    q = unseen.quantiles(levels)[0]
    # Between the fastest device's and the slowest's, slow runs 8x slower: not 8x stretched.
    assert 10 < q[1] < 40
    assert 4 < q[3] / q[1] < 20
    # Its mean and sd are those of its quantile function (Monte Carlo over levels).
    u = (np.arange(200_000) + 0.5) / 200_000
    x = unseen.quantiles(u)[0]
    mean, std = (v[0] for v in unseen.mean_std())
    assert mean == pytest.approx(x.mean(), rel=0.02)
    assert std == pytest.approx(x.std(), rel=0.05)


@pytest.mark.parametrize("damage", [
    lambda d: d.update(unseen_sd=[-1.0, 0.0]),
    lambda d: d.update(unseen_sd=[0.5]),
    lambda d: d.update(unseen_shift=["0", 0.0]),
    lambda d: d.update(unseen_shift=[1e308, 0.0]),
])
def test_a_stored_model_with_damaged_unseen_figures_is_refused(damage):
    X, y = _devices(n=200)
    stored = json.loads(json.dumps(QuantileModel(["categorical", "numeric"], [5, 0], "linear").fit(X, y).to_json()))
    damage(stored)
    with pytest.raises(ValueError, match="unseen_"):
        QuantileModel.from_json(stored)


def test_a_model_stored_before_the_unseen_figures_answers_as_it_did():
    X, y = _devices(n=200)
    stored = json.loads(json.dumps(QuantileModel(["categorical", "numeric"], [5, 0], "linear").fit(X, y).to_json()))
    del stored["unseen_shift"], stored["unseen_sd"]
    old = QuantileModel.from_json(stored)
    assert old.unseen_categories() == {}
    q = old.predict_quantiles(np.array([[np.nan, 100.0], [2.0, 100.0]]), [0.05, 0.95])
    assert q[0, 1] / q[0, 0] == pytest.approx(q[1, 1] / q[1, 0], rel=0.01)  # a known device's spread


# --------------------------------------------------------------------------- discrete features and feature selection


def test_design_gives_indicator_columns_to_a_feature_with_few_values():
    rng = np.random.default_rng(20)
    few = np.repeat([1.0, 2.0, 4.0], 6)  # three values, six rows each
    many = rng.uniform(0, 100, 18)  # eighteen values
    rare = np.array([5.0] * 8 + [6.0] * 8 + [7.0] * 2)  # one value on too few rows
    X = np.column_stack([few, many, rare])
    design = LogLinearDesign(["numeric"] * 3, [0] * 3, hinges=0, levels=12).fit(X)
    assert design.levels_ == [[1.0, 2.0, 4.0], [], []]
    A = design.transform(np.array([[2.0, 50.0, 5.0], [3.0, 50.0, 5.0], [np.nan, 50.0, 5.0]]))
    assert A.shape == (3, 3 * 2 + 3)
    ind = A[:, 6:]
    # Value 2: its own column above the training mean, the other two below.
    assert ind[0, 1] > 0 and ind[0, 0] < 0 and ind[0, 2] < 0
    np.testing.assert_allclose(ind[0], (np.array([0.0, 1.0, 0.0]) - 1 / 3) / np.sqrt(2 / 9))
    # Value 3, between 2 and 4: both their columns, by where it lies between them on the log
    # scale; a missing value sits at the training mean.
    t = (np.log1p(3.0) - np.log1p(2.0)) / (np.log1p(4.0) - np.log1p(2.0))
    np.testing.assert_allclose(ind[1], (np.array([0.0, 1.0 - t, t]) - 1 / 3) / np.sqrt(2 / 9))
    np.testing.assert_array_equal(ind[2], 0.0)
    # Without levels, the same data get no indicator columns.
    assert LogLinearDesign(["numeric"] * 3, [0] * 3, hinges=0).fit(X).transform(X).shape[1] == 6


def test_each_value_of_a_discrete_feature_gets_its_own_location():
    # Eight batch sizes whose runtimes zigzag: more levels than the smooth columns can follow.
    rng = np.random.default_rng(21)
    sizes = np.arange(1.0, 9.0)
    level_ms = np.array([10.0, 14.0, 12.0, 20.0, 17.0, 30.0, 26.0, 40.0])
    idx = rng.integers(0, 8, 400)
    X = sizes[idx][:, None]
    ylog = np.log(level_ms[idx]) + 0.01 * rng.standard_normal(400)
    exact = LinearLocation(["numeric"], [0]).fit(X, ylog)
    smooth = LinearLocation(["numeric"], [0], max_levels=0).fit(X, ylog)
    err = np.abs(exact.predict(sizes[:, None]) - np.log(level_ms))
    assert err.max() < 0.005, err
    assert np.abs(smooth.predict(sizes[:, None]) - np.log(level_ms)).max() > 0.03
    # A batch size between the levels falls back to the smooth part: between its neighbours.
    mid = float(np.exp(exact.predict(np.array([[4.5]]))[0]))
    assert 12.0 < mid < 30.0


def test_useless_features_are_dropped_on_small_data():
    X, y, _ = video_like(56, seed=22)
    Xt, yt, _ = video_like(2000, seed=23)
    kinds = (["numeric"] * 3, [0] * 3)
    model = QuantileModel(*kinds).fit(X, y)
    assert model.features_used_ == [False, False, True]
    assert model.cv_[model.family_]["features_dropped"] == [0, 1]
    kept = QuantileModel(*kinds, params={"drop_features": False}).fit(X, y)
    assert kept.features_used_ == [True, True, True]
    # The family's figures are the served model's (without the dropped features), and
    # the loss with them is kept beside.
    figures = model.cv_[model.family_]
    assert figures["pinball_loss"] == figures["pinball_loss_after_drop"] < figures["pinball_loss_before_drop"]
    assert figures["pinball_loss_before_drop"] == pytest.approx(kept.cv_[kept.family_]["pinball_loss"])
    loss = quantile_metrics(yt, model.predict_quantiles(Xt, LEVELS), LEVELS)["relative_pinball_loss"]
    loss_kept = quantile_metrics(yt, kept.predict_quantiles(Xt, LEVELS), LEVELS)["relative_pinball_loss"]
    # Both are linear models on 56 rows; the two useless features cost the kept one.
    assert kept.family_ == model.family_ == "linear"
    assert loss < loss_kept, (loss, loss_kept)


def quiet_and_loud(n, seed):
    """Many short tasks with 2% noise and a few long ones with 60%; backend 1 costs 10% on every task."""
    rng = np.random.default_rng(seed)
    long_ = rng.random(n) < 0.15
    tokens = np.where(long_, rng.integers(2000, 4000, n), rng.integers(10, 40, n)).astype(float)
    backend = rng.integers(0, 2, n)
    sigma = np.where(long_, 0.6, 0.02)
    y = (2 + 0.5 * tokens) * np.where(backend == 1, 1.1, 1.0) * np.exp(sigma * rng.standard_normal(n))
    return np.column_stack([tokens, backend]).astype(float), y


@pytest.mark.parametrize("seed", [1, 4, 6])
def test_a_factor_shown_by_the_quiet_tasks_is_kept(seed):
    # In milliseconds the nine long tasks' loud noise decided the elimination, and these
    # draws lost the backend; on the log scale the fifty short ones show its 10% plainly.
    X, y = quiet_and_loud(60, seed)
    model = QuantileModel(["numeric", "categorical"], [0, 2]).fit(X, y)
    assert model.features_used_ == [True, True]
    short = np.array([[25.0, 0.0], [25.0, 1.0]])
    median = model.predict_quantiles(short, [0.5])[:, 0]
    assert median[1] / median[0] == pytest.approx(1.1, abs=0.03)


def test_backward_elimination_is_bounded_on_wide_tiny_data():
    # rows x features^2 bounded nothing on a handful of rows: 64 features on 9 rows took two
    # minutes of cross-fits, whose fixed costs do not shrink with the rows. Each counts as
    # 200 rows now: up to 14 features are tried, no more.
    rng = np.random.default_rng(4)
    for p, tried in ((14, True), (15, False), (64, False)):
        X = rng.uniform(1, 100, (9, p))
        y = 5 + 0.3 * X[:, 0] * rng.lognormal(0, 0.05, 9)
        model = QuantileModel(["numeric"] * p, [0] * p, algorithm="linear").fit(X, y)
        assert ("pinball_loss_before_drop" in model.cv_["linear"]) == tried, p


def test_a_feature_of_tiny_magnitude_is_read_like_any_other():
    # Below about 1e-162 the squares of its spread underflowed to 0: the linear family read
    # the column as constant and served one median for every task, without a word.
    rng = np.random.default_rng(1)
    v = rng.uniform(1, 100, 200)
    y = (5 + 0.1 * v) * np.exp(rng.normal(0, 0.1, 200))
    probe = np.array([[2.0], [95.0]])
    medians = [QuantileModel(["numeric"], [0], algorithm="linear").fit(v[:, None] * scale, y)
               .predict_quantiles(probe * scale, [0.5])[:, 0] for scale in (1e-5, 1e-200)]
    np.testing.assert_allclose(medians[1], medians[0], rtol=1e-4)  # (log1p of 1e-5 values is nearly, not quite, linear)
    assert medians[1][1] > 2.5 * medians[1][0]


def test_features_that_matter_are_kept(llm_model):
    # output_tokens carries the runtime: it stays, whatever happens to the others.
    assert llm_model.features_used_[1]


# --------------------------------------------------------------------------- persistence and speed


def fitted_variants():
    rng = np.random.default_rng(9)
    X, y, _ = llm_like(400, seed=10)
    yield QuantileModel(["numeric"] * 3, [0, 0, 0], algorithm="lightgbm").fit(X, y)
    yield QuantileModel(["numeric"] * 3, [0, 0, 0], algorithm="linear").fit(X, y)
    seq = rng.uniform(0, 1000, 600)
    y2 = np.where(rng.random(600) < 0.9 * np.exp(-seq / 200), 60.0, 4.0) * np.exp(0.1 * rng.standard_normal(600))
    yield QuantileModel(["numeric"], [0], algorithm="empirical").fit(seq[:, None], y2)
    Xv, yv, _ = video_like(80, seed=24)  # indicator columns, dropped features
    yield QuantileModel(["numeric"] * 3, [0] * 3).fit(Xv, yv)


def test_json_round_trip_gives_identical_predictions():
    Xt, _, _ = llm_like(100, seed=11)
    for model in fitted_variants():
        text = json.dumps(model.to_json())
        back = QuantileModel.from_json(json.loads(text))
        X = Xt[:, : len(model.kinds)]
        levels = [0.01, 0.25, 0.5, 0.9, 0.999]
        np.testing.assert_array_equal(back.predict_quantiles(X, levels), model.predict_quantiles(X, levels))
        a, b = model.predict_distribution(X), back.predict_distribution(X)
        np.testing.assert_array_equal(a.mean_std()[0], b.mean_std()[0])
        np.testing.assert_array_equal(a.total().quantiles([0.5, 0.99]), b.total().quantiles([0.5, 0.99]))
        assert back.family_ == model.family_ and back.cv_ == json.loads(json.dumps(model.cv_))
        assert json.dumps(back.to_json()) == text


@pytest.mark.parametrize("kinds, n_categories, message", [
    (["numeric"], [], "one count per column"),  # fitted, stored, then refused by from_json
    (["numeric"], [0, 0], "one count per column"),
    (["categorical"], [], "one count per column"),  # an IndexError in the fit
    (["numeric"], [1.5], "whole numbers"),
    (["numeric"], [-1], "whole numbers"),
    (["cat"], [0], "'numeric', 'categorical' or 'unused'"),
])
def test_columns_that_a_stored_model_could_not_be_read_with_are_refused_at_construction(kinds, n_categories, message):
    with pytest.raises(ValueError, match=message):
        QuantileModel(kinds, n_categories)


def test_a_model_stores_what_it_was_built_with_and_loads_back():
    X, y, _ = llm_like(120, seed=3)
    model = QuantileModel(["numeric"], np.array([0])).fit(X[:, :1], y)  # a count as numpy gives it
    back = QuantileModel.from_json(json.loads(json.dumps(model.to_json())))
    np.testing.assert_array_equal(back.predict_quantiles(X[:5, :1], [0.5]), model.predict_quantiles(X[:5, :1], [0.5]))


def test_x_of_another_width_than_kinds_is_refused():
    X, y, _ = llm_like(120, seed=3)
    with pytest.raises(ValueError, match="X has 3 columns, not the 2 that kinds names"):
        QuantileModel(*NUM2).fit(X, y)  # the third column was ignored without a word
    with pytest.raises(ValueError, match="X has 2 columns, not the 3 that kinds names"):
        QuantileModel(["numeric"] * 3, [0] * 3).fit(X[:, :2], y)  # an IndexError
    model = QuantileModel(*NUM2, algorithm="linear").fit(X[:, :2], y)
    for wrong in (X[:3], X[:3, :1]):
        with pytest.raises(ValueError, match=f"X has {wrong.shape[1]} columns, not the 2"):
            model.predict_quantiles(wrong, [0.5])
        with pytest.raises(ValueError, match=f"X has {wrong.shape[1]} columns, not the 2"):
            model.describe_one(list(wrong[0]), (0.5,))


def test_feature_values_near_the_float_limit_give_a_finite_model_in_strict_json():
    import warnings

    X, y, _ = llm_like(200, seed=26)
    X[::20, 2] = 1e308  # the useless feature, now and then absurd
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow anywhere
        model = QuantileModel(["numeric"] * 3, [0, 0, 0], algorithm="linear").fit(X, y)
        q = model.predict_quantiles(X[:30], LEVELS)
    assert np.all(np.isfinite(q)) and np.all(np.diff(q, axis=1) >= 0)
    back = QuantileModel.from_json(json.loads(json.dumps(model.to_json(), allow_nan=False)))
    np.testing.assert_array_equal(back.predict_quantiles(X[:30], LEVELS), q)


def test_held_out_locations_stay_within_100x_of_the_training_extremes():
    import warnings

    # One row's feature is absurd: the fold that holds it out would extrapolate the power
    # law to exp(690) ms and overflow the held-out loss.
    rng = np.random.default_rng(0)
    x = rng.uniform(1, 100, 60)
    x[7] = 1e300
    y = 3 * np.minimum(x, 100) * rng.lognormal(0, 0.1, 60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = QuantileModel(["numeric"], [0]).fit(x[:, None], y)
    assert set(model.cv_) == {"empirical", "linear", "power"}
    assert all(np.isfinite(v["pinball_loss"]) for v in model.cv_.values())


def test_models_saved_before_levels_and_feature_selection_still_load():
    X, y, _ = llm_like(300, seed=25)
    model = QuantileModel(["numeric"] * 3, [0, 0, 0], algorithm="linear").fit(X, y)
    d = json.loads(json.dumps(model.to_json()))
    # What the earlier format lacked: the designs' "levels" and the model's "features_used".
    del d["features_used"]

    def strip(node):
        if isinstance(node, dict):
            node.pop("levels", None)
            for v in node.values():
                strip(v)

    strip(d["location"])
    strip(d["scale"])
    back = QuantileModel.from_json(d)
    np.testing.assert_array_equal(back.predict_quantiles(X[:50], LEVELS), model.predict_quantiles(X[:50], LEVELS))
    assert back.features_used_ == [True] * 3


def test_models_saved_before_edge_extrapolation_predict_as_they_did_inside_the_range():
    X, y, _ = llm_like(300, seed=26)
    model = QuantileModel(["numeric"] * 3, [0, 0, 0], algorithm="linear").fit(X, y)
    d = json.loads(json.dumps(model.to_json()))

    def to_raw_range(node):
        if isinstance(node, dict):
            if "edges" in node:
                lo, hi = np.asarray(node.pop("edges"))
                del node["edge_slopes"]
                node["raw_range"] = [(lo - 0.5 * (hi - lo)).tolist(), (hi + 0.5 * (hi - lo)).tolist()]
            for v in node.values():
                to_raw_range(v)

    to_raw_range(d)
    assert "edges" not in json.dumps(d)
    back = QuantileModel.from_json(d)
    np.testing.assert_allclose(back.predict_quantiles(X[:50], LEVELS), model.predict_quantiles(X[:50], LEVELS),
                               rtol=1e-12)
    levels = tuple(LEVELS.tolist())
    assert back.describe_one(X[0].tolist(), levels)[0] == pytest.approx(model.describe_one(X[0].tolist(), levels)[0])


@pytest.mark.parametrize("algorithm", ["linear", "lightgbm"])
def test_runtimes_beyond_the_training_values_go_on_as_the_fit_does(algorithm):
    # Trained on 1-2000 tokens. The linear design's raw column is capped past the largest
    # value while its log columns went on: the fit's large raw weight against negative
    # log weights made runtimes fall, 0.1 ms at 100,000 tokens (truth: 5,000 ms).
    rng = np.random.default_rng(7)
    tokens = rng.integers(1, 2000, 400).astype(float)
    y = (3 + 0.05 * tokens) * rng.lognormal(0, 0.15, 400)
    model = QuantileModel(["numeric"], [0], algorithm=algorithm).fit(tokens[:, None], y)
    grid = np.array([2000.0, 3000.0, 4000.0, 10_000.0, 100_000.0])
    median = model.predict_quantiles(grid[:, None], [0.5])[:, 0]
    assert np.all(np.diff(median) > 0), median
    # The log-log slope over the upper half of the training values (about 0.95) goes on.
    truth = 3 + 0.05 * grid
    assert np.all((median > truth / 2.5) & (median < truth * 1.5)), median
    assert [model.describe_one([g], (0.5,))[0][0] for g in grid] == pytest.approx(median.tolist(), rel=1e-12)


@pytest.mark.parametrize("params, algorithm, refusal", [
    ({}, "auto", None),
    ({"hinges": 1, "alpha": 4.0, "shape": False}, "linear", None),
    ({"num_leaves": 7, "reg_lambda": 2.0, "num_boost_round": 50}, "auto", None),  # reg_lambda: an alias of lambda_l2
    ({"monotone_constraints": [1, 0]}, "lightgbm", None),  # one value per feature: checked at fitting
    ({"hinges": -3}, "linear", "'hinges' must be a whole number in [0, 16], got -3"),
    ({"hinges": 3.0}, "linear", "'hinges' must be a whole number"),
    ({"alpha": True}, "linear", "'alpha' must be a number in (0, 1e6], got True"),
    ({"max_levels": "x"}, "auto", "'max_levels' must be a whole number in [0, 64], got 'x'"),
    ({"alpha": 2.0}, "power", "'alpha' is not used by algorithm 'power' (only by auto, linear)"),
    ({"bogus_param": 1}, "auto", "unknown parameter 'bogus_param'"),
    ({"num_leaves": 7}, "linear", "'num_leaves' is a LightGBM parameter; algorithm 'linear' does not use LightGBM"),
    ({"num_leaves": -3}, "auto", "LightGBM refuses 'num_leaves': Check failed: (num_leaves) > (1)"),
    ({"max_bin": 2**31}, "lightgbm", "'max_bin' 2147483648 is beyond the 32-bit integers LightGBM reads"),
    ({"objective": "nonsense"}, "lightgbm", "'objective' must be a regression objective of the log-runtime"),
    ({"num_iterations": 10}, "auto", "is 'num_boost_round'"),
    ({"forcedsplits_filename": "/etc/passwd"}, "lightgbm", "cannot set (it reads or writes files"),
    ({"output_model": "/tmp/model.txt"}, "auto", "cannot set"),
    ({"machines": "10.0.0.1:12400"}, "auto", "cannot set"),
    # LightGBM joins parameters into one "key=value" string: no value may carry another.
    ({"learning_rate": "0.08 forcedsplits_filename=/etc/passwd"}, "lightgbm", "'learning_rate' must be a number"),
    ({"objective": "huber\tinput_model=x"}, "auto", "'objective' must be a regression objective"),
    ({"alpha": 0.5, "lambda_l1": "1 input_model=x"}, "auto", "'lambda_l1' must be a number"),
    ({"monotone_constraints": [1, "0 output_model=/tmp/m"]}, "lightgbm", "'monotone_constraints' must be"),
    ({"num_leaves": {"a": 1}}, "auto", "'num_leaves' must be"),
    ({"learning_rate": float("nan")}, "auto", "'learning_rate' must be"),
    # A word LightGBM reads as a number that is not finite (inf trained a model 20 times off).
    ({"learning_rate": "inf"}, "lightgbm", "'learning_rate' must be a finite number, got 'inf'"),
    ({"max_delta_step": "nan"}, "auto", "'max_delta_step' must be a finite number, got 'nan'"),
    ({"lambda_l1": "1e400"}, "lightgbm", "'lambda_l1' must be a finite number"),
    ({"learning_rate": "0.05"}, "lightgbm", None),
    # Dart boosting turns early stopping off: every fold would run all its rounds.
    ({"boosting": "dart", "num_boost_round": 10_000}, "lightgbm", "'boosting': 'dart' turns off LightGBM's early stopping"),
    ({"boosting_type": "dart"}, "auto", "'dart' turns off"),
    ({"boosting": "goss"}, "lightgbm", None),
    ({"shape_alpha": 1e-300}, "linear", "'shape_alpha' must be a number in [1e-6, 1e6], got 1e-300"),
    # A Huber threshold that underflows to 0 made every robust weight NaN.
    ({"huber_delta": 5e-324}, "linear", "'huber_delta' must be a number in [1e-6, 100], got 5e-324"),
    ({"huber_delta": 0.0}, "auto", "'huber_delta' must be a number in [1e-6, 100], got 0.0"),
    ({"huber_delta": 1e-6}, "auto", None),
    ({"shape_alpha": 1e-6}, "empirical", None),
    ({"objective": "quantile", "interaction_constraints": [[0, 1], [1]]}, "lightgbm", None),
    # The service's threads, and regression only (the location is a regression of log-runtime).
    ({"num_threads": 10_000}, "lightgbm", "cannot set"),
    ({"verbosity": 5}, "lightgbm", "cannot set"),  # thousands of lines in the service's log
    ({"verbose": 3}, "auto", "cannot set"),
    ({"objective": "binary"}, "lightgbm", "'objective' must be a regression objective"),
    ({"metric": "auc"}, "auto", "'metric' must be a regression metric"),
    ({"metric": "l1"}, "auto", None),
    ({"regimes": False}, "lightgbm", None),  # the linear base's regime slopes
    ({"regimes": False}, "power", "'regimes' is not used by algorithm 'power'"),
    # LightGBM's random forest takes no starting score: refused at the fit, after the traces were read.
    ({"boosting": "rf", "bagging_fraction": 0.5, "bagging_freq": 1}, "lightgbm",
     "'boosting': LightGBM's random forest ('rf') takes no starting score"),
    ({"boosting_type": "random_forest", "bagging_fraction": 0.5, "bagging_freq": 1}, "auto", "takes no starting score"),
    ({"boosting": "rf", "bagging_fraction": 0.5, "bagging_freq": 1, "lgb_linear_base": False}, "lightgbm", None),
])
def test_parameters_are_checked_before_fitting(params, algorithm, refusal):
    if refusal is None:
        check_params(params, algorithm)
    else:
        with pytest.raises(ValueError) as info:
            check_params(params, algorithm)
        assert refusal in str(info.value)


@pytest.mark.parametrize("n", [300, 3000])
def test_the_shared_uncertainty_is_that_of_a_mean_over_the_training_rows(n):
    # Lognormal noise of sigma 0.25 around the truth: a runtime's ratio to its mean has a
    # coefficient of variation of sqrt(exp(sigma^2) - 1), the level's relative error that over sqrt(n).
    X, y, _ = llm_like(n, seed=21)
    model = QuantileModel(["numeric"] * 3, [0] * 3, algorithm="linear").fit(X, y)
    cv = np.sqrt(np.exp(0.25**2) - 1)
    assert model.shared_log_sd_ == pytest.approx(cv / np.sqrt(n), rel=0.15)
    again = QuantileModel.from_json(json.loads(json.dumps(model.to_json())))
    assert again.shared_log_sd_ == model.shared_log_sd_
    Xq, _, _ = llm_like(100, seed=22)
    np.testing.assert_allclose(again.predict_distribution(Xq).total().quantiles([0.05, 0.95]),
                               model.predict_distribution(Xq).total().quantiles([0.05, 0.95]))


def _stretches_of_a_run(levels: np.ndarray, rows: int, seed: int):
    """LLM-like runs in stretches of ``rows``, each stretch's runtimes at its own level."""
    X, y, base = llm_like(len(levels) * rows, seed=seed, sigma=0.2)
    return X, y * np.repeat(levels, rows), base


def test_a_level_that_moves_between_stretches_of_the_run_is_shared_by_a_queue():
    # Ten stretches of 300 runs, each at a level of its own (a log sd of 0.06: clocks, heat,
    # neighbours). The stretches' spread is ten times the error about the level, and the
    # shared factor carries it; the same rows out of order tell no stretch apart.
    z = np.array([0.3, -1.2, 0.8, 1.5, -0.4, -0.9, 0.1, 1.1, -1.6, 0.3])
    levels = np.exp(0.06 * (z - z.mean()) / z.std(ddof=1))
    X, y, _ = _stretches_of_a_run(levels, 300, seed=4)
    model = QuantileModel(["numeric"] * 3, [0] * 3, algorithm="linear").fit(X, y)
    found = model.stretch_levels_
    assert found["stretches"] == 10 and found["p_value"] < 1e-10
    assert found["log_sd"] == pytest.approx(0.06, rel=0.25)
    assert model.shared_log_sd_ == pytest.approx(math.hypot(found["log_sd"], 0.2 / math.sqrt(3000)), rel=0.01)
    assert model.cv_summary()["stretch_levels"] == found
    again = QuantileModel.from_json(json.loads(json.dumps(model.to_json())))
    assert again.stretch_levels_ == found and again.shared_log_sd_ == model.shared_log_sd_

    order = np.random.default_rng(5).permutation(len(y))
    shuffled = QuantileModel(["numeric"] * 3, [0] * 3, algorithm="linear").fit(X[order], y[order])
    assert shuffled.stretch_levels_["log_sd"] == 0.0 and shuffled.stretch_levels_["p_value"] > 1e-3
    assert shuffled.shared_log_sd_ < 0.01

    # Queues of 100 new tasks, each run in a new stretch at a level of its own: with the
    # factor their 90% intervals hold the measured total about 90% of the time; the tasks'
    # sum alone (and the factor without the stretches) is far too sure.
    rng = np.random.default_rng(6)
    held = {"stretches": [], "shuffled": [], "independent": []}
    for k in range(60):
        Xq, yq, _ = llm_like(100, seed=100 + k, sigma=0.2)
        truth = float((yq * np.exp(0.06 * rng.standard_normal())).sum())
        for name, m, shared in (("stretches", model, True), ("shuffled", shuffled, True), ("independent", model, False)):
            lo, hi = m.predict_distribution(Xq).total(shared_factor=shared).interval(0.9)
            held[name].append(lo <= truth <= hi)
    assert 0.8 <= np.mean(held["stretches"]) <= 0.99
    assert np.mean(held["shuffled"]) < 0.6 and np.mean(held["independent"]) < 0.6


def test_a_run_of_few_rows_is_not_cut_into_stretches():
    # 90 rows make 3 stretches of 30, too few to tell a level's spread from chance.
    levels = np.array([1.0, 1.5, 0.7])
    X, y, _ = _stretches_of_a_run(levels, 30, seed=7)
    model = QuantileModel(["numeric"] * 3, [0] * 3, algorithm="linear").fit(X, y)
    assert model.stretch_levels_ is None and model.cv_summary()["stretch_levels"] is None


@pytest.mark.parametrize("log_ratio, expected", [
    # Runs as exact as a clock's tick: nothing to tell apart.
    (np.zeros(300), {"stretches": 10, "p_value": 1.0, "log_sd": 0.0}),
    (np.r_[np.zeros(150), np.full(150, 2e-16)], {"stretches": 10, "p_value": 1.0, "log_sd": 0.0}),  # rounding
    # Two levels without noise: the stretches' own spread, with nothing to take off it (none
    # of the 2,000 permutations of the rows across the stretches is as far from one level).
    (np.repeat([0.0, 0.2], 150), {"stretches": 10, "p_value": pytest.approx(1 / 2001),
                                  "log_sd": pytest.approx(0.1 * np.sqrt(10 / 9))}),
    # Too few rows to cut, or a ratio that overflowed: no test.
    (np.zeros(119), None),
    (np.r_[np.zeros(299), np.inf], None),
])
def test_stretch_levels_of_runs_without_noise(log_ratio, expected):
    from swarmpilot_predictor.modeling.model import stretch_levels
    assert stretch_levels(log_ratio) == expected


@pytest.mark.parametrize("noise", ["normal", "exponential"])
def test_runs_of_one_level_are_called_spread_about_as_rarely_as_the_p_value_says(noise):
    # Each stretch's error is estimated from 16 of its 30 rows: taken as known (a
    # chi-square test), runs of 300 rows of one level were called spread at p < 0.01 in
    # 5.4% (normal noise) and 3.7% (exponential) of these 2,000 draws; 2.3% and 1.6% now
    # (benchmarks/queue_totals.py --false-spread).
    from swarmpilot_predictor.modeling.model import stretch_levels

    rng = np.random.default_rng(2)
    draw = (lambda: rng.normal(0.0, 0.2, 300)) if noise == "normal" else (lambda: np.log(rng.exponential(1.0, 300)))
    p = np.array([stretch_levels(draw())["p_value"] for _ in range(2000)])
    assert np.mean(p < 0.01) < 0.03
    assert np.mean(p < 0.5) == pytest.approx(0.5, abs=0.05)  # and not by calling everything one level


def test_runs_of_one_level_in_whole_milliseconds_are_not_called_spread():
    # Runs of about 5 ms timed in whole milliseconds: a stretch's middle half is often one
    # value, whose error is then 0, and Welch's test called any other stretch's level
    # "spread" (p = 0) in 21% of runs of 300 rows. A permutation of the rows across the
    # stretches decides now, whatever the noise.
    from swarmpilot_predictor.modeling.model import stretch_levels

    rng = np.random.default_rng(9)
    p = np.array([stretch_levels(np.log(np.maximum(1.0, np.round(5.0 * np.exp(0.2 * rng.standard_normal(300))))
                                        / 5.0))["p_value"] for _ in range(200)])
    assert np.sum(p < 1e-3) <= 1, np.sort(p)[:5]
    # A level that does move is still found, timed so too: half the runs 5 ms, half 6.
    moved = np.log(np.round(np.repeat([5.0, 6.0], 150) * np.exp(0.05 * rng.standard_normal(300))) / 5.5)
    found = stretch_levels(moved)
    assert found["p_value"] < 1e-3 and found["log_sd"] > 0.05


def test_stretch_means_cut_a_run_as_array_split_does():
    from swarmpilot_predictor.modeling.model import LEVEL_TRIM, _stretch_means

    run = np.random.default_rng(3).standard_normal(457)  # stretches of 46 and 45 rows
    means, errors, kept = _stretch_means(run[None, :], 10)
    for b, part in enumerate(np.array_split(run, 10)):
        m, ordered = len(part), np.sort(part)
        g = int(LEVEL_TRIM * m)
        h = m - 2 * g
        winsorized = np.clip(ordered, ordered[g], ordered[m - g - 1])
        assert means[0, b] == pytest.approx(ordered[g:m - g].mean(), rel=1e-12) and kept[b] == h
        assert errors[0, b] == pytest.approx(winsorized.var(ddof=1) * (m - 1) / (h * (h - 1)), rel=1e-12)


def test_a_slow_mode_of_few_rows_is_part_of_the_shared_uncertainty():
    # Of 30 runs, 3 are 8x slower: the model knows that share (and so the mean) as badly as
    # 3 runs tell it, an error common to every task of a queue. Capping the ten highest
    # ratios, as of a thousand rows, left them out: a log sd of 0.03, and 500-task totals
    # of such models held the truth 0.30 of the time (benchmarks/queue_totals.py --rows 30).
    rng = np.random.default_rng(5)
    y = 10.0 * np.exp(0.1 * rng.standard_normal(30)) * np.where(np.arange(30) % 10 == 0, 8.0, 1.0)
    model = QuantileModel([], []).fit(np.zeros((30, 0)), y)
    ratio = y / y.mean()
    expected = np.sqrt(np.log1p(ratio.var() / 30))  # about 0.22
    assert model.shared_log_sd_ == pytest.approx(expected, rel=0.2)


def test_one_far_run_among_few_does_not_set_the_shared_uncertainty():
    # 29 runs of about 5 ms and one of 5 s: its ratio is capped at the highest other one (a
    # quantile interpolated toward it left three tenths of it: a log sd of 0.49; none capped, 0.80).
    y = np.r_[5.0 * np.exp(0.05 * np.random.default_rng(0).standard_normal(29)), 5000.0]
    model = QuantileModel([], []).fit(np.zeros((30, 0)), y)
    assert model.shared_log_sd_ < 0.02


def test_one_far_outlier_does_not_set_the_shared_uncertainty():
    # A thousand runs of exactly 5 ms and one warm-up run of 5 s: the outlier is a part of
    # each task's distribution, not an error about the level of all of them. Uncapped, it
    # made the shared factor's log sd 0.47, and a 100-task queue's 5% quantile 201 ms
    # (every queue takes at least 500 ms).
    y = np.r_[np.full(1000, 5.0), 5000.0]
    model = QuantileModel([], []).fit(np.zeros((1001, 0)), y)
    assert model.shared_log_sd_ < 0.01
    q05, q50, q95 = model.predict_distribution(np.zeros((100, 0))).total().quantiles([0.05, 0.5, 0.95])
    # (Convolved whole, as queues of up to 128 tasks are, the 90% of queues that take exactly
    # 500 ms sit in one cell of the refined grid, spread evenly over it: within half a cell.)
    assert q05 == pytest.approx(500, rel=1e-2) and q50 == pytest.approx(500, rel=1e-2)
    assert q95 > 2000  # one run in a thousand is 5 s: about one queue in ten holds one


def test_a_flag_that_splits_two_regimes_gives_each_its_own_slopes():
    # First runs of a shape cost a fixed ~60 ms (kernel selection) whatever the batch;
    # repeats grow with it. One slope shared by both regimes fitted neither, and the
    # size features were dropped: every repeat got the same median whatever its size.
    rng = np.random.default_rng(4)
    n = 1200
    batch = rng.integers(1, 65, n).astype(float)
    image = rng.choice(np.arange(96.0, 513.0, 32.0), n)
    cold = (rng.random(n) < 0.35).astype(float)
    work = batch * (image / 224.0) ** 2
    y = np.where(cold == 1, 60.0, 4.0 + 0.1 * np.maximum(work - 20, 0)) * np.exp(0.08 * rng.standard_normal(n))
    X = np.column_stack([batch, image, cold])
    model = QuantileModel(["numeric"] * 3, [0] * 3, algorithm="linear").fit(X, y)
    assert "features_dropped" not in model.cv_["linear"]
    med = model.predict_quantiles(np.array([[4.0, 128.0, 0.0], [64.0, 512.0, 0.0], [4.0, 128.0, 1.0], [64.0, 512.0, 1.0]]),
                                  [0.5])[:, 0]
    # Truth: 4, 35.4, 60, 60 ms. (A flag shared by both regimes: 6.7 ms for both repeats.)
    assert med[0] < 5 and med[1] > 20 and med[1] > 5 * med[0]
    np.testing.assert_allclose(med[2:], 60.0, rtol=0.05)
    assert model.cv_["linear"]["relative_pinball_loss"] < 0.03  # 0.045 with one slope for both


def test_interaction_constraints_beyond_the_features_are_refused_not_a_crash():
    # LightGBM aborts the whole process on feature 99 of two.
    X, y = llm_like(200, seed=1)[:2]
    with pytest.raises(ValueError, match="names feature 99; the model has"):
        QuantileModel(["numeric"] * X.shape[1], [0] * X.shape[1], algorithm="lightgbm",
                      params={"interaction_constraints": [[0, 99]]}).fit(X, y)


@pytest.mark.parametrize("seed", [0, 1])
def test_two_modes_of_equal_share_stay_within_the_runs(seed):
    # Half the runs about 1 ms, half about 1000 ms, no features: the median location jumped
    # between the modes from fold to fold, and the 0.9 quantile reached the 100x cap (118 s).
    rng = np.random.default_rng(seed)
    y = np.where(rng.random(2000) < 0.5, 1.0, 1000.0) * np.exp(0.05 * rng.standard_normal(2000))
    model = QuantileModel([], [], algorithm="auto").fit(np.zeros((2000, 0)), y)
    q = model.predict_quantiles(np.zeros((1, 0)), [0.01, 0.1, 0.9, 0.99])[0]
    assert 0.7 < q[0] < q[1] < 1.2 and 900 < q[2] < q[3] < 1.1 * y.max()
    mean, sd = (float(v[0]) for v in model.predict_distribution(np.zeros((1, 0))).mean_std())
    assert mean == pytest.approx(y.mean(), rel=0.05) and sd == pytest.approx(y.std(), rel=0.1)


def test_at_most_two_regime_flags_and_none_without_another_numeric_feature():
    from swarmpilot_predictor.modeling.locations import regime_flags

    rng = np.random.default_rng(0)
    flags = (rng.random((400, 6)) < np.array([0.5, 0.1, 0.3, 0.45, 0.2, 0.05])).astype(float)
    X = np.column_stack([rng.uniform(1, 100, 400), flags])
    # Each flag copies the other features' design columns: the two most evenly split only.
    assert [j for j, _ in regime_flags(X, ["numeric"] * 7)] == [1, 4]
    # Flags alone have no slopes to split.
    assert regime_flags(flags, ["numeric"] * 6) == []
    assert regime_flags(X, ["categorical"] + ["numeric"] * 6) == []


@pytest.mark.parametrize("algorithm", ["linear", "power", "auto"])
def test_a_wide_categorical_takes_the_sparse_path_to_the_same_model(monkeypatch, algorithm):
    # One-hot columns of a categorical with many values are handled through a sparse view
    # (their Gram matrices grew with the number of values squared): the same fit as dense.
    # 1,250 rows: the folds' fits too, on 1,000, take the sparse path (1,500 until 2026-12-07).
    from swarmpilot_predictor.modeling import design

    rng = np.random.default_rng(0)
    n, k = 1250, 80
    cat = rng.integers(0, k, n).astype(float)
    size = rng.integers(1, 64, n).astype(float)
    effect = rng.normal(0, 0.4, k)
    y = (3 + 0.5 * size) * np.exp(effect[cat.astype(int)] + rng.normal(0, 0.2 + 0.01 * size, n))
    X = np.column_stack([size, cat])
    kinds, ncat = ["numeric", "categorical"], [0, k]
    calls = []
    real = design._wants_sparse
    def recorded(n, d, nnz):
        calls.append(nnz is not None and real(n, d, nnz))
        return real(n, d, nnz)

    monkeypatch.setattr(design, "_wants_sparse", recorded)
    sparse = QuantileModel(kinds, ncat, algorithm).fit(X, y)
    assert any(calls)  # the sparse path was taken
    monkeypatch.setattr(design, "_wants_sparse", lambda n, d, nnz: False)
    dense = QuantileModel(kinds, ncat, algorithm).fit(X, y)
    assert sparse.family_ == dense.family_
    Xt = np.column_stack([rng.integers(1, 64, 200).astype(float), rng.integers(0, k, 200).astype(float)])
    np.testing.assert_allclose(sparse.predict_quantiles(Xt, [0.05, 0.5, 0.95]),
                               dense.predict_quantiles(Xt, [0.05, 0.5, 0.95]), rtol=1e-6)


def test_a_wide_design_built_sparse_has_the_dense_design_s_values():
    # The sparse design is built from the category codes, never densely: the same values,
    # an unseen, fractional or missing code included (no column set).
    import scipy.sparse as sp

    rng = np.random.default_rng(3)
    n, k = 1200, 90
    X = np.column_stack([rng.integers(1, 64, n).astype(float), rng.integers(0, k, n).astype(float)])
    X[:3, 1] = [np.nan, k + 5, 2.5]
    X[3, 0] = np.nan
    design = LogLinearDesign(["numeric", "categorical"], [0, k]).fit(X)
    built = design.transform(X, sparse=True)
    assert sp.issparse(built)
    dense = design.transform(X)
    assert isinstance(dense, np.ndarray)
    np.testing.assert_array_equal(built.toarray(), dense)
    assert built[:3, dense.shape[1] - k:].nnz == 0
    # Few rows or a narrow design stay dense ...
    assert isinstance(design.transform(X[:999], sparse=True), np.ndarray)
    narrow = LogLinearDesign(["numeric", "categorical"], [0, 5]).fit(X % [1e9, 5])
    assert isinstance(narrow.transform(X % [1e9, 5], sparse=True), np.ndarray)
    # ... but a very wide one is sparse on few rows too (its dense Gram matrices cost rows x width^2).
    few = np.column_stack([rng.integers(1, 64, 300).astype(float), rng.integers(0, 400, 300).astype(float)])
    wide = LogLinearDesign(["numeric", "categorical"], [0, 400]).fit(few)
    built = wide.transform(few, sparse=True)
    assert sp.issparse(built) and built.shape[1] >= 400
    np.testing.assert_array_equal(built.toarray(), wide.transform(few))


@pytest.mark.parametrize("values, features, rows, goes_dense", [(100, 8, 480, True), (500, 1, 1000, False)])
def test_a_run_of_factorisations_goes_dense_once_the_sparse_lu_fills_in(values, features, rows, goes_dense):
    """Eight 100-value features' Gram matrix is 4% stored, but its sparse LU fills in most of
    the dense matrix; one 500-value feature's (an arrow) does not. The solves agree either way."""
    import scipy.sparse as sp

    from swarmpilot_predictor.modeling import design

    rng = np.random.default_rng(values)
    S = sp.hstack([sp.csr_matrix(rng.normal(size=(rows, 1)))]
                  + [sp.csr_matrix((np.ones(rows), (np.arange(rows), rng.integers(0, values, rows))), shape=(rows, values))
                     for _ in range(features)], format="csr")
    G = design.wgram(S, rng.uniform(0.2, 1.0, rows), S, dense=False) + sp.identity(S.shape[1])
    assert G.nnz < design.DENSE_SOLVE_SHARE * G.shape[0] ** 2  # the stored share alone says sparse
    b = rng.normal(size=G.shape[0])
    factorise = design.Factoriser()
    first = factorise(G, symmetric=True)(b)
    assert factorise.dense_ is goes_dense
    second = factorise(G * 2.0, symmetric=True)(b)
    np.testing.assert_allclose(G @ first, b, rtol=0, atol=1e-9)
    np.testing.assert_allclose(2.0 * first, 4.0 * second, rtol=1e-9)
    np.testing.assert_allclose(design.sparse_lu(G, symmetric=True)(b), first, rtol=1e-9)


def test_gcv_on_fewer_rows_than_columns_takes_the_kernel_matrix_to_the_same_statistics(monkeypatch):
    """Eight 50-value categoricals and a numeric column on 300 rows (401 columns, no block
    wide enough for the Schur path): GCV's spectrum comes from the 300-square kernel matrix,
    to the Gram matrix's statistics."""
    import scipy.sparse as sp

    from swarmpilot_predictor.modeling import design

    rng = np.random.default_rng(8)
    rows = 300
    codes = rng.integers(0, 50, (rows, 8))
    S = sp.hstack([sp.csr_matrix(rng.normal(size=(rows, 1)))]
                  + [sp.csr_matrix((np.ones(rows), (np.arange(rows), codes[:, j])), shape=(rows, 50)) for j in range(8)],
                  format="csr")
    y = rng.normal(0, 0.5, (8, 50))[np.arange(8), codes].sum(axis=1) + rng.normal(size=rows)
    w = rng.uniform(0.2, 1.0, rows)
    yc = y - (w @ y) / w.sum()
    kernel_calls = []
    real_kernel = design._kernel_gcv
    monkeypatch.setattr(design, "_kernel_gcv", lambda *a: kernel_calls.append(1) or real_kernel(*a))
    lam_kernel, kernel = design._sparse_gcv(S, w, yc)
    assert kernel_calls
    G0 = design.wgram(S, w, S, dense=False)
    lam, V = np.linalg.eigh(design._centred_gram(G0, np.asarray(S.T @ w).ravel(), float(w.sum())))
    lam, V = np.maximum(lam[::-1], 0.0), V[:, ::-1]
    gram = design._spectral(lam, (V.T @ np.asarray(S.T @ (w * yc)).ravel()) ** 2)
    assert lam_kernel == pytest.approx(lam[0], rel=1e-10)
    for c in (1e-6, 1e-2, 1.0, 1e3):
        assert kernel(c * lam[0]) == pytest.approx(gram(c * lam[0]), rel=1e-8)


@pytest.mark.parametrize("rows, values, missing, p", [(1200, 400, 0.0, 4), (1600, 2000, 0.0, 4), (3000, 300, 0.1, 4),
                                                     (1500, 300, 0.0, 0)])
def test_gcv_through_a_categorical_s_diagonal_block_matches_the_eigen_decomposition(monkeypatch, rows, values, missing, p):
    """A wide categorical's one-hot columns make a diagonal block of the Gram matrix: GCV's
    statistics come from a solve through it, not an eigen-decomposition, to the same penalty
    (values absent from the rows, rows without a value, and no other column included)."""
    import scipy.sparse as sp

    from swarmpilot_predictor.modeling import design

    rng = np.random.default_rng(values)
    codes = rng.integers(0, values, rows)
    numeric = rng.normal(size=(rows, p))
    valid = rng.random(rows) >= missing
    S = sp.hstack([sp.csr_matrix(numeric),
                   sp.csr_matrix((np.ones(valid.sum()), (np.flatnonzero(valid), codes[valid])), shape=(rows, values))],
                  format="csr")
    y = numeric @ rng.normal(size=p) + rng.normal(0, 0.5, values)[codes] + rng.normal(size=rows)
    w = rng.uniform(0.2, 1.0, rows)
    block = design._diagonal_block(design.wgram(S, w, S, dense=False).tocsr())
    assert block[p:].all() and not block[:p].any()  # the one-hot columns, none of the numeric ones
    eigen_calls = []
    real_eigh = np.linalg.eigh
    monkeypatch.setattr(np.linalg, "eigh", lambda *a, **k: eigen_calls.append(1) or real_eigh(*a, **k))
    through_block = design.gcv_alpha(S, y, w, S)
    assert not eigen_calls
    monkeypatch.setattr(design, "ARROW_MIN_WIDTH", 10**9)
    assert design.gcv_alpha(S, y, w, S) == pytest.approx(through_block, rel=1e-9)
    assert eigen_calls
    yc = y - (w @ y) / w.sum()
    lam_eigen, eigen = design._sparse_gcv(S, w, yc)
    monkeypatch.setattr(design, "ARROW_MIN_WIDTH", 256)
    lam_block, block_stats = design._sparse_gcv(S, w, yc)
    assert lam_block == pytest.approx(lam_eigen, rel=1e-10)
    for c in (1e-6, 1e-2, 1.0, 1e3):
        assert block_stats(c * lam_eigen) == pytest.approx(eigen(c * lam_eigen), rel=1e-9)


# --------------------------------------------------------------------------- repeated runtimes


@pytest.mark.parametrize("algorithm", ["auto", "empirical", "linear"])
@pytest.mark.parametrize("value", [10.0, 7.3])
def test_a_constant_runtime_is_answered_as_itself(algorithm, value):
    """exp(log y) came out an ulp or two off y, on either side: an interval
    [10.000000000000002, 10.000000000000002] held none of a thousand runs of 10 ms."""
    rng = np.random.default_rng(0)
    X = rng.integers(1, 64, (1000, 1)).astype(float)
    y = np.full(1000, value)
    model = QuantileModel(["numeric"], [0], algorithm).fit(X, y)
    levels = (0.05, 0.5, 0.95)
    assert model.predict_quantiles(X[:5], levels).tolist() == [[value] * 3] * 5
    assert model.describe_one(X[0].tolist(), levels)[0] == [value] * 3
    assert model.cv_summary()["interval_coverage"] == {"0.9": 1.0, "0.8": 1.0, "0.5": 1.0}
    again = QuantileModel.from_json(json.loads(json.dumps(model.to_json())))
    assert again.predict_quantiles(X[:5], levels).tolist() == [[value] * 3] * 5
    stored_before = model.to_json()
    del stored_before["atoms"]  # a model stored before atoms: as it answered then
    assert QuantileModel.from_json(stored_before).predict_quantiles(X[:1], levels)[0] == pytest.approx([value] * 3, rel=1e-14)


def test_quantiles_on_repeated_runtimes_are_those_runtimes():
    rng = np.random.default_rng(1)
    X = np.zeros((1000, 0))
    y = np.where(rng.random(1000) < 0.5, 10.0, 20.0)
    model = QuantileModel([], [], "empirical").fit(X, y)
    q = model.predict_quantiles(X[:1], [0.05, 0.95])[0]
    assert q.tolist() == [10.0, 20.0]
    assert ((y >= q[0]) & (y <= q[1])).all()


def test_data_atoms_are_the_repeated_runtimes_and_snap_only_what_rounding_moved():
    from swarmpilot_predictor.distribution import data_atoms, snap_one, snap_to_atoms

    atoms = data_atoms(np.array([3.0, 1.0, 2.5, 3.0, 1.0, 7.0, 1.0]))
    assert atoms.tolist() == [1.0, 3.0]  # 2.5 and 7.0 are single runs
    assert data_atoms(np.repeat(np.arange(1.0, 11.0), np.arange(2, 12)), limit=3).tolist() == [8.0, 9.0, 10.0]
    q = np.array([[0.9999999999999998, 1.0001, 2.0, 3.0000000000000004, 3.0 * (1 + 5e-9), np.nan]])
    snapped = snap_to_atoms(q, atoms)
    assert snapped[0, :5].tolist() == [1.0, 1.0001, 2.0, 3.0, 3.0 * (1 + 5e-9)] and np.isnan(snapped[0, 5])
    assert [snap_one(v, tuple(atoms.tolist())) for v in q[0, :5]] == snapped[0, :5].tolist()
    assert snap_to_atoms(q, np.array([])) is q
    # Two atoms within the tolerance of one value: both paths take the lower (a task's answer
    # must not depend on the path it took).
    close = np.array([10.0, 10.0 + 1.5e-8])
    v = 10.0 + 0.9e-8
    assert snap_to_atoms(np.array([v]), close)[0] == snap_one(v, tuple(close.tolist())) == 10.0
    # Only values on a thousandth of the rows: lighter ones cost more than they change.
    distinct = np.linspace(1.0, 2.0, 998)
    assert data_atoms(np.concatenate([distinct, [5.0, 5.0]])).tolist() == [5.0]
    assert data_atoms(np.concatenate([np.linspace(1.0, 2.0, 9998), [5.0, 5.0]])).tolist() == []


def test_filled_in_sparse_systems_are_solved_dense_with_the_same_answers():
    """Several categorical features fill a Gram matrix in (a block per pair of them): it is
    factorised dense, to the same solution; singular systems raise as splu's do."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    from swarmpilot_predictor.modeling.design import DENSE_SOLVE_SHARE, sparse_lu

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 20, (500, 3))
    rows = np.repeat(np.arange(500), 4)
    cols = np.concatenate([np.zeros((500, 1), int), 1 + codes + 20 * np.arange(3)], axis=1).ravel()
    S = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(500, 61))
    gram = (S.T @ S.multiply(rng.random(500)[:, None]).tocsr()).tocsc() + sp.diags(np.full(61, 2.0))
    assert gram.nnz > DENSE_SOLVE_SHARE * 61 * 61
    b = rng.standard_normal(61)
    assert np.allclose(sparse_lu(gram)(b), splu(gram).solve(b), rtol=1e-10, atol=1e-12)
    skewed = gram + sp.csc_matrix(([0.5], ([0], [5])), shape=(61, 61))  # not symmetric: LU, not Cholesky
    assert np.allclose(skewed @ sparse_lu(skewed)(b), b)
    # Symmetric but for rounding, as a sparse product can leave a Gram matrix: Cholesky when
    # the caller says so (it reads the upper triangle), LU otherwise; the same answer.
    import scipy.linalg as sl

    rounded = gram.toarray()
    rounded[5, 0] *= 1 + 2e-16
    assert not np.array_equal(rounded, rounded.T)
    cholesky = sl.cho_solve(sl.cho_factor(rounded), b)
    lu = sl.lu_solve(sl.lu_factor(rounded), b)
    assert not np.array_equal(cholesky, lu)
    assert np.array_equal(sparse_lu(sp.csc_matrix(rounded), symmetric=True)(b), cholesky)
    assert np.array_equal(sparse_lu(sp.csc_matrix(rounded))(b), lu)
    assert np.allclose(cholesky, lu, rtol=1e-12, atol=1e-14)
    singular = sp.csc_matrix(np.ones((61, 61)))
    with pytest.raises(RuntimeError):
        sparse_lu(singular)
    arrow = sp.diags(np.arange(1.0, 62.0), format="csc")  # a sparse one stays with the sparse LU
    assert np.allclose(sparse_lu(arrow)(b), b / np.arange(1.0, 62.0))


def test_the_shape_s_hessians_per_knot_are_the_weighted_gram_matrices():
    """All knots' Hessians at once, by symmetric products in blocks of rows (the last one
    short), are each knot's weighted Gram matrix, and exactly symmetric."""
    from swarmpilot_predictor.modeling.design import wgrams

    rng = np.random.default_rng(0)
    A = rng.standard_normal((1000, 37))
    V = rng.uniform(0.0, 0.25, (1000, 5))
    V[:, 2] = 0.0  # a knot no row weighs
    H = wgrams(A, V, block=37 * 300)
    assert H.shape == (5, 37, 37)
    for k in range(5):
        np.testing.assert_allclose(H[k], A.T @ (A * V[:, k, None]), rtol=1e-12, atol=1e-12)
        assert np.array_equal(H[k], H[k].T)
    assert not H[2].any()


def test_shape_newton_steps_by_conjugate_gradients_match_direct_solves(monkeypatch):
    """Through a sparse design every knot's Newton step is found by preconditioned
    conjugate gradients, all knots at once; a step that does not converge is solved directly."""
    import scipy.sparse as sp

    from swarmpilot_predictor.modeling import shape as shape_module
    from swarmpilot_predictor.modeling.shape import logistic_ridge, newton_steps_pcg

    rng = np.random.default_rng(0)
    n, features, values = 1500, 4, 20
    codes = rng.integers(0, values, (n, features))
    rows = np.repeat(np.arange(n), features + 1)
    cols = np.concatenate([np.zeros((n, 1), int), 1 + codes + values * np.arange(features)], axis=1).ravel()
    S = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, 1 + features * values))
    V = rng.uniform(0.01, 0.25, (n, 3))
    r = np.full(S.shape[1], 10.0)
    r[0] = 1e-6
    G = rng.standard_normal((S.shape[1], 3))
    X, converged = newton_steps_pcg(S, S.T.tocsr(), V, r, G)
    assert converged.all()
    for k in range(3):
        H = (S.T @ S.multiply(V[:, k:k + 1])).toarray() + np.diag(r)
        assert np.allclose(X[:, k], np.linalg.solve(H, G[:, k]), rtol=1e-8, atol=1e-10)

    # A whole fit: the same coefficients by conjugate gradients as by direct solves.
    A = S[:, 1:]
    share = (codes[:, 0] % 4 + 1) / 10
    T = (rng.random((n, 2)) < np.column_stack([share, 2 * share])).astype(float)
    by_cg = logistic_ridge(A, T, 10.0)
    monkeypatch.setattr(shape_module, "PCG_MAX_ITERATIONS", 0)  # nothing converges: every step solved directly
    direct = logistic_ridge(A, T, 10.0)
    assert np.allclose(by_cg, direct, rtol=1e-7, atol=1e-9)
    assert by_cg[1:].std() > 0.05  # the coefficients learned something


@pytest.mark.parametrize("atoms", [[True, 5], ["3", "4"], [4.0, 3.0], [2.0, 2.0], [-1.0], {"a": 1}, None, [[1.0]]])
def test_a_stored_model_with_damaged_atoms_is_refused(atoms):
    rng = np.random.default_rng(0)
    X = rng.integers(1, 64, (200, 1)).astype(float)
    stored = QuantileModel(["numeric"], [0], "linear").fit(X, np.round(X[:, 0] * 2.0)).to_json()
    stored["atoms"] = atoms
    with pytest.raises(ValueError, match="atoms"):
        QuantileModel.from_json(json.loads(json.dumps(stored)))


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.pop("kinds"), "damaged: KeyError 'kinds'"),
    (lambda d: d.update(family="zzz"), "damaged: KeyError 'zzz'"),
    (lambda d: d.update(shape=3), "the shape model is 3, not an object"),
    (lambda d: d.update(log_range=[1.0]), "log_range is"),
    (lambda d: d.update(log_range=[5.0, 1.0]), "log_range is"),
    (lambda d: d.update(shared_log_sd=1e308), "shared_log_sd is"),  # overflowed a total at request time
    (lambda d: d.update(shared_log_sd=-1), "shared_log_sd is"),  # turned the factor off
    (lambda d: d.update(shared_log_sd="0.1"), "shared_log_sd is"),
    (lambda d: d.update(stretch_levels={"stretches": 10, "p_value": 0.5}), "stretch_levels is"),
    (lambda d: d.update(stretch_levels={"stretches": 10, "p_value": 2.0, "log_sd": 0.0}), "stretch_levels is"),
    (lambda d: d.update(stretch_levels=[10, 0.5, 0.0]), "stretch_levels is"),
    # A null coefficient made every location NaN, answered as the middle of the training runtimes.
    (lambda d: d["location"]["coef"].__setitem__(0, None), "coef holds a value that is not a finite number"),
    (lambda d: d["scale"]["coef"].append(None), "coef holds a value that is not a finite number"),
])
def test_a_damaged_model_is_a_value_error_however_it_shows(damage, message):
    X = np.arange(1.0, 41.0)[:, None]
    stored = json.loads(json.dumps(QuantileModel(["numeric"], [0], "linear").fit(X, 5 * X[:, 0]).to_json()))
    damage(stored)
    with pytest.raises(ValueError, match=message):
        QuantileModel.from_json(stored)


def test_a_refused_lightgbm_parameter_is_one_message_not_also_lightgbm_s_own_line():
    """LightGBM writes "[LightGBM] [Fatal] ..." to file descriptor 2 from C++ before raising
    the same message; the CLI printed both."""
    import subprocess
    import sys

    code = ("from swarmpilot_predictor.modeling import check_params\n"
            "try:\n    check_params({'num_leaves': -3}, 'lightgbm')\n"
            "except ValueError as exc:\n    print(exc)\n"
            "import sys; print('still writable', file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "LightGBM refuses 'num_leaves'" in out.stdout
    assert out.stderr == "still writable\n"


# --------------------------------------------------------------------------- first runs: a model of their own


def autotuned(n_shapes: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (batch, image, first run?) of :func:`autotuned_traces`, and their runtimes."""
    traces, firsts = autotuned_traces(n_shapes, n, seed)
    X = np.array([[t["batch_size"], t["image_size"], f] for t, f in zip(traces, firsts)], dtype=float)
    return X, np.array([t["runtime_ms"] for t in traces])


def autotuned_quantiles(X: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """The true quantiles of :func:`autotuned` rows: a first run is one in three times a
    repeat (all under 700 ms), otherwise uniform over 700 to 1,200 ms."""
    typical = 0.003 * X[:, :1] * X[:, 1:2]
    tau = np.broadcast_to(levels, (len(X), len(levels)))
    repeat = typical * np.exp(0.05 * ndtri(tau))
    fast = typical * np.exp(0.05 * ndtri(np.minimum(3 * tau, 1 - 1e-12)))
    first = np.where(tau < 1 / 3, fast, 700 + 500 * (tau - 1 / 3) / (2 / 3))
    return np.where(X[:, 2:3] == 1, first, repeat)


@pytest.fixture(scope="module")
def split_model() -> QuantileModel:
    """A model whose first runs (column 2) got a model of their own; fitted once, since
    several tests read it and none changes it."""
    X, y = autotuned(80, 2080, seed=1)
    return QuantileModel(["numeric"] * 3, [0, 0, 0], regime_column=2).fit(X, y)


def test_first_runs_get_a_model_of_their_own_when_it_predicts_better(split_model):
    X, y = autotuned(80, 2080, seed=1)
    Xt, yt = autotuned(400, 2400, seed=2)
    sizes = [int((X[:, 2] == 0).sum()), int((X[:, 2] == 1).sum())]
    assert sizes[1] == 80
    kinds = ["numeric"] * 3
    pooled = QuantileModel(kinds, [0, 0, 0]).fit(X, y)
    model = split_model
    cv = model.cv_summary()["regime_split"]
    assert model.regimes_ is not None and cv["split"] is True and cv["rows"] == sizes
    assert cv["pinball_loss"] < cv["pooled_pinball_loss"]
    assert [m["rows"] for m in cv["models"]] == sizes
    # The held-out figures heading the metrics (what monitoring compares live accuracy with)
    # are the pair's, which serves; algorithm and cv_scores describe the model of all rows.
    summary = model.cv_summary()
    assert summary["pinball_loss"] == pytest.approx(cv["pinball_loss"], rel=1e-12)
    assert summary["pinball_loss"] < model.cv_[model.family_]["pinball_loss"] == pooled.cv_summary()["pinball_loss"]
    assert summary["rows"] == len(y) and "heldout" not in cv
    assert summary["algorithm"] == model.family_ and summary["variant"] == model.cv_[model.family_]["variant"]
    assert abs(summary["interval_coverage"]["0.9"] - 0.9) < 0.03 and summary["mean_abs_coverage_error"] < 0.03
    # So are the held-out expect and error, each row's from its own kind's model: close to 1
    # where the model of all rows (a first run a repeat stretched by a factor) reads 1.24 and 1.43.
    assert 0.95 < summary["expect_ratio"] < 1.05 and 0.8 < summary["error_ratio"] < 1.25
    assert model.cv_[model.family_]["expect_ratio"] > 1.15 and model.cv_[model.family_]["error_ratio"] > 1.3
    first = Xt[:, 2] == 1
    loss = {name: pinball_losses(yt, q, LEVELS).mean(axis=1)
            for name, q in (("pooled", pooled.predict_quantiles(Xt, LEVELS)), ("split", model.predict_quantiles(Xt, LEVELS)),
                            ("truth", autotuned_quantiles(Xt, LEVELS)))}
    # Most of a first run's loss is its own spread, which the true quantiles lose too (79 ms
    # a row): the split model's first runs lose under 3% more than they do, and less than
    # the model of all rows (by 0.3 to 66 ms a row in the five of six training draws, seeds
    # 1 to 6, where the split was chosen).
    truth = loss["truth"][first].mean()
    assert loss["split"][first].mean() < min(1.03 * truth, loss["pooled"][first].mean())
    assert loss["split"][~first].mean() < 1.05 * loss["pooled"][~first].mean()
    # A first run's median does not scale with its shape; a repeat's does.
    small, large = [[1, 128, 1], [64, 576, 1]], [[1, 128, 0], [64, 576, 0]]
    q_first = model.predict_quantiles(np.array(small), [0.5])[:, 0]
    assert 300 < q_first[0] and q_first[1] < 3 * q_first[0]
    q_repeat = model.predict_quantiles(np.array(large), [0.5])[:, 0]
    assert q_repeat == pytest.approx([0.003 * 128, 0.003 * 64 * 576], rel=0.1)
    # One task at a time, the same answers as in a batch of both kinds; the same after a round trip.
    batch = np.array([*small, *large], dtype=float)
    dist = model.predict_distribution(batch)
    q, (mean, std) = dist.quantiles((0.05, 0.5, 0.95)), dist.mean_std()
    for i, x in enumerate(batch.tolist()):
        one = model.describe_one(x, (0.05, 0.5, 0.95))
        np.testing.assert_allclose(one[0], q[i], rtol=1e-6)
        assert one[1] == pytest.approx(mean[i], rel=1e-4) and one[2] == pytest.approx(std[i], rel=1e-4)
    again = QuantileModel.from_json(json.loads(json.dumps(model.to_json())))
    again.check_loaded()
    np.testing.assert_array_equal(again.predict_quantiles(batch, LEVELS), model.predict_quantiles(batch, LEVELS))
    assert again.shared_log_sd_ == model.shared_log_sd_ and again.cv_summary() == model.cv_summary()
    # The queue's total convolves both kinds of task.
    assert dist.total().mean == pytest.approx(mean.sum())


def test_a_regime_with_few_rows_keeps_one_model():
    X, y = autotuned(6, 500, seed=3)
    model = QuantileModel(["numeric"] * 3, [0, 0, 0], regime_column=2).fit(X, y)
    assert model.regimes_ is None
    assert model.cv_summary()["regime_split"] == {"column": 2, "rows": [494, 6], "split": False,
                                             "reason": "fewer than 10 training rows in a regime"}
    # Rows of weight 0 do not count: with every first run weighted 0 the split is not tried
    # (it used to be, and a kind's model failed to fit: "SVD did not converge"). 40 first
    # runs: the split would be tried, were their weights not read.
    X, y = autotuned(40, 600, seed=1)
    w = np.where(X[:, 2] > 0.5, 0.0, 1.0)
    weighted = QuantileModel(["numeric"] * 3, [0, 0, 0], regime_column=2).fit(X, y, sample_weight=w)
    assert weighted.regimes_ is None
    assert weighted.cv_summary()["regime_split"]["reason"] == "fewer than 10 training rows in a regime (of weight above 0)"
    # A forced algorithm is what was asked for: no split is tried.
    forced = QuantileModel(["numeric"] * 3, [0, 0, 0], algorithm="linear", regime_column=2).fit(X, y)
    assert forced.regimes_ is None and "regime_split" not in forced.cv_summary()


@pytest.mark.parametrize("damage", ["column out of range", "one model", "column missing", "nested", "not objects",
                                    "other categories", "cv not an object"])
def test_a_stored_split_that_does_not_fit_together_is_refused(damage, split_model):
    d = json.loads(json.dumps(split_model.to_json()))
    assert d["regimes"] and QuantileModel.from_json(json.loads(json.dumps(d))).regimes_ is not None
    if damage == "column out of range":
        d["regime_column"] = 3
    elif damage == "one model":
        d["regimes"] = d["regimes"][:1]
    elif damage == "column missing":
        d["regime_column"] = None
    elif damage == "nested":
        d["regimes"][0]["regime_column"], d["regimes"][0]["regimes"] = 0, [d["regimes"][1], d["regimes"][1]]
    elif damage == "not objects":
        d["regimes"] = [1, 2]
    elif damage == "other categories":
        d["regimes"][1]["n_categories"] = [0, 3]
    else:
        d["regime_cv"] = [1]
    with pytest.raises(ValueError):
        QuantileModel.from_json(json.loads(json.dumps(d)))


@pytest.mark.parametrize("params, kept", [
    ({"monotone_constraints": [1, 1, 0]}, {"monotone_constraints": [1, 1]}),
    ({"max_bin_by_feature": "63,63,2"}, {"max_bin_by_feature": "63,63"}),
    ({"interaction_constraints": [[0, 2], [1], [2]]}, {"interaction_constraints": [[0], [1]]}),
])
def test_per_feature_lightgbm_parameters_follow_the_columns_of_each_kinds_model(params, kept):
    # The models of each kind of run lack the first-run column: a per-feature list for the
    # model of all rows failed their training, and with it the whole training. (560 repeats:
    # their model tries LightGBM, from 200 rows; the split is kept, its held-out loss 2.8
    # standard errors lower where 1 will do, 2.5 to 3.0 on seeds 1 to 3.)
    X, y = autotuned(40, 600, seed=1)
    model = QuantileModel(["numeric"] * 3, [0, 0, 0], params=params, regime_column=2).fit(X, y)
    assert model.regimes_ is not None
    assert all(m.params == kept for m in model.regimes_)
    np.testing.assert_array_equal(QuantileModel.from_json(json.loads(json.dumps(model.to_json()))).predict_quantiles(X[:50], LEVELS),
                                  model.predict_quantiles(X[:50], LEVELS))


def test_a_kinds_model_that_cannot_be_fitted_leaves_the_model_of_all_rows(monkeypatch):
    X, y = autotuned(40, 600, seed=1)
    real = QuantileModel._choose

    def failing(self, X, y, w=None):
        if self.regime_column is None and X.shape[1] == 2:  # a model of one kind of run
            raise ValueError("no good")
        return real(self, X, y, w)

    monkeypatch.setattr(QuantileModel, "_choose", failing)
    model = QuantileModel(["numeric"] * 3, [0, 0, 0], regime_column=2).fit(X, y)
    assert model.regimes_ is None
    split = model.cv_summary()["regime_split"]
    assert split["split"] is False and split["reason"] == "a model of one kind of run could not be fitted: no good"
    assert np.all(np.isfinite(model.predict_quantiles(X[:5], LEVELS)))


def launch_bound(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Vision-like runtimes whose noise follows the typical runtime, not any one feature:
    launch-bound tasks (under 3 ms of work) take 3 ms, and a third of them half as long again
    (a slow state of the machine); compute-bound ones take their work, with 1% noise."""
    rng = np.random.default_rng(seed)
    batch, image = rng.choice([1, 2, 4, 8, 16, 32, 64], n), rng.choice([128, 224, 320, 448, 512], n)
    work = 1e-5 * batch * image * image
    small = work < 3.0
    slow = small & (rng.random(n) < 0.3)
    y = np.maximum(3.0, work) * np.exp(np.where(small, 0.03, 0.01) * rng.standard_normal(n)) * np.where(slow, 1.5, 1.0)
    return np.column_stack([batch, image]).astype(float), y


def test_the_shape_of_a_boosted_model_follows_its_typical_runtime():
    X, y = launch_bound(3000, seed=1)
    Xt, yt = launch_bound(3000, seed=2)
    fitted = {on: QuantileModel(["numeric"] * 2, [0, 0], algorithm="lightgbm", params={"shape": True, "shape_location": on}).fit(X, y)
              for on in (False, True)}
    loss = {on: pinball_losses(yt, m.predict_quantiles(Xt, LEVELS), LEVELS).mean() for on, m in fitted.items()}
    model = fitted[True]
    assert model.shape_reads_location_ and not fitted[False].shape_reads_location_
    # 0.0909 against 0.0978 ms: the log-linear shape design alone cannot tell launch-bound
    # shapes (a slow state a third of the time) from compute-bound ones (1% noise).
    assert loss[True] < 0.95 * loss[False]
    # One task at a time as in a batch; the same after a round trip; a damaged flag refused.
    stored = assert_alone_as_in_a_batch_and_after_a_round_trip(model, Xt)
    with pytest.raises(ValueError, match="shape_reads_location"):
        QuantileModel.from_json({**stored, "shape_reads_location": "yes"})
    # A flag that does not match the stored shape's columns: damaged, refused on load (false
    # failed every prediction with an IndexError; true on a shape of the features alone served).
    with pytest.raises(ValueError, match="the shape model reads 3 columns, not the 2"):
        QuantileModel.from_json({**stored, "shape_reads_location": False})
    plain = json.loads(json.dumps(fitted[False].to_json()))
    with pytest.raises(ValueError, match="the shape model reads 2 columns, not the 3"):
        QuantileModel.from_json({**plain, "shape_reads_location": True})
    # Not for the other families: their location is a function of the design the shape reads.
    # (A thousand rows are enough: the linear model's shape is still one that could read it.)
    linear = QuantileModel(["numeric"] * 2, [0, 0], algorithm="linear", params={"shape": True}).fit(X[:1000], y[:1000])
    assert linear.shape_ is not None and type(linear.shape_).reads_location
    assert not linear.shape_reads_location_


@pytest.mark.parametrize("algorithm", ["linear", "auto"])
def test_a_value_between_the_levels_seen_is_answered_between_them(algorithm):
    # Batch sizes 1, 2, 4, ..., 64 in training, runtime growing with the batch: a numeric
    # feature of few values gets an indicator per value. A batch between two of them is
    # answered between their answers (it was the indicators' mean: batch 33 answered 26%
    # under batch 32, and 3 above 4), on the batch and the single-row path alike.
    rng = np.random.default_rng(0)
    b = rng.choice([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0], 400)
    y = (2 + 0.3 * b) * np.exp(0.05 * rng.standard_normal(400))
    model = QuantileModel(["numeric"], [0], algorithm=algorithm).fit(b[:, None], y)
    grid = np.arange(1.0, 129.0)
    median = model.predict_quantiles(grid[:, None], [0.5])[:, 0]
    assert np.all(np.diff(median) >= 0)
    assert median[31] < median[32] < median[63]  # batch 32 < 33 < 64
    assert median[32] == pytest.approx(2 + 0.3 * 33, rel=0.1)
    for x in (3.0, 33.0, 47.5):
        assert model.describe_one([x], (0.5,))[0][0] == pytest.approx(median[int(x) - 1] if x == int(x) else
                                                                      model.predict_quantiles([[x]], [0.5])[0, 0], rel=1e-12)


def test_a_ridge_penalty_too_small_to_solve_is_raised_to_one_that_is():
    # alpha 1e-30 left the Gram matrix of a category's one-hot columns beside the intercept
    # singular: the training failed with "Singular matrix". The fit is now that of the least
    # penalty that can be solved, as near the one asked for as the data allow.
    rng = np.random.default_rng(0)
    n = 300
    X = np.c_[rng.choice([1.0, 2, 4, 8, 16], n), rng.integers(0, 10, n), rng.integers(0, 3, n)].astype(float)
    y = np.exp(0.5 * np.log(X[:, 0]) + 0.1 * X[:, 1] + rng.normal(0, 0.2, n)) * 10

    def medians(alpha: float) -> np.ndarray:
        model = QuantileModel(kinds=["numeric", "numeric", "categorical"], n_categories=[0, 0, 3],
                              algorithm="linear", params={"alpha": alpha}).fit(X, y)
        return model.predict_quantiles(X[:20], [0.5])[:, 0]

    tiny = medians(1e-300)
    assert np.all(np.isfinite(tiny)) and np.all(tiny > 0)
    assert tiny == pytest.approx(medians(1e-12), rel=1e-3)

