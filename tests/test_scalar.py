"""The single-row path (plain floats) must give what the vectorised path gives.

A lone prediction is answered by ``QuantileModel.describe_one``, built on the
``row`` / ``dot_row`` / ``predict_row`` / ``cdf_row`` methods; a batch by
``predict_distribution``. These tests hold the two together for every model
variant, including unseen categories and unseen values of a discrete feature.
"""

from __future__ import annotations

import numpy as np
import pytest

from swarmpilot_predictor.distribution import ScoreDistribution
from swarmpilot_predictor.modeling import LogLinearDesign, QuantileModel, QuantileShapeModel, ScaleModel

LEVELS = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.025, 0.975)
KINDS = ["numeric", "numeric", "numeric", "categorical"]
NCATS = [0, 0, 0, 3]


def _data(n: int = 500, seed: int = 0, hetero: float = 0.3, slow_share: float = 0.1):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 2000, n).astype(float)
    load = rng.uniform(0, 1, n)
    frames = rng.choice([30.0, 60.0, 90.0, 120.0], n)  # a discrete feature
    cat = rng.integers(0, 3, n).astype(float)
    sigma = 0.05 + hetero * load
    slow = rng.random(n) < slow_share * (1 + cat)  # the slow mode's share depends on a feature
    y = (20 + 0.05 * tokens + 0.01 * frames**2) * np.exp(sigma * rng.standard_normal(n)) * np.where(slow, 6.0, 1.0)
    return np.column_stack([tokens, load, frames, cat]), y


def _probe_rows(X: np.ndarray) -> list[list[float]]:
    rows = [X[i].tolist() for i in range(0, 40, 3)]
    rows.append([X[0, 0], X[0, 1], 75.0, X[0, 3]])  # a frame count never seen in training
    rows.append([X[1, 0], X[1, 1], X[1, 2], np.nan])  # an unseen category
    rows.append([1e7, 5.0, 1e4, 1.0])  # far outside the training range
    rows.append([0.0, -1.0, 10.0, 2.0])  # below it
    rows.append([X[2, 0], 1.5, X[2, 2], X[2, 3]])  # one feature beyond it
    return rows


def _assert_same(model: QuantileModel, rows: list[list[float]]) -> None:
    for x in rows:
        got = model.describe_one(x, LEVELS)
        assert got is not None
        q, mean, std = got
        # The same answer alone and in a batch (beside a row of another scale, for a
        # heteroscedastic model: its moments are interpolated in log scale either way).
        for X in (np.array([x]), np.array([x, rows[0] if x is not rows[0] else rows[1]])):
            dist = model.predict_distribution(X)
            want_q = dist.quantiles(list(LEVELS))[0]
            want_mean, want_std = (v[0] for v in dist.mean_std())
            np.testing.assert_allclose(q, want_q, rtol=1e-12)
            assert mean == pytest.approx(want_mean, rel=1e-10)
            assert std == pytest.approx(want_std, rel=1e-10)
        by_level = [q[LEVELS.index(t)] for t in sorted(LEVELS)]
        assert all(b >= a > 0 for a, b in zip(by_level, by_level[1:]))


def test_design_row_matches_transform_including_unseen_values():
    X, _ = _data()
    design = LogLinearDesign(KINDS, NCATS, levels=8).fit(X)
    coef = np.random.default_rng(1).normal(size=design.transform(X[:1]).shape[1])
    for x in _probe_rows(X):
        want = design.transform(np.array([x]))[0]
        np.testing.assert_allclose(design.row(x), want, rtol=1e-12, atol=1e-12)
        assert design.dot_row(x, coef) == pytest.approx(float(want @ coef), rel=1e-10, abs=1e-10)


def test_design_with_discrete_levels_has_indicator_columns():
    X, _ = _data()
    with_levels = LogLinearDesign(KINDS, NCATS, levels=8).fit(X)
    without = LogLinearDesign(KINDS, NCATS, levels=0).fit(X)
    # Four frame counts: four more columns, and the row path sees them too.
    assert len(with_levels.row(X[0].tolist())) == len(without.row(X[0].tolist())) + 4


@pytest.mark.parametrize("link", ScaleModel.LINKS)
def test_a_column_of_one_value_is_no_column(link):
    # The mean of 43 copies of log1p(3) is off by a rounding error, and its "spread" is
    # that error: standardised, the column was +-1s that a fit weighed, and the single
    # row's folded weights (1e14 per unit) answered 0.17 where the batch said 0.16.
    rng = np.random.default_rng(0)
    n = 43
    X = np.column_stack([np.full(n, 3.0), rng.integers(0, 2, n), rng.uniform(0, 1, n)]).astype(float)
    assert np.std(np.log1p(X[:, 0])) > 0  # the rounding this is about
    design = LogLinearDesign(["numeric"] * 3, [0] * 3, hinges=0).fit(X)
    assert not design.transform(X)[:, [0, 3]].any()  # the constant feature's log and raw columns
    scale = ScaleModel(["numeric"] * 3, [0] * 3, hinges=0, link=link).fit(X, rng.standard_normal(n) * (1 + X[:, 2]))
    for x in X[:5]:
        assert scale.predict_row(list(x)) == pytest.approx(float(scale.predict(x[None, :])[0]), rel=1e-12)


@pytest.mark.parametrize("link", ScaleModel.LINKS)
def test_scale_model_row_matches_vectorised(link):
    X, y = _data(hetero=1.0)
    resid = np.log(y) - np.median(np.log(y))
    scale = ScaleModel(KINDS, NCATS, link=link).fit(X, resid)
    assert not scale.is_constant
    for x in _probe_rows(X):
        assert scale.predict_row(x) == pytest.approx(float(scale.predict(np.array([x]))[0]), rel=1e-12)


@pytest.mark.parametrize("algorithm", ["empirical", "linear", "auto"])
@pytest.mark.parametrize("shape", [True, False])
def test_describe_one_matches_predict_distribution(algorithm, shape):
    X, y = _data(hetero=0.0)
    model = QuantileModel(KINDS, NCATS, algorithm=algorithm, params={"shape": shape}).fit(X, y)
    if not shape:
        assert model.shape_ is None
    _assert_same(model, _probe_rows(X))


@pytest.mark.parametrize("algorithm", ["linear", "power"])
def test_an_infinite_feature_or_a_fractional_category_code_answers_alike_alone_and_in_a_batch(algorithm):
    # The service refuses both; a library caller may pass them. An infinite value is read as
    # missing on both paths (a linear model gave 50.5 in a batch and 72.6 alone; a power
    # law with a floor made -inf finite), and a code of 1.5 is no category (alone it was read
    # as category 1).
    X, y = _data(hetero=0.0)
    model = QuantileModel(KINDS, NCATS, algorithm=algorithm, params={"shape": False}).fit(X, y)
    _assert_same(model, [[np.inf, 0.5, 60.0, 1.0], [-np.inf, -np.inf, 60.0, 1.0], [100.0, 0.5, np.inf, 2.0],
                         [100.0, 0.5, 60.0, 1.5], [100.0, 0.5, 60.0, 2.999]])


def test_describe_one_with_a_shape_model():
    X, y = _data(n=800, hetero=0.0, slow_share=0.15)
    model = QuantileModel(KINDS, NCATS, algorithm="empirical").fit(X, y)
    assert model.shape_ is not None and model.shape_.knots_, "this data should need the shape model"
    _assert_same(model, _probe_rows(X))


def test_quantile_regression_shape_row_matches_vectorised():
    X, y = _data(n=800, hetero=1.0, slow_share=0.15)
    z = np.log(y) - np.median(np.log(y))
    score = ScoreDistribution.from_scores(z)
    shape = QuantileShapeModel(KINDS, NCATS).fit(X, z, score)
    assert shape.knots_ and np.ptp(shape.raw_cdf(X[:200]), axis=0).max() > 0.1  # the shape moves
    for recalibrated in (False, True):
        if recalibrated:
            shape.set_recalibration(shape.pit(shape.raw_cdf(X), z, score) ** 1.3)
        for x in _probe_rows(X):
            np.testing.assert_allclose(shape.cdf_row(x), shape.cdf(np.array([x]))[0], rtol=1e-12)


def test_describe_one_with_a_heteroscedastic_scale():
    X, y = _data(n=800, hetero=1.5, slow_share=0.0)
    model = QuantileModel(KINDS, NCATS, algorithm="linear", params={"shape": False}).fit(X, y)
    assert not model.scale_.is_constant, "this data should need a feature-dependent scale"
    _assert_same(model, _probe_rows(X))
    model.check_loaded()  # which compares the two paths on a probe task: a model must pass its own


def test_lightgbm_single_row_c_api_matches_booster_predict():
    X, y = _data(n=400, hetero=0.0)
    model = QuantileModel(KINDS, NCATS, algorithm="lightgbm", params={"shape": False}).fit(X, y)
    location = model.location_
    for x in _probe_rows(X):
        assert location.predict_row(x) == pytest.approx(float(location.predict(np.array([x]))[0]), rel=1e-12)
    _assert_same(model, _probe_rows(X))


def test_power_law_single_row_path_matches_the_batch():
    X, y = _data(n=400, hetero=0.0)
    X[::7, 1] = 0.0  # a feature with zeros takes the signed log1p, the others their log
    model = QuantileModel(KINDS, NCATS, algorithm="power", params={"shape": False, "drop_features": False}).fit(X, y)
    location = model.location_
    assert location.floor_[1] == 0.0 and location.floor_[0] > 0
    rows = _probe_rows(X) + [[np.nan, 0.5, 60.0, 1.0], [-5.0, -1.0, 0.0, 2.0]]  # missing, below the training values
    for x in rows:
        assert location.predict_row(x) == pytest.approx(float(location.predict(np.array([x]))[0]), rel=1e-12)
    _assert_same(model, rows)


@pytest.mark.parametrize("algorithm", ["linear", "power", "lightgbm"])
def test_a_model_loaded_from_json_has_the_same_single_row_path(algorithm):
    import orjson

    X, y = _data(n=400, hetero=0.0)
    model = QuantileModel(KINDS, NCATS, algorithm=algorithm).fit(X, y)
    loaded = QuantileModel.from_json(orjson.loads(orjson.dumps(model.to_json(), option=orjson.OPT_SERIALIZE_NUMPY)))
    for x in _probe_rows(X):
        q, mean, std = loaded.describe_one(x, LEVELS)
        want_q, want_mean, want_std = model.describe_one(x, LEVELS)
        np.testing.assert_allclose(q, want_q, rtol=1e-12)
        assert (mean, std) == pytest.approx((want_mean, want_std), rel=1e-12)


def test_a_regime_flag_has_its_own_slopes_on_the_single_row_path_too():
    import orjson

    rng = np.random.default_rng(3)
    n = 600
    batch = rng.integers(1, 65, n).astype(float)
    image = rng.choice([96.0, 224.0, 384.0, 512.0], n)
    cold = (rng.random(n) < 0.3).astype(float)
    work = batch * (image / 224.0) ** 2
    y = np.where(cold == 1, 60.0, 4.0 + 0.2 * work) * np.exp(0.05 * rng.standard_normal(n))
    X = np.column_stack([batch, image, cold])
    model = QuantileModel(["numeric"] * 3, [0] * 3, algorithm="linear", params={"drop_features": False}).fit(X, y)
    assert model.location_.flags_ and model.location_.flags_[0][0] == 2
    rows = [[64.0, 512.0, 0.0], [64.0, 512.0, 1.0], [1.0, 96.0, 0.0], [8.0, 224.0, np.nan], [500.0, 900.0, 0.0],
            [3.0, 224.0, 1.0]]
    _assert_same(model, rows)
    loaded = QuantileModel.from_json(orjson.loads(orjson.dumps(model.to_json(), option=orjson.OPT_SERIALIZE_NUMPY)))
    for x in rows:
        np.testing.assert_allclose(loaded.describe_one(x, LEVELS)[0], model.describe_one(x, LEVELS)[0], rtol=1e-12)
