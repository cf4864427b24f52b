"""A first-run flag the traces state themselves, against one derived from their timestamps.

A scheduler knows which runs were a shape's first on an instance (it sent them), and may
train with ``first_of_shape`` in its traces rather than timestamps. This takes
``h100_resnet50_vision.jsonl`` (``examples/data``), marks each trace's true first run in
time order, splits it 70/30 at random (``--seed``) and trains the service (``algorithm``
auto) three ways: with timestamps (the flag derived from the training rows alone, so a
repeat whose first run fell in the test part counts as a first run), with the flag stated,
and with the flag stated on the code before the traces' own flag had a model for each kind
of run (``--baseline SRC``, a checkout's ``src``). On the held-out tasks, each with its true
flag stated: per-level coverage, the tasks whose ``expect`` lies above their q0.99, the
summed ``expect`` over the summed runtimes, and the 90% interval of the held-out repeats'
total against their measured sum.

    uv run python benchmarks/stated_first_runs.py [--seed 1] [--baseline /path/to/checkout/src]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "examples" / "data" / "h100_resnet50_vision.jsonl"
LEVELS = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99]
IDENT = {"model_type": "vision", "model_name": "resnet50", "hardware": "H100", "software_name": "torch",
         "software_version": "bench"}


def rows_with_first_runs() -> list[dict]:
    rows = [json.loads(line) for line in TRACE.read_text().splitlines() if line.strip()]
    seen: set[tuple] = set()
    for r in sorted(rows, key=lambda r: r["ts"]):
        shape = (r["batch_size"], r["image_size"])
        r["first"] = shape not in seen
        seen.add(shape)
    return rows


def measure(stated: bool, seed: int) -> dict:
    """One training and its held-out figures, in this process (the code on sys.path)."""
    from swarmpilot_predictor.identity import IdentityPattern
    from swarmpilot_predictor.schemas import TrainConfig
    from swarmpilot_predictor.service import PredictorService
    from swarmpilot_predictor.settings import PredictorSettings

    rows = rows_with_first_runs()
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    cut = int(0.7 * len(rows))
    train, test = [rows[i] for i in order[:cut]], [rows[i] for i in order[cut:]]

    def features(r: dict) -> dict:
        return {"batch_size": r["batch_size"], "image_size": r["image_size"]}

    traces = [{**features(r), **({"first_of_shape": r["first"]} if stated else {"ts": r["ts"]}),
               "runtime_ms": r["runtime_ms"]} for r in train]
    with tempfile.TemporaryDirectory() as tmp:
        svc = PredictorService(PredictorSettings(data_dir=Path(tmp) / "data"))
        try:
            metrics = svc.train(TrainConfig(model=IDENT, traces=traces))["metrics"]
            pattern = IdentityPattern(**IDENT)
            tasks = [{**features(r), "first_of_shape": r["first"]} for r in test]
            pred = svc.predict(pattern, tasks, 0.9, LEVELS)
            y = np.array([r["runtime_ms"] for r in test])
            repeats = [t for t in tasks if not t["first_of_shape"]]
            queue = svc.predict(pattern, repeats, 0.9, [0.05, 0.5, 0.95], with_total=True)
        finally:
            svc.close()
    repeat_sum = float(sum(r["runtime_ms"] for r in test if not r["first"]))
    split = metrics.get("regime_split") or {}
    return {
        "model": metrics["algorithm"] + (" (a model for each kind of run)" if split.get("split") else ""),
        "coverage": [float(np.mean(y <= pred.quantiles[:, k])) for k in range(len(LEVELS))],
        "expect_above_q99": int(np.sum(pred.mean > pred.quantiles[:, LEVELS.index(0.99)])),
        "tasks": len(test),
        "expect_ratio": float(pred.mean.sum() / y.sum()),
        "repeats": len(repeats),
        "repeat_sum": repeat_sum,
        "repeat_total": [float(queue.total["expect"]), *queue.total["total_interval"]],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--baseline", help="the src folder of another checkout: the stated flag on that code too")
    ap.add_argument("--one", choices=["derived", "stated"], help=argparse.SUPPRESS)  # a run in a child process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one == "stated", args.seed)))
        return
    runs = [("flag derived from timestamps", "derived", None), ("flag stated", "stated", None)]
    if args.baseline:
        runs.append(("flag stated, baseline code", "stated", str(Path(args.baseline).resolve())))
    print(f"h100_resnet50_vision, random 70/30 split (seed {args.seed}); held-out tasks state their true flag\n")
    print("| training | model | coverage at " + " / ".join(map(str, LEVELS)) + " | tasks with expect > q0.99 "
          "| summed expect / summed runtime | held-out repeats: total's expect [90% interval] against their sum |")
    print("|---|---|---|---:|---:|---|")
    for name, how, src in runs:
        env = {**os.environ, **({"PYTHONPATH": src} if src else {})}
        out = subprocess.run([sys.executable, __file__, "--one", how, "--seed", str(args.seed)], env=env,
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        e, lo, hi = r["repeat_total"]
        print(f"| {name} | {r['model']} | {' / '.join(f'{c:.2f}' for c in r['coverage'])} | "
              f"{r['expect_above_q99']} of {r['tasks']} | {r['expect_ratio']:.3f} | "
              f"{e:,.0f} ms [{lo:,.0f}, {hi:,.0f}] against {r['repeat_sum']:,.0f} ms ({r['repeats']} tasks) |")


if __name__ == "__main__":
    main()
