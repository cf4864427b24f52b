"""Memory and time to read a large JSONL trace file into a TraceTable.

Writes a synthetic JSONL file (numeric features, a float target and a string id
per row), then reads it in a fresh process and reports the peak resident memory.

    uv run python benchmarks/ingest.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "traces.jsonl"
        with path.open("wb") as fh:
            inp, out, y = rng.integers(1, 4000, args.rows), rng.integers(1, 1000, args.rows), rng.random(args.rows) * 1000
            for i in range(args.rows):
                fh.write(orjson.dumps({"input_tokens": int(inp[i]), "output_tokens": int(out[i]),
                                       "runtime_ms": float(y[i]), "task_id": f"t{i}"}) + b"\n")
        result = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True, text=True, check=True)
        rows, secs, base, peak = result.stdout.split()
        size = path.stat().st_size / 2**20
    print(f"| read {int(rows):,} JSONL rows ({size:.0f} MB file) | {float(secs):.1f} s | peak RSS {float(peak):.0f} MB "
          f"({float(peak) - float(base):.0f} MB above the interpreter with the package imported) |")


if __name__ == "__main__":
    main()
