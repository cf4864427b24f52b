"""A lookup table's answers at levels it does not store, against its model's.

A table stores each record's quantiles at the model's levels (the training config's
``quantiles``) and its interval; a request for other levels is read off those. This
generates, for each model below, the table of its own training traces, asks the table
and the model for every record's trace at the levels of ``PROBES`` and prints the
relative difference of the table's answer from the model's at each level: the median
over the records and the 90th percentile (and the worst record's, at its level). It also prints queue totals (the 0.05, 0.5 and 0.95
quantiles of 10 and 100 of the records' tasks, 8 random queues each: the median and
worst relative difference), the table file's bytes per record and the seconds it takes
to parse (no sidecar).

Models: the README's H100 ResNet-50 example (the shipped trace file and config, levels
0.25, 0.5, 0.75, 0.99); runs 10 times slower 5% and 15% of the time (the levels of the
same config); a smooth lognormal LLM model (two token counts, log sd 0.2, the levels
0.5, 0.9, 0.99).

It also reads every record at 217 levels (even in normal score from 0.0001 to 0.9999, and
every 0.01) and prints where the table's answer is off in time and in probability (the
model's level at the table's answer, read off the model's quantiles at those levels): near
a mode's start a small miss in level is a large one in time, and in a flat stretch a small
miss in time a large one in level, so a record counts as off where both are (over 5% in
time and 0.02 in level, at a level from 0.05 to 0.95).

    uv run python benchmarks/table_levels.py
    uv run python benchmarks/table_levels.py --knots 0     # the stored levels alone
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
from scipy.special import ndtr

from swarmpilot_predictor.identity import IdentityPattern
from swarmpilot_predictor.lookup import LookupTable
from swarmpilot_predictor.schemas import TrainConfig
from swarmpilot_predictor.service import PredictorService
from swarmpilot_predictor.settings import PredictorSettings
from swarmpilot_predictor.traces import iter_trace_file

ROOT = Path(__file__).resolve().parent.parent
PROBES = [0.001, 0.01, 0.1, 0.3, 0.6, 0.8, 0.9, 0.93, 0.95, 0.97, 0.995, 0.999, 0.9999]
DENSE = np.unique(np.round(np.concatenate([ndtr(np.linspace(-3.72, 3.72, 120)), np.arange(1, 100) * 0.01]), 6))
BODY = (DENSE >= 0.05) & (DENSE <= 0.95)
TOTAL_LEVELS = [0.05, 0.5, 0.95]


def slow_mode(share: float, rows: int = 500, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    batch = rng.integers(1, 9, rows)
    y = (2 + batch) * np.exp(0.1 * rng.standard_normal(rows)) * np.where(rng.random(rows) < share, 10, 1)
    return [{"batch": int(b), "runtime_ms": float(v)} for b, v in zip(batch, y)]


def lognormal_llm(rows: int = 2000, seed: int = 2) -> list[dict]:
    rng = np.random.default_rng(seed)
    inp, out = rng.integers(16, 4096, rows), rng.integers(8, 1024, rows)
    y = (15 + 0.01 * inp + 9.0 * out) * rng.lognormal(0.0, 0.2, rows)
    return [{"input_tokens": int(i), "output_tokens": int(o), "runtime_ms": float(v)} for i, o, v in zip(inp, out, y)]


def cases() -> list[tuple[str, dict]]:
    config = json.loads((ROOT / "examples" / "train_vision.json").read_text())["config"]
    vision = list(iter_trace_file(ROOT / "examples" / "data" / "h100_resnet50_vision.jsonl"))
    model = config["model"]
    return [
        ("H100 ResNet-50 (README example)", {**config, "traces": vision}),
        ("slow mode 5% x10", {**config, "model": {**model, "model_name": "slow5"}, "traces": slow_mode(0.05),
                              "features": None}),
        ("slow mode 15% x10", {**config, "model": {**model, "model_name": "slow15"}, "traces": slow_mode(0.15),
                               "features": None}),
        ("lognormal LLM", {"model": {**model, "model_type": "llm", "model_name": "lognormal"},
                           "traces": lognormal_llm(), "quantiles": [0.5, 0.9, 0.99]}),
    ]


def cell(errs: np.ndarray, spread: str = "worst") -> str:
    """The median absolute difference, and the 90th percentile of it or the worst difference."""
    a = np.abs(errs)
    other = np.quantile(a, 0.9) * 100 if spread == "p90" else errs[np.argmax(a)] * 100
    return f"{np.median(a) * 100:.1f}% ({other:{'.1f' if spread == 'p90' else '+.1f'}}%)"


def dense_row(service: PredictorService, pattern: IdentityPattern, feats: list[dict], table: str) -> str:
    """The table's answers against the model's at every level of ``DENSE``, in time and in level."""
    levels = DENSE.tolist()
    qm = np.array([r["quantile_predictions"] for r in service.predict(pattern, feats, quantiles=levels).batch_response()["results"]])
    qt = np.array([r["quantile_predictions"] for r in service.predict(
        pattern, feats, quantiles=levels, lookup_table=True, lookup_table_name=table).batch_response()["results"]])
    in_time = np.abs(qt / qm - 1)
    # The model's level at the table's answer, read linearly off its quantiles at DENSE.
    in_level = np.abs(np.array([np.interp(t, m, DENSE) for t, m in zip(qt, qm)]) - DENSE)
    largest = in_level.max(axis=1)
    off = ((in_time > 0.05) & (in_level > 0.02) & BODY).any(axis=1)
    return (f"{in_time.mean() * 100:.2f}% | {np.median(largest):.4f} ({np.quantile(largest, 0.9):.4f}) | "
            f"{int(off.sum()):,} of {len(feats):,}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--knots", type=int, default=None, help="the generation's knots (default: the service's)")
    args = ap.parse_args()
    knots = {} if args.knots is None else {"knots": args.knots}
    level_rows, total_rows, file_rows, worst, dense = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        service = PredictorService(PredictorSettings(data_dir=Path(tmp), cache_size=0))
        try:
            for name, config in cases():
                service.train(TrainConfig.model_validate(config))
                pattern = IdentityPattern.from_parts(config["model"])
                path = Path(tmp) / "traces.jsonl"
                path.write_bytes(b"\n".join(orjson.dumps(t) for t in config["traces"]))
                table = f"{config['model']['model_name']}.json"
                service.generate_table(pattern, path, table_name=table, **knots)
                table_path = Path(tmp) / "tables" / table
                records = orjson.loads(table_path.read_bytes())
                t0 = time.perf_counter()
                LookupTable.load(table_path)
                parse_s = time.perf_counter() - t0
                file_rows.append(f"| {name} | {len(records):,} | {table_path.stat().st_size / len(records):.0f} | "
                                 f"{parse_s * 1e3:.0f} ms |")
                feats = [r["features"] for r in records]
                m = service.predict(pattern, feats, quantiles=PROBES).batch_response()
                t = service.predict(pattern, feats, quantiles=PROBES, lookup_table=True,
                                    lookup_table_name=table).batch_response()
                assert all(r["match"] == "exact" for r in t["results"])
                qm = np.array([r["quantile_predictions"] for r in m["results"]])
                qt = np.array([r["quantile_predictions"] for r in t["results"]])
                rel = qt / qm - 1
                level_rows.append(f"| {name} | " + " | ".join(cell(rel[:, k], "p90") for k in range(len(PROBES))) + " |")
                worst.append(f"| {name} | {np.abs(rel).max() * 100:.1f}% | {PROBES[int(np.argmax(np.abs(rel).max(axis=0)))]} |")
                dense.append(f"| {name} | " + dense_row(service, pattern, feats, table) + " |")
                pick = random.Random(7)
                for n in (10, 100):
                    errs: list[list[float]] = [[] for _ in TOTAL_LEVELS]
                    for _ in range(8):
                        queue = [dict(pick.choice(feats)) for _ in range(n)]
                        mq = service.predict(pattern, queue, quantiles=TOTAL_LEVELS, with_total=True).batch_response()
                        tq = service.predict(pattern, queue, quantiles=TOTAL_LEVELS, with_total=True, lookup_table=True,
                                             lookup_table_name=table).batch_response()
                        for k in range(len(TOTAL_LEVELS)):
                            errs[k].append(tq["total_quantiles"][k] / mq["total_quantiles"][k] - 1)
                    total_rows.append(f"| {name} | {n} | " + " | ".join(cell(np.array(e)) for e in errs) + " |")
        finally:
            service.close()
    print("Single tasks: the table's answer against the model's, median |difference| (90th percentile) over the records\n")
    print("| model | " + " | ".join(f"q{p:g}" for p in PROBES) + " |")
    print("|---|" + "---:|" * len(PROBES))
    print("\n".join(level_rows))
    print("\nThe worst record\n\n| model | worst |difference| | at |\n|---|---:|---:|")
    print("\n".join(worst))
    print(f"\nEvery record at {len(DENSE)} levels: the mean |difference| in time; each record's largest "
          "difference in level (median, 90th percentile); the records off (over 5% in time and 0.02 in level "
          "at a level from 0.05 to 0.95)\n")
    print("| model | mean in time | largest in level: median (p90) | records off |")
    print("|---|---:|---:|---:|")
    print("\n".join(dense))
    print("\nQueue totals: median |difference| (worst) over 8 queues\n")
    print("| model | queue | " + " | ".join(f"q{p:g}" for p in TOTAL_LEVELS) + " |")
    print("|---|---:|" + "---:|" * len(TOTAL_LEVELS))
    print("\n".join(total_rows))
    print("\nThe table file\n")
    print("| model | records | bytes per record | parse |")
    print("|---|---:|---:|---:|")
    print("\n".join(file_rows))


if __name__ == "__main__":
    main()
