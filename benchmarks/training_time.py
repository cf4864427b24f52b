"""Training time of QuantileModel at 100k rows, by shape of the features.

The issue's goal is "training on 100k rows in seconds, not minutes". Numeric features
were always fast; a categorical feature with many values was not (its one-hot columns
entered the Gram matrices and solves squared or cubed). Each case is fitted in a fresh
process (so memory is its own), with ``algorithm: auto`` unless ``--algorithm`` says
otherwise, and reports CPU seconds (all threads), wall seconds and peak memory. LightGBM
is imported before the clock starts, as the service's long-lived training worker has it
(its import took about 2.4 s here, where bytecode is not cached: PYTHONDONTWRITEBYTECODE).

    uv run python benchmarks/training_time.py [--rows 100000] [--cases num2,cat500] [--algorithm auto] [--repeat 1]

``--repeat K`` fits K models per case, each on a draw of its own, in one process, and
reports the mean per model: what training many small groups (``group_by``) costs, e.g.
``--rows 30 --cases num1,num2,cat10 --repeat 50``.

Cases: ``numK`` (K numeric features), ``catK`` (a numeric feature and a categorical of K
values), ``manyK`` (K categorical features of 100 values each), ``mixed``, ``firstruns``
(batch and image size over 2,000 shapes plus the derived first-run flag, whose 2,000
autotuned first runs take 700 to 1,200 ms whatever the shape: the model may answer first
runs and repeats with a model each, which fits two more models), ``exact`` (batch and image
size, the runtime 10 ms below batch 16 and 20 ms from it: an exact function of the features,
as a constant-time kernel timed on a coarse clock gives), ``exactnoisy`` (the same rounded
to whole milliseconds after noise of 1 ms). Where LightGBM is chosen, its boosting rounds
are shown.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASES = ("num2", "num5", "cat10", "cat100", "cat500", "mixed", "cat2000", "firstruns", "exact", "exactnoisy")

FIT = r"""
import json, resource, sys, time
import numpy as np
from swarmpilot_predictor.modeling import QuantileModel

case, n, algorithm, repeat = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])


def draw(seed):
    rng = np.random.default_rng(seed)
    kinds, ncat, cols = [], [], []
    log_mean = np.zeros(n)

    def numeric(lo, hi, slope):
        v = rng.integers(lo, hi, n).astype(float)
        kinds.append("numeric"); ncat.append(0); cols.append(v)
        return slope * np.log(v)

    def categorical(k):
        codes = rng.integers(0, k, n)
        kinds.append("categorical"); ncat.append(k); cols.append(codes.astype(float))
        return rng.normal(0, 0.5, k)[codes]

    if case.startswith("num"):
        for j in range(int(case[3:])):
            log_mean += numeric(1, 2048, 0.5 / (j + 1))
    elif case.startswith("cat"):
        log_mean += numeric(1, 64, 0.7) + categorical(int(case[3:]))
    elif case.startswith("many"):  # that many categorical features of 100 values each, nothing else
        for _ in range(int(case[4:])):
            log_mean += categorical(100)
    elif case == "mixed":  # two numeric features, categoricals of 20 and 100 values, a 0/1 flag
        log_mean += numeric(1, 64, 0.7) + numeric(16, 2048, 0.3) + categorical(20) + categorical(100)
        flag = (rng.random(n) < 0.3).astype(float)
        kinds.append("numeric"); ncat.append(0); cols.append(flag)
        log_mean += 0.5 * flag
    X = np.column_stack(cols) if cols else None
    y = np.exp(1.0 + log_mean + 0.25 * rng.standard_normal(n))
    regime = None
    if case == "firstruns":
        shapes = np.column_stack([rng.integers(1, 65, 2000), rng.integers(64, 1025, 2000)]).astype(float)
        order = np.r_[rng.permutation(2000), rng.integers(0, 2000, n - 2000)]
        first = np.zeros(n)
        first[:2000] = 1.0
        X = np.column_stack([shapes[order], first])
        y = np.where(first == 1, rng.uniform(700, 1200, n), 0.003 * X[:, 0] * X[:, 1] * rng.lognormal(0, 0.05, n))
        kinds, ncat, regime = ["numeric"] * 3, [0, 0, 0], 2
    if case.startswith("exact"):  # a two-valued runtime, a function of the batch size alone
        X = np.column_stack([rng.integers(1, 65, n), rng.integers(64, 1025, n)]).astype(float)
        y = np.where(X[:, 0] < 16, 10.0, 20.0)
        if case == "exactnoisy":
            y = np.round(y + rng.standard_normal(n))
        kinds, ncat = ["numeric"] * 2, [0, 0]
    return X, y, kinds, ncat, regime


import lightgbm  # noqa: F401 - imported once by the service's training worker, not per training
cpu = wall = 0.0
for seed in range(repeat):  # a model per draw: what a group_by training of many groups fits
    X, y, kinds, ncat, regime = draw(seed)
    c0, w0 = time.process_time(), time.perf_counter()
    model = QuantileModel(kinds, ncat, algorithm, regime_column=regime).fit(X, y)
    cpu, wall = cpu + time.process_time() - c0, wall + time.perf_counter() - w0
# The models that serve: the one of all rows, or, split by the first-run flag, one per kind of
# run (the model of all rows, fitted first, then serves none; its shape model is not theirs).
serving = [model] if model.regimes_ is None else list(model.regimes_)
family = " / ".join(m.family_ + (" + shape" if m.shape_ is not None else "")
                    + (f" ({m.location_.best_iteration_} rounds)" if m.family_ == "lightgbm" else "") for m in serving)
if model.regimes_ is not None:
    family = "split: " + family
print(json.dumps({"case": case, "family": family, "cpu": cpu / repeat, "wall": wall / repeat,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--algorithm", default="auto")
    ap.add_argument("--repeat", type=int, default=1,
                    help="models per case, each on its own draw; the figures are per model (the last one's choice shown)")
    args = ap.parse_args()
    per = f", {args.repeat} models per case, figures per model" if args.repeat > 1 else ""
    print(f"{args.rows:,} rows, algorithm {args.algorithm}{per}\n")
    print("| case | chosen | CPU s | wall s | peak RSS MB |")
    print("|---|---|---|---|---|")
    for case in args.cases.split(","):
        done = subprocess.run([sys.executable, "-c", FIT, case, str(args.rows), args.algorithm, str(args.repeat)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"| {case} | failed: {done.stderr.strip().splitlines()[-1:]} | | | |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        digits = 3 if args.repeat > 1 else 1
        print(f"| {case} | {r['family']} | {r['cpu']:.{digits}f} | {r['wall']:.{digits}f} | {r['rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
