"""Coverage of a queue's total against the true sum, with and without the shared factor.

A scheduler reads a queue's wait from ``total_interval``. Each set below has a known
generator: train the service's model on 2000 rows (``algorithm: auto``), draw a queue
of 5, 50 or 500 new tasks, and compare the 90% ``total_interval`` with 20,000 sums of
fresh runtimes of exactly those tasks from the generator. Repeated over ``--seeds``
trainings. "independent" is the total of the tasks' distributions as if the model
were exact, what the service answers by default (the contract's sum of independent
tasks); "shared factor" is what it answers with ``shared_factor: true``: the same
total times the model's shared factor (its uncertainty about the runtimes' level,
common to every task of the queue). The last two columns are the total's median over the
true sum's median and the sum of the tasks' ``expect`` over the true sum's mean (``--rows
30`` shows where they part: models of tens of rows).

Then the same on real traces, where the truth is the one measured runtime per task: the
model is trained as the service trains (derived columns included) on the first 70% of
each trace file of ``examples/data`` in time order (and of the public SGLang and diffusion
traces of ``../shared/data`` in their files' order, where present), as a scheduler's model is
trained on the past, and 1000 queues of each length (1, 5, 20, 50, 200; none longer than half
the test rows) are
drawn from the last 30%; a queue's truth is
the sum of its tasks' measured runtimes. A test task is a first run only if its shape ran
neither in training nor earlier among the test tasks, as a scheduler that states
``first_of_shape`` would say. "below median" is the share of queues whose measured total
fell below the predicted total's median (0.5 when the total is unbiased).

    uv run python benchmarks/queue_totals.py [--seeds 12] [--rows 2000] [--no-real | --real-only [--one-model]]
    uv run python benchmarks/queue_totals.py --timing   # how long a queue's answer takes
    uv run python benchmarks/queue_totals.py --tails    # heavy-tailed noise: long queues' upper tails
    uv run python benchmarks/queue_totals.py --sampled  # totals against sums sampled from the tasks
    uv run python benchmarks/queue_totals.py --sampled --short --sums 200000  # short queues, to their 0.999 quantile
    uv run python benchmarks/queue_totals.py --long     # 1,000 to 100,000 tasks against their cumulants
    uv run python benchmarks/queue_totals.py --error-departure  # the shared factor's effect on ``error``
    uv run python benchmarks/queue_totals.py --tables   # a lookup table's totals against its model's
    uv run python benchmarks/queue_totals.py --scaling  # a total's cost from 100 to 100,000 tasks
    uv run python benchmarks/queue_totals.py --completion  # when each queued task is done: cost and accuracy
    uv run python benchmarks/queue_totals.py --completion-requests  # the heaviest such requests in the service
    uv run python benchmarks/queue_totals.py --moments  # tasks' expect and error against their quantiles' moments
    uv run python benchmarks/queue_totals.py --heldout-ratios  # training's held-out expect/error ratios against new data
    uv run python benchmarks/queue_totals.py --stretches  # runs whose level moves between stretches
    uv run python benchmarks/queue_totals.py --false-spread  # the stretch test's level and power
"""

from __future__ import annotations

import argparse
import sys
import time

from pathlib import Path

import numpy as np

from swarmpilot_predictor.features import FeatureSchema
from swarmpilot_predictor.modeling import EVAL_LEVELS, QuantileModel, moment_metrics, pinball_loss
from swarmpilot_predictor.modeling.model import LEVEL_P_VALUE, LEVEL_STRETCHES, stretch_levels
from swarmpilot_predictor.traces import TraceTable, iter_trace_file

QUEUES = (5, 50, 500)
SUMS = 20_000


def features(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.column_stack([rng.integers(10, 501, n).astype(float), rng.uniform(0, 1, n)])


def runtimes(kind: str, X: np.ndarray, rng: np.random.Generator, reps: int | None = None) -> np.ndarray:
    """Runtimes of the tasks ``X`` from the set's generator, (reps, tasks) or (tasks,)."""
    shape = (len(X),) if reps is None else (reps, len(X))
    base = 20 + 12 * X[:, 0]
    if kind == "lognormal":
        return base * rng.lognormal(0, 0.2, shape)
    if kind == "slow_mode":  # one task in ten 8x slower
        return base * rng.lognormal(0, 0.2, shape) * np.where(rng.uniform(size=shape) < 0.1, 8.0, 1.0)
    if kind == "lognormal_sigma1":
        return base * rng.lognormal(0, 1.0, shape)
    if kind.startswith("pareto"):  # Pareto noise of index 2.5 or 1.5 (an infinite variance) from 1
        return base * (1.0 + rng.pareto(float(kind.removeprefix("pareto")), shape))
    return base * np.exp((0.05 + 0.55 * X[:, 1]) * rng.standard_normal(shape))  # noise grows with the load


def fitted(kind: str, rows: int, rng: np.random.Generator) -> QuantileModel:
    """The service's model (``algorithm: auto``) of ``rows`` tasks drawn from ``kind``'s generator."""
    X = features(rows, rng)
    return QuantileModel(["numeric", "numeric"], [0, 0]).fit(X, runtimes(kind, X, rng))


def true_sums(kind: str, Xq: np.ndarray, key: list[int]) -> np.ndarray:
    """``SUMS`` sums of fresh runtimes of the tasks ``Xq`` from ``kind``'s generator, drawn
    in batches of 2,000 seeded by ``key`` and the batch's number."""
    return np.concatenate([runtimes(kind, Xq, np.random.default_rng([*key, k]), 2000).sum(axis=1)
                           for k in range(SUMS // 2000)])


def coverage_90(dist, truth: np.ndarray) -> list[float]:
    """The share of ``truth`` in the 90% interval of ``dist``'s total, independent then with
    the shared factor."""
    got = []
    for shared in (False, True):
        lo, hi = dist.total(shared_factor=shared).interval(0.9)
        got.append(float(((truth >= lo) & (truth <= hi)).mean()))
    return got


TAIL_KINDS = ("lognormal_sigma1", "pareto2.5", "pareto1.5")


def tail_coverage(seeds: int, rows: int = 1000, queue: int = 500) -> None:
    """Heavy-tailed noise: how often the true total of a 500-task queue exceeds its predicted
    99% quantile, and how often its 90% interval holds it, the tasks' distributions summed
    as if the model were exact (no shared factor), over ``seeds`` trainings of ``rows`` rows."""
    print("| noise | share of true totals above the 99% quantile: mean (min-max over trainings) "
          "| 90% coverage |")
    print("|---|---|---|")
    for kind in TAIL_KINDS:
        above, cover = [], []
        for seed in range(seeds):
            rng = np.random.default_rng(200 + seed)
            model = fitted(kind, rows, rng)
            Xq = features(queue, rng)
            truth = true_sums(kind, Xq, [seed])
            total = model.predict_distribution(Xq).total()
            lo, hi = total.interval(0.9)
            above.append(float((truth > total.quantiles([0.99])[0]).mean()))
            cover.append(float(((truth >= lo) & (truth <= hi)).mean()))
        print(f"| {kind} | {np.mean(above):.4f} ({np.min(above):.4f}-{np.max(above):.4f}) | {np.mean(cover):.3f} |",
              flush=True)


def true_moments(kind: str, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The generator's mean and standard deviation of each task's runtime (``base`` times
    the noise; infinite for Pareto(1.5) noise)."""
    if kind in ("lognormal", "lognormal_sigma1", "slow_mode"):
        s2 = (0.2 if kind != "lognormal_sigma1" else 1.0) ** 2
        m1, m2 = np.exp(s2 / 2), np.exp(2 * s2)  # the lognormal's first two raw moments
        if kind == "slow_mode":  # times 8 one time in ten
            m1, m2 = m1 * (0.9 + 0.8), m2 * (0.9 + 6.4)
    else:  # Pareto of index a from 1
        a = float(kind.removeprefix("pareto"))
        m1, m2 = a / (a - 1), (a / (a - 2) if a > 2 else np.inf)
    return base * m1, base * np.sqrt(m2 - m1 * m1)


def moment_agreement(seeds: int = 8, queue: int = 50) -> None:
    """A task's ``expect`` and ``error`` against the mean and standard deviation of the
    distribution its quantiles describe (its quantile function on 24,000 levels, out to
    1e-12 from either end) and against the generator's: the moments leave out each task's
    tail extrapolated past the training scores, which the quantiles and the total include
    (README, Modelling). Geometric means over ``queue`` new tasks and ``seeds`` trainings, of 4
    to 2,000 rows; and the share of the tasks whose ``expect`` and ``error`` contradict their
    quantiles (:func:`contradicts`)."""
    grid = np.unique(np.concatenate([np.geomspace(1e-12, 0.01, 2000), np.linspace(0.01, 0.99, 20000),
                                     1 - np.geomspace(0.01, 1e-12, 2000)]))
    width = np.diff(grid) / np.diff(grid).sum()
    print("| noise | training rows | `expect` / the quantiles' mean | `expect` / true mean "
          "| `error` / the quantiles' sd | `error` / true sd | contradicted |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("lognormal", "slow_mode", "lognormal_sigma1", "pareto2.5", "pareto1.5"):
        for rows in (4, 8, 12, 20, 40, 2000):
            got, contradicted = [], []
            for seed in range(seeds):
                rng = np.random.default_rng(300 + seed)
                model = fitted(kind, rows, rng)
                Xq = features(queue, rng)
                dist = model.predict_distribution(Xq)
                expect, error = dist.mean_std()
                q = dist.quantiles(grid)
                mid = (q[:, 1:] + q[:, :-1]) / 2
                mean = mid @ width
                sd = np.sqrt(((mid - mean[:, None]) ** 2) @ width)
                true_mean, true_sd = true_moments(kind, 20 + 12 * Xq[:, 0])
                got.append(np.column_stack([expect / mean, expect / true_mean, error / sd, error / true_sd]))
                contradicted.append(contradicts(expect, error, dist.quantiles(list(CANTELLI_LEVELS))))
            ratios = np.concatenate(got)
            g = [f"{np.exp(np.log(r).mean()):.3f}" if (r > 0).all() else "(the true sd is infinite)" for r in ratios.T]
            print(f"| {kind} | {rows} | {' | '.join(g)} | {np.concatenate(contradicted).mean():.3f} |", flush=True)


CANTELLI_LEVELS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def contradicts(mean: np.ndarray, sd: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per task, whether no distribution of this mean and standard deviation can have these
    quantiles at ``CANTELLI_LEVELS``: Cantelli's inequality bounds the mass a distance k sd
    above its mean (below it too) by 1 / (1 + k^2)."""
    tau = np.asarray(CANTELLI_LEVELS)[None, :]
    k2 = ((q - mean[:, None]) / np.maximum(sd, 1e-300)[:, None]) ** 2
    bound = 1.0 / (1.0 + k2)
    above = (q > mean[:, None]) & (1.0 - tau > bound * (1 + 1e-9))
    below = (q < mean[:, None]) & (tau > bound * (1 + 1e-9))
    return (above | below).any(axis=1)


STRETCH_SPREADS = (0.0, 0.03, 0.06)
STRETCHES = 10


def stretch_coverage(seeds: int, rows: int = 2000) -> None:
    """Runs whose level moves from one stretch to the next (a log sd of 0, 0.03 or 0.06
    between stretches): the model is trained on 10 stretches of the run, and each of a
    queue's 20,000 true sums is run in a new stretch at a level of its own. "found" is the
    share of trainings whose test told the stretches apart (``stretch_levels``), "log sd
    found" its mean estimate of the levels' log sd (0 where it told none)."""
    print("| set | level log sd | found | log sd found | queue | 90% coverage, independent | 90% coverage, shared factor "
          "| worst training (shared factor) |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in ("lognormal", "slow_mode"):
        for spread in STRETCH_SPREADS:
            cover: dict[int, list[tuple[float, float]]] = {q: [] for q in QUEUES}
            found = []
            for seed in range(seeds):
                rng = np.random.default_rng(300 + seed)
                X = features(rows, rng)
                levels = np.exp(spread * rng.standard_normal(STRETCHES))
                y = runtimes(kind, X, rng) * np.repeat(levels, -(-rows // STRETCHES))[:rows]
                model = QuantileModel(["numeric", "numeric"], [0, 0]).fit(X, y)
                found.append(model.stretch_levels_["log_sd"])
                for q in QUEUES:
                    Xq = features(q, rng)
                    sums = true_sums(kind, Xq, [seed, q])
                    truth = sums * np.exp(spread * np.random.default_rng([seed, q]).standard_normal(len(sums)))
                    cover[q].append(tuple(coverage_90(model.predict_distribution(Xq), truth)))
            f = np.array(found)
            for q in QUEUES:
                c = np.array(cover[q])
                print(f"| {kind} | {spread} | {(f > 0).mean():.2f} | {f.mean():.4f} | {q} | {c[:, 0].mean():.3f} "
                      f"| {c[:, 1].mean():.3f} | {c[:, 1].min():.2f} |", flush=True)


# Log ratios of runs of one level, to the predicted means: the noise forms the stretch test meets.
FALSE_SPREAD_NOISE = {
    "normal, sd 0.2": lambda rng, n: rng.normal(0.0, 0.2, n),
    "normal, sd 1": lambda rng, n: rng.normal(0.0, 1.0, n),
    "Student t, 3 df": lambda rng, n: 0.1 * rng.standard_t(3, n),
    "slow mode 3x, one run in ten": lambda rng, n: rng.normal(0.0, 0.05, n) + np.log(np.where(rng.random(n) < 0.1, 3.0, 1.0)),
    "log of an exponential": lambda rng, n: np.log(rng.exponential(1.0, n)),
    # Runs of about 5 ms timed in whole milliseconds: few distinct values (since 2026-12-06).
    "5 ms runs in whole ms": lambda rng, n: np.log(np.maximum(1.0, np.round(5.0 * np.exp(0.2 * rng.standard_normal(n)))) / 5.0),
    "two modes, half and half": lambda rng, n: np.where(rng.random(n) < 0.5, 0.0, 1.0) + rng.normal(0.0, 0.05, n),
}


def false_spread(draws: int = 4000) -> None:
    """The stretch test (``stretch_levels``) on runs of one level: the share of ``draws`` runs
    of each length it calls spread at ``LEVEL_P_VALUE`` (and at 0.01), which should be about
    that p-value; then its power on runs of 10 stretches whose levels differ by a log sd of
    0.03 or 0.06 (500 runs each)."""
    rng = np.random.default_rng(11)
    print(f"| noise | rows | called spread at p < {LEVEL_P_VALUE:g} | at p < 0.01 |")
    print("|---|---:|---:|---:|")
    for name, noise in FALSE_SPREAD_NOISE.items():
        for n in (120, 300, 600, 2000):
            p = np.array([stretch_levels(noise(rng, n))["p_value"] for _ in range(draws)])
            print(f"| {name} | {n} | {np.mean(p < LEVEL_P_VALUE):.4f} | {np.mean(p < 0.01):.4f} |", flush=True)
    print(f"\n| noise | rows | level log sd | called spread at p < {LEVEL_P_VALUE:g} |")
    print("|---|---:|---:|---:|")
    for name in ("normal, sd 0.2", "slow mode 3x, one run in ten"):
        for n in (300, 600, 2000):
            for spread in STRETCH_SPREADS[1:]:
                found = [stretch_levels(FALSE_SPREAD_NOISE[name](rng, n) + np.repeat(
                    spread * rng.standard_normal(LEVEL_STRETCHES), n // LEVEL_STRETCHES))["p_value"] < LEVEL_P_VALUE
                    for _ in range(500)]
                print(f"| {name} | {n} | {spread} | {np.mean(found):.3f} |", flush=True)


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "data"
# Each file's task features, as a training config would name them: not the request counter
# `seq`, which in a time-ordered split only tells the model which stretch of the run a
# trace came from, nor the constant `workload`.
REAL_SETS = {
    "h100_resnet50_vision": ["batch_size", "image_size"],
    "h200_resnet50_vision": ["batch_size", "image_size"],
    "h200_text_encoder": ["batch_size", "seq_len", "tokens"],
    "h200_llm_decode": ["input_tokens", "max_tokens"],
}
# The public traces of ../shared/data (never copied into the repository; skipped where
# absent), in real_coverage alone: without timestamps, their lines are in the order the
# requests ran. The SGLang run's share of aborted requests moves from stretch to stretch.
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SHARED_SETS = {
    "h20_sglang_llm": ["token_length", "max_tokens"],
    "h20_diffusers_t2vid": ["positive_prompt_length", "negative_prompt_length", "frames"],
}
REAL_QUEUES = (1, 5, 20, 50, 200)
REAL_DRAWS = 1000


def real_coverage(split: bool = True) -> None:
    """With ``split`` False, the model is trained without a model for each kind of run (as
    before 2026-11-29, 19:00 UTC), for comparison. The last column is the test tasks' own
    relative pinball loss (over ``EVAL_LEVELS``), each task alone."""
    print("| trace set | test rows | queue | 90% coverage, independent | 90% coverage, shared factor | below median (shared factor) "
          "| measured / predicted total, training rows | the same, test rows | tasks' rel. pinball |")
    print("|---|---|---|---|---|---|---|---|---|")
    sets = [(EXAMPLES / f"{name}.jsonl", features) for name, features in REAL_SETS.items()]
    for name, features in SHARED_SETS.items():
        if (SHARED_DATA / f"{name}.jsonl").exists():
            sets.append((SHARED_DATA / f"{name}.jsonl", features))
        else:
            print(f"(skipping {name}: not found in {SHARED_DATA})", file=sys.stderr)
    for path, features in sets:
        name = path.stem
        schema, X, y, Xt, yt = past_and_later(path, features)
        model = QuantileModel(schema.kinds, schema.n_categories,
                              regime_column=schema.regime_column if split else None).fit(X, y)
        # Whether the level of the runtimes held: all rows' measured total over the predicted one.
        levels = [float(ys.sum() / model.predict_distribution(Xs).mean_std()[0].sum()) for Xs, ys in ((X, y), (Xt, yt))]
        task_loss = float(pinball_loss(yt, model.predict_quantiles(Xt, EVAL_LEVELS), EVAL_LEVELS).mean() / yt.mean())
        rng = np.random.default_rng(7)
        for q in REAL_QUEUES:
            if q > len(yt) // 2:
                continue
            inside = np.zeros((REAL_DRAWS, 2), dtype=bool)
            below = np.zeros(REAL_DRAWS, dtype=bool)
            for k in range(REAL_DRAWS):
                rows = rng.choice(len(yt), q, replace=False)
                truth = yt[rows].sum()
                dist = model.predict_distribution(Xt[rows])
                for j, shared in enumerate((False, True)):
                    total = dist.total(shared_factor=shared)
                    lo, hi = total.interval(0.9)
                    inside[k, j] = lo <= truth <= hi
                below[k] = truth < total.quantiles([0.5])[0]
            print(f"| {name} | {len(yt)} | {q} | {inside[:, 0].mean():.3f} | {inside[:, 1].mean():.3f} | "
                  f"{below.mean():.3f} | {levels[0]:.3f} | {levels[1]:.3f} | {task_loss:.4f} |", flush=True)


def past_and_later(path: Path, features: list[str]) -> tuple[FeatureSchema, np.ndarray, np.ndarray, np.ndarray,
                                                            np.ndarray]:
    """A real trace file's first 70% in time order (in the file's order where its traces have
    no ``ts``), encoded as the service trains on it, and its last 30% (rows with a usable
    runtime): schema, X, y, the later rows' features and runtimes."""
    traces = sorted(iter_trace_file(path), key=lambda t: t.get("ts", 0.0))
    cut = int(round(0.7 * len(traces)))
    schema, X, y, _ = FeatureSchema.prepare_training(TraceTable.from_traces(traces[:cut]), features=features)
    test = TraceTable.from_traces(traces[cut:])
    Xt, ok = schema.matrix_from_table(test)
    yt = test.numeric("runtime_ms")
    ok &= np.isfinite(yt) & (yt > 0)
    Xt, yt = Xt[ok], yt[ok]
    if schema.history is not None:
        # A scheduler knows what its instance has run since training and states it
        # (README, "First runs of an input shape"): only a shape's first test task is cold.
        order = test.numeric(schema.history.order_field)[ok]
        Xt[:, -1] = schema.history.extend(Xt[:, :-1], order)[1]
    return schema, X, y, Xt, yt


def trained_on_the_past(name: str, features: list[str]) -> tuple[QuantileModel, np.ndarray]:
    """The model trained on the first 70% of a real trace file in time order, and the
    feature rows of the last 30%."""
    traces = sorted(iter_trace_file(EXAMPLES / f"{name}.jsonl"), key=lambda t: t["ts"])
    cut = int(round(0.7 * len(traces)))
    schema, X, y, _ = FeatureSchema.prepare_training(TraceTable.from_traces(traces[:cut]), features=features)
    Xt, _ = schema.matrix(traces[cut:])
    return QuantileModel(schema.kinds, schema.n_categories, regime_column=schema.regime_column).fit(X, y), Xt


def heldout_ratios(seeds: int = 12, new_tasks: int = 20_000) -> None:
    """Whether the training metrics' held-out ``expect_ratio`` and ``error_ratio`` (README,
    "Training config") tell what new tasks will show: each model's figures against the same
    figures on ``new_tasks`` fresh tasks from its generator, over ``seeds`` trainings (mean,
    min-max); then on the real trace files, trained on the first 70% in time order and
    measured on the last 30%."""
    print("| noise | training rows | `expect_ratio` held out | on new tasks | `error_ratio` held out | on new tasks "
          "| mean abs. difference (expect, error) |")
    print("|---|---:|---|---|---|---|---|")

    def spread(v: np.ndarray) -> str:
        return f"{v.mean():.3f} ({v.min():.3f}-{v.max():.3f})"

    for kind in ("lognormal", "slow_mode", "heteroscedastic", "lognormal_sigma1", "pareto2.5"):
        for rows in (30, 300, 2000):
            got = []
            for seed in range(seeds):
                rng = np.random.default_rng(400 + seed)
                model = fitted(kind, rows, rng)
                held = model.cv_summary()
                Xn = features(new_tasks, rng)
                new = moment_metrics(runtimes(kind, Xn, rng), *model.predict_distribution(Xn).mean_std())
                got.append([held["expect_ratio"], new["expect_ratio"], held.get("error_ratio", np.nan),
                            new.get("error_ratio", np.nan)])
            g = np.array(got)
            print(f"| {kind} | {rows} | {spread(g[:, 0])} | {spread(g[:, 1])} | {spread(g[:, 2])} | {spread(g[:, 3])} "
                  f"| {np.abs(g[:, 0] - g[:, 1]).mean():.3f}, {np.abs(g[:, 2] - g[:, 3]).mean():.3f} |", flush=True)
    print("\n| trace set | training rows | test rows | `expect_ratio` held out | test rows | `error_ratio` held out | test rows |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, names in REAL_SETS.items():
        schema, X, y, Xt, yt = past_and_later(EXAMPLES / f"{name}.jsonl", names)
        model = QuantileModel(schema.kinds, schema.n_categories, regime_column=schema.regime_column).fit(X, y)
        held = model.cv_summary()
        new = moment_metrics(yt, *model.predict_distribution(Xt).mean_std())
        print(f"| {name} | {len(y)} | {len(yt)} | {held['expect_ratio']:.3f} | {new['expect_ratio']:.3f} "
              f"| {held.get('error_ratio', np.nan):.3f} | {new.get('error_ratio', np.nan):.3f} |", flush=True)


def error_departure() -> None:
    """How far the shared factor moves a queue's ``error`` from the root of its tasks' summed
    variances: the seed example's model (``examples/train_seed_example_model.py``) and the
    H100 ResNet-50 example, each trained on its whole trace set as the service trains, each
    asked about the first 100 and 500 of its training tasks."""
    sys.path.insert(0, str(EXAMPLES.parent))
    from train_seed_example_model import synthetic_llm_traces

    sets = {"seed example (synthetic LLM)": (synthetic_llm_traces(), None),
            "h100_resnet50_vision": (list(iter_trace_file(EXAMPLES / "h100_resnet50_vision.jsonl")),
                                     REAL_SETS["h100_resnet50_vision"])}
    print("| model | training rows | shared log sd | queue | error with the factor / without - 1 |")
    print("|---|---:|---:|---:|---:|")
    for name, (traces, features) in sets.items():
        schema, X, y, _ = FeatureSchema.prepare_training(TraceTable.from_traces(traces), features=features)
        model = QuantileModel(schema.kinds, schema.n_categories, regime_column=schema.regime_column).fit(X, y)
        for k in (100, 500):
            dist = model.predict_distribution(X[:k])
            plain = dist.total_moments()[1] ** 0.5
            shared = dist.total_moments(shared_factor=True)[1] ** 0.5
            print(f"| {name} | {len(y)} | {model.shared_log_sd_:.4f} | {k} | {shared / plain - 1:.3f} |", flush=True)


def sampled_totals(seed: int = 3, sums: int = SUMS, short: bool = False) -> None:
    """A total against a Monte Carlo sum of the same tasks' own distributions: how far the
    predicted quantiles are from the sampled sum's, in probability and in time. The model
    is trained as above on each real trace file; queues of 129, 200 and 500 test tasks
    (drawn with replacement), no shared factor; ``sums`` sampled sums of each. With
    ``short``: queues of 2, 5, 10 and 50 tasks, each convolved whole, and the level 0.999 too
    (the ratio column then gives the 0.999 quantile's own last)."""
    levels = np.array([0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99] + ([0.999] if short else []))
    far = " | predicted / sampled 0.999 quantile" if short else ""
    print(f"| trace set | queue | max over levels of abs(F(q) - level) | predicted / sampled quantile, min-max{far} |")
    print("|---|---|---|---|" + ("---|" if short else ""))
    for name, features in REAL_SETS.items():
        model, Xt = trained_on_the_past(name, features)
        rng = np.random.default_rng(seed)
        for n in (2, 5, 10, 50) if short else (129, 200, 500):
            dist = model.predict_distribution(Xt[rng.choice(len(Xt), n, replace=True)])
            q = dist.total().quantiles(levels)
            # Each task's runtimes at uniform levels: sorted levels give sorted values, put back in draw order.
            u = rng.random((n, sums))
            runs = np.stack([dist.subset(np.array([i])).quantiles(np.sort(u[i]))[0][np.argsort(np.argsort(u[i]))]
                             for i in range(n)])
            s = np.sort(runs.sum(axis=0))
            off = np.abs(np.searchsorted(s, q) / sums - levels).max()
            ratio = q / np.quantile(s, levels)
            tail = f" {ratio[-1]:.3f} |" if short else ""
            print(f"| {name} | {n} | {off:.4f} | {ratio.min():.3f}-{ratio.max():.3f} |{tail}", flush=True)


def long_queues(seed: int = 3) -> None:
    """Totals of long queues against the normal law with the sum's exact cumulants (with
    the first Edgeworth term for its skewness): past a few thousand tasks a Monte Carlo sum
    is too dear, and the sum of so many is that close to normal. Queues of 1,000, 5,000,
    20,000 and 100,000 test tasks of each real trace file (drawn with replacement), and as
    many runs of its first test task; the model trained as above. Each distinct task's
    mean, variance and third central moment come from its quantile function on 24,000 levels."""
    from scipy.special import ndtr

    levels = np.array([0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    grid = np.unique(np.concatenate([np.geomspace(1e-12, 0.01, 2000), np.linspace(0.01, 0.99, 20000),
                                     1 - np.geomspace(0.01, 1e-12, 2000)]))
    width = np.diff(grid) / np.diff(grid).sum()
    print("| trace set | queue | tasks | max over levels of abs(F(q) - level) | spread from the quartiles / exact | ms "
          "| the batch's `expect`: its level in the total |")
    print("|---|---|---|---|---|---|---|")
    fine = np.linspace(0.001, 0.999, 999)
    for name, features in REAL_SETS.items():
        model, Xt = trained_on_the_past(name, features)
        rng = np.random.default_rng(seed)
        moments = []
        for a in range(0, len(Xt), 500):  # each test task's mean and central moments
            q = model.predict_distribution(Xt[a:a + 500]).quantiles(grid)
            mid = (q[:, 1:] + q[:, :-1]) / 2
            mu = mid @ width
            d = mid - mu[:, None]
            moments.append(np.stack([mu, (d * d) @ width, (d * d * d) @ width], axis=1))
        moments = np.concatenate(moments)
        for which in ("test tasks", "first task"):
            for n in (1_000, 5_000, 20_000, 100_000):
                pick = rng.choice(len(Xt), n, replace=True) if which == "test tasks" else np.zeros(n, dtype=int)
                t0 = time.perf_counter()
                dist = model.predict_distribution(Xt[pick])
                total = dist.total()
                q = total.quantiles(levels)
                ms = (time.perf_counter() - t0) * 1e3
                # The moments leave out the tails past the training scores, which the total
                # sums (README, Modelling): where the batch's expect lies in the total.
                expect_level = np.interp(dist.mean_std()[0].sum(), total.quantiles(fine), fine)
                k1, k2, k3 = moments[pick].sum(axis=0)
                z = (q - k1) / np.sqrt(k2)
                gamma = k3 / k2**1.5
                cdf = ndtr(z) - gamma / 6 * (z * z - 1) * np.exp(-z * z / 2) / np.sqrt(2 * np.pi)
                spread = (q[4] - q[2]) / (2 * 0.6744897501960817 * np.sqrt(k2))
                print(f"| {name} | {n} | {which} | {np.abs(cdf - levels).max():.3f} | {spread:.3f} | {ms:.0f} "
                      f"| {expect_level:.3f} |", flush=True)


def completion_times(seed: int = 3, sums: int = SUMS) -> None:
    """When each task of a queue is done (``completion_times``: the totals of its first 1, 2,
    ... tasks, ``TaskDistributions.prefix_totals``) against each prefix's total worked out
    alone, as a queue of its own (what a client had to ask for before: n requests' worth of
    convolutions), and both against ``sums`` Monte Carlo cumulative sums of the tasks' own
    distributions. The model is trained as above on each real trace file; queues of 10, 50,
    128, 500 and 1,000 test tasks (drawn with replacement). Time: in-process, one thread, the
    totals and their quantiles at 5 levels and 90% interval (best of 3; prefixes one by one
    up to 500 tasks). Accuracy: the largest ``abs(F(q) - level)`` over every prefix and
    level (up to 128 tasks), F the sampled cumulative sum's CDF. Agreement: how far each
    completion's quantiles are from those of its prefix's total alone, relatively (up to 500
    tasks) and in that total's probability (``abs(F_alone(q) - level)``, up to 128 tasks),
    the largest over every task and level but the last and first (the same to the bit)."""
    from threadpoolctl import threadpool_limits

    levels = np.array([0.01, 0.1, 0.5, 0.9, 0.99])
    read = [*levels, 0.05, 0.95]
    print("| trace set | queue | completion times ms | each prefix alone ms | max abs(F(q) - level): completion times "
          "| each prefix alone | completions against each prefix alone: max relative difference | in probability |")
    print("|---|---|---|---|---|---|---|---|")
    with threadpool_limits(limits=1):  # as the server runs
        for name, features in REAL_SETS.items():
            model, Xt = trained_on_the_past(name, features)
            rng = np.random.default_rng(seed)
            for n in (10, 50, 128, 500, 1000):
                dist = model.predict_distribution(Xt[rng.choice(len(Xt), n, replace=True)])
                best, prefixes = float("inf"), []
                for _ in range(3):  # as the service reads them: each as it is made
                    t0 = time.perf_counter()
                    prefixes = dist.for_totals(read).prefix_totals(read=lambda total: total.quantiles(read))
                    best = min(best, time.perf_counter() - t0)
                alone_ms, alone, apart = "-", [], ("-", "-")
                if n <= 500:
                    t0 = time.perf_counter()
                    totals = [dist.subset(np.arange(i)).total() for i in range(1, n + 1)]
                    alone = [total.quantiles(read) for total in totals]
                    alone_ms = f"{(time.perf_counter() - t0) * 1e3:.0f}"
                    middle = range(1, n - 1)
                    rel = max((float(np.max(np.abs(prefixes[i] / alone[i] - 1))) for i in middle), default=0.0)
                    prob = "-"
                    if n <= 128:
                        prob = max((abs(totals[i].cdf(float(q)) - level) for i in middle
                                    for q, level in zip(prefixes[i][:len(levels)], levels)), default=0.0)
                        prob = f"{prob:.4f}"
                    apart = (f"{rel:.4f}", prob)
                off = ("-", "-")
                if n <= 128:
                    u = rng.random((n, sums))
                    runs = np.stack([dist.subset(np.array([i])).quantiles(np.sort(u[i]))[0][np.argsort(np.argsort(u[i]))]
                                     for i in range(n)])
                    cum = np.sort(np.cumsum(runs, axis=0), axis=1)
                    off = tuple(f"{max(np.abs(np.searchsorted(cum[i], q[:len(levels)]) / sums - levels).max() for i, q in enumerate(got)):.4f}"
                                for got in (prefixes, alone))
                print(f"| {name} | {n} | {best * 1e3:.0f} | {alone_ms} | {off[0]} | {off[1]} "
                      f"| {apart[0]} | {apart[1]} |", flush=True)


def completion_requests(seed: int = 5) -> None:
    """What the heaviest queues requests with ``completion_times`` cost in the service:
    ``PredictorService.predict_queues`` in-process (the request's work, without HTTP) with a
    model trained on every trace of the H100 vision example, at 3 levels with a deadline,
    for a placement's 16 queues of 10 and of 50 tasks (the best of 3), and for the bound of
    10,000 traces laid out as one queue, 10 of 1,000, 100 of 100 and 1,000 of 10 (each once),
    queues of traces drawn with replacement, with and without ``shared_factor``; after a
    warm-up, with the peak of Python's allocations during each request (``tracemalloc``,
    which slows it: timed apart)."""
    import json
    import tempfile
    import tracemalloc

    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    ident = {"model_type": "vision", "model_name": "resnet50", "hardware": "H100", "software_name": "torch",
             "software_version": "2.4"}
    with tempfile.TemporaryDirectory() as data_dir:
        service = PredictorService(PredictorSettings(data_dir=Path(data_dir), cache_size=0))
        try:
            rows = [json.loads(line) for line in open(EXAMPLES / "h100_resnet50_vision.jsonl")]
            service.train(TrainConfig.model_validate({"model": ident, "traces": rows,
                                                      "features": ["batch_size", "image_size"]}))
            pool = [{k: v for k, v in t.items() if k != "runtime_ms"} for t in rows]
            pattern = IdentityPattern.from_parts(ident)
            rng = np.random.default_rng(seed)
            service.predict_queues(pattern, {"warm-up": pool[:3]}, completion_times=True)
            print("| request | `shared_factor` | seconds | peak of Python's allocations MB |")
            print("|---|---|---:|---:|")
            for count, length in ((16, 10), (16, 50), (1, 10_000), (10, 1_000), (100, 100), (1_000, 10)):
                queues = {f"q{k}": [pool[i] for i in rng.integers(0, len(pool), length)] for k in range(count)}
                for shared in (False, True):
                    def ask() -> None:
                        service.predict_queues(pattern, queues, quantiles=[0.5, 0.9, 0.99], completion_times=True,
                                               deadline_ms=1000.0, shared_factor=shared)
                    seconds = float("inf")
                    for _ in range(3 if count * length < 10_000 else 1):
                        t0 = time.perf_counter()
                        ask()
                        seconds = min(seconds, time.perf_counter() - t0)
                    tracemalloc.start()
                    ask()
                    peak = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
                    print(f"| {count:,} {'queue' if count == 1 else 'queues'} of {length:,} tasks | "
                          f"{'yes' if shared else 'no'} | {seconds:.{2 if seconds < 10 else 1}f} "
                          f"| {peak / 2**20:.0f} |", flush=True)
        finally:
            service.close()


def total_timing() -> None:
    """Milliseconds for a queue's answer in-process (the tasks' distributions, their moments
    and quantiles, the total and its quantiles and interval), best of 40, for the first
    5, 50, the longest queue convolved whole (``distribution._EXACT_SUM_MAX_TASKS``), 200 and
    1000 test tasks of each real trace file, with the model trained as above."""
    from threadpoolctl import threadpool_limits

    from swarmpilot_predictor.distribution import _EXACT_SUM_MAX_TASKS as whole

    print(f"| trace set | 5 tasks ms | 50 tasks ms | {whole} tasks ms | 200 tasks ms | 1000 tasks ms |")
    print("|---|---|---|---|---|---|")
    with threadpool_limits(limits=1):  # as the server runs
        for name, features in REAL_SETS.items():
            model, Xt = trained_on_the_past(name, features)
            cells = []
            for n in (5, 50, whole, 200, 1000):
                Xq = Xt[np.arange(n) % len(Xt)]
                best = float("inf")
                for _ in range(40):
                    t0 = time.perf_counter()
                    dist = model.predict_distribution(Xq)
                    dist.mean_std()
                    dist.quantiles([0.25, 0.5, 0.75, 0.99])
                    total = dist.total()
                    total.quantiles([0.25, 0.5, 0.75, 0.99])
                    total.interval(0.95)
                    best = min(best, time.perf_counter() - t0)
                cells.append(f"{best * 1e3:.2f}")
            print(f"| {name} | {' | '.join(cells)} |", flush=True)


def table_totals(draws: int = 8) -> None:
    """A lookup table's queue totals against its model's, on the README's H100 example (the
    shipped trace and config, the table of its own traces) and on a model whose runs are 10
    times slower 15% of the time: queues of 2 to 100 of the table's tasks (warm runs, first
    runs, both), ``draws`` queues of each; the relative difference of the table's total from
    the model's at 0.05, 0.5 and 0.95, median and worst over the draws."""
    import json
    import random
    import tempfile

    import orjson

    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    levels = [0.05, 0.5, 0.95]
    root = Path(__file__).resolve().parent.parent
    config = json.loads((root / "examples" / "train_vision.json").read_text())["config"]
    vision = list(iter_trace_file(root / "examples" / "data" / "h100_resnet50_vision.jsonl"))
    rng = np.random.default_rng(1)
    batch = rng.integers(1, 9, 500)
    y = (2 + batch) * np.exp(0.1 * rng.standard_normal(500)) * np.where(rng.random(500) < 0.15, 10, 1)
    slow = [{"batch": int(b), "runtime_ms": float(v)} for b, v in zip(batch, y)]
    print("| model | tasks | queue | q0.05 median (worst) | q0.5 median (worst) | q0.95 median (worst) |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        service = PredictorService(PredictorSettings(data_dir=Path(tmp), cache_size=0))
        try:
            for name, model, traces in (("H100 ResNet-50 (README example)", config["model"], vision),
                                        ("slow mode 15% x10", {**config["model"], "model_name": "slow"}, slow)):
                service.train(TrainConfig.model_validate({**config, "model": model, "traces": traces,
                                                          **({"features": None} if traces is slow else {})}))
                pattern = IdentityPattern.from_parts(model)
                path = Path(tmp) / "traces.jsonl"
                path.write_bytes(b"\n".join(orjson.dumps(t) for t in traces))
                table = f"{model['model_name']}.json"
                service.generate_table(pattern, path, table_name=table)
                records = orjson.loads((Path(tmp) / "tables" / table).read_bytes())
                feats = [r["features"] for r in records]
                kinds = {"all": feats}
                if "first_of_shape" in feats[0]:
                    kinds = {"warm runs": [f for f in feats if not f["first_of_shape"]],
                             "first runs": [f for f in feats if f["first_of_shape"]], "both": feats}
                for kind, pool in kinds.items():
                    pick = random.Random(7)
                    for n in (2, 10, 30, 100):
                        errs: list[list[float]] = [[], [], []]
                        for _ in range(draws):
                            queue = [dict(pick.choice(pool)) for _ in range(n)]
                            m = service.predict(pattern, queue, quantiles=levels, with_total=True).batch_response()
                            t = service.predict(pattern, queue, quantiles=levels, with_total=True, lookup_table=True,
                                                lookup_table_name=table).batch_response()
                            for k in range(3):
                                errs[k].append(t["total_quantiles"][k] / m["total_quantiles"][k] - 1)
                        cells = [f"{np.median(e) * 100:+.1f}% ({max(e, key=abs) * 100:+.1f}%)" for e in errs]
                        print(f"| {name} | {kind} | {n} | {' | '.join(cells)} |", flush=True)
        finally:
            service.close()


def total_scaling() -> None:
    """How a total's cost grows with the queue: a linear model of 2,000 synthetic LLM traces
    (as ``latency.py`` trains it), totals of 100 to 100,000 of its tasks, in-process, and
    the grid each was found on. Run it with an older checkout's ``src`` first on PYTHONPATH
    to compare code."""
    import statistics
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from latency import IDENT, llm_traces
    from threadpoolctl import threadpool_limits

    from swarmpilot_predictor import distribution
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    threadpool_limits(limits=1, user_api="blas")
    with tempfile.TemporaryDirectory() as tmp:
        svc = PredictorService(PredictorSettings(data_dir=Path(tmp), cache_size=0))
        svc.train(TrainConfig(model=IDENT, traces=llm_traces(2000), algorithm="auto"))
        _, loaded = svc._serving(IdentityPattern.from_parts(IDENT))
        tasks = llm_traces(100_000, seed=7)
        for t in tasks:
            del t["runtime_ms"]
        X, _ = loaded.meta.features.matrix(tasks)
        grid: dict[str, int] = {}
        convolve = distribution.TaskDistributions._convolve

        def noted(self, rows, sd):
            edges, cdf, cells = convolve(self, rows, sd)
            grid["cells"] = cells
            return edges, cdf, cells

        distribution.TaskDistributions._convolve = noted
        print("| tasks | total, median | grid cells |\n|---|---|---|")
        for n, reps in ((100, 60), (1000, 40), (10_000, 10), (100_000, 4)):
            dist = loaded.model.predict_distribution(X[:n])
            dist.total()
            took = []
            for _ in range(reps):
                t0 = time.perf_counter()
                dist.total()
                took.append(time.perf_counter() - t0)
            print(f"| {n:,} | {statistics.median(took) * 1e3:.2f} ms | {grid['cells']} |", flush=True)
        svc.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--real-only", action="store_true", help="only the real trace files of examples/data")
    ap.add_argument("--timing", action="store_true", help="only the time a queue's answer takes, on the real trace files")
    ap.add_argument("--tails", action="store_true", help="only heavy-tailed noise: 500-task totals' upper tails")
    ap.add_argument("--one-model", action="store_true",
                    help="with --real-only: no model for each kind of run (first runs, repeats), for comparison")
    ap.add_argument("--sampled", action="store_true",
                    help="only real-trace totals against Monte Carlo sums of the same tasks' distributions")
    ap.add_argument("--sums", type=int, default=SUMS, help="with --sampled: sampled sums per queue")
    ap.add_argument("--short", action="store_true",
                    help="with --sampled: queues of 2 to 50 tasks, and their 0.999 quantile")
    ap.add_argument("--no-real", action="store_true", help="the synthetic sets only, without the real trace files")
    ap.add_argument("--error-departure", action="store_true",
                    help="only how far the shared factor moves a queue's error, on the two example models")
    ap.add_argument("--long", action="store_true",
                    help="only real-trace totals of 1,000 to 100,000 tasks against the normal law with their cumulants")
    ap.add_argument("--moments", action="store_true",
                    help="only the tasks' expect and error against their quantiles' moments and the truth's")
    ap.add_argument("--tables", action="store_true",
                    help="only a lookup table's queue totals against its model's (the README's H100 example)")
    ap.add_argument("--heldout-ratios", action="store_true",
                    help="only the training's held-out expect_ratio and error_ratio against new tasks' and test rows'")
    ap.add_argument("--stretches", action="store_true",
                    help="only runs whose level moves between stretches: totals of queues run in a new stretch")
    ap.add_argument("--false-spread", action="store_true",
                    help="only the stretch test on runs of one level (how often it calls them spread) and its power")
    ap.add_argument("--completion", action="store_true",
                    help="only when each task of a queue is done: against each prefix alone and Monte Carlo")
    ap.add_argument("--completion-requests", action="store_true",
                    help="only the heaviest queues requests with completion times, through the service in-process")
    ap.add_argument("--scaling", action="store_true",
                    help="only how a total's cost grows from 100 to 100,000 synthetic tasks, and its grid")
    args = ap.parse_args()
    # The sections run alone, each followed by its run time.
    alone = {"scaling": total_scaling, "tables": table_totals, "long": long_queues, "moments": moment_agreement,
             "heldout_ratios": lambda: heldout_ratios(args.seeds), "stretches": lambda: stretch_coverage(args.seeds),
             "false_spread": false_spread, "completion": lambda: completion_times(sums=args.sums),
             "completion_requests": completion_requests,
             "sampled": lambda: sampled_totals(sums=args.sums, short=args.short)}
    for flag, section in alone.items():
        if getattr(args, flag):
            t0 = time.perf_counter()
            section()
            print(f"\n{time.perf_counter() - t0:.0f} s")
            return
    if args.error_departure:
        error_departure()
        return
    if args.tails:
        t0 = time.perf_counter()
        tail_coverage(args.seeds)
        print(f"\n{args.seeds} trainings of 1000 rows per noise; {time.perf_counter() - t0:.0f} s")
        return
    if args.timing:
        total_timing()
        return
    if args.real_only:
        t0 = time.perf_counter()
        real_coverage(split=not args.one_model)
        print(f"\n{time.perf_counter() - t0:.0f} s")
        return
    print("| set | queue | shared log sd | 90% coverage, independent | 90% coverage, shared factor | worst training (shared factor) "
          "| total's median / true median | sum of the tasks' `expect` / true mean |")
    print("|---|---|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    for kind in ("lognormal", "slow_mode", "heteroscedastic"):
        cover: dict[int, list[tuple[float, float]]] = {q: [] for q in QUEUES}
        taus = []
        for seed in range(args.seeds):
            rng = np.random.default_rng(100 + seed)
            model = fitted(kind, args.rows, rng)
            taus.append(model.shared_log_sd_)
            for q in QUEUES:
                Xq = features(q, rng)
                truth = true_sums(kind, Xq, [seed, q])
                dist = model.predict_distribution(Xq)
                got = coverage_90(dist, truth)
                median = dist.total().quantiles([0.5])[0]
                cover[q].append((got[0], got[1], median / np.median(truth), dist.mean_std()[0].sum() / truth.mean()))
        for q in QUEUES:
            c = np.array(cover[q])
            print(f"| {kind} | {q} | {np.mean(taus):.4f} | {c[:, 0].mean():.3f} | {c[:, 1].mean():.3f} | {c[:, 1].min():.2f} "
                  f"| {np.exp(np.log(c[:, 2]).mean()):.3f} | {np.exp(np.log(c[:, 3]).mean()):.3f} |", flush=True)
    print(f"\n{args.seeds} trainings of {args.rows} rows per set; {time.perf_counter() - t0:.0f} s\n")
    if args.no_real:
        return
    t0 = time.perf_counter()
    real_coverage()
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
