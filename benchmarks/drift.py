"""False alarms and detection delay of the drift test (``monitoring.RollingAccuracy``).

Runtimes are LogNormal(log 100, 0.2) and every observation carries the true quantiles of
that distribution at the monitored levels: a perfectly calibrated model. The drift test
is looked at after every batch of observations, as ``/observe`` does.

* **False alarms**: ``--streams`` calibrated streams of ``--length`` observations each; the
  share called drifted at some look, and the first such observation count.
* **Delay**: after ``--warm`` calibrated observations the runtimes become ``shift`` times
  slower; the number of slow observations until the model is called drifted (median and
  maximum over ``--seeds`` streams; a stream with a false alarm before the shift is left out
  and counted).

Run from the repository root (a copy of the script in another checkout measures that
checkout's ``src``)::

    uv run python benchmarks/drift.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from swarmpilot_predictor.monitoring import MONITOR_LEVELS, RollingAccuracy  # noqa: E402

ALPHA, MIN_OBSERVATIONS, WINDOW = 1e-3, 30, 1000  # the service's defaults
SIGMA = 0.2
TRUE_Q = np.exp(np.log(100) + SIGMA * norm.ppf(np.asarray(MONITOR_LEVELS)))


def _batch(rng: np.random.Generator, n: int, shift: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    return np.exp(np.log(100 * shift) + SIGMA * rng.standard_normal(n)), np.tile(TRUE_Q, (n, 1))


def first_alarm(seed: int, length: int, batch: int) -> int | None:
    """Observations until a calibrated stream is first called drifted (None: never)."""
    rng = np.random.default_rng(seed)
    tracker = RollingAccuracy(WINDOW)
    for seen in range(batch, length + 1, batch):
        tracker.add(*_batch(rng, batch))
        if tracker.report(ALPHA, MIN_OBSERVATIONS)["drifted"]:
            return seen
    return None


def delay(seed: int, shift: float, warm: int, batch: int, limit: int = 5000) -> int | None:
    """Slow observations until the alarm; -1 for a false alarm before the shift, None for none."""
    rng = np.random.default_rng(10_000 + seed)
    tracker = RollingAccuracy(WINDOW)
    for _ in range(warm // batch):
        tracker.add(*_batch(rng, batch))
        if tracker.report(ALPHA, MIN_OBSERVATIONS)["drifted"]:
            return -1
    for seen in range(batch, limit + 1, batch):
        tracker.add(*_batch(rng, batch, shift))
        if tracker.report(ALPHA, MIN_OBSERVATIONS)["drifted"]:
            return seen
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--length", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--warm", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=10, help="observations per /observe (and per look)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    alarms = [first_alarm(s, args.length, args.batch) for s in range(args.streams)]
    hit = [a for a in alarms if a is not None]
    print("| calibrated streams | observations each | called drifted at some look | first alarm, median (min) |")
    print("|---|---|---|---|")
    first = f"{int(np.median(hit))} ({min(hit)})" if hit else "-"
    print(f"| {args.streams} | {args.length} | {len(hit)} ({len(hit) / args.streams:.1%}) | {first} |")
    print()
    print(f"| shift after {args.warm} calibrated observations | median delay | max delay | false alarms before the shift | never |")
    print("|---|---|---|---|---|")
    for shift in (1.5, 1.2, 1.1):
        got = [delay(s, shift, args.warm, args.batch) for s in range(args.seeds)]
        ok = [g for g in got if g is not None and g >= 0]
        print(f"| {shift}x | {np.median(ok):.0f} | {max(ok)} | {sum(g == -1 for g in got)} of {args.seeds} | "
              f"{sum(g is None for g in got)} |" if ok else f"| {shift}x | - | - | {sum(g == -1 for g in got)} | - |")
    print(f"\n({time.perf_counter() - t0:.0f} s; batches of {args.batch}, window {WINDOW}, alpha {ALPHA})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
