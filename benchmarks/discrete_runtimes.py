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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--rows", type=int, default=2000)
    args = ap.parse_args()
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
