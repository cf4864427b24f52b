"""A device (or any category) training never saw: how well is it answered?

Each draw makes ``--devices`` devices whose speeds differ by a log-normal factor (log sd
``--device-sd``), trains the service's model on all but one of them (``--rows`` rows in
all, runtime = device factor x (5 + 0.1 tokens) x lognormal noise of sigma 0.25), and
asks it about fresh runs of the one left out. "after" is the model as trained;
"before" is the same model with its unseen-category figures set to 0, which is how it
answered before 2026-12-01 (the unknown level, with a known category's spread).

    uv run python benchmarks/unseen_categories.py [--draws 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import LEVELS  # noqa: E402  (the accuracy benchmark's levels)

from swarmpilot_predictor.modeling import QuantileModel, quantile_metrics  # noqa: E402


def draw(seed: int, devices: int, device_sd: float, rows: int, test_rows: int):
    """Training rows of every device but the last, and test rows of the last."""
    rng = np.random.default_rng(seed)
    factor = np.exp(device_sd * rng.standard_normal(devices))

    def runs(dev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tokens = rng.uniform(10, 500, len(dev))
        y = factor[dev] * (5 + 0.1 * tokens) * rng.lognormal(0.0, 0.25, len(dev))
        return np.column_stack([dev.astype(float), tokens]), y

    X, y = runs(rng.integers(0, devices - 1, rows))
    Xt, yt = runs(np.full(test_rows, devices - 1))
    Xt[:, 0] = np.nan  # as the service reads a category it has not learned
    return X, y, Xt, yt


def cost(args) -> None:
    """What an unseen category costs a batch: 100,000 tasks of one, against a known one
    (quantiles, moments and the total), for a model with a shape model and one without."""
    import tracemalloc

    rng = np.random.default_rng(0)
    n = 3000
    dev = rng.integers(0, 5, n).astype(float)
    tokens = rng.uniform(10, 500, n)
    slow = rng.random(n) < np.where(dev % 2 == 0, 0.2, 0.02)
    y = 2.0 ** dev * (5 + 0.1 * tokens) * rng.lognormal(0.0, 0.2, n) * np.where(slow, 8.0, 1.0)
    print("| model | 100,000 tasks of a known device | of an unseen one | single prediction, known / unseen |")
    print("|---|---|---|---|")
    for name, params in (("linear", {"shape": False}), ("linear with a shape model", {"shape": True})):
        model = QuantileModel(["categorical", "numeric"], [5, 0], "linear", params=params).fit(
            np.column_stack([dev, tokens]), y)
        cells = []
        for code in (2.0, np.nan):
            X = np.column_stack([np.full(100_000, code), rng.uniform(10, 500, 100_000)])
            tracemalloc.start()
            t0 = time.perf_counter()
            dist = model.predict_distribution(X)
            dist.quantiles(list(LEVELS))
            dist.mean_std()
            dist.total().quantiles([0.5])
            took = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            cells.append(f"{took:.2f} s, {peak / 1e6:.0f} MB")
        single = []
        for code in (2.0, np.nan):
            x = [code, 100.0]
            model.describe_one(x, tuple(LEVELS))
            t0 = time.perf_counter()
            for _ in range(1000):
                model.describe_one(x, tuple(LEVELS))
            single.append(f"{(time.perf_counter() - t0) * 1e3:.0f} µs")
        print(f"| {name} | {cells[0]} | {cells[1]} | {' / '.join(single)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=40)
    ap.add_argument("--devices", type=int, default=6, help="devices per draw, one of them left out")
    ap.add_argument("--device-sd", type=float, default=0.8, help="log sd of the devices' speed factors")
    ap.add_argument("--rows", type=int, default=500, help="training rows per draw")
    ap.add_argument("--test-rows", type=int, default=200)
    args = ap.parse_args()
    t0 = time.perf_counter()
    got: dict[str, list[dict]] = {"before": [], "after": []}
    sds = []
    for seed in range(args.draws):
        X, y, Xt, yt = draw(seed, args.devices, args.device_sd, args.rows, args.test_rows)
        model = QuantileModel(["categorical", "numeric"], [args.devices - 1, 0]).fit(X, y)
        sds.append(model.unseen_sd_[0])
        # As a model stored before the unseen-category figures loads: without them.
        before = QuantileModel.from_json({k: v for k, v in model.to_json().items()
                                          if k not in ("unseen_shift", "unseen_sd")})
        for name, m in (("before", before), ("after", model)):
            got[name].append(quantile_metrics(yt, m.predict_quantiles(Xt, LEVELS), LEVELS))
    print(f"{args.draws} draws of {args.devices} devices (log sd {args.device_sd}), one left out; "
          f"{args.rows} training rows, {args.test_rows} test runs each; {time.perf_counter() - t0:.0f} s")
    print(f"learned log sd of the known devices: median {statistics.median(sds):.2f} "
          f"(range {min(sds):.2f} to {max(sds):.2f})\n")
    print("| answer | 90% coverage, mean | 90% coverage in [0.8, 1] | MACE, mean | relative pinball, mean "
          "| relative pinball, median | relative pinball, worst |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, ms in got.items():
        cov = [m["interval_coverage"]["0.9"] for m in ms]
        pin = [m["relative_pinball_loss"] for m in ms]
        print(f"| {name} | {statistics.fmean(cov):.3f} | {sum(0.8 <= c for c in cov) / len(cov):.2f} "
              f"| {statistics.fmean(m['mean_abs_coverage_error'] for m in ms):.3f} "
              f"| {statistics.fmean(pin):.3f} | {statistics.median(pin):.3f} | {max(pin):.3f} |")
    print()
    cost(args)
    ratio = [a["relative_pinball_loss"] / b["relative_pinball_loss"] for a, b in zip(got["after"], got["before"])]
    print(f"\npinball after / before: median {statistics.median(ratio):.3f}, geometric mean "
          f"{float(np.exp(np.mean(np.log(ratio)))):.3f}, after better in {sum(r < 1 for r in ratio)} of {len(ratio)}")


if __name__ == "__main__":
    main()
