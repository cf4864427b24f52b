"""How well a deadline's probability (``deadline_ms``) is calibrated, on held-out traces.

A scheduler with a latency objective asks how likely a task, or a queue, is done within it:
``deadline_probability`` and ``total_deadline_probability`` (README, "Deadlines"). This
takes every trace set the accuracy benchmark takes (the real ones in ``../shared/data``,
skipped where absent, the H200 traces of ``examples/data``, and its synthetic sets), splits
it 70/30 as that benchmark does and trains the service's model (``algorithm`` auto) on the
70%. The deadlines are objectives one would set for the model: the training runtimes'
quantiles at 0.1, 0.25, 0.5, 0.75 and 0.9, the same for every task. For each, over the held-out
tasks, it reports the mean probability the service gives against the share of tasks really
done within it, and the Brier score (mean squared error of the probability against the 0/1
outcome) of the service against that of the training runtimes' own share within the
deadline (the best answer that ignores the task's features): the skill is
``1 - Brier / Brier of that share``, above 0 where the features help. Then queues: 400 random
queues of 5 held-out tasks, with the deadlines at the queues' true totals' quantiles at 0.25,
0.5, 0.75 and 0.9, the total's probability against the share of queues done within each.

    uv run python benchmarks/deadline.py [--sets h100,llm] [--no-synthetic]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import fit_service, gpu_sets, real_sets, split_set, synthetic_sets  # noqa: E402

from swarmpilot_predictor.distribution import levels_reached  # noqa: E402

TASK_LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9)
QUEUE_LEVELS = (0.25, 0.5, 0.75, 0.9)
QUEUES = 400
QUEUED = 5
SEED = 11


def score_set(ts) -> list[str]:
    sp = split_set(ts)
    model, fit_s = fit_service(sp)
    dist = model.predict_distribution(sp.Xt)
    y, n = sp.yt, len(sp.yt)
    lines = [f"{ts.name}: {len(sp.y)} training rows, {n} held out, {model.family_} ({fit_s:.1f} s)", "tasks"]
    pooled = []
    for level in TASK_LEVELS:
        deadline = float(np.quantile(sp.y, level))
        t0 = time.perf_counter()
        p = levels_reached(dist, np.full(n, deadline))
        us = (time.perf_counter() - t0) / n * 1e6
        done = (y <= deadline).astype(np.float64)
        share = float((sp.y <= deadline).mean())
        brier, base = float(np.mean((p - done) ** 2)), float(np.mean((share - done) ** 2))
        skill = 1.0 - brier / base if base > 0 else float("nan")
        pooled.append((p, done))
        lines.append(f"| {level} | {deadline:.4g} | {p.mean():.3f} | {done.mean():.3f} | {brier:.4f} | {base:.4f} "
                     f"| {skill:.3f} | {us:.1f} |")
    p_all = np.concatenate([p for p, _ in pooled])
    done_all = np.concatenate([d for _, d in pooled])
    lines.append(f"expected calibration error over the {len(TASK_LEVELS)} deadlines (10 bins of the probability): "
                 f"{calibration_error(p_all, done_all):.3f}")
    # Queues of QUEUED held-out tasks: the total's probability of being done within a deadline.
    rng = np.random.default_rng(SEED)
    rows = [rng.choice(n, QUEUED, replace=False) for _ in range(QUEUES)]
    truths = np.array([y[r].sum() for r in rows])
    totals = [dist.subset(r).total() for r in rows]
    lines.append("queues")
    for level in QUEUE_LEVELS:
        deadline = float(np.quantile(truths, level))
        t0 = time.perf_counter()
        p = np.array([total.cdf(deadline) for total in totals])
        ms = (time.perf_counter() - t0) / QUEUES * 1e3
        done = (truths <= deadline).astype(np.float64)
        lines.append(f"| {level} | {deadline:.4g} | {p.mean():.3f} | {done.mean():.3f} "
                     f"| {float(np.mean((p - done) ** 2)):.4f} | {ms:.2f} |")
    return lines


def calibration_error(p: np.ndarray, done: np.ndarray, bins: int = 10) -> float:
    """The mean over equal-width bins of the probability of |mean probability - share done|,
    each bin weighted by its share of the answers."""
    which = np.minimum((p * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            err += inside.mean() * abs(p[inside].mean() - done[inside].mean())
    return float(err)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="", help="comma-separated parts of set names to run (default: all)")
    ap.add_argument("--no-synthetic", action="store_true", help="the real trace sets only")
    args = ap.parse_args()
    wanted = [w for w in args.sets.split(",") if w]
    every = [*real_sets(), *gpu_sets(), *([] if args.no_synthetic else synthetic_sets())]
    sets = [ts for ts in every if not wanted or any(w in ts.name for w in wanted)]
    task_header = ("| deadline at the training runtimes' | deadline (ms) | mean probability | share done "
                   "| Brier | Brier of the training share | skill | µs/task |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    queue_header = ("| deadline at the true totals' | deadline (ms) | mean probability | share done | Brier "
                    "| ms/queue |\n|---:|---:|---:|---:|---:|---:|")
    for ts in sets:
        lines = score_set(ts)
        split = lines.index("queues")
        print(lines[0] + "\n")
        print(task_header)
        print("\n".join(lines[2:split - 1]) + "\n")
        print(lines[split - 1] + "\n")
        print(f"{QUEUES} queues of {QUEUED} held-out tasks:\n")
        print(queue_header)
        print("\n".join(lines[split + 1:]) + "\n")


if __name__ == "__main__":
    main()
