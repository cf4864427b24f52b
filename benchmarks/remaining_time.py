"""A running task's time left, against its whole runtime, on held-out real traces.

A scheduler that estimates an instance's wait counts the task the instance is running. The
service answers a trace that states ``elapsed_ms`` with the distribution of its time left
(its runtime given that it has run that long, less that time). This takes every real trace
set the accuracy benchmark takes (``../shared/data``, skipped where absent, and the H200
traces of ``examples/data``), splits it 70/30 as that benchmark does and trains the service's
model (``algorithm`` auto) on the 70%. Each held-out task is then looked at after it has run
for its own predicted quantile at 0.25, 0.5, 0.75 and 0.9 (the moment by which that share of
such tasks would have finished); of the tasks still running then, the time each really had
left is scored against three answers at the accuracy benchmark's levels:

* **time left**: the service's answer to the trace with ``elapsed_ms``;
* **whole less elapsed**: the whole runtime's quantiles less the time run, at least 0;
* **whole**: the whole runtime's quantiles, as if the task had not started (what the service
  answered before it read ``elapsed_ms``).

Columns: the tasks still running; per answer the relative pinball loss (mean pinball over
the levels divided by the mean time left); of the time left the mean absolute coverage error
over the levels (MACE) and the coverage of its 90% interval. Then queues: for 400 random
queues of each set (a running task at one of those moments and 4 queued held-out tasks), the
coverage of the total's 90% interval and the relative pinball loss of its quantiles, with the
running task's time left and with its whole runtime.

    uv run python benchmarks/remaining_time.py [--sets h100,llm]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import LEVELS, fit_service, gpu_sets, real_sets, split_set  # noqa: E402

from swarmpilot_predictor.distribution import RemainingDistribution  # noqa: E402

MOMENTS = (0.25, 0.5, 0.75, 0.9)
QUEUES = 400
QUEUED = 4
SEED = 7


def pinball(q: np.ndarray, y: np.ndarray) -> float:
    """Mean pinball loss over LEVELS of quantiles ``q`` (rows, levels) for outcomes ``y``."""
    d = y[:, None] - q
    return float(np.mean(np.maximum(LEVELS * d, (LEVELS - 1) * d)))


def score_set(ts) -> list[str]:
    sp = split_set(ts)
    model, fit_s = fit_service(sp)
    dist = model.predict_distribution(sp.Xt)
    whole = dist.quantiles(LEVELS)
    y = sp.yt
    lines = [f"{ts.name}: {len(sp.y)} training rows, {len(y)} held out, {model.family_} ({fit_s:.1f} s)"]
    rng = np.random.default_rng(SEED)
    for moment in MOMENTS:
        elapsed = dist.quantiles([moment])[:, 0]
        running = np.flatnonzero(y > elapsed)
        if len(running) < 10:
            lines.append(f"| {moment} | {len(running)} | (too few) | | | | | |")
            continue
        e, left_y = elapsed[running], y[running] - elapsed[running]
        t0 = time.perf_counter()
        left = RemainingDistribution.of(dist.subset(running), e)
        q = left.quantiles(LEVELS)
        us = (time.perf_counter() - t0) / len(running) * 1e6
        scale = float(left_y.mean())
        ours = pinball(q, left_y) / scale
        less = pinball(np.maximum(whole[running] - e[:, None], 0.0), left_y) / scale
        start = pinball(whole[running], left_y) / scale
        cover = (left_y[:, None] <= q).mean(axis=0)
        mace = float(np.abs(cover - LEVELS).mean())
        inside = float(((left_y >= q[:, 0]) & (left_y <= q[:, 6])).mean())
        lines.append(f"| {moment} | {len(running)} | {ours:.4f} | {less:.4f} | {start:.4f} | {mace:.3f} | {inside:.3f} "
                     f"| {us:.0f} |")
    # Queues: a running task at one of the moments, and QUEUED held-out tasks behind it.
    n = len(y)
    hits = {"time left": 0, "whole": 0}
    losses: dict[str, list[float]] = {"time left": [], "whole": []}
    truths = []
    made = 0
    while made < QUEUES:
        moment = MOMENTS[made % len(MOMENTS)]
        run = int(rng.integers(n))
        e = float(dist.subset(np.array([run])).quantiles([moment])[0, 0])
        if y[run] <= e:
            continue  # finished by then: not running
        others = rng.choice(np.delete(np.arange(n), run), QUEUED, replace=False)
        rows = np.concatenate([[run], others])
        truth = float(y[run] - e + y[others].sum())
        truths.append(truth)
        elapsed = np.zeros(len(rows))
        elapsed[0] = e
        for name, tasks in (("time left", RemainingDistribution.of(dist.subset(rows), elapsed)),
                            ("whole", dist.subset(rows))):
            total = tasks.total()
            lo, hi = total.quantiles([0.05, 0.95])
            hits[name] += lo <= truth <= hi
            losses[name].append(pinball(total.quantiles(LEVELS)[None, :], np.array([truth])))
        made += 1
    mean_truth = float(np.mean(truths))
    lines.append(f"queues of a running task and {QUEUED} queued: 90% interval coverage "
                 f"{hits['time left'] / QUEUES:.3f} with its time left, {hits['whole'] / QUEUES:.3f} with its whole "
                 f"runtime; relative pinball {np.mean(losses['time left']) / mean_truth:.4f} against "
                 f"{np.mean(losses['whole']) / mean_truth:.4f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="", help="comma-separated parts of set names to run (default: all)")
    args = ap.parse_args()
    wanted = [w for w in args.sets.split(",") if w]
    sets = [ts for ts in [*real_sets(), *gpu_sets()] if not wanted or any(w in ts.name for w in wanted)]
    header = ("| run to the task's own | still running | rel. pinball: time left | whole less elapsed | whole "
              "| time left's MACE | cov. 90% | µs/task |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for ts in sets:
        lines = score_set(ts)
        print(lines[0] + "\n")
        print(header)
        print("\n".join(lines[1:-1]) + "\n")
        print(lines[-1] + "\n")


if __name__ == "__main__":
    main()
