"""Coverage of a queue's total against the true sum, with and without the shared factor.

A scheduler reads a queue's wait from ``total_interval``. Each set below has a known
generator: train the service's model on 2000 rows (``algorithm: auto``), draw a queue
of 5, 50 or 500 new tasks, and compare the 90% ``total_interval`` with 20,000 sums of
fresh runtimes of exactly those tasks from the generator. Repeated over ``--seeds``
trainings. "independent" is the total of the tasks' distributions as if the model
were exact (``shared_log_sd`` set to 0), "service" is what the service answers: the
same total times the model's shared factor (its uncertainty about the runtimes'
level, common to every task of the queue).

    uv run python benchmarks/queue_totals.py [--seeds 12] [--rows 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from swarmpilot_predictor.modeling import QuantileModel

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
    return base * np.exp((0.05 + 0.55 * X[:, 1]) * rng.standard_normal(shape))  # noise grows with the load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--rows", type=int, default=2000)
    args = ap.parse_args()
    print("| set | queue | shared log sd | 90% coverage, independent | 90% coverage, service | worst training (service) |")
    print("|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    for kind in ("lognormal", "slow_mode", "heteroscedastic"):
        cover: dict[int, list[tuple[float, float]]] = {q: [] for q in QUEUES}
        taus = []
        for seed in range(args.seeds):
            rng = np.random.default_rng(100 + seed)
            X = features(args.rows, rng)
            model = QuantileModel(["numeric", "numeric"], [0, 0]).fit(X, runtimes(kind, X, rng))
            taus.append(model.shared_log_sd_)
            for q in QUEUES:
                Xq = features(q, rng)
                truth = np.concatenate([runtimes(kind, Xq, np.random.default_rng([seed, q, k]), 2000).sum(axis=1)
                                        for k in range(SUMS // 2000)])
                dist = model.predict_distribution(Xq)
                got = []
                for shared in (0.0, model.shared_log_sd_):
                    dist.shared_log_sd = shared
                    lo, hi = dist.total().interval(0.9)
                    got.append(float(((truth >= lo) & (truth <= hi)).mean()))
                cover[q].append((got[0], got[1]))
        for q in QUEUES:
            c = np.array(cover[q])
            print(f"| {kind} | {q} | {np.mean(taus):.4f} | {c[:, 0].mean():.3f} | {c[:, 1].mean():.3f} | {c[:, 1].min():.2f} |",
                  flush=True)
    print(f"\n{args.seeds} trainings of {args.rows} rows per set; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
