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

The code is split by concern, one module each: :mod:`.scoring` (pinball loss, quantile
metrics), :mod:`.stored` (readers of stored JSON), :mod:`.design` (design matrices, linear
algebra), :mod:`.locations` (location families), :mod:`.scale` (the scale model),
:mod:`.shape` (shape models), :mod:`.params` (parameter checks) and :mod:`.model`
(:class:`QuantileModel` and its model selection). The names the rest of the package uses
are re-exported here; the others without an underscore are the modules' API to each other.
"""

from __future__ import annotations

from .design import (
    DENSE_SOLVE_MAX_SIZE,
    DENSE_SOLVE_SHARE,
    LEVEL_MIN_ROWS,
    SPARSE_MIN_WIDTH,
    UNUSED,
    LogLinearDesign,
    single_threaded_blas,
)
from .locations import (
    FAMILIES,
    MAX_BOOST_ROUNDS,
    MAX_LEVELS,
    MAX_REGIME_FLAGS,
    EmpiricalLocation,
    LightGBMLocation,
    LinearLocation,
    LocationModel,
    PowerLocation,
)
from .model import (
    CONSISTENT_SHAPE_FAMILIES,
    CONSISTENT_SHAPE_ROWS,
    CV_FOLDS,
    DROP_MARGIN,
    FAMILY_COMPLEXITY,
    FEATURE_DROP_MAX_WORK,
    FEATURE_DROP_ROW_FLOOR,
    FEATURE_DROP_SE,
    LINEAR_HINGES,
    REGIME_MIN_ROWS,
    SCALE_ALPHAS,
    SCALE_SELECT_ROWS,
    SELECTION_SE,
    SELECT_MAX_ROWS,
    SHARED_SD_ROWS,
    SHARED_SD_TAIL_ROWS,
    SHARED_SD_TAIL_SHARE,
    STRATIFIED_FOLDS_BELOW,
    QuantileModel,
    clearly_lower,
    common_rounds,
    location_weights,
)
from .params import (
    ALGORITHMS,
    LIGHTGBM_PARAMS,
    MODEL_PARAMS,
    check_params,
    lightgbm_errors,
    lightgbm_message,
    params_not_used,
    per_feature_param_problem,
)
from .scale import (
    SCALE_FLOOR_SOFTNESS,
    SCALE_LOG_LIMIT,
    SCALE_MIN_ROWS,
    SCALE_RANGE,
    ScaleModel,
)
from .scoring import (
    EVAL_LEVELS,
    error_ratio,
    moment_metrics,
    pinball_loss,
    pinball_losses,
    quantile_metrics,
)
from .shape import (
    KNOT_LEVELS,
    KNOT_MIN_ROWS,
    PCG_MAX_ITERATIONS,
    PCG_TOLERANCE,
    QR_ITERATIONS,
    QR_MAX_ROWS,
    QR_MAX_WIDTH,
    QR_MIN_SMOOTHING,
    QR_TOLERANCE,
    QUANTILE_SHAPE,
    SHAPE_MODELS,
    SHAPE_SUFFIX,
    QuantileShapeModel,
    ShapeModel,
    recalibration_map,
)

__all__ = [
    "ALGORITHMS",
    "CONSISTENT_SHAPE_FAMILIES",
    "CONSISTENT_SHAPE_ROWS",
    "CV_FOLDS",
    "DENSE_SOLVE_MAX_SIZE",
    "DENSE_SOLVE_SHARE",
    "DROP_MARGIN",
    "EVAL_LEVELS",
    "EmpiricalLocation",
    "FAMILIES",
    "FAMILY_COMPLEXITY",
    "FEATURE_DROP_MAX_WORK",
    "FEATURE_DROP_ROW_FLOOR",
    "FEATURE_DROP_SE",
    "KNOT_LEVELS",
    "KNOT_MIN_ROWS",
    "LEVEL_MIN_ROWS",
    "LIGHTGBM_PARAMS",
    "LINEAR_HINGES",
    "LightGBMLocation",
    "LinearLocation",
    "LocationModel",
    "LogLinearDesign",
    "MAX_BOOST_ROUNDS",
    "MAX_LEVELS",
    "MAX_REGIME_FLAGS",
    "MODEL_PARAMS",
    "PCG_MAX_ITERATIONS",
    "PCG_TOLERANCE",
    "PowerLocation",
    "QR_ITERATIONS",
    "QR_MAX_ROWS",
    "QR_MAX_WIDTH",
    "QR_MIN_SMOOTHING",
    "QR_TOLERANCE",
    "QUANTILE_SHAPE",
    "QuantileModel",
    "QuantileShapeModel",
    "REGIME_MIN_ROWS",
    "SCALE_ALPHAS",
    "SCALE_FLOOR_SOFTNESS",
    "SCALE_LOG_LIMIT",
    "SCALE_MIN_ROWS",
    "SCALE_RANGE",
    "SCALE_SELECT_ROWS",
    "SELECTION_SE",
    "SELECT_MAX_ROWS",
    "SHAPE_MODELS",
    "SHAPE_SUFFIX",
    "SHARED_SD_ROWS",
    "SHARED_SD_TAIL_ROWS",
    "SHARED_SD_TAIL_SHARE",
    "SPARSE_MIN_WIDTH",
    "STRATIFIED_FOLDS_BELOW",
    "ScaleModel",
    "ShapeModel",
    "UNUSED",
    "check_params",
    "clearly_lower",
    "common_rounds",
    "error_ratio",
    "lightgbm_errors",
    "location_weights",
    "moment_metrics",
    "params_not_used",
    "lightgbm_message",
    "per_feature_param_problem",
    "pinball_loss",
    "pinball_losses",
    "quantile_metrics",
    "recalibration_map",
    "single_threaded_blas",
]
