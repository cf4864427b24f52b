"""Tens of training rows: the service against the baselines where real models start.

A model registered from its first traces has tens of runs to learn from, not thousands.
For each synthetic generator of ``accuracy.py`` whose true quantiles a model can know
(``cold_start`` is left out: its truth holds whether a run was its shape's first), each
training size and each of ``--seeds`` draws, every method of ``accuracy.py`` trains on
the draw's first N rows and is scored on 3,000 more rows of the same draw *in
expectation*: by its expected pinball loss under each test row's true distribution
(``accuracy.TruthGrid``), so the only noise left is the training draw's.

    uv run python benchmarks/small_data.py [--sizes 20,40,80,140] [--seeds 10] [--folds K] [--jobs J]

Per generator and size it prints the geometric mean over draws of the service's expected
relative pinball divided by the best baseline's of that draw (± its standard error, as a
ratio), the largest such ratio, how many draws the service won, the oracle's ratio, and
which baseline was best how often; then the geometric mean over every draw. ``--folds K``
trains the service with K cross-validation folds at every size instead of its default.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy  # noqa: E402  (the generators, the methods and the expected loss)

GENERATORS = {g.__name__.removeprefix("synth_"): g for g in accuracy.GENERATORS if g is not accuracy.synth_cold_start}
TEST_ROWS = 3000
SEED_BASE = 500  # draw k of a generator: its default seed + SEED_BASE + 1000 k


def draw(name: str, n: int, k: int, folds: int | None) -> dict[str, float]:
    """Every method's expected relative pinball on one draw of ``n`` training rows."""
    warnings.filterwarnings("ignore")
    accuracy.ServiceModel.n_folds = folds  # this worker process's; evaluate() makes the instance
    gen = GENERATORS[name]
    ts = gen(n + TEST_ROWS, seed=gen.__defaults__[1] + SEED_BASE + 1000 * k)
    rows, _ = accuracy.evaluate(ts, (np.arange(n), np.arange(n, n + TEST_ROWS)))
    out = {r.method: r.metrics["exp_rel_pinball"] for r in rows if not r.reference or r.method == "oracle"}
    out["chose"] = rows[0].note
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20,40,80,140", help="training rows per draw")
    ap.add_argument("--seeds", type=int, default=10, help="draws per generator and size")
    ap.add_argument("--sets", default=",".join(GENERATORS))
    ap.add_argument("--folds", type=int, default=None, help="the service's folds at every size (default: its own)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    names = args.sets.split(",")
    tasks = [(name, n, k) for name in names for n in sizes for k in range(args.seeds)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        results = dict(zip(tasks, pool.map(draw, *zip(*tasks), [args.folds] * len(tasks))))
    print("| generator | training rows | service / best baseline | largest | draws won | oracle / best | best baseline |")
    print("|---|---:|---:|---:|---:|---:|---|")
    every: list[float] = []
    for name in names:
        for n in sizes:
            logs, olog, best_of = [], [], Counter()
            for k in range(args.seeds):
                r = results[(name, n, k)]
                best = min((m for m in r if m not in ("service", "oracle", "chose")), key=r.get)
                best_of[best] += 1
                logs.append(math.log(r["service"] / r[best]))
                olog.append(math.log(r["oracle"] / r[best]))
            every += logs
            g, se = accuracy.geometric_mean(logs)
            print(f"| {name} | {n} | {g:.3f} ± {se:.3f} | {math.exp(max(logs)):.3f} | "
                  f"{sum(v <= 0 for v in logs)}/{len(logs)} | {math.exp(np.mean(olog)):.3f} | "
                  + ", ".join(f"{m} {c}" for m, c in best_of.most_common()) + " |", flush=True)
    print(f"\nGeometric mean over all {len(every)} draws: {math.exp(np.mean(every)):.3f} "
          f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
