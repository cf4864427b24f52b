"""Resident memory of the server and its retraining worker against the number of retrainings.

A real server (uvicorn, on a free port) with automatic retraining on,
``PREDICTOR_KEEP_VERSIONS=3`` and ``PREDICTOR_RETRAIN_MIN_OBSERVATIONS=--step``, holds
``--models`` LLM-like models, each trained on 2,000 tasks, runtime = (25 + 0.03
input_tokens + 1.8 output_tokens) ms x LogNormal(0, 0.3) (``--first-of-shape`` adds a
first-run flag derived from the traces' shapes, which the models' metadata then carries as
a shape history). In rounds, each model gets ``--step`` observed runtimes at a level that
alternates between 1.0x and 1.4x, with single predictions between them, so that each round
makes every model due and drifted: the retraining worker retrains it, mostly storing a
version, and the service deletes the versions older than the newest three. After each
round the harness waits for the retrainings it started, and at each checkpoint
(``--checkpoints``, counted in retraining decisions logged, every status) prints the resident
memory (VmRSS, and the anonymous part from smaps_rollup) of the server and of the
retraining worker, and the versions stored so far.

    uv run python benchmarks/soak_memory.py [--models 3] [--step 150] [--checkpoints 10,20,40,80]
        [--first-of-shape] [--env NAME=VALUE ...]

``--env`` adds settings to the server's environment (glibc's ``MALLOC_ARENA_MAX=2``, say,
which the worker process inherits). A leak shows as memory that keeps growing with the
retrainings; a plateau as growth that stops after the first checkpoints.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from swarmpilot_predictor.client import PredictorClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scheduler_simulation import IDENT, draw, running_server  # noqa: E402
from retraining_load import workers  # noqa: E402


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, anonymous resident memory) of ``pid``, in MB."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    anon = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
                if line.startswith("Anonymous:"))
    return rss / 1024, anon / 1024


_DECISIONS = re.compile(r'^predictor_retraining_runs_total\{status="(\w+)"\} ([0-9.e+]+)$', re.MULTILINE)


def decisions(client: PredictorClient) -> dict[str, int]:
    """The retraining decisions counted so far, by status."""
    return {status: int(float(n)) for status, n in _DECISIONS.findall(client.metrics())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--step", type=int, default=150, help="observations per model and round "
                    "(PREDICTOR_RETRAIN_MIN_OBSERVATIONS)")
    ap.add_argument("--checkpoints", default="10,20,40,80", help="retraining decisions at which memory is printed")
    ap.add_argument("--first-of-shape", action="store_true", help="train with a derived first-run flag")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE added to the server's environment")
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    checkpoints = sorted(int(c) for c in args.checkpoints.split(","))
    rng = np.random.default_rng(args.seed)
    settings = {"PREDICTOR_AUTO_RETRAIN": "true", "PREDICTOR_KEEP_VERSIONS": "3",
                "PREDICTOR_RETRAIN_MIN_OBSERVATIONS": str(args.step), "PREDICTOR_ACCESS_LOG": "false",
                **dict(e.split("=", 1) for e in args.env)}
    idents = [{**IDENT, "model_name": f"synth-{k}"} for k in range(args.models)]
    t_start = time.monotonic()
    with (tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp) / "data", settings) as (proc, url),
          PredictorClient(url, timeout=600, retries=0) as client):
        for ident in idents:
            train, _, runtimes = draw(2000, rng)
            client.train({"model": ident, "first_of_shape": args.first_of_shape,
                          "traces": [{**t, "runtime_ms": float(r)} for t, r in zip(train, runtimes)]})
        models_dir = Path(tmp) / "data" / "models"
        print(f"{args.models} models, {args.step} observations a model a round, settings {settings}\n")
        print("| decisions | retrained | rounds | minutes | server RSS MB | server anon MB | worker RSS MB "
              "| worker anon MB | versions stored (kept) | largest meta KB | rows of a newest version | observation logs MB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        rounds = 0
        while checkpoints:
            level = 1.4 if rounds % 2 else 1.0
            before = sum(decisions(client).values())
            for ident in idents:
                seen, _, runtimes = draw(args.step, rng)
                for i in range(0, args.step, 50):
                    client.predict_single(ident, seen[i])
                    client.observe(ident, [{**t, "runtime_ms": float(r) * level}
                                           for t, r in zip(seen[i:i + 50], runtimes[i:i + 50])])
            # The retrainings run one at a time, each started by an /observe: one more nudge
            # per model once the last finished, until every model has had its decision.
            deadline = time.monotonic() + 600
            while sum(decisions(client).values()) < before + len(idents) and time.monotonic() < deadline:
                time.sleep(0.5)
                for ident in idents:
                    seen, _, runtimes = draw(1, rng)
                    client.observe(ident, [{**seen[0], "runtime_ms": float(runtimes[0]) * level}])
            rounds += 1
            counted = decisions(client)
            total = sum(counted.values())
            if total >= checkpoints[0]:
                while checkpoints and total >= checkpoints[0]:
                    checkpoints.pop(0)
                kids = workers(proc.pid)
                worker = memory_mb(kids[-1]) if kids else (float("nan"), float("nan"))
                server = memory_mb(proc.pid)
                metas = list(models_dir.glob("*/v*.meta.json"))
                largest = max((m.stat().st_size for m in metas), default=0) / 1024
                newest = max(metas, key=lambda m: (m.parent.name, m.name))
                rows = json.loads(newest.read_bytes())["data"].get("rows_used")
                obs_mb = sum(f.stat().st_size for f in (Path(tmp) / "data" / "observations").rglob("*") if f.is_file()) / 2**20
                ever = sum(max((int(f.name[1:5]) for f in d.glob("v*.meta.json")), default=0)
                           for d in models_dir.iterdir() if d.is_dir())
                print(f"| {total} | {counted.get('retrained', 0)} | {rounds} | {(time.monotonic() - t_start) / 60:.1f} "
                      f"| {server[0]:.0f} | {server[1]:.0f} | {worker[0]:.0f} | {worker[1]:.0f} | {ever} ({len(metas)}) "
                      f"| {largest:.0f} | {rows} | {obs_mb:.1f} |", flush=True)


if __name__ == "__main__":
    main()
