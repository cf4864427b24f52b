"""Memory and time to read a large trace file into a TraceTable.

Writes a synthetic trace file in each format asked for (two integer features, a float
target and a string id per row), then reads it in a fresh process and reports the peak
resident memory. Formats: ``jsonl``; ``json``, an array with a record a line (what
``json.dump`` of a list with ``indent=None`` per record, and the table writer, produce);
``json-indented``, an array pretty-printed over several lines per record (read by the
incremental decoder); ``json-object``, an object ``{"source": ..., "traces": [...]}``
with a record a line (the incremental decoder too); ``csv``. ``--gzip`` writes each file
gzipped; ``--blank-lines N`` reads instead a gzipped JSON lines file of N blank lines and
one trace (what a training worker does with such an upload).

    uv run python benchmarks/ingest.py [--rows 1000000] [--formats jsonl,json,json-indented,json-object,csv] [--gzip]
    uv run python benchmarks/ingest.py --blank-lines 20000000
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import orjson

READER = """
import resource, sys, time
from swarmpilot_predictor.traces import TraceTable
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
table = TraceTable.from_file(sys.argv[1])
print(len(table), time.perf_counter() - t0, base / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""

FORMATS = ("jsonl", "json", "json-indented", "json-object", "csv")
SUFFIX = {"jsonl": ".jsonl", "json": ".json", "json-indented": ".json", "json-object": ".json", "csv": ".csv"}


def write(path: Path, fmt: str, rows: int) -> None:
    rng = np.random.default_rng(0)
    inp, out, y = rng.integers(1, 4000, rows), rng.integers(1, 1000, rows), rng.random(rows) * 1000
    array = fmt in ("json", "json-indented", "json-object")
    with path.open("wb") as fh:
        if fmt == "csv":
            fh.write(b"input_tokens,output_tokens,runtime_ms,task_id\n")
        elif fmt == "json-object":
            fh.write(b'{"source": {"host": "node-1", "gpu": "H100"},\n"traces": [\n')
        elif array:
            fh.write(b"[\n")
        for i in range(rows):
            rec = {"input_tokens": int(inp[i]), "output_tokens": int(out[i]), "runtime_ms": float(y[i]), "task_id": f"t{i}"}
            last = i == rows - 1
            if fmt == "jsonl":
                fh.write(orjson.dumps(rec) + b"\n")
            elif fmt in ("json", "json-object"):
                fh.write(orjson.dumps(rec) + (b"\n" if last else b",\n"))
            elif fmt == "json-indented":
                text = orjson.dumps(rec, option=orjson.OPT_INDENT_2).replace(b"\n", b"\n  ")
                fh.write(b"  " + text + (b"\n" if last else b",\n"))
            else:
                fh.write(b"%d,%d,%r,t%d\n" % (inp[i], out[i], float(y[i]), i))
        if array:
            fh.write(b"]}\n" if fmt == "json-object" else b"]\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--formats", default="jsonl", help=f"comma-separated, of {', '.join(FORMATS)}")
    ap.add_argument("--gzip", action="store_true", help="write each file gzipped")
    ap.add_argument("--blank-lines", type=int, default=0, help="read a gzipped file of this many blank lines and one trace instead")
    args = ap.parse_args()
    if args.blank_lines:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "blank.jsonl.gz"
            path.write_bytes(gzip.compress(b"\n" * args.blank_lines + b'{"x": 1, "runtime_ms": 2.0}\n'))
            result = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True, text=True, check=True)
            rows, secs, _, _ = result.stdout.split()
            print(f"| read {int(rows)} trace after {args.blank_lines:,} blank lines (gzip, {path.stat().st_size / 1024:.0f} KB "
                  f"file) | {float(secs):.2f} s |")
        return
    formats = args.formats.split(",")
    if unknown := sorted(set(formats) - set(FORMATS)):
        ap.error(f"unknown formats: {', '.join(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in formats:
            path = Path(tmp) / f"traces{SUFFIX[fmt]}"
            write(path, fmt, args.rows)
            if args.gzip:
                zipped = path.with_name(path.name + ".gz")
                zipped.write_bytes(gzip.compress(path.read_bytes(), compresslevel=6))
                path.unlink()
                path = zipped
            result = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True, text=True, check=True)
            rows, secs, base, peak = result.stdout.split()
            size = path.stat().st_size / 2**20
            path.unlink()
            print(f"| read {int(rows):,} rows of {fmt}{' (gzip)' if args.gzip else ''} ({size:.0f} MB file) | {float(secs):.1f} s | peak RSS "
                  f"{float(peak):.0f} MB ({float(peak) - float(base):.0f} MB above the interpreter with the package "
                  "imported) |", flush=True)


if __name__ == "__main__":
    main()
