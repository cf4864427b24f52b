"""Coverage over time on a replayed trace with a shift, with and without online retraining.

For each trace set: train on the first 30% of rows (time order), then replay the
rest as observations in chunks; halfway through the replay every runtime is
multiplied by SHIFT (a slower GPU clock, a software regression). Each chunk is
first predicted (90% interval) by the serving model, then observed. With
retraining on, the service's own policy decides when to retrain (its drift test; enough
observations only with ``--min-observations``), synchronously here so the run is
reproducible. The shift starts at the start of the chunk that holds the middle row, so
that no chunk counted as clean holds shifted rows.

    uv run python benchmarks/retraining.py [--shift 1.5] [--chunk 25] [--min-observations N]

``--min-observations`` is PREDICTOR_RETRAIN_MIN_OBSERVATIONS (default: none, only drift
retrains); with ``--shift 1`` and the service's default of 200 it shows how many versions a
stream that does not change makes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from swarmpilot_predictor.identity import IdentityPattern
from swarmpilot_predictor.schemas import TrainConfig
from swarmpilot_predictor.service import PredictorService
from swarmpilot_predictor.settings import PredictorSettings
from swarmpilot_predictor.traces import iter_trace_file

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
IDENT = {"model_type": "bench", "model_name": "m", "hardware": "gpu", "software_name": "sw", "software_version": "1"}


def synthetic(n: int = 1200, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = rng.integers(8, 512, n)
    inp = rng.integers(16, 2048, n)
    y = (20 + 0.02 * inp + 12 * out) * rng.lognormal(0, 0.2, n)
    return [{"input_tokens": int(i), "output_tokens": int(o), "runtime_ms": float(r)} for i, o, r in zip(inp, out, y)]


def trace_sets() -> dict[str, list[dict]]:
    sets = {"synthetic-llm": synthetic()}
    for name in ("h100_resnet50_vision.jsonl", "h20_sglang_llm.jsonl", "h20_diffusers_t2vid.jsonl"):
        if (DATA / name).exists():
            sets[name.removesuffix(".jsonl")] = list(iter_trace_file(DATA / name))
    return sets


def replay(traces: list[dict], shift: float, chunk: int, retrain: bool,
           min_observations: int = 10**9) -> list[tuple[int, bool, float, int]]:
    n_train = int(len(traces) * 0.3)
    train, rest = traces[:n_train], [dict(t) for t in traces[n_train:]]
    half = len(rest) // 2 // chunk * chunk  # at a chunk's start: each chunk is clean or shifted, none both
    for t in rest[half:]:
        t["runtime_ms"] *= shift
    with tempfile.TemporaryDirectory() as tmp:
        settings = PredictorSettings(data_dir=Path(tmp), retrain_min_observations=min_observations)
        svc = PredictorService(settings)
        svc.train(TrainConfig(model=IDENT, traces=train))
        pattern = IdentityPattern.from_parts(IDENT)
        identity = svc.registry.resolve(pattern)
        rows = []
        for start in range(0, len(rest), chunk):
            part = rest[start:start + chunk]
            pred = svc.predict(pattern, part, confidence_level=0.9)
            y = np.array([t["runtime_ms"] for t in part])[pred.ok]
            inside = (y >= pred.interval[:, 0]) & (y <= pred.interval[:, 1])
            rows.append((start, start >= half, float(inside.mean()), pred.version))
            svc.observe(IDENT, part)
            if retrain:
                version = svc.registry.latest(identity).version
                if svc.retrainer.due(identity, version):
                    svc.retrainer.retrain(identity, "benchmark")
        svc.close()
        return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shift", type=float, default=1.5)
    ap.add_argument("--chunk", type=int, default=25)
    ap.add_argument("--min-observations", type=int, default=10**9)
    args = ap.parse_args()
    print(f"runtime x{args.shift} from the middle of the replay; 90% interval coverage per chunk of {args.chunk}\n")
    print("| set | phase | chunks | coverage without retraining | coverage with retraining | versions |")
    print("|---|---|---|---|---|---|")
    for name, traces in trace_sets().items():
        chunk = max(5, min(args.chunk, len(traces) // 20))
        off = replay(traces, args.shift, chunk, retrain=False)
        on = replay(traces, args.shift, chunk, retrain=True, min_observations=args.min_observations)
        shifted = [i for i, r in enumerate(off) if r[1]]
        late = shifted[len(shifted) // 2:]  # second half of the shifted phase: after retraining had a chance
        phases = {"clean": [i for i, r in enumerate(off) if not r[1]], "shifted (first half)": shifted[: len(shifted) // 2],
                  "shifted (second half)": late}
        for phase, idx in phases.items():
            if not idx:
                continue
            c_off = np.mean([off[i][2] for i in idx])
            c_on = np.mean([on[i][2] for i in idx])
            versions = sorted({on[i][3] for i in idx})
            print(f"| {name} | {phase} | {len(idx)} | {c_off:.3f} | {c_on:.3f} | {','.join(map(str, versions))} |")
        print(f"<!-- {name} per chunk (with retraining): {' '.join(f'{r[2]:.2f}' for r in on)} -->")


if __name__ == "__main__":
    main()
