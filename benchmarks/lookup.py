"""Lookup tables: generation throughput and lookup latency, on 10k and 1M rows.

For each size N a synthetic LLM trace file (``input_tokens``, ``output_tokens``,
categorical ``dtype``, ``task_id``) is written as JSONL; a LightGBM-backed model
trained on 5,000 such traces then generates the lookup table with the real CLI
(``swarmpilot-predictor table``) in a fresh process, so its wall time and peak
resident memory are the whole command's. The command reads the table back as the
service will serve it (``read back``: parsed, its columns saved in a sidecar), so a
worker's first lookup reads the sidecar (``load s``: parsing the file, then the sidecar).
The table is then loaded and queried in-process:

* exact: 10,000 traces taken from the file (features match a record);
* nearest: the same traces with ``input_tokens`` moved by 0.37 (no exact match,
  answered by the k-d tree of the record's ``dtype``).

``nearest error``: 2,000 fresh random tasks (those with no exact record), the table's median against
the model's for the same task: the median, 90th percentile and largest relative error.

``lookup`` is matching only (:meth:`LookupTable.lookup`); ``answer`` is the whole
response as the HTTP layer renders it (:meth:`LookupTable.predict`); "with the queue's
total" the same for queues of 10 to 10,000 exact traces, the batch's total included. ``batch`` is
one call with all 10,000 traces (per-trace cost, best of 3 runs); ``single`` is one
call per trace (mean over ``--single`` calls).

    uv run python benchmarks/lookup.py                    # 10k and 1M rows, JSON tables
    uv run python benchmarks/lookup.py --rows 10000 --format csv
    uv run python benchmarks/lookup.py --rows 300000 --gzip    # the table written as .json.gz
    uv run python benchmarks/lookup.py --outliers   # nearest error of a table with one far record

``--outliers``: tables of 2,000 such traces (the model's answers for them), as they are and
with one more trace whose ``input_tokens`` or ``output_tokens`` lies far outside (a typo, a
unit mistake: 10^5, 10^15), each asked about the 2,000 fresh tasks of ``nearest error``;
then the same with two real trace files of ``examples/data``. One record should change
the answers of the tasks near it alone, not how every other task finds its nearest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from swarmpilot_predictor.identity import IdentityPattern
from swarmpilot_predictor.lookup import LookupTable, LookupTableStore
from swarmpilot_predictor.schemas import TrainConfig
from swarmpilot_predictor.service import PredictorService
from swarmpilot_predictor.settings import PredictorSettings

IDENTITY = {"model_type": "llm", "model_name": "bench-7b", "hardware": "H100", "software_name": "vllm", "software_version": "0.6.0"}
MODEL = "llm/bench-7b/H100/vllm/0.6.0"
DTYPES = np.array(["fp16", "bf16", "fp8"])
DTYPE_SPEED = np.array([1.0, 1.05, 0.7])


def make_traces(n: int, seed: int, start: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    inp = rng.integers(16, 4096, n)
    out = rng.integers(8, 1024, n)
    d = rng.integers(0, 3, n)
    runtime = (15 + 0.01 * inp + 9.0 * out) * DTYPE_SPEED[d] * rng.lognormal(0.0, 0.2, n)
    return [
        {"task_id": f"task-{start + k}", "input_tokens": int(i), "output_tokens": int(o), "dtype": str(DTYPES[j]), "runtime_ms": float(r)}
        for k, (i, o, j, r) in enumerate(zip(inp, out, d, runtime))
    ]


CHUNK = 100_000
# Queues whose answer with the total is timed (a table's total: README, "Lookup tables").
TOTAL_QUEUES = (10, 100, 1000, 10_000)


def write_trace_file(path: Path, n: int, chunk: int = CHUNK) -> None:
    with path.open("wb") as fh:
        for start in range(0, n, chunk):
            part = make_traces(min(chunk, n - start), seed=1000 + start, start=start)
            fh.write(b"\n".join(orjson.dumps({k: v for k, v in t.items() if k != "runtime_ms"}) for t in part) + b"\n")


# The CLI, reporting its own peak resident memory (VmHWM starts afresh at exec; ru_maxrss
# would carry over the parent's peak through fork).
CLI_WITH_PEAK = """
import re, sys
from swarmpilot_predictor.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
else:
    code = 0
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
print(f"VmHWM_MB={int(hwm) / 1024:.0f}", file=sys.stderr)
sys.exit(code)
"""


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def time_per_trace(fn, traces: list[dict], single_calls: int) -> tuple[float, float]:
    """(µs per trace in one batch call, µs per single-trace call)."""
    fn(traces[:100])  # warm
    runs = []
    for _ in range(3):  # best of 3: a garbage collection pass can land in any one run
        t0 = time.perf_counter()
        fn(traces)
        runs.append(time.perf_counter() - t0)
    batch = min(runs) / len(traces) * 1e6
    sample = traces[:single_calls]
    t0 = time.perf_counter()
    for t in sample:
        fn([t])
    single = (time.perf_counter() - t0) / len(sample) * 1e6
    return batch, single


def nearest_error(service: PredictorService, table: LookupTable, pattern: IdentityPattern,
                  n: int = 2000) -> tuple[float, float, float]:
    """(median, 90th percentile, largest) relative error of the table's medians for fresh tasks."""
    tasks = [{k: v for k, v in t.items() if k not in ("runtime_ms", "task_id")}
             for t in make_traces(n, seed=424242)]
    model = service.predict(pattern, tasks, 0.95, [0.5]).quantiles[:, 0]
    answers = table.predict(pattern, tasks, 0.95, [0.5]).results()
    near = np.array([a["match"] == "nearest" for a in answers])  # (a few may find their own record)
    got = np.array([a["quantile_predictions"][0] for a in answers])
    err = np.abs(got / model - 1)[near]
    return float(np.median(err)), float(np.quantile(err, 0.9)), float(err.max())


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "data"
# Real trace files of examples/data for --outliers, with the features a table keys on.
OUTLIER_REAL_SETS = {"h200_llm_decode": ["input_tokens", "max_tokens"],
                     "h200_text_encoder": ["batch_size", "seq_len", "tokens"]}


def _error_with_far_records(service: PredictorService, pattern: IdentityPattern, traces: list[dict],
                            tasks: list[dict], far: list[tuple[str | None, dict]], work: Path,
                            label: str) -> None:
    """Print the nearest error of tables of ``traces``, as they are and with each ``far`` record added."""
    model = service.predict(pattern, tasks, 0.95, [0.5]).quantiles[:, 0]
    for k, (what, extra) in enumerate(far):
        path = work / "traces.jsonl"
        path.write_bytes(b"\n".join(orjson.dumps(t) for t in traces + ([extra] if extra else [])) + b"\n")
        name = f"far_{k}.json"
        service.generate_table(pattern, path, table_name=name)
        answers = LookupTable.load(work / "data" / "tables" / name).predict(pattern, tasks, 0.95, [0.5]).results()
        near = np.array([a["match"] == "nearest" for a in answers])
        err = np.abs(np.array([a["quantile_predictions"][0] for a in answers]) / model - 1)[near]
        print(f"| {label} | {what or 'as made'} | {near.sum()} | {np.median(err):.4f} | {np.quantile(err, 0.9):.4f} "
              f"| {err.max():.4f} |", flush=True)


def outlier_tables(rows: int = 2000) -> None:
    """Nearest error of tables with and without one far record (``--outliers``): of ``rows``
    synthetic traces, asked about ``nearest_error``'s 2,000 fresh tasks; then of the real
    trace files of ``OUTLIER_REAL_SETS``, whole, asked about 400 tasks of features drawn
    uniformly (whole numbers) between each feature's least and largest value in the file."""
    work = Path(tempfile.mkdtemp(prefix="lookup-outliers-"))
    try:
        service = PredictorService(PredictorSettings(data_dir=work / "data"))
        print("| table | far record | tasks answered by a nearest record | error: median | p90 | max |")
        print("|---|---|---:|---:|---:|---:|")
        service.train(TrainConfig(model=IDENTITY, traces=make_traces(5000, seed=7), algorithm="lightgbm"))
        traces = [{k: v for k, v in t.items() if k not in ("runtime_ms", "task_id")} for t in make_traces(rows, seed=99)]
        tasks = [{k: v for k, v in t.items() if k not in ("runtime_ms", "task_id")}
                 for t in make_traces(2000, seed=424242)]
        typical = {"input_tokens": 1000, "output_tokens": 100, "dtype": "fp16"}
        far = [(None, None)] + [(f"{feature} {value:g}", {**typical, feature: value})
                                for feature in ("input_tokens", "output_tokens") for value in (1e5, 1e15)]
        _error_with_far_records(service, IdentityPattern.from_parts(IDENTITY), traces, tasks, far, work,
                                f"synthetic LLM, {rows:,} traces")
        rng = np.random.default_rng(2)
        for name, features in OUTLIER_REAL_SETS.items():
            identity = {**IDENTITY, "model_name": name}
            records = [orjson.loads(line) for line in (EXAMPLES / f"{name}.jsonl").read_bytes().splitlines() if line.strip()]
            service.train(TrainConfig.model_validate({"model": identity, "traces": records, "features": features}))
            # The file's traces as a table is made from them: their features and times.
            traces = [{k: r[k] for k in (*features, "ts") if k in r} for r in records]
            low = {f: min(r[f] for r in records) for f in features}
            high = {f: max(r[f] for r in records) for f in features}
            tasks = [{f: int(rng.integers(low[f], high[f] + 1)) for f in features} for _ in range(400)]
            far = [(None, None), (f"{features[0]} 1e15", {**low, features[0]: 1e15})]
            _error_with_far_records(service, IdentityPattern.from_parts(identity), traces, tasks, far, work, name)
        service.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="10000,1000000", help="comma-separated table sizes")
    ap.add_argument("--format", default="json", choices=["json", "csv"])
    ap.add_argument("--gzip", action="store_true", help="write the table gzip-compressed (.json.gz, .csv.gz)")
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--single", type=int, default=2_000, help="single-trace calls timed per case")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (traces, model, tables)")
    ap.add_argument("--outliers", action="store_true", help="only the nearest error of tables with one far record")
    args = ap.parse_args()
    if args.outliers:
        outlier_tables()
        return
    sizes = [int(s) for s in args.rows.split(",")]

    work = Path(tempfile.mkdtemp(prefix="lookup-bench-"))
    data = work / "data"
    service = PredictorService(PredictorSettings(data_dir=data))
    t0 = time.perf_counter()
    service.train(TrainConfig(model=IDENTITY, traces=make_traces(5000, seed=7), algorithm="lightgbm"))
    print(f"model: lightgbm on 5,000 traces, trained in {time.perf_counter() - t0:.1f}s; work dir {work}")
    pattern = IdentityPattern.from_parts(IDENTITY)

    rows_out = []
    for n in sizes:
        traces_path = work / f"traces_{n}.jsonl"
        write_trace_file(traces_path, n)
        name = f"bench_{n}.{args.format}" + (".gz" if args.gzip else "")
        cmd = [sys.executable, "-c", CLI_WITH_PEAK, "table", MODEL, str(traces_path), "--output", name,
               "--data-dir", str(data), "--json"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"table generation failed: {proc.stdout.decode()} {proc.stderr.decode()[-2000:]}")
        gen = orjson.loads(proc.stdout)
        peak_mb = float(proc.stderr.decode().rsplit("VmHWM_MB=", 1)[1].split()[0])
        table_path = Path(gen["path"])

        before = rss_mb()
        t0 = time.perf_counter()
        table = LookupTable.load(table_path)
        load_s = time.perf_counter() - t0
        table_mb = rss_mb() - before
        # The generation read the table back as the service loads one (parsed, its columns saved
        # in a sidecar): a worker's first lookup reads the sidecar.
        ready_s = gen["load_seconds"]
        t0 = time.perf_counter()
        LookupTableStore(table_path.parent).get(table_path.name)
        sidecar_s = time.perf_counter() - t0

        q = min(args.queries, n)
        first_chunk = make_traces(min(CHUNK, n), seed=1000)  # what write_trace_file wrote first
        exact = [{k: v for k, v in t.items() if k not in ("runtime_ms", "task_id")} for t in first_chunk[:q]]
        del first_chunk
        near = [{**t, "input_tokens": t["input_tokens"] + 0.37} for t in exact]
        res = table.lookup(exact[:1000], pattern)
        assert set(res.kinds()) == {"exact"}, set(res.kinds())
        res = table.lookup(near[:1000], pattern)
        assert set(res.kinds()) == {"nearest"}, set(res.kinds())

        def lk(ts, table=table):
            return table.lookup(ts, pattern)

        def ans(ts, table=table):
            return table.predict(pattern, ts, 0.95).results()

        near_err = nearest_error(service, table, pattern)
        ex_b, ex_s = time_per_trace(lk, exact, args.single)
        nr_b, nr_s = time_per_trace(lk, near, args.single)
        ax_b, ax_s = time_per_trace(ans, exact, args.single)
        an_b, an_s = time_per_trace(ans, near, args.single)
        totals = {}
        for k in [k for k in TOTAL_QUEUES if k <= len(exact)]:  # (--queries bounds the queues)
            table.predict(pattern, exact[:k], 0.95, with_total=True)  # warm
            runs = []
            for _ in range(3):
                t0 = time.perf_counter()
                table.predict(pattern, exact[:k], 0.95, with_total=True)
                runs.append(time.perf_counter() - t0)
            totals[k] = min(runs) * 1e3
        rows_out.append({
            "rows": n, "gen_s": gen["duration_seconds"], "gen_wall_s": wall, "gen_rows_per_s": n / gen["duration_seconds"],
            "gen_peak_mb": peak_mb, "size_mb": table_path.stat().st_size / 2**20, "load_s": load_s, "table_mb": table_mb,
            "ready_s": ready_s, "sidecar_s": sidecar_s,
            "exact": (ex_b, ex_s), "nearest": (nr_b, nr_s), "answer_exact": (ax_b, ax_s), "answer_nearest": (an_b, an_s),
            "nearest_error": near_err, "totals": totals,
        })
        r = rows_out[-1]
        print(f"\n{n:,} rows ({args.format}, {r['size_mb']:.0f} MB): generated in {r['gen_s']:.2f}s "
              f"({r['gen_rows_per_s']:,.0f} rows/s), read back for serving in {ready_s:.2f}s (parse + write the "
              f"sidecar; whole CLI run {wall:.2f}s, peak RSS {peak_mb:.0f} MB); loaded + indexed in {load_s:.2f}s "
              f"(+{table_mb:.0f} MB resident); a worker's first lookup: {sidecar_s:.2f}s from the sidecar")
        print("  nearest error (table median / model median - 1) over 2,000 fresh tasks: "
              f"median {near_err[0]:.3f}, p90 {near_err[1]:.3f}, max {near_err[2]:.3f}")
        print(f"  µs per trace           batch of {len(exact):,}   single call")
        for label, key in (("lookup exact", "exact"), ("lookup nearest", "nearest"),
                           ("answer exact", "answer_exact"), ("answer nearest", "answer_nearest")):
            b, s = r[key]
            print(f"  {label:<22} {b:>12.2f}   {s:>11.1f}")
        print("  answer with the queue's total, ms (best of 3): "
              + ", ".join(f"{k:,} traces {ms:.1f}" for k, ms in totals.items()))
        del table
        traces_path.unlink()

    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| rows | file MB | generation rows/s | read back s | CLI wall s | peak RSS MB | load s (parse / sidecar) | exact µs (batch / single) | nearest µs (batch / single) | answer exact µs (batch / single) | nearest error (median / p90 / max) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows_out:
        print(f"| {r['rows']:,} | {r['size_mb']:.0f} | {r['gen_rows_per_s']:,.0f} | {r['ready_s']:.2f} | {r['gen_wall_s']:.1f} | {r['gen_peak_mb']:.0f} | {r['load_s']:.2f} / {r['sidecar_s']:.2f} | "
              f"{r['exact'][0]:.2f} / {r['exact'][1]:.1f} | {r['nearest'][0]:.2f} / {r['nearest'][1]:.1f} | "
              f"{r['answer_exact'][0]:.2f} / {r['answer_exact'][1]:.1f} | "
              f"{' / '.join(f'{e:.3f}' for e in r['nearest_error'])} |")


if __name__ == "__main__":
    main()
