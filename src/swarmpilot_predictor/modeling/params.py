"""Checks of a training request's parameters: the service's own and LightGBM's.

:func:`check_params` refuses what an algorithm does not take before a fit starts,
:func:`per_feature_param_problem` checks LightGBM's per-feature lists against the
model's columns, and :func:`lightgbm_errors` names LightGBM's error type. Separate
from the models, which only read parameters that passed these checks.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import cut, shown
from .locations import FAMILIES, LightGBMLocation, check_interaction_constraints, lightgbm_aliases


ALGORITHMS = ("auto", "empirical", "linear", "power", "lightgbm")


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
    # Below 1e-6 every residual is past the threshold (weights 1/|r|: on 200 LLM traces the
    # same medians, to 14 digits, from 1e-6 down to 1e-300); under about 1e-314 the threshold
    # (times the residuals' spread) was 0, every weight NaN, and the training failed with
    # "no scores to build a distribution from", naming no parameter.
    "huber_delta": (_LINEAR, "a number in [1e-6, 100]", _number(1e-6, 100.0)),
    "redescend": (_LINEAR, "true or false", _flag),
    "max_levels": (_LINEAR, "a whole number in [0, 64]", _number(0, 64, whole=True)),
    "hinges": (_LINEAR, "a whole number in [0, 16]", _number(0, 16, whole=True)),
    "regimes": (_LINEAR | _BOOSTED, "true or false", _flag),
    "num_boost_round": (_BOOSTED, "a whole number in [1, 10000]", _number(1, 10_000, whole=True)),
    "lgb_huber_delta": (_BOOSTED, "a number in (0, 100]", _number(0.0, 100.0, open_lo=True)),
    "lgb_linear_base": (_BOOSTED, "true or false", _flag),
    "shape": (_EVERY, "true or false", _flag),
    # At least the intercept's own penalty: 1e-300 left the logistic Newton step's Hessian singular.
    "shape_alpha": (_EVERY, "a number in [1e-6, 1e6]", _number(1e-6, 1e6)),
    "shape_hinges": (_EVERY, "a whole number in [0, 16]", _number(0, 16, whole=True)),
    "shape_location": (_BOOSTED, "true or false", _flag),
    "quantile_shape": (_EVERY - {"empirical"}, "true or false", _flag),
    "drop_features": (_EVERY - {"lightgbm"}, "true or false", _flag),
    "weighted_location": (_EVERY, "true or false", _flag),
}

# LightGBM parameters a request may set: those of fitting a regression's trees. The others
# read or write files (a path from a request must not reach the file system), use the
# network or a device, belong to other tasks (ranking, classification, prediction), or are
# the service's to set (num_iterations is num_boost_round; early stopping, features; verbosity:
# a request's debug level wrote thousands of lines to the service's log).
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
    "top_rate", "tweedie_variance_power", "uniform_drop", "use_missing", "use_quantized_grad",
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
        canonical = lightgbm_aliases()
        # LightGBM reads the word in any case ("DART" is dart): compared as it reads it.
        boosting = [v.lower() if isinstance(v, str) else v for k, v in foreign.items() if canonical.get(k) == "boosting"]
        if any(v == "dart" for v in boosting):
            # Without early stopping every fold runs all its rounds: 3,000 rows at 10,000
            # rounds took 159 s, and held every other training back meanwhile.
            raise ValueError("'boosting': 'dart' turns off LightGBM's early stopping, by which each fold stops "
                             "boosting once rounds bring no gain: use 'gbdt' (the default), 'goss' or 'rf'")
        forest = any(v in ("rf", "random_forest") for v in boosting)
        if forest and params.get("lgb_linear_base", True):
            # Refused here, not by LightGBM's check at the fit ("init_score == nullptr"), after
            # the traces were read and the linear base fitted.
            raise ValueError("'boosting': LightGBM's random forest ('rf') takes no starting score, and the boosted "
                             "location starts from its linear fit: set 'lgb_linear_base': false with it")


def _check_lightgbm_params(params: dict[str, Any], algorithm: str) -> None:
    import lightgbm as lgb

    canonical = lightgbm_aliases()
    for name in params:
        base = canonical.get(name)
        if base is None:
            raise ValueError(f"unknown parameter '{cut(name)}': neither the service's ({', '.join(MODEL_PARAMS)}) "
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
        if isinstance(value, str) and _is_non_finite_number(value):
            # LightGBM reads the word as the number: "inf" for learning_rate trained a model
            # whose medians were 20 times the truth.
            raise ValueError(f"'{name}' must be a finite number, got {shown(value)}")
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
        raise ValueError(f"LightGBM refuses {', '.join(map(repr, scalar))}: {lightgbm_message(exc)}") from None


def lightgbm_message(exc: BaseException) -> str:
    """LightGBM's error in a line, without the source file its checks end with (``at
    /__w/LightGBM/.../dataset_loader.cpp, line 624``): where its C++ failed, not what the
    request got wrong."""
    return str(exc).split(" at /")[0].strip()


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


_LGB_WORD = re.compile(r"[A-Za-z0-9_.+-]{1,64}")


def _is_non_finite_number(word: str) -> bool:
    """Whether ``word`` reads as a number that is not finite (``inf``, ``nan``, ``1e400``)."""
    try:
        return not math.isfinite(float(word))
    except ValueError:
        return False


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


def per_feature_param_problem(params: dict[str, Any], columns: Sequence[str],
                              kinds: Sequence[str] = ()) -> tuple[str, str] | None:
    """The first of LightGBM's per-feature lists in ``params`` (``monotone_constraints`` and
    the like) whose length is not the model's number of columns, an
    ``interaction_constraints`` naming a column the model does not have, or a
    ``monotone_constraints`` asking a categorical column (``kinds``) for a monotone
    runtime, with what is wrong; None if none. Derived columns count: a list for the
    traces' own features alone was a "Check failed" from LightGBM's C++, which did not say
    that a derived column was the one it missed. LightGBM's refusal of a monotone category
    is fatal: it aborted the training worker's process."""
    for name, value in params.items():
        canonical = None if name in MODEL_PARAMS else lightgbm_aliases().get(name, name)
        if canonical not in _PER_FEATURE_LGB_PARAMS:
            continue
        if canonical == "interaction_constraints":
            # Checked here too, whichever family fits: 'auto' on 40 rows, which tries no
            # LightGBM, took feature 7 of a model of 2 columns, which 250 rows refused.
            try:
                check_interaction_constraints(value, len(columns))
            except ValueError as exc:
                return name, f"{exc} ({', '.join(columns[:20])}{', ...' if len(columns) > 20 else ''})"
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
        if canonical == "max_bin_by_feature" and isinstance(value, list):
            for column, v in zip(columns, value):
                if isinstance(v, (int, float)) and v <= 1:
                    return name, f"'{name}' gives {shown(column)} {shown(v)} bins: each feature needs more than 1"
        if canonical == "monotone_constraints" and size is not None:
            values = value if isinstance(value, list) else value.split(",") if isinstance(value, str) else [value]
            for column, kind, v in zip(columns, kinds, values):
                if kind == "categorical" and _nonzero(v):
                    return name, (f"'{name}' asks for a runtime monotone in {shown(column)}, a categorical column, "
                                  "which LightGBM cannot give: set 0 there")
    return None


def _nonzero(v: Any) -> bool:
    """Whether a ``monotone_constraints`` entry (a number, or a number's text in a
    comma-separated list) asks for a constraint: anything but zero, as LightGBM reads it."""
    try:
        return float(v) != 0
    except (TypeError, ValueError):
        return False  # not a number: LightGBM's own refusal says so


def params_without_column(params: dict[str, Any], j: int) -> dict[str, Any]:
    """``params`` for a model of the same columns but column ``j``: LightGBM's per-feature
    lists lose their entry ``j``, and ``interaction_constraints`` lose feature ``j`` and
    number the features after it one lower."""
    out = dict(params)
    for name, value in params.items():
        canonical = None if name in MODEL_PARAMS else lightgbm_aliases().get(name, name)
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


def params_not_used(params: dict[str, Any], tried: set[str], rows: int) -> dict[str, str]:
    """The ``params`` whose only users are families ``algorithm: auto`` did not try
    (``tried``, on ``rows`` rows), each with why: a request's ``num_leaves`` on 40 rows,
    where LightGBM is tried from 200, is said, not ignored."""
    out = {}
    for name in params:
        spec = MODEL_PARAMS.get(name)
        users = {"lightgbm"} if spec is None else set(spec[0]) & set(FAMILIES)
        if users and not users & tried:
            needs = "; ".join(f"{f} from {FAMILIES[f].min_rows} rows" for f in sorted(users))
            out[name] = (f"used by {', '.join(sorted(users))}, which algorithm 'auto' did not try on {rows} "
                         f"rows ({needs}, with a feature)")
    return out
