"""Accuracy and speed of the service's runtime-distribution model against baselines.

For every trace set (the real ones in ``../shared/data`` when present, plus
synthetic sets whose true conditional distribution is known) the rows are split
70/30 with a fixed seed; every method is trained on the 70% and scored on the 30%:

* ``service``: :class:`swarmpilot_predictor.modeling.QuantileModel`, ``algorithm="auto"``;
* ``lgbm_q``: LightGBM quantile regression, one booster per level, sorted;
* ``qrf``: quantile-forest's ``RandomForestQuantileRegressor``;
* ``linear_qr``: scikit-learn ``QuantileRegressor`` on log features and log runtime, sorted;
* ``empirical``: the quantiles of the training runtimes;
* ``lgbm_q+derived``, ``qrf+derived``, ``linear_qr+derived`` (references, not baselines),
  on sets with timestamps only: the baselines also given the ``first_of_shape`` column the
  service derives; the summary also compares the service with the best of all of them.

The default run also scores the three real H200 trace sets of ``examples/data`` (measured
with ``benchmarks/collect_gpu_traces.py``) in a section of their own (``--no-unseen``
skips it too; ``--sets h200`` runs them alone).

The service is trained on what ``FeatureSchema.prepare_training`` makes of the traces,
derived columns included; the baselines see the traces' own fields.

Run from the repository root::

    uv sync --all-groups
    uv run python benchmarks/accuracy.py            # prints the tables, rewrites benchmarks/README.md

``--sets name,...`` runs only some sets, ``--seed-offset N`` generates the synthetic sets
with other seeds, ``--no-unseen`` skips the synthetic sets regenerated with the seed
offsets the README reports; each of them leaves the README alone. The default run
ends with a study over many seeds at realistic sizes (a few minutes): ``--no-study``
skips it (and leaves the README alone), ``--study-only`` runs only that.
``--tail-study`` prints the heavy-tailed set's error to the true quantiles per level
over 8 seeds (the README's figure for the 0.99 level).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import lightgbm  # noqa: F401 - imported up front so that no method's timing includes it
import numpy as np
from scipy.special import ndtr, ndtri

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from swarmpilot_predictor.features import FeatureSchema, row_counters  # noqa: E402
from swarmpilot_predictor.modeling import EVAL_LEVELS, QuantileModel, pinball_losses, quantile_metrics  # noqa: E402
from swarmpilot_predictor.traces import TIMESTAMP_KEYS, TraceTable, iter_trace_file  # noqa: E402

LEVELS = np.asarray(EVAL_LEVELS)
DATA_DIR = REPO.parent / "shared" / "data"
REAL_SETS = ("h100_resnet50_vision.jsonl", "h20_sglang_llm.jsonl", "h20_diffusers_t2vid.jsonl")
SPLIT_SEED = 12345
KNOWABLE_ORACLE = "oracle given the training rows"
SYNTH_ROWS = 4000


# --------------------------------------------------------------------------- data sets


@dataclass
class TraceSet:
    name: str
    traces: list[dict[str, Any]]
    # For synthetic sets: true conditional quantiles, (rows, levels), for given row indices.
    true_quantiles: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    description: str = ""
    # False where the truth conditions on something no model can know (see synth_cold_start):
    # it is still the floor, but "within 5% of the truth" is not a figure to reach there.
    truth_is_knowable: bool = True
    # There, the true distribution given only what a model can know, for (test rows,
    # training rows, levels): the floor a model can reach.
    knowable_quantiles: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None

    @property
    def timestamped(self) -> bool:
        """Whether the traces carry timestamps, from which the service may derive a column."""
        return bool(self.traces) and any(k in self.traces[0] for k in TIMESTAMP_KEYS)


def real_sets() -> list[TraceSet]:
    out = []
    for name in REAL_SETS:
        path = DATA_DIR / name
        if path.exists():
            out.append(TraceSet(name.removesuffix(".jsonl"), list(iter_trace_file(path)), description="real traces"))
        else:
            print(f"(skipping {name}: not found in {DATA_DIR})", file=sys.stderr)
    return out


# Real traces measured on an H200 after the modelling was settled (benchmarks/collect_gpu_traces.py);
# ours, so they ship in examples/data.
GPU_DIR = REPO / "examples" / "data"
GPU_SETS = {
    "h200_resnet50_vision": "real H200 traces: ResNet-50 fp16, cuDNN autotuner on, 42 shapes",
    "h200_llm_decode": "real H200 traces: 0.44B decoder, output length hidden (lognormal, 3% aborted)",
    "h200_text_encoder": "real H200 traces: BERT-base-sized encoder, padded batches",
}
# Workloads measured later (2026-12-04) on other H200 machines, and scored the day they were
# measured, with the modelling as it stood: see FRESH_GPU_NOTE.
FRESH_GPU_SETS = {
    "h200_t2img_diffusion": "real H200 traces: DiT text-to-image, 7 sizes, 10-50 steps, guidance doubles the batch",
    "h200_asr_speech": "real H200 traces: Whisper-base-sized speech recognition, speech rate and loops hidden",
    "h200_ocr_document": "real H200 traces: page detection and line recognition, lines per page hidden",
    "h200_tts_speech": "real H200 traces: Tacotron-style text-to-speech and vocoder, sentences and pace hidden",
    "h200_llm_serving": "real H200 traces: the 0.44B decoder batching requests as they arrive, load varies",
    "h200_llm_serving_saturated": "real H200 traces: the same decoder served past its capacity, slots always full",
}


def gpu_sets(sets: dict[str, str] = GPU_SETS) -> list[TraceSet]:
    return [TraceSet(name, list(iter_trace_file(GPU_DIR / f"{name}.jsonl")), description=desc)
            for name, desc in sets.items()]


def _normal_q(levels: np.ndarray) -> np.ndarray:
    return ndtri(levels)


def synth_lognormal(n: int = SYNTH_ROWS, seed: int = 1) -> TraceSet:
    """LLM-like: fixed overhead + per-token costs, lognormal noise, a useless and two constant fields."""
    rng = np.random.default_rng(seed)
    inp = rng.integers(16, 2048, n)
    out = rng.integers(8, 512, n)
    temp = rng.uniform(0, 1, n)  # useless
    base = 20 + 0.02 * inp + 12.0 * out
    sigma = 0.25
    y = base * np.exp(sigma * rng.standard_normal(n))
    traces = [
        {"input_tokens": int(a), "output_tokens": int(b), "temperature": float(t), "max_tokens": 512,
         "gpu": "H100", "runtime_ms": float(r)}
        for a, b, t, r in zip(inp, out, temp, y)
    ]

    def tq(rows, levels):
        return base[rows, None] * np.exp(sigma * _normal_q(levels))[None, :]

    return TraceSet("synthetic_lognormal", traces, tq, "base = 20 + 0.02 in + 12 out; y = base * LogNormal(0, 0.25)")


def _mixture_log_quantiles(levels: np.ndarray, p_slow: float, shift: float, sigma: float) -> np.ndarray:
    from scipy.optimize import brentq

    def cdf(t):
        return (1 - p_slow) * ndtr(t / sigma) + p_slow * ndtr((t - shift) / sigma)

    return np.array([brentq(lambda t, u=u: cdf(t) - u, -20 * sigma - 1, shift + 20 * sigma + 1, xtol=1e-12) for u in levels])


def synth_bimodal(n: int = SYNTH_ROWS, seed: int = 2) -> TraceSet:
    """Vision-like: 15% of tasks hit a cold path 10x slower; both modes scale with the work."""
    rng = np.random.default_rng(seed)
    batch = rng.integers(1, 65, n)
    image = rng.choice(np.arange(128, 513, 32), n)
    base = 2.0 + 0.03 * batch * (image / 224.0) ** 2
    p_slow, shift, sigma = 0.15, math.log(10.0), 0.1
    cold = rng.random(n) < p_slow
    y = base * np.exp(shift * cold + sigma * rng.standard_normal(n))
    traces = [{"batch_size": int(b), "image_size": int(s), "runtime_ms": float(r)} for b, s, r in zip(batch, image, y)]

    def tq(rows, levels):
        return base[rows, None] * np.exp(_mixture_log_quantiles(levels, p_slow, shift, sigma))[None, :]

    return TraceSet("synthetic_bimodal", traces, tq,
                    "base = 2 + 0.03 batch (image/224)^2; y = base * 10^B * LogNormal(0, 0.1), B ~ Bernoulli(0.15)")


def synth_heavy_tailed(n: int = SYNTH_ROWS, seed: int = 3) -> TraceSet:
    """Diffusion-like: y = base * (1 + 0.3 * Lomax(2.5)): a floor and a Pareto right tail."""
    rng = np.random.default_rng(seed)
    prompt = np.round(rng.lognormal(5.0, 0.6, n))
    steps = rng.choice([20, 30, 50], n)
    model = rng.choice(["sd15", "sdxl", "flux"], n)
    mult = np.select([model == "sd15", model == "sdxl"], [1.0, 2.5], 6.0)
    base = (40.0 + 0.2 * prompt) * steps * mult
    alpha, scale = 2.5, 0.3
    u = rng.random(n)
    lomax = (1 - u) ** (-1 / alpha) - 1
    y = base * (1 + scale * lomax)
    traces = [{"prompt_length": float(p), "steps": int(s), "model": str(m), "runtime_ms": float(r)}
              for p, s, m, r in zip(prompt, steps, model, y)]

    def tq(rows, levels):
        return base[rows, None] * (1 + scale * ((1 - levels) ** (-1 / alpha) - 1))[None, :]

    return TraceSet("synthetic_heavy_tailed", traces, tq,
                    "base = (40 + 0.2 prompt) steps mult(model); y = base * (1 + 0.3 Lomax(2.5))")


def synth_heteroscedastic(n: int = SYNTH_ROWS, seed: int = 4) -> TraceSet:
    """Noise grows with server load: log y = log base + (0.05 + 0.45 load) * N(0, 1)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(10, 1000, n)
    load = rng.uniform(0, 1, n)
    backend = rng.choice(["vllm", "sglang"], n)
    base = (30.0 + 2.0 * tokens) * np.where(backend == "sglang", 1.2, 1.0)
    sigma = 0.05 + 0.45 * load
    y = base * np.exp(sigma * rng.standard_normal(n))
    traces = [{"tokens": int(t), "load": float(ld), "backend": str(b), "runtime_ms": float(r)}
              for t, ld, b, r in zip(tokens, load, backend, y)]

    def tq(rows, levels):
        return base[rows, None] * np.exp(sigma[rows, None] * _normal_q(levels)[None, :])

    return TraceSet("synthetic_heteroscedastic", traces, tq,
                    "base = (30 + 2 tokens) (1.2 if sglang); y = base * LogNormal(0, 0.05 + 0.45 load)")


def synth_cold_start(n: int = SYNTH_ROWS, seed: int = 6) -> TraceSet:
    """Vision-like, in time order: the first task of each (batch, image) shape is 10x slower.

    Unlike ``synth_bimodal``, the slow mode is not luck: it is the first run of a shape,
    which only the trace's history tells (the traces carry a timestamp ``ts``).
    """
    rng = np.random.default_rng(seed)
    batch = rng.integers(1, 65, n)
    image = rng.choice(np.arange(96, 513, 32), n)
    ts = 1.7e9 + np.cumsum(rng.exponential(0.1, n))
    _, first_row, shape = np.unique(np.column_stack([batch, image]), axis=0, return_index=True, return_inverse=True)
    shape = shape.ravel()
    cold = np.zeros(n, dtype=bool)
    cold[first_row] = True
    base = 2.0 + 0.03 * batch * (image / 224.0) ** 2
    shift, sigma = math.log(10.0), 0.1
    y = base * np.exp(shift * cold + sigma * rng.standard_normal(n))
    traces = [{"batch_size": int(b), "image_size": int(s), "ts": float(t), "runtime_ms": float(r)}
              for b, s, t, r in zip(batch, image, ts, y)]

    def tq(rows, levels):
        # Given whether the task truly was its shape's first run, which a model only knows
        # when an earlier run of the shape is among its training rows.
        return base[rows, None] * np.exp(shift * cold[rows, None] + sigma * _normal_q(levels)[None, :])

    def known(rows, train, levels):
        # What the training rows tell: a test task with an earlier training run of its shape
        # is a repeat; one without may be the first run or follow an earlier *test* run,
        # which no model sees. Those are a mixture, at the share of first runs among them
        # (known only to the oracle: a fitted model has to learn it).
        first_trained = np.full(shape.max() + 1, np.inf)
        np.minimum.at(first_trained, shape[train], ts[train])
        unsure = ts[rows] < first_trained[shape[rows]]
        q = tq(rows, levels)
        share = float(cold[rows][unsure].mean())
        q[unsure] = base[rows][unsure, None] * np.exp(_mixture_log_quantiles(levels, share, shift, sigma))[None, :]
        return q

    return TraceSet("synthetic_cold_start", traces, tq,
                    "base = 2 + 0.03 batch (image/224)^2; y = base * 10^F * LogNormal(0, 0.1), F = 1 for the "
                    "first run of a (batch, image) shape (64 x 14 shapes) in time order", truth_is_knowable=False,
                    knowable_quantiles=known)


ABORTED_ROWS = 700


def synth_llm_aborted(n: int = ABORTED_ROWS, seed: int = 5) -> TraceSet:
    """A small LLM trace where 5% of the requests were aborted early (a tiny share of their full runtime)."""
    from scipy.optimize import brentq

    rng = np.random.default_rng(seed)
    inp = np.clip(np.round(rng.lognormal(6.0, 0.8, n)), 16, 8192)
    out = rng.integers(16, 1024, n)
    base = 25 + 0.015 * inp + 18.0 * out
    p_abort, sigma, lo, hi = 0.05, 0.2, 0.02, 0.2
    aborted = rng.random(n) < p_abort
    # log(y / base): N(0, sigma) for completed requests, log U(lo, hi) for aborted ones.
    z = np.where(aborted, np.log(rng.uniform(lo, hi, n)), sigma * rng.standard_normal(n))
    y = base * np.exp(z)
    traces = [{"input_tokens": int(a), "output_tokens": int(b), "runtime_ms": float(r)} for a, b, r in zip(inp, out, y)]

    def cdf(t):
        return (1 - p_abort) * ndtr(t / sigma) + p_abort * np.clip((np.exp(t) - lo) / (hi - lo), 0.0, 1.0)

    def tq(rows, levels):
        zq = np.array([brentq(lambda t, u=u: cdf(t) - u, math.log(lo) - 1, 20 * sigma, xtol=1e-12) for u in levels])
        return base[rows, None] * np.exp(zq)[None, :]

    return TraceSet("synthetic_llm_aborted", traces, tq,
                    "base = 25 + 0.015 in + 18 out; y = base * LogNormal(0, 0.2), or for 5% aborted requests "
                    "y = base * Uniform(0.02, 0.2)")


# The README also reports the synthetic sets regenerated with these seed offsets: data
# that no setting of the service was tuned on.
UNSEEN_OFFSETS = (1000,)


GENERATORS = (synth_lognormal, synth_bimodal, synth_heavy_tailed, synth_heteroscedastic, synth_llm_aborted,
              synth_cold_start)


def synthetic_sets(n: int = SYNTH_ROWS, seed_offset: int = 0) -> list[TraceSet]:
    out = []
    for gen in GENERATORS:
        rows = gen.__defaults__[0] if gen is synth_llm_aborted else n
        ts = gen(rows, seed=gen.__defaults__[1] + seed_offset)
        if seed_offset:
            ts.name += f"_seed+{seed_offset}"
        out.append(ts)
    return out


# --------------------------------------------------------------------------- methods


class Method:
    name: str
    extra: str = ""
    # Whether the method reads the columns the service derives from the traces (the
    # first run of an input shape); the baselines read the traces' own fields only.
    derived: bool = False
    # A reference row, shown but never the "best baseline" the service is compared with.
    reference: bool = False

    def fit(self, X, y, kinds, ncats):  # pragma: no cover - interface
        raise NotImplementedError

    def predict(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Return (final quantiles, raw quantiles before any sorting)."""
        raise NotImplementedError


class ServiceModel(Method):
    name = "service"
    derived = True
    # The derived first_of_shape column, which the service may answer with a model per value.
    regime_column: int | None = None
    # Cross-validation folds (None: the model's default by training rows); small_data.py sets it.
    n_folds: int | None = None

    def fit(self, X, y, kinds, ncats):
        self.model = QuantileModel(kinds, ncats, n_folds=self.n_folds, regime_column=self.regime_column).fit(X, y)
        self.extra = f"{self.model.family_}, {self.model.cv_[self.model.family_].get('variant', '')}"
        if self.model.regimes_ is not None:
            self.extra = "split by first run: " + " / ".join(
                f"{m.family_}, {m.cv_[m.family_].get('variant', '')}" for m in self.model.regimes_)
        return self

    def predict(self, X):
        q = self.model.predict_quantiles(X, LEVELS)
        return q, q


def _log_design(X, kinds, ncats):
    parts = []
    for j, (k, c) in enumerate(zip(kinds, ncats)):
        if k == "numeric":
            parts.append(np.sign(X[:, j:j + 1]) * np.log1p(np.abs(X[:, j:j + 1])))
        else:
            parts.append((X[:, j:j + 1] == np.arange(c)[None, :]).astype(float))
    return np.concatenate(parts, axis=1) if parts else np.zeros((len(X), 0))


class LightGBMQuantile(Method):
    name = "lgbm_q"

    def fit(self, X, y, kinds, ncats):
        import lightgbm as lgb

        self.cats = [j for j, k in enumerate(kinds) if k == "categorical"]
        self.models = []
        for tau in LEVELS:
            m = lgb.LGBMRegressor(objective="quantile", alpha=float(tau), n_estimators=100, learning_rate=0.1,
                                  num_leaves=31, min_child_samples=max(3, min(20, len(y) // 10)),
                                  verbose=-1, n_jobs=1, random_state=0)
            m.fit(X, y, categorical_feature=self.cats or "auto")
            self.models.append(m)
        return self

    def predict(self, X):
        raw = np.column_stack([m.predict(X) for m in self.models])
        return np.sort(raw, axis=1), raw


class LightGBMQuantileDerived(LightGBMQuantile):
    """``lgbm_q`` handed the service's derived columns: how much of a gain is the column."""

    name = "lgbm_q+derived"
    derived = True
    reference = True


QRF_LEAF_SIZES = (1, 5, 10, 20)


class QuantileForest(Method):
    """Its leaf size chosen by 5-fold cross-validated pinball loss on the training rows: at
    quantile-forest's default of 1 it was handicapped on the real sets."""

    name = "qrf"

    def fit(self, X, y, kinds, ncats):
        from quantile_forest import RandomForestQuantileRegressor

        X = np.nan_to_num(X, nan=-1.0)

        def forest(leaf: int):
            return RandomForestQuantileRegressor(n_estimators=100, min_samples_leaf=leaf, random_state=0, n_jobs=1)

        leaf = QRF_LEAF_SIZES[0]
        if len(y) >= 50:
            fold = np.random.default_rng(0).permutation(len(y)) % 5
            losses = []
            for size in QRF_LEAF_SIZES:
                loss = 0.0
                for k in range(5):
                    tr, te = fold != k, fold == k
                    q = np.asarray(forest(size).fit(X[tr], y[tr]).predict(X[te], quantiles=list(LEVELS)))
                    loss += float(pinball_losses(y[te], q, LEVELS).mean(axis=1).sum())
                losses.append(loss)
            leaf = QRF_LEAF_SIZES[int(np.argmin(losses))]
        self.extra = f"min_samples_leaf {leaf}"
        self.model = forest(leaf).fit(X, y)
        return self

    def predict(self, X):
        q = np.asarray(self.model.predict(np.nan_to_num(X, nan=-1.0), quantiles=list(LEVELS)))
        return q, q


class LinearQuantileLog(Method):
    name = "linear_qr"

    def fit(self, X, y, kinds, ncats):
        from sklearn.linear_model import QuantileRegressor

        self.kinds, self.ncats = kinds, ncats
        A = _log_design(X, kinds, ncats)
        self.mu, sd = A.mean(axis=0), A.std(axis=0)
        self.sd = np.where(sd > 0, sd, 1.0)
        A = (A - self.mu) / self.sd
        self.models = [QuantileRegressor(quantile=float(t), alpha=0.0, solver="highs").fit(A, np.log(y)) for t in LEVELS]
        return self

    def predict(self, X):
        A = (_log_design(X, self.kinds, self.ncats) - self.mu) / self.sd
        raw = np.exp(np.column_stack([m.predict(A) for m in self.models]))
        return np.sort(raw, axis=1), raw


class QuantileForestDerived(QuantileForest):
    """``qrf`` handed the service's derived columns (a reference row, as ``lgbm_q+derived``)."""

    name = "qrf+derived"
    derived = True
    reference = True


class LinearQuantileLogDerived(LinearQuantileLog):
    """``linear_qr`` handed the service's derived columns (a reference row)."""

    name = "linear_qr+derived"
    derived = True
    reference = True


class Empirical(Method):
    name = "empirical"

    def fit(self, X, y, kinds, ncats):
        self.q = np.quantile(y, LEVELS)
        return self

    def predict(self, X):
        q = np.broadcast_to(self.q, (len(X), len(LEVELS))).copy()
        return q, q


METHODS: list[type[Method]] = [ServiceModel, LightGBMQuantile, QuantileForest, LinearQuantileLog, Empirical,
                               LightGBMQuantileDerived, QuantileForestDerived, LinearQuantileLogDerived]


# --------------------------------------------------------------------------- running


@dataclass
class Row:
    method: str
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""
    row_loss: np.ndarray | None = None
    levels: dict[str, np.ndarray] | None = None  # synthetic sets: mean error to the truth per level
    q: np.ndarray | None = None  # the quantiles at LEVELS of every test row
    reference: bool = False  # never a baseline (the oracle, a baseline with the service's derived columns)


def ratio_interval(a: np.ndarray, b: np.ndarray, reps: int = 2000) -> tuple[float, float]:
    """90% paired bootstrap interval (over test rows) of mean(a) / mean(b)."""
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(a), (reps, len(a)))
    r = a[idx].mean(axis=1) / b[idx].mean(axis=1)
    return float(np.quantile(r, 0.05)), float(np.quantile(r, 0.95))


def split(n: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(0.7 * n))
    return np.sort(perm[:k]), np.sort(perm[k:])


class Split(NamedTuple):
    """A trace set's 70/30 split, encoded as the service encodes training data."""

    X: np.ndarray
    y: np.ndarray
    Xt: np.ndarray
    yt: np.ndarray
    kinds: list[str]
    ncats: list[int]
    truth: np.ndarray | None  # true quantiles at LEVELS of the test rows (synthetic sets)
    info: dict[str, Any]
    test_rows: np.ndarray  # the test rows' indices in the trace set
    train_rows: np.ndarray  # the training rows' indices in the trace set


def split_set(ts: TraceSet, parts: tuple[np.ndarray, np.ndarray] | None = None) -> Split:
    """The 70/30 split, or ``parts``: the indices of the training and the test traces."""
    tr, te = split(len(ts.traces)) if parts is None else parts
    train_table = TraceTable.from_traces([ts.traces[i] for i in tr])
    # The columns that number the whole file's traces, as the service finds them training on
    # it: the random 70% numbers its rows with gaps, and such a counter was a feature for
    # every method here, placing each test row between its neighbours in time.
    counters = row_counters(TraceTable.from_traces(ts.traces))
    schema, X, y, report = FeatureSchema.prepare_training(train_table, row_counters=counters)
    test_table = TraceTable.from_traces([ts.traces[i] for i in te])
    Xt, ok = schema.matrix_from_table(test_table)
    yt = test_table.numeric("runtime_ms")
    keep = ok & np.isfinite(yt) & (yt > 0)
    Xt, yt, te = Xt[keep], yt[keep], te[keep]
    info = {"train_rows": len(y), "test_rows": len(yt), "features": schema.column_names,
            "trace_columns": len(schema.names), "dropped": report.columns_dropped,
            "derived": report.columns_derived, "regime_column": schema.regime_column}
    return Split(X, y, Xt, yt, schema.kinds, schema.n_categories,
                 ts.true_quantiles(te, LEVELS) if ts.true_quantiles is not None else None, info, te, tr)


def fit_service(sp: Split) -> tuple[QuantileModel, float]:
    """The service's model (``algorithm`` auto) fitted on ``sp``'s training part, and the seconds it took."""
    t0 = time.perf_counter()
    model = QuantileModel(sp.kinds, sp.ncats, regime_column=sp.info["regime_column"]).fit(sp.X, sp.y)
    return model, time.perf_counter() - t0


# Probit grid for integrals over the true distribution: u = Phi(t), t evenly spaced on
# [-7, 7], so that both tails (the Pareto tail of heavy_tailed above all) are resolved.
_GRID_T = np.linspace(-7.0, 7.0, 1401)
GRID_LEVELS = ndtr(_GRID_T)
GRID_WEIGHTS = np.exp(-0.5 * _GRID_T**2) / np.sum(np.exp(-0.5 * _GRID_T**2))


class TruthGrid:
    """The true conditional distribution of each test row on a fine grid of levels.

    Scores a method by its *expected* pinball loss, ``E rho_tau(Y - q) = integral over u of
    rho_tau(Q(u) - q)``, instead of the loss on the one runtime each test row drew: the same
    comparison without the test set's sampling noise (what is left is the training draw).
    """

    def __init__(self, ts: TraceSet, rows: np.ndarray):
        self.Q = ts.true_quantiles(rows, GRID_LEVELS)  # (rows, grid)
        self.mean = self.Q @ GRID_WEIGHTS  # E[Y | x] per row

    def expected_losses(self, q: np.ndarray) -> np.ndarray:
        """Expected pinball loss of every row at every level, (rows, levels)."""
        out = np.empty(q.shape)
        for j, tau in enumerate(LEVELS):
            d = self.Q - q[:, j:j + 1]
            out[:, j] = np.maximum(tau * d, (tau - 1) * d) @ GRID_WEIGHTS
        return out

    def cdf(self, q: np.ndarray) -> np.ndarray:
        """The true probability of finishing within each predicted quantile, F(q), (rows, levels)."""
        return np.stack([(self.Q <= q[:, j:j + 1]) @ GRID_WEIGHTS for j in range(q.shape[1])], axis=1)

    def relative_pinball(self, q: np.ndarray) -> float:
        """Expected relative pinball loss: the benchmark's headline metric, in expectation."""
        return float(self.expected_losses(q).mean() / self.mean.mean())


def evaluate(ts: TraceSet, parts: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[list[Row], dict[str, Any]]:
    X, y, Xt, yt, kinds, ncats, truth, info, te, tr = split_set(ts, parts)
    grid = TruthGrid(ts, te) if ts.true_quantiles is not None else None
    rows = []
    for cls in METHODS:
        c = len(kinds) if cls.derived else info["trace_columns"]
        if cls.reference and c == info["trace_columns"]:
            continue  # no derived column: the reference row would repeat its base method
        method = cls()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            if isinstance(method, ServiceModel):
                method.regime_column = info["regime_column"]
            method.fit(X[:, :c], y, kinds[:c], ncats[:c])
            fit_s = time.perf_counter() - t0
            method.predict(Xt[:5, :c])  # warm-up
            t0 = time.perf_counter()
            q, raw = method.predict(Xt[:, :c])
            pred_s = time.perf_counter() - t0
        m = quantile_metrics(yt, q, LEVELS)
        r = Row(cls.name, note=method.extra, reference=cls.reference)
        r.row_loss = pinball_losses(yt, q, LEVELS).mean(axis=1)
        r.q = q
        r.metrics = {
            "rel_pinball": m["relative_pinball_loss"],
            "mace": m["mean_abs_coverage_error"],
            "cov90": m["interval_coverage"]["0.9"],
            "width90": float(np.mean(q[:, -2] - q[:, 0]) / np.mean(yt)),
            "median_mape": m["median_mape"],
            "crossing": float(np.mean(np.any(np.diff(raw, axis=1) < 0, axis=1))),
            "negative": int(np.sum(q < 0)),
            "train_s": fit_s,
            "us_per_row": pred_s / len(yt) * 1e6,
        }
        if truth is not None:
            rel = np.abs(q - truth) / truth
            # Not a figure where the truth holds what no model can know (shown as "-").
            known = 1.0 if ts.truth_is_knowable else math.nan
            r.metrics["true_q_err"] = float(rel.mean(axis=0).max()) * known
            r.metrics["true_q_err_p95"] = float(np.quantile(rel, 0.95)) * known
            r.metrics["exp_rel_pinball"] = grid.relative_pinball(q)
            level_err = np.abs(grid.cdf(q) - LEVELS).mean(axis=0)
            r.metrics["true_level_err"] = float(level_err.max()) * known
            r.levels = {"time": rel.mean(axis=0) * known, "probability": level_err * known}
        if cls is ServiceModel:
            info["service_model"] = method.model
            info["test"] = (Xt, yt, [ts.traces[i] for i in te], te)
            info["batch_ms"] = batch_timing(method.model, Xt)
        rows.append(r)
    if truth is not None:
        # Not methods: the true conditional quantiles, the floor any method can reach, and where
        # those know more than the training rows tell, the truth given what they tell.
        floors = [("oracle", "true quantiles", truth)]
        if ts.knowable_quantiles is not None:
            floors.append((KNOWABLE_ORACLE, "true quantiles given what the training rows tell",
                           ts.knowable_quantiles(te, tr, LEVELS)))
        for name, note, q in floors:
            m = quantile_metrics(yt, q, LEVELS)
            to_truth = 0.0 if q is truth else math.nan  # its errors to the truth: none, or not a figure
            rows.append(Row(name, note=note, reference=True, metrics={
                "rel_pinball": m["relative_pinball_loss"], "mace": m["mean_abs_coverage_error"],
                "cov90": m["interval_coverage"]["0.9"], "width90": float(np.mean(q[:, -2] - q[:, 0]) / np.mean(yt)),
                "median_mape": m["median_mape"], "crossing": 0.0, "negative": 0, "train_s": math.nan,
                "us_per_row": math.nan, "true_q_err": to_truth, "true_q_err_p95": to_truth,
                "exp_rel_pinball": grid.relative_pinball(q), "true_level_err": to_truth}))
    return rows, info


def batch_timing(model: QuantileModel, Xt: np.ndarray, n: int = 1000, repeat: int = 20) -> float:
    """Milliseconds to evaluate 1000 traces: distribution, 4 quantiles, mean/std, interval and total."""
    X = Xt[np.arange(n) % len(Xt)]
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        d = model.predict_distribution(X)
        d.quantiles([0.25, 0.5, 0.75, 0.99])
        d.mean_std()
        d.interval(0.95)
        tot = d.total()
        tot.quantiles([0.25, 0.5, 0.75, 0.99])
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


# --------------------------------------------------------------------------- reporting

COLUMNS = [
    ("method", "method"),
    ("rel_pinball", "rel. pinball"),
    ("mace", "MACE"),
    ("cov90", "cov. 90%"),
    ("width90", "rel. width 90%"),
    ("median_mape", "median MAPE"),
    ("crossing", "crossing"),
    ("negative", "neg."),
    ("train_s", "train s"),
    ("us_per_row", "µs/row"),
]


def fmt(key: str, v: float) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "-"
    if key in ("negative",):
        return str(int(v))
    if key == "train_s":
        return f"{v:.2f}"
    if key == "us_per_row":
        return f"{v:.1f}"
    if key in ("cov90", "crossing"):
        return f"{v:.3f}"
    return f"{v:.4f}"


def table(rows: list[Row], synthetic: bool) -> str:
    cols = COLUMNS + ([("true_q_err", "max level mean |q̂-q|/q"), ("true_q_err_p95", "p95 |q̂-q|/q"),
                       ("true_level_err", "max level mean |F(q̂)-τ|"), ("exp_rel_pinball", "expected rel. pinball")]
                      if synthetic else [])
    head = "| " + " | ".join(c[1] for c in cols) + " |"
    sep = "|" + "|".join("---" if c[0] == "method" else "---:" for c in cols) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _ in cols:
            if key == "method":
                if r.method == "service":
                    cells.append(f"**service** ({r.note})")
                else:
                    cells.append(f"{r.method} ({r.note})" if r.note else r.method)
            else:
                cells.append(fmt(key, r.metrics[key]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_sets(sets: list[TraceSet]) -> dict[str, Any]:
    """Evaluate every set; returns the per-set blocks, summary rows, figure checks and oracle ratios."""
    blocks: list[str] = []
    summary = []
    oracle_ratios: list[tuple[str, float]] = []
    checks: list[tuple[str, bool, str]] = []
    for ts in sets:
        t0 = time.perf_counter()
        rows, info = evaluate(ts)
        svc = rows[0].metrics
        base = {r.method: r.metrics["rel_pinball"] for r in rows[1:] if not r.reference}
        best_name = min(base, key=base.get)
        ratio = svc["rel_pinball"] / base[best_name]
        best_row = next(r for r in rows if r.method == best_name)
        ci = ratio_interval(rows[0].row_loss, best_row.row_loss)
        oracle = next((r for r in rows if r.method == "oracle"), None)
        oracle_ratio = math.nan
        if oracle is not None:
            oracle_ratio = oracle.metrics["rel_pinball"] / base[best_name]
            oracle_ratios.append((ts.name, oracle_ratio))
        # The stricter comparison: every baseline also handed the service's derived columns
        # (where a set has them), the best of all of them.
        given = {**base, **{r.method: r.metrics["rel_pinball"] for r in rows[1:] if r.method.endswith("+derived")}}
        best_given = min(given, key=given.get)
        info["given"] = (best_given, svc["rel_pinball"] / given[best_given])
        # The floor of that comparison: what a model can know at best, where the truth is known.
        floor = next((r for r in rows if r.method == KNOWABLE_ORACLE), oracle)
        if floor is not None:
            info["floor"] = (floor.method, floor.metrics["rel_pinball"] / base[best_name],
                             floor.metrics["rel_pinball"] / given[best_given])
        if info["given"][1] > 1.0:
            info["behind"] = where_behind(rows[0], next(r for r in rows if r.method == best_given), info)
        summary.append((ts.name, svc["rel_pinball"], best_name, base[best_name], ratio, info, ci, svc, oracle_ratio,
                        expected_ratio(rows)))
        model = info["service_model"]
        cv = ", ".join(f"{f} {m['relative_pinball_loss']:.4f} ({m.get('variant', '')})" for f, m in model.cv_.items())
        unused = [name for name, used in zip(info["features"], model.features_used_) if not used]
        if unused:
            after = model.cv_[model.family_].get("relative_pinball_loss_after_drop", math.nan)
            cv += f"; then dropped by backward elimination: {', '.join(unused)} (CV {after:.4f} without them)"
        split = model.regime_cv_ or {}
        if split.get("split"):
            (rep, rep_rows), (first, first_rows) = ((m["algorithm"], m["rows"]) for m in split["models"])
            cv += (f"; then **split by first run**, a model each: repeats **{rep}** ({rep_rows} rows), first runs "
                   f"**{first}** ({first_rows} rows), CV pinball {split['pinball_loss']:.4g} ms against "
                   f"{split['pooled_pinball_loss']:.4g} for one model of all rows")
        elif split:
            cv += f"; no split by first run ({split['reason']})"
        block = [
            f"### {ts.name}",
            "",
            f"{ts.description}; {info['train_rows']} train / {info['test_rows']} test rows; "
            f"features {', '.join(info['features']) or '(none)'}"
            + (f"; dropped {', '.join(f'{k} ({v})' for k, v in info['dropped'].items())}" if info["dropped"] else "")
            + (f"; derived {', '.join(f'{k} ({v})' for k, v in info['derived'].items())}: read by the service "
               "and the `+derived` reference rows, not by the baselines" if info["derived"] else ""),
            "",
            f"service: chose **{model.family_}**; CV relative pinball per family: {cv}; "
            f"1000-trace batch evaluation (distribution, 4 quantiles, mean/std, interval, total): {info['batch_ms']:.2f} ms",
            "",
            table(rows, ts.true_quantiles is not None),
            "",
        ]
        if rows[0].levels is not None and ts.truth_is_knowable:
            block += ["Service's mean error to the true quantiles per level ("
                      + ", ".join(f"{t:g}" for t in LEVELS) + "): in time |q̂-q|/q "
                      + " ".join(f"{v:.4f}" for v in rows[0].levels["time"]) + "; in probability |F(q̂)-τ| "
                      + " ".join(f"{v:.4f}" for v in rows[0].levels["probability"]) + ".", ""]
        if "behind" in info:
            block += [f"Where `{info['given'][0]}` gains on the service: {info['behind']}.", ""]
        blocks += block
        print("\n".join(block), flush=True)
        print(f"({time.perf_counter() - t0:.1f} s)\n", file=sys.stderr, flush=True)
        # Figures to reach.
        checks.append((f"{ts.name}: rel. pinball ≤ best baseline ({best_name})", ratio <= 1.0, f"ratio {ratio:.4f}"))
        if info["given"][0] != best_name:
            checks.append((f"{ts.name}: rel. pinball ≤ best baseline given the derived columns ({info['given'][0]})",
                           info["given"][1] <= 1.0, f"ratio {info['given'][1]:.4f}"))
        if info["test_rows"] >= 200:
            checks.append((f"{ts.name}: MACE ≤ 0.03", svc["mace"] <= 0.03, f"{svc['mace']:.4f}"))
            checks.append((f"{ts.name}: 90% coverage in [0.87, 0.93]", 0.87 <= svc["cov90"] <= 0.93, f"{svc['cov90']:.3f}"))
        checks.append((f"{ts.name}: no crossing, no negative", svc["crossing"] == 0 and svc["negative"] == 0,
                       f"{svc['crossing']:.3f} / {svc['negative']}"))
        if ts.true_quantiles is not None and ts.truth_is_knowable:
            checks.append((f"{ts.name}: quantiles within 5% of the truth (max over levels of the mean rel. error)",
                           svc["true_q_err"] <= 0.05, f"{svc['true_q_err']:.4f} (p95 over rows and levels {svc['true_q_err_p95']:.4f})"))
    gmean = float(np.exp(np.mean([math.log(s[4]) for s in summary]))) if summary else math.nan
    plain = [math.log(s[4]) for s, ts in zip(summary, sets) if not ts.timestamped]
    gmean_plain = float(np.exp(np.mean(plain))) if plain and len(plain) < len(summary) else math.nan
    gmean_given = float(np.exp(np.mean([math.log(s[5]["given"][1]) for s in summary]))) if summary else math.nan
    # The same with every set whose truth is known scored at its floor instead of the service.
    floored = [math.log(s[5]["floor"][2] if "floor" in s[5] else s[5]["given"][1]) for s in summary]
    gmean_given_floor = float(np.exp(np.mean(floored))) if summary else math.nan
    return {"blocks": blocks, "summary": summary, "checks": checks, "oracle": oracle_ratios, "gmean": gmean,
            "gmean_plain": gmean_plain, "gmean_given": gmean_given, "gmean_given_floor": gmean_given_floor}


def where_behind(svc: Row, winner: Row, info: dict[str, Any]) -> str:
    """Where a method that beats the service gains, from the test rows: by kind of run, the
    one row that weighs most, and how much a task's runtime follows the one before it.

    The last is the lag-1 autocorrelation, in time order, of the service's standardised log
    residuals on repeats, ``(log y - log q0.5) / (log q0.75 - log q0.25)``: the machine's
    state drifting slowly (clocks, contention), which a method reading a row counter can
    look up from the neighbouring training rows and a model of the features alone cannot.
    """
    Xt, yt, traces, te = info["test"]
    n, scale = len(yt), float(np.mean(yt))
    diff = (svc.row_loss - winner.row_loss) / (n * scale)
    total = float(diff.sum())
    parts = [f"the service's relative pinball is {total:+.4f} from `{winner.method}`'s"]
    j = info["regime_column"]
    repeat = np.ones(n, dtype=bool) if j is None else Xt[:, j] == 0
    if j is not None:
        parts.append(f"{float(diff[repeat].sum()):+.4f} on the {int(repeat.sum())} repeats, "
                     f"{float(diff[~repeat].sum()):+.4f} on the {int((~repeat).sum())} first runs")
    top = int(np.argmax(diff))
    rest = (svc.row_loss.sum() - svc.row_loss[top]) / (winner.row_loss.sum() - winner.row_loss[top])
    parts.append(f"the one test row that weighs most ({yt[top]:.0f} ms, trace {int(te[top])} of the set) "
                 f"{float(diff[top]):+.4f}; without it the ratio is {rest:.3f}")
    field_ = next((k for k in TIMESTAMP_KEYS if k in traces[0]), None)
    if field_ is not None and repeat.sum() >= 100:
        q = svc.q
        lo, mid, hi = (int(np.flatnonzero(np.isclose(LEVELS, t))[0]) for t in (0.25, 0.5, 0.75))
        z = (np.log(yt) - np.log(q[:, mid])) / np.maximum(np.log(q[:, hi]) - np.log(q[:, lo]), 1e-9)
        when = np.asarray([float(t[field_]) for t in traces])
        order = np.argsort(when, kind="stable")
        keep = order[repeat[order]]
        z, when = z[keep], when[keep]
        gap = float(np.median(np.diff(when)))
        corr = [f"{float(np.corrcoef(z[:-1], z[1:])[0, 1]):.2f} between consecutive ones ({gap * 1e3:.0f} ms apart in the median)"]
        for lag in (1.0, 10.0):
            later = np.searchsorted(when, when + lag)
            ok = later < len(z)
            if ok.sum() > 2:
                corr.append(f"{float(np.corrcoef(z[ok], z[later[ok]])[0, 1]):.2f} at {lag:g} s")
        parts.append("correlation of the service's standardised residuals on repeats in time order: " + ", ".join(corr))
    return "; ".join(parts)


def expected_ratio(rows: list[Row]) -> dict[str, Any] | None:
    """Service and oracle against the best baseline by expected loss under the true
    distribution (synthetic sets): the ratio without the test set's sampling noise."""
    if "exp_rel_pinball" not in rows[0].metrics:
        return None
    base = {r.method: r.metrics["exp_rel_pinball"] for r in rows[1:] if not r.reference}
    best = min(base, key=base.get)
    oracle = next(r for r in rows if r.method == "oracle").metrics["exp_rel_pinball"]
    return {"best": best, "ratio": rows[0].metrics["exp_rel_pinball"] / base[best], "oracle": oracle / base[best]}


def summary_lines(res: dict[str, Any], title: str) -> list[str]:
    summary, gmean = res["summary"], res["gmean"]
    checks = res["checks"] + [("geometric mean of (service / best baseline) ≤ 0.90", gmean <= 0.90, f"{gmean:.3f}")]
    if any(s[5]["given"][0] != s[2] for s in summary):
        checks.append(("geometric mean of (service / best baseline given the derived columns) ≤ 0.90",
                       res["gmean_given"] <= 0.90, f"{res['gmean_given']:.3f}"))
    out = [title, "",
           "| set | test rows | service rel. pinball | best baseline | its rel. pinball | ratio | 90% bootstrap interval "
           "of the ratio | in expectation: ratio (best baseline) | oracle | ratio to the best baseline given the "
           "derived columns |",
           "|---|---:|---:|---|---:|---:|---|---|---:|---|"]
    exp_logs = []
    for name, s, b, bv, ratio, info, ci, _, _, exp in summary:
        e = f"{exp['ratio']:.3f} ({exp['best']}) | {exp['oracle']:.3f}" if exp else "- | -"
        if exp:
            exp_logs.append(math.log(exp["ratio"]))
        g = f"{info['given'][1]:.3f} ({info['given'][0]})" if info["given"][0] != b else "same"
        out.append(f"| {name} | {info['test_rows']} | {s:.4f} | {b} | {bv:.4f} | {ratio:.3f} | [{ci[0]:.3f}, {ci[1]:.3f}] "
                   f"| {e} | {g} |")
    g_exp = f"{math.exp(np.mean(exp_logs)):.3f} (synthetic sets)" if exp_logs else ""
    out.append(f"| **geometric mean** | | | | | **{gmean:.3f}** | | {g_exp} | | {res['gmean_given']:.3f} |")
    if not math.isnan(res["gmean_plain"]):
        out.append(f"| geometric mean of the sets without timestamps | | | | | {res['gmean_plain']:.3f} | | | | |")
    if res["oracle"]:
        og = float(np.exp(np.mean([math.log(r) for _, r in res["oracle"]])))
        out += ["", "The floor: the true quantiles (oracle) against the best baseline on the synthetic sets: "
                + ", ".join(f"{n} {r:.3f}" for n, r in res["oracle"]) + f"; geometric mean {og:.3f}."]
        for name, _, b, _, _, info, _, _, _, _ in summary:
            if info.get("floor", ("oracle",))[0] == KNOWABLE_ORACLE:
                _, vs_best, vs_given = info["floor"]
                out += ["", f"On {name} the oracle knows whether each test task truly was its shape's first run, "
                        "which a model knows only where an earlier run of the shape is among the training rows. "
                        "Given only what those rows tell (a repeat, or else a mixture of both kinds of run at the "
                        f"share of first runs among such test tasks), the floor is {vs_best:.3f} times the best "
                        f"baseline ({b}) and {vs_given:.3f} times the best baseline given the derived columns "
                        f"({info['given'][0]}); the service scores {info['given'][1]:.3f} times the latter."]
        if any(s[5]["given"][0] != s[2] for s in summary):
            real = " and the real sets as they are" if len(res["oracle"]) < len(summary) else ""
            out += ["", "With every synthetic set at that floor (the oracle; the oracle given the training rows "
                    f"where the oracle knows more){real}, the geometric mean against the "
                    f"best baseline given the derived columns would be {res['gmean_given_floor']:.3f}."]
    out += ["", "| figure | met | measured |", "|---|---|---|"]
    out += [f"| {c} | {'yes' if ok else '**no**'} | {v} |" for c, ok, v in checks]
    return out


# The many-seeds study: every generator at sizes real traces have (tens to a few
# hundred training rows per model). Its seeds were used during development (some settings
# were chosen on them), so its figures are development figures; the seed offsets of the
# "unseen seeds" section are the held-out ones.
STUDY_SIZES = (200, 700)
STUDY_SEEDS = 8
STUDY_SEED_BASE = 17


def geometric_mean(logs: list[float]) -> tuple[float, float]:
    """The geometric mean of ratios given by their logs, and its standard error (in logs)."""
    if len(logs) < 2:  # (one seed: no spread to tell)
        return math.exp(np.mean(logs)), float("nan")
    return math.exp(np.mean(logs)), float(np.std(logs, ddof=1) / math.sqrt(len(logs)))


def seed_study(sizes: tuple[int, ...] = STUDY_SIZES, seeds: int = STUDY_SEEDS) -> list[str]:
    """Each generator at each size over ``seeds`` fresh seeds: the service against the best
    baseline of each draw, summarised by the geometric mean of the ratios.

    One 70/30 split of a few hundred rows cannot tell ratios a few percent apart
    (see the bootstrap intervals above); the mean over draws can.
    """
    out = ["### Many seeds at realistic sizes", "",
           f"Each generator at {' and '.join(map(str, sizes))} rows (70/30 split, so "
           f"{' and '.join(str(round(0.7 * n)) for n in sizes)} training rows), {seeds} draws each with seeds "
           f"`default + {STUDY_SEED_BASE} + 1000 k`, k = 0..{seeds - 1}. Per draw, ratio = service ÷ the best "
           "baseline of that draw; the table gives the geometric mean over draws (± its standard error, "
           "as a ratio), how many draws the service won, the oracle's geometric mean, and the service's "
           "mean MACE and largest mean relative error to the true quantiles. The columns \"in expectation\" "
           "score every method by its expected loss under the true distribution of each test row instead "
           "of the loss on the runtime it drew, which removes the test rows' sampling noise: what is left "
           "is the training draw.", "",
           "| generator | rows | service / best baseline | draws won | oracle / best baseline | in expectation: "
           "service / best baseline | draws won | oracle | service MACE | max level rel. error |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    all_logs, plain_logs, all_exp, plain_exp, all_given = [], [], [], [], []
    given_lines = []
    for gen in GENERATORS:
        for n in sizes:
            logs, olog, wins, mace, qerr, elogs, eolog, ewins = [], [], 0, [], [], [], [], 0
            glogs, gwins = [], 0
            for k in range(seeds):
                ts = gen(n, seed=gen.__defaults__[1] + STUDY_SEED_BASE + 1000 * k)
                rows, _ = evaluate(ts)
                svc = rows[0].metrics
                best = min(r.metrics["rel_pinball"] for r in rows[1:] if not r.reference)
                oracle = next(r for r in rows if r.method == "oracle").metrics["rel_pinball"]
                logs.append(math.log(svc["rel_pinball"] / best))
                olog.append(math.log(oracle / best))
                wins += svc["rel_pinball"] <= best
                # The stricter comparison: the baselines also handed the derived columns.
                given = min(r.metrics["rel_pinball"] for r in rows[1:]
                            if not r.reference or r.method.endswith("+derived"))
                glogs.append(math.log(svc["rel_pinball"] / given))
                gwins += svc["rel_pinball"] <= given
                exp = expected_ratio(rows)
                elogs.append(math.log(exp["ratio"]))
                eolog.append(math.log(exp["oracle"]))
                ewins += exp["ratio"] <= 1.0
                mace.append(svc["mace"])
                qerr.append(svc["true_q_err"])
                if not ts.timestamped:
                    plain_logs.append(logs[-1])
                    plain_exp.append(elogs[-1])
            all_logs += logs
            all_exp += elogs
            all_given += glogs
            if glogs != logs:
                gg, gse = geometric_mean(glogs)
                given_lines.append(f"{gen.__name__.removeprefix('synth_')} at {n} rows {gg:.3f} ± {gse:.3f} "
                                   f"({gwins}/{seeds} draws won)")
            (g, se), (eg, ese) = geometric_mean(logs), geometric_mean(elogs)
            line = (f"| {gen.__name__.removeprefix('synth_')} | {n} | {g:.3f} ± {se:.3f} | {wins}/{seeds} | "
                    f"{math.exp(np.mean(olog)):.3f} | {eg:.3f} ± {ese:.3f} | {ewins}/{seeds} | "
                    f"{math.exp(np.mean(eolog)):.3f} | {np.mean(mace):.3f} | {fmt('true_q_err', float(np.mean(qerr)))} |")
            out.append(line)
            print(line, flush=True)
    plain = len(plain_logs) < len(all_logs)
    out += ["", f"Geometric mean over all {len(all_logs)} draws: **{math.exp(np.mean(all_logs)):.3f}**, in expectation "
            f"**{math.exp(np.mean(all_exp)):.3f}**"
            + (f"; over the {len(plain_logs)} without timestamps: {math.exp(np.mean(plain_logs)):.3f}, in expectation "
               f"{math.exp(np.mean(plain_exp)):.3f}." if plain else ".")]
    if given_lines:
        out += ["", "Against the best baseline given the derived columns (the `+derived` reference rows too): "
                + "; ".join(given_lines) + f". Over all {len(all_given)} draws: **{math.exp(np.mean(all_given)):.3f}**."]
    return out


TAIL_SEEDS = 8


def tail_study(seeds: int = TAIL_SEEDS) -> list[str]:
    """The heavy-tailed set (full size) over ``seeds`` seeds 3, 1003, ...: the service's
    mean relative error to the true quantile at each level, per seed.

    One split cannot say whether "within 5% of the truth" at the 0.99 level, where
    the sampling error alone is about 5.5%, is missed by the model or by the draw.
    """
    lines = ["| seed | " + " | ".join(f"q{lv:g}" for lv in LEVELS) + " |", "|---:|" + "---:|" * len(LEVELS)]
    top = []
    for k in range(seeds):
        seed = synth_heavy_tailed.__defaults__[1] + 1000 * k
        data = split_set(synth_heavy_tailed(seed=seed))
        model = QuantileModel(data.kinds, data.ncats).fit(data.X, data.y)
        rel = (np.abs(model.predict_quantiles(data.Xt, LEVELS) - data.truth) / data.truth).mean(axis=0)
        top.append(rel[-1])
        lines.append(f"| {seed} | " + " | ".join(f"{v:.4f}" for v in rel) + " |")
        print(lines[-1], flush=True)
    lines += ["", f"At the 0.99 level: mean {np.mean(top):.4f}, min {np.min(top):.4f}, max {np.max(top):.4f} "
              f"over {seeds} seeds."]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", help="comma-separated subset of set names (substring match)")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite benchmarks/README.md")
    ap.add_argument("--synthetic-rows", type=int, default=SYNTH_ROWS, help=f"rows per synthetic set (default {SYNTH_ROWS})")
    ap.add_argument("--seed-offset", type=int, default=0,
                    help="generate the synthetic sets with their seeds shifted by this (new data; leaves the README alone)")
    ap.add_argument("--no-study", action="store_true", help="skip the many-seeds study at realistic sizes")
    ap.add_argument("--study-only", action="store_true", help="run only the many-seeds study (prints it; README untouched)")
    ap.add_argument("--no-unseen", action="store_true",
                    help=f"skip the synthetic sets regenerated with the seed offsets {', '.join(map(str, UNSEEN_OFFSETS))} "
                         "and the H200 traces")
    ap.add_argument("--resplits", type=int, default=0, metavar="N",
                    help="score the sets of --sets (default: every real one) over N other random 70/30 splits "
                         "(prints it; README untouched)")
    ap.add_argument("--tail-study", action="store_true",
                    help="run only the heavy-tailed set over 8 seeds: error to the true quantiles per level (prints it)")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    if args.tail_study:
        print("\n".join(tail_study()))
        return 0
    if args.study_only:
        print("\n".join(seed_study()))
        return 0
    sets = real_sets() + synthetic_sets(args.synthetic_rows, args.seed_offset)
    if args.resplits and not args.sets:
        args.sets = ",".join([s.name for s in real_sets()] + list(GPU_SETS) + list(FRESH_GPU_SETS))
    if args.sets:
        wanted = args.sets.split(",")
        sets = [s for s in sets + gpu_sets() + gpu_sets(FRESH_GPU_SETS) if any(w in s.name for w in wanted)]
    if args.resplits:
        print("\n".join(resplit_study(sets, args.resplits)))
        return 0
    res = run_sets(sets)
    summ = summary_lines(res, "### Summary")
    full = not args.sets and args.seed_offset == 0 and args.synthetic_rows == SYNTH_ROWS
    if full:
        summ += ["", MAIN_RESPLIT_NOTE]
    if full and not args.no_unseen:
        unseen = [ts for off in UNSEEN_OFFSETS for ts in synthetic_sets(args.synthetic_rows, off)]
        print("(synthetic sets with unseen seeds)", file=sys.stderr, flush=True)
        ures = run_sets(unseen)
        summ += ["", *summary_lines(ures, "### Synthetic sets regenerated with unseen seeds"), "",
                 "Same generators, seeds shifted by " + ", ".join(map(str, UNSEEN_OFFSETS))
                 + ": data that no setting of the service was tuned on (per-set tables not shown; "
                 "`--seed-offset N` prints them for any offset).", "",
                 "| set | service MACE | cov. 90% | max level mean rel. error to the truth | oracle / best baseline |",
                 "|---|---:|---:|---:|---:|"]
        for name, _, _, _, _, _, _, svc, orc, _ in ures["summary"]:
            summ.append(f"| {name} | {svc['mace']:.4f} | {svc['cov90']:.3f} | {fmt('true_q_err', svc['true_q_err'])} | {orc:.3f} |")
    gpu_blocks: list[str] = []
    if full and not args.no_unseen:
        print("(real H200 traces)", file=sys.stderr, flush=True)
        gres = run_sets(gpu_sets())
        summ += ["", *summary_lines(gres, "### Real traces measured on an H200 after the modelling was settled"),
                 "", GPU_NOTE]
        # A level-3 heading: write_readme ends the accuracy section at the next "## ".
        print("(real H200 traces of five workloads measured later)", file=sys.stderr, flush=True)
        fres = run_sets(gpu_sets(FRESH_GPU_SETS))
        summ += ["", *summary_lines(fres, "### Real traces of five more workloads, scored the day they were measured"),
                 "", FRESH_GPU_NOTE]
        gpu_blocks = ["### Per-set tables: the H200 traces", "", *gres["blocks"], *fres["blocks"]]
    if full and not args.no_study:
        print("(many-seeds study)", file=sys.stderr, flush=True)
        summ += ["", *seed_study()]
    summ.append("")
    elapsed = time.perf_counter() - t_start
    summ.append(f"Total benchmark time {elapsed:.0f} s.")
    print("\n".join(summ))
    out = summ + [""] + res["blocks"] + gpu_blocks

    if full and not args.no_readme and not args.no_unseen and not args.no_study:
        write_readme(out)
    return 0


MAIN_RESPLIT_NOTE = """\
How much of each real set's ratio is the split's luck, over 12 other random 70/30 splits
(seeds 12346 to 12357; `uv run python benchmarks/accuracy.py --sets h100,h20_ --resplits 12`,
2026-12-04: 239 s with the modelling of `b6ca776`, 320 s at `a3b0948`, the flexible logistic
shape's commit, README "Modelling"), as the geometric mean of the service's ratios to each split's
best baseline, how many splits it leads, and its ratio to the one baseline best over all 12
(each split's best is the lowest of four noisy losses: on 60 test rows that favours the
baselines by luck alone):

| set | before: geometric mean | leads | to the one best | now: geometric mean | leads | to the one best | mean MACE / cov. 90% now |
|---|---:|---:|---:|---:|---:|---:|---:|
| h100_resnet50_vision | 0.486 | 12 | 0.484 (qrf) | 0.486 | 12 | 0.485 (qrf) | 0.0134 / 0.903 |
| h100_resnet50_vision, given the derived columns | 0.963 | 9 | 0.954 (qrf+derived) | 0.965 | 9 | 0.955 (qrf+derived) | |
| h20_sglang_llm | **1.128** | 2 | 1.120 (qrf) | 1.004 | 6 | 0.996 (qrf) | 0.0450 / 0.907 |
| h20_diffusers_t2vid | 0.720 | 12 | 0.720 (qrf) | 0.720 | 12 | 0.720 (qrf) | 0.0691 / 0.889 |

Since 2026-12-06 each LightGBM fold is scored with the rounds the other folds choose (README
"Modelling"; before, a fold could be scored with its own best round). Of these sets only the
H100 one has LightGBM among its candidates (from 200 rows on). Its first runs' model is now
`empirical` where it was `lightgbm`. On the fixed split the relative pinball is unchanged
(0.0664), but the 90% coverage moved from 0.929 to 0.936, outside [0.87, 0.93]. Over the 12
other splits (`--sets h100 --resplits 12`, run once on the code before and once after) one
split changed, from 0.560 to 0.544 (1.011 to 0.982 given the derived columns). The geometric
mean went from 0.486 to 0.485 (0.965 to 0.962 given the derived columns), and the mean MACE
and 90% coverage from 0.0134 and 0.903 to 0.0138 and 0.904.

The sglang traces' fixed split, 0.992 before, was the lucky one: over the other 12 the
quantile forest led by 12%. Nearly every request of 529 to 593 input tokens there was
aborted (about 70 ms against 3.7 s) and almost none outside, a share that the logistic
shape at its default penalty spread over every length; the folds now choose a penalty of 1
and 6 hinges for it. On the fixed split the service now scores 1.129 against `linear_qr`
(0.0572 against 0.0506): its one test row that weighs most, an abort at 657 tokens, outside
the band, costs 0.0042 of the 0.0066 (the flexible shape puts a 657-token request's 0.05
quantile among the completed requests, 3.8 s, where the default put it at 73 ms). Other penalties and hinges (3 and 6, 1 and 4, 10 and 6) gave the fixed split
1.05 to 1.12 and the other 12 splits 1.000 to 1.012: the fixed split is not met by any of them."""


GPU_NOTE = """\
Three trace sets from `examples/data`, measured on an H200 with `benchmarks/collect_gpu_traces.py`
once this benchmark's modelling was otherwise settled (its docstring says what each workload
is; `examples/data/h200_collection.json` the machine and versions). They were scored once
before any change: ratios 0.659 (vision), 0.953 (LLM decode) and **1.036** (text encoder,
against `qrf`; geometric mean 0.867), every method then reading the row counter `seq` (see
"Row counters" below). The encoder's batches pay about 50 ms the first time
a (batch, padded length) shape runs, but its many-valued `tokens` count made every batch a
shape of its own, so no `first_of_shape` column was derived. One change followed: training
also tries the shape keys without such many-valued whole-number features, and keeps one
whose flag explains clearly more of the runtime than the alternatives (README, "First runs
of an input shape"); here `(batch_size, seq_len)`. Later modelling changes were scored on
these traces too, so they are no longer untouched data, and the ratios below are today's,
not those of that first scoring. Two of the three get the derived `first_of_shape`
column (all three carry timestamps): given that column, `qrf` beats the service on the vision traces by 2.4% (the summary's
last column); on the text encoder the service is ahead of every method given it. Where
`qrf`'s lead comes from is under the vision set's table ("Where `qrf+derived` gains"):
all of it on the 16 first runs among the 3,829 test rows (+0.0013 in relative pinball; the
repeats +0.0000), and much of it on one of them, of 829 ms. Until 2026-11-30 every method here read the row
counter `seq`, and the forest found by it the training rows a few milliseconds on either
side of each test row, whose runtimes follow a state of the machine that drifts between
consecutive tasks and is gone within a second; given the derived column it then beat the
service on both sets, by 3% (vision) and 15% (text encoder).
The LLM set's 104 test rows are under the 200 the calibration figures need.
Over 12 other random 70/30 splits (seeds 12346 to 12357, `uv run python benchmarks/accuracy.py
--sets h200_resnet50 --resplits 12`, 950 s, and `--sets h200_llm_decode,h200_text_encoder
--resplits 12`, 202 s, both at commit `3a786c1` beside each other), the geometric mean of the
service's ratios to each split's best baseline, and to the one best over all 12: vision
0.292 (12 splits of 12 led; `lgbm_q` 0.292), given the derived column 0.978 (7 of 12;
`qrf+derived` 0.978), so the vision set's 2.4% behind `qrf+derived` on the benchmark's own
split is that split's; LLM decode 0.990 (7 of 12; `qrf` 0.960), MACE 0.0303 and 90% coverage
0.901 on average; text encoder 0.849 (12 of 12; `qrf` 0.849), given the derived column 0.977
(12 of 12; `linear_qr+derived` 0.976)."""


FRESH_GPU_NOTE = """\
Six trace sets of five workloads that nothing in the modelling was written or tuned for:
text-to-image diffusion, speech recognition, document OCR, text-to-speech, and the LLM
decoder serving many requests at once (continuous batching) at a varying load and past its
capacity. They were measured on 2026-12-04 with `benchmarks/collect_gpu_traces.py` (its
docstring says what each workload is and what it hides from the trace) on three H200
machines of the same kind as the first (same driver, PyTorch, CUDA and cuDNN;
`examples/data/h200_collection.json`, runs three to five), and scored the day they were
measured. Two modelling changes have followed. The logistic shape's flexible penalty (README,
"Modelling") moved the OCR set's row alone (0.615 → 0.602; given the derived columns 0.954 →
0.935). Scoring each LightGBM fold with the rounds the other folds choose (2026-12-06) moved
the text-to-image set's (0.770 → 0.747) and the ResNet-50 set's MACE and 90% coverage (0.0044
and 0.894 → 0.0048 and 0.897). The other rows above are that first scoring.

Not met: on the speech recognition set (99 test rows) the service is 5.7% behind `qrf`
(without the one test row that weighs most, 1.028; see its table), and the geometric mean
against the baselines given the derived columns is 0.914 (0.922 at the first scoring;
against the baselines as they are, 0.849: met). On the two LLM serving sets the service is only 2 to 3% ahead of `linear_qr`
(bootstrap intervals under 1): what the features leave of their runtimes is how long each
request's hidden output runs and what else the server ran meanwhile. The speech
recognition set's three slowest traces (5.3 to 9.8 s, 26 to 79 times their language's
median milliseconds per second of audio) are among its first 73 requests and none later, a
warm-up no feature tells (the first requests met decoder lengths not run before; a likely
cause, not one measured); the text-to-speech set's first request took 33 ms a character,
against a median of 3.9. The text-to-speech set has 58 traces (41 training, 17 test rows):
its ratio is the most a split's luck.

How much of each ratio is the split's luck, over 12 other random 70/30 splits (seeds 12346 to
12357, `uv run python benchmarks/accuracy.py --sets t2img,asr,ocr,tts --resplits 12`, 373 s,
and `--sets llm_serving --resplits 12`, 946 s, at commit `a3b0948`): the geometric mean of
the service's ratios to each split's best baseline, the splits it leads, and its ratio to
the one baseline best over all 12 (each split's best is the lowest of four noisy losses,
which on a small test set favours the baselines by luck alone):

| set | geometric mean over the 12 | splits led | to the one best over all 12 | given the derived columns | to the one best given them | mean MACE | mean 90% coverage |
|---|---:|---:|---:|---:|---:|---:|---:|
| h200_t2img_diffusion | 0.803 | 12 | 0.767 (lgbm_q) | 0.816 | 0.767 (lgbm_q) | 0.0246 | 0.898 |
| h200_asr_speech | 0.964 | 10 (1.031 and 1.132 on the others) | 0.960 (lgbm_q) | same | same | 0.0289 | 0.912 |
| h200_ocr_document | 0.703 | 12 | 0.696 (linear_qr) | **1.010** | 0.988 (lgbm_q+derived) | 0.0179 | 0.904 |
| h200_tts_speech | **1.039** | 7 (0.665 to 1.877 over the 12) | 0.945 (linear_qr) | same | same | 0.0696 | 0.902 |
| h200_llm_serving | 0.980 | 12 (0.966 to 0.996) | 0.977 (linear_qr) | 0.981 | 0.977 (linear_qr) | 0.0085 | 0.897 |
| h200_llm_serving_saturated | 0.982 | 12 (0.964 to 0.990) | 0.982 (linear_qr) | 0.982 | 0.982 (linear_qr) | 0.0092 | 0.903 |

Before the flexible shape (the previous run, at commit `b6ca776`, the same commands without
the columns of the one best baseline) every figure was the same but the OCR set's: 0.711,
given the derived columns **1.021**. On the OCR traces the
baselines given the derived `first_of_shape` column come out 1.0% ahead on average over the
12 (0.935 on the benchmark's own split), as on the first H200 vision traces: the first runs
of a shape (24 of the 956 traces) are where they gain; no one of them is ahead over all 12
(`lgbm_q+derived`, the closest, 1.2% behind). The text-to-speech set's 1.039 is the
lowest of four noisy losses on 17 test rows each time: against `linear_qr`, the baseline
best over all 12, the service is 5.5% ahead (the geometric mean of its ratios). The text-to-image set's 90% coverage of 0.971 on its 138 test
rows is the split's: 0.898 over the 12."""



def resplit_study(sets: list[TraceSet], n: int) -> list[str]:
    """Each set over ``n`` other random 70/30 splits: how much of a ratio is the one split's luck.

    The best baseline of each split is the lowest of four noisy losses, which on a small test
    set favours the baselines by luck alone; the ratio to the one baseline that is best over
    all the splits (the geometric mean of the service's ratios to it) is shown beside it."""
    out = [f"### The sets over {n} other random 70/30 splits (seeds {SPLIT_SEED + 1} to {SPLIT_SEED + n})", "",
           "| set | service / best baseline per split | geometric mean | splits the service leads | "
           "to the baseline best over all splits | the same given the derived columns, per split | geometric mean "
           "| to the one best over all splits | mean MACE | mean cov. 90% |",
           "|---|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for ts in sets:
        ratios, given, mace, cov = [], [], [], []
        logs: dict[str, list[float]] = {}  # log(service / method) per split, for each baseline
        for k in range(1, n + 1):
            rows, _ = evaluate(ts, split(len(ts.traces), SPLIT_SEED + k))
            svc = rows[0].metrics["rel_pinball"]
            # The baselines, and the baselines given the derived columns (reference rows).
            losses = {r.method: r.metrics["rel_pinball"] for r in rows[1:]
                      if not r.reference or r.method.endswith("+derived")}
            for method, loss in losses.items():
                logs.setdefault(method, []).append(math.log(svc / loss))
            ratios.append(svc / min(v for m, v in losses.items() if not m.endswith("+derived")))
            given.append(svc / min(losses.values()))
            mace.append(rows[0].metrics["mace"])
            cov.append(rows[0].metrics["cov90"])
            print(f"{ts.name} split {k}: ratio {ratios[-1]:.3f}", file=sys.stderr, flush=True)

        def fixed(derived: bool) -> str:
            method, v = max(((m, float(np.mean(v))) for m, v in logs.items() if derived or not m.endswith("+derived")),
                            key=lambda mv: mv[1])
            return f"{math.exp(v):.3f} ({method})"

        out.append(f"| {ts.name} | {' '.join(f'{r:.3f}' for r in ratios)} | {math.exp(np.mean(np.log(ratios))):.3f} "
                   f"| {sum(r <= 1 for r in ratios)} of {n} | {fixed(False)} | {' '.join(f'{r:.3f}' for r in given)} "
                   f"| {math.exp(np.mean(np.log(given))):.3f} | {fixed(True)} "
                   f"| {np.mean(mace):.4f} | {np.mean(cov):.3f} |")
    return out


def write_readme(body: list[str]) -> None:
    import platform

    import quantile_forest
    import sklearn

    header = f"""# Benchmarks

## Accuracy: `benchmarks/accuracy.py`

```
uv sync --all-groups
uv run python benchmarks/accuracy.py
```

Each trace set is split 70/30 (seed {SPLIT_SEED}); every method is trained on the 70% and
scored on the 30% at the levels {', '.join(f'{t:g}' for t in LEVELS)}. Columns:

* **rel. pinball**: mean pinball loss over the levels divided by the mean test runtime (lower is better);
* **MACE**: mean over the levels of |empirical coverage - level|;
* **cov. 90%** and **rel. width 90%**: share of test runtimes inside [q0.05, q0.95], and that
  interval's mean width divided by the mean test runtime;
* **median MAPE**: mean |q0.5 - y| / y;
* **crossing**: share of rows whose quantiles, as the method produced them (before any
  sorting), decrease somewhere; **neg.**: count of negative quantiles;
* **train s**, **µs/row**: fit time, and prediction time per row for the whole test set at once;
* synthetic sets only: **max level mean |q̂-q|/q** is, for the level where it is largest, the
  mean over test rows of the relative error against the true conditional quantile; **p95** is
  the 95th percentile of that error over all test rows and levels; **max level mean |F(q̂)-τ|**
  is the same error measured in probability instead of time: F is the true conditional CDF,
  so F(q̂) is the probability that the task finishes within the predicted τ-quantile;
  **expected rel. pinball** is the relative pinball loss in expectation over the true
  distribution of each test row (the integral of the pinball loss over its true quantile
  function, on a probit grid of 1401 levels) instead of on the one runtime each row drew.

The **summary** compares the service with the best baseline of each set (lowest relative
pinball loss) and gives a 90% paired bootstrap interval of that ratio over the test rows:
the small real sets (60 and 24 test rows) cannot tell ratios between about 0.8 and 1.2 apart,
nor can the 210 test rows of `llm_aborted` tell ratios within about 2% apart.
On synthetic sets the **oracle** row scores the true conditional quantiles: the floor that
no method can beat in expectation (on one test set it can be beaten by chance), and the
summary's columns "in expectation" compare the service and the oracle with the best baseline
by expected loss: the same comparison without the test rows' sampling noise, so what is left
is the luck of the training draw. Under the table of a set where a method beats the service
(in the stricter comparison below), a line says where its lead comes from: its share on
repeats and on first runs, the one test row that weighs most (numbered from 0 in the set's
order) and the ratio without it, and, on timestamped sets, how the service's standardised
residuals on repeats correlate in time.

Synthetic sets ({SYNTH_ROWS} rows each, fixed seeds): `lognormal` LLM-like (fixed overhead plus
per-token costs, lognormal noise, one useless and two constant fields); `bimodal` vision-like
(15% of tasks 10x slower, both modes scaling with the work); `heavy_tailed` diffusion-like
(a floor plus a Pareto tail, `1 + 0.3 Lomax(2.5)`, with a categorical model); `heteroscedastic`
(noise growing with a load feature from 5% to 50%); and, at a realistic size of {ABORTED_ROWS}
rows, `llm_aborted`: an LLM trace where 5% of the requests were aborted after 2-20% of their
runtime; `cold_start` vision-like in time order, where the first run of each (batch, image)
shape is 10x slower (the mechanism behind real bimodal vision traces; `bimodal` draws its
slow mode by chance instead). Each table's heading gives the formula. The same six
generators are also run with their seeds shifted by {', '.join(map(str, UNSEEN_OFFSETS))} (section "unseen seeds" below the
summary): data that no setting of the service was tuned on (`--seed-offset N` prints the full
tables for any offset). Last, the section "many seeds at realistic sizes" runs each generator
at 200 and 700 rows over {STUDY_SEEDS} seeds each: one split of a few hundred rows cannot
tell ratios a few percent apart, the mean over draws can. Those seeds are not held out:
some settings were chosen on them during development (the LightGBM family's 200-row
minimum, the `power` family's admission, the scale model's feature selection), so that
section's figures are development figures.

Baselines: `lgbm_q` LightGBM quantile objective, one booster per level (100 trees, 31 leaves,
learning rate 0.1, `min_child_samples = clip(n/10, 3, 20)`), outputs sorted; `qrf`
quantile-forest `RandomForestQuantileRegressor` (100 trees, the leaf size chosen by
cross-validation on the training rows, otherwise defaults, among them `max_samples_leaf=1`:
each leaf keeps one of its training runtimes; keeping all of them, an audit on 2026-11-30
saw its scores move by 1 to 13% either way and no conclusion change); `linear_qr`
scikit-learn `QuantileRegressor` (unpenalised, HiGHS) on log1p features, one-hot
categories and log runtime, outputs sorted; `empirical` the training runtimes' quantiles.
`service` is `QuantileModel(...).fit` with the default `algorithm="auto"`; the family and
variant it chose are shown next to it (`const`/`hetero`: constant or feature-dependent
scale; `+shape`: with the distribution-regression shape model), and under each set's heading
the features its backward elimination dropped, if any. Where the service derives the
`first_of_shape` column it is given it as its regime column, as training gives it: "split
by first run" names the model of the repeats and the model of the first runs when it
serves one for each (README, "A model for each kind of run"; on 2026-11-29, before the
split, the service scored 0.0636 on `h100_resnet50_vision`, 0.0752 on `cold_start`, 0.0778
on `cold_start_seed+1000` and 0.0642 on `h200_resnet50_vision`).

Derived columns. Where the traces carry timestamps and repeated input shapes (the ResNet-50
traces, the H200 text encoder and `cold_start`), the service's training derives `first_of_shape`: whether an older
training trace had the same shape (README, "First runs of an input shape"). The baselines
are the off-the-shelf methods on the traces' own fields and do not get it; the reference
rows `lgbm_q+derived`, `qrf+derived` and `linear_qr+derived` are the baselines handed that
column too, so the table shows how much of the service's lead there is the column and how
much the model. They are not the "best baseline" of the issue's figures, but the summary's
last column, its checks and their geometric mean also compare the service with the best of
all of them: the stricter comparison, which the service does not pass everywhere (`qrf`
given the column beats it on the H200 vision traces by 2.4%, on their first runs, see the
H200 section). Nor can its geometric mean reach 0.90: with every synthetic set scored at
its floor (the line under the summary), the nine sets' would be 0.930 against the service's
0.932, so only the real sets could take it there, by some 20% between them. The summaries also
give the geometric mean over the sets without timestamps, where no column can be derived.

Row counters. The H100 and H200 traces number their rows (`seq`: 0, 1, 2, ...), a column the
service drops when it trains on a whole file (README, "Training config"): a prediction
would need the counter. This benchmark trains on a random 70%, which numbers its rows with
gaps; until 2026-11-30 the check did not recognise the counter there, and `seq` was a
feature of every method, placing each test row between its neighbours in time, which a
scheduler's next task has no use for (a review found it). The counter is now found on the
whole set, as training on the file finds it. With `seq`, the service scored 0.0599 on
`h100_resnet50_vision` (now 0.0664), `qrf` 0.1162 (now 0.1506) and `lgbm_q+derived` 0.0643
(now 0.0743); on the H200 traces the service scored 0.0501 on vision (now 0.0559) and
0.0413 on the text encoder (now 0.0546). The ratios to the best baseline fell (the
baselines lost more), and the service's absolute figures on those sets rose by 11 to 32%.
`qrf`'s leaf size is chosen among 1, 5, 10 and 20 by 5-fold cross-validated pinball loss
on the training rows (until 2026-11-29 it ran at quantile-forest's default of 1, which a
review found handicapped it on the real sets). In `cold_start` the true quantiles are given the true
first-run state, which a model can only know when an earlier run of the shape is among
its training rows (not when it is among the test rows): the oracle row is a floor no
method can reach there, and the errors to the truth (in time, "within 5%", and in probability)
are not given for that set. The row `oracle given the training rows` is the floor a model
can reach: the truth given what the training rows tell, a repeat where an earlier training
run of the shape exists and otherwise a mixture of a first run and a repeat, at the share
of first runs among those test tasks (0.75 here), a share a fitted model has to learn. The
service scores 0.0744 there, that floor 0.0743 (2026-12-01). A model reading the time could
go lower, 0.0666 with the share taken per quarter of the trace (0.93 of those tasks are
first runs in the first quarter, 0.49 in the last), only because a random split hides the
test rows' runs from the training rows: a service that sees every earlier run does not
face that mixture, and the service does not read timestamps as features.

Reading the figures. On the synthetic sets other than `cold_start` the best baseline is
already close to the oracle (see the line under the summary table), so no method can be
10% below it there; the service is within 1.6% of the oracle on each (1.5% on `heavy_tailed`,
at most 0.4% on the others), and in expectation (the summary's columns "in expectation" and "oracle") within
1.4% on `heavy_tailed` and 0.3% on the others. On the 210 test rows of `llm_aborted` even the
oracle scores 1.026 times the best baseline (`linear_qr`): those rows happen to favour
`linear_qr`, whose expected loss on the same rows is above the service's (ratio 0.995 in
expectation, the oracle 0.993); with seed+1000 it is the other way round (0.992 on the test
rows, 1.002 in expectation). One draw of a few hundred rows decides such ratios, so the
many-seeds study below gives both over 8 draws per size. The 0.99 quantile of the
heavy-tailed set has a sampling standard error of about 5.5% with 2800 training rows
(the density of log runtime at that quantile is 0.034, so sqrt(0.99 * 0.01 / 2800) / 0.034),
so "within 5% of the truth" is at the limit of what that data can determine at that level:
over the seeds 3, 1003, ..., 7003 the service's error at 0.99 averaged 3.9% and ranged from
0.7% to 10.1% (`--tail-study`, 2026-11-30; a generalized-Pareto tail fitted to the top 5% or 10% of the scores, tried on an
earlier version, did not lower it). In `llm_aborted` the 0.05 quantile lies in the sparse gap between
aborted and completed requests, where a small error in level is a large error in time:
its "within 5%" figure measures that gap more than the model. Measured in probability the same
predictions are close: at the 0.05 level the service's quantiles are 14% off in time and 0.008
in probability (187% and 0.003 with seed+1000, `--seed-offset 1000`); each set's block gives
both per level. The converse holds at the floor of `heavy_tailed`, where nearly all the
probability sits just above the base time: its 0.1 quantile is within 1.1% in time and 0.065
off in probability. On `h100_resnet50_vision` the 90% interval holds 0.936 of the 439 test
runtimes (binomial standard error 0.014 at the nominal 0.90): 0.926 of the 242 repeats and 0.949 of the 197
first runs, where the training rows' cross-validated coverage of the two serving models is
0.053 and 0.950 at the 0.05 and 0.95 levels (repeats) and 0.050 and 0.941 (first runs). It
held 0.932 until 2026-11-30, when the shape models of `linear` and `power` locations began
to learn the scores around their own location (README, "Modelling"), and the first runs'
model became LightGBM's, where it was the linear family's: 0.929 (0.934 of the first runs).
Since 2026-12-06 each LightGBM fold is scored with the rounds the other folds choose, not its
own, and the first runs' model is the empirical family's: 0.936, outside the figure's band
[0.87, 0.93] by half a standard error.

Measured on {platform.machine()} with {__import__('os').cpu_count()} CPU cores, Python {platform.python_version()},
LightGBM {lightgbm.__version__}, scikit-learn {sklearn.__version__}, quantile-forest {quantile_forest.__version__}.
"""
    section = header + "\n" + "\n".join(body) + "\n"
    path = REPO / "benchmarks" / "README.md"
    # Replace only the accuracy section: the other benchmarks keep theirs.
    old = path.read_text() if path.exists() else ""
    start = old.find("## Accuracy")
    rest = old.find("\n## ", start + 1) if start >= 0 else -1
    tail = old[rest + 1:] if rest >= 0 else ""
    path.write_text(section + ("\n" + tail if tail else ""))


if __name__ == "__main__":
    raise SystemExit(main())
