"""Runtimes recorded in whole milliseconds, a few milliseconds long: the service against the
baselines of ``accuracy.py``, and against its own quantiles rounded to whole milliseconds.

A timer of 1 ms resolution puts every runtime of a 2-12 ms task on one of a dozen values.
The service's quantiles lie between them: calibrated in coverage, since no runtime lies
between two whole milliseconds, but the pinball loss is linear between them and least at
one of them, where the baselines that answer with training runtimes (quantile forests)
put theirs. Rounded to the nearest whole millisecond (the quantile of the discrete
distribution, as the model sees it) the loss falls, and each quantile covers its whole
value: coverage rises above the level by up to that value's share of the runs.

    uv run python benchmarks/discrete_runtimes.py [--seeds 4]
    uv run python benchmarks/discrete_runtimes.py --single-values

``--single-values`` measures instead a task whose smallest batches always take the same
whole millisecond: each level's coverage as cross-validation reports it, and on 20,000
new traces.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy  # noqa: E402  (the baselines and the split of the accuracy benchmark)

from swarmpilot_predictor.modeling import quantile_metrics  # noqa: E402


def whole_ms_traces(n: int, seed: int) -> accuracy.TraceSet:
    """A small classifier on three variants and batch sizes 1-32, timed to 1 ms."""
    rng = np.random.default_rng(seed)
    batch = rng.integers(1, 33, n)
    variant = rng.choice(["small", "medium", "large"], n)
    per_item = np.select([variant == "medium", variant == "large"], [0.2, 0.3], 0.12)
    continuous = (1.4 + per_item * batch) * rng.lognormal(0.0, 0.12, n)
    # A 1 ms timer started at a random phase: the whole milliseconds that elapsed.
    runtime = np.maximum(np.floor(continuous + rng.random(n)), 1.0)
    traces = [{"batch_size": int(b), "variant": str(v), "runtime_ms": float(r)}
              for b, v, r in zip(batch, variant, runtime)]
    return accuracy.TraceSet(f"whole_ms_seed{seed}", traces)


def single_values(rows: int, seed: int = 1) -> None:
    """``round(2 + 0.1 batch LogNormal(0, 0.3))`` ms, batch 1-64: batches 1 to 3 run 2 ms
    (nearly) every time, so a quantile a hair below 2 ms covers none of their runs, one a hair
    above all of them, and which side each level falls on moves coverage more than the model."""
    from swarmpilot_predictor.modeling import EVAL_LEVELS, QuantileModel

    def draw(n: int, s: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(s)
        batch = rng.integers(1, 65, n).astype(float)
        return batch[:, None], np.round(2 + 0.1 * batch * np.exp(0.3 * rng.standard_normal(n)))

    X, y = draw(rows, seed)
    model = QuantileModel(["numeric"], [0]).fit(X, y)
    Xn, yn = draw(20_000, seed + 100)
    q = model.predict_quantiles(Xn, EVAL_LEVELS)
    cv = model.cv_summary()
    print(f"{rows} traces, {len(np.unique(y))} distinct runtimes; chose {cv['algorithm']} ({cv.get('variant', '')}); "
          f"batch 1 answered {np.round(model.predict_quantiles(np.array([[1.0]]), EVAL_LEVELS)[0], 4).tolist()}\n")
    print("| level | " + " | ".join(f"{t:g}" for t in EVAL_LEVELS) + " | mean abs. error |")
    print("|---|" + "---:|" * (len(EVAL_LEVELS) + 1))
    cv_cov = np.array([cv["coverage"][f"{t:g}"] for t in EVAL_LEVELS])
    new_cov = (yn[:, None] <= q).mean(axis=0)
    for label, cov in (("coverage, cross-validated", cv_cov), ("coverage on 20,000 new traces", new_cov)):
        err = np.abs(cov - np.asarray(EVAL_LEVELS)).mean()
        print(f"| {label} | " + " | ".join(f"{c:.3f}" for c in cov) + f" | {err:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--single-values", action="store_true", help="the task whose small batches always run the same whole ms")
    args = ap.parse_args()
    if args.single_values:
        single_values(args.rows)
        return
    results: dict[str, list[tuple[float, float, float]]] = {}
    for seed in range(1, args.seeds + 1):
        ts = whole_ms_traces(args.rows, seed)
        rows, _ = accuracy.evaluate(ts)
        yt = accuracy.split_set(ts).yt
        for r in rows:
            results.setdefault(r.method, []).append((r.metrics["rel_pinball"], r.metrics["mace"], r.metrics["cov90"]))
            if r.method == "service":
                m = quantile_metrics(yt, np.ceil(r.q - 0.5), accuracy.LEVELS)  # nearest, halves down
                results.setdefault("service, rounded to whole ms", []).append(
                    (m["relative_pinball_loss"], m["mean_abs_coverage_error"], m["interval_coverage"]["0.9"]))
        print(f"seed {seed}: {len(ts.traces)} traces, {len(yt)} test rows, "
              f"{len(np.unique([t['runtime_ms'] for t in ts.traces]))} distinct runtimes", flush=True)
    print(f"\nmedians over {args.seeds} seeds\n")
    print("| method | rel. pinball | MACE | cov. 90% |\n|---|---:|---:|---:|")
    for method, values in results.items():
        pin, mace, cov = (statistics.median(v[k] for v in values) for k in range(3))
        print(f"| {method} | {pin:.4f} | {mace:.4f} | {cov:.3f} |")


if __name__ == "__main__":
    main()
