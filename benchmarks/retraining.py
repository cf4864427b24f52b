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

    uv run python benchmarks/retraining.py --churn        # retrainings of an unchanging stream
    uv run python benchmarks/retraining.py --unobserved   # what a retraining keeps where nothing was observed
    uv run python benchmarks/retraining.py --uniform      # a uniform slowdown observed across the inputs
    uv run python benchmarks/retraining.py --new-values   # devices and batch sizes training never saw

``--churn``: 6 models of 300 LLM requests, each then observed 5 times 200 more requests
from the same distribution and retrained after each; how many retrainings store a version,
and whether each is better or worse than the one it replaced on 3,000 fresh runtimes.
``--unobserved``: LLM requests of 480 output tokens and more take 3 times as long (8% of
1,500 training rows); 600 observations of shorter ones come 1.5 times slower; fresh runtimes
over the medians of the version before and after the retraining, short and long requests
apart (3 seeds, ``auto`` and ``linear``).
``--new-values``: what a retraining learns of values its training never saw. "new devices":
800 LLM requests on devices a and b (b 2x slower), then 600 observations on devices c (4x)
and d (0.5x) only. "constants varied": 800 requests, all of batch size 1 on device a, then
600 observations of batch sizes 1 to 8 (a batch of b takes 1 + 0.5 (b - 1) times as long)
on devices a and c (3x). For each, 2,000 fresh requests of every device (and batch size);
per group, fresh runtimes over the new version's medians and the share inside its 90%
interval, the worst groups shown (3 seeds, ``auto`` and ``linear``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from swarmpilot_predictor.identity import IdentityPattern, ModelIdentity
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


def llm(n: int, seed: int, factor: float = 1.0, longest: int = 512, jump: bool = False) -> list[dict]:
    """LLM-like requests (the tests' generator); with ``jump``, 480 output tokens and more take 3x."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        i, o = int(rng.integers(16, 2048)), int(rng.integers(8, longest))
        base = (20 + 0.02 * i + 12.0 * o) * (3.0 if jump and o >= 480 else 1.0)
        out.append({"input_tokens": i, "output_tokens": o, "runtime_ms": float(base * rng.lognormal(0, 0.15) * factor)})
    return out


def churn(reps: int = 6, tries: int = 5) -> None:
    from swarmpilot_predictor.modeling import pinball_losses
    from swarmpilot_predictor.monitoring import MONITOR_LEVELS

    levels = list(MONITOR_LEVELS)
    fresh = llm(3000, 999)
    y = np.log([t["runtime_ms"] for t in fresh])
    pattern = IdentityPattern.from_parts(IDENT)
    stored = better = 0
    for rep in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            svc = PredictorService(PredictorSettings(data_dir=Path(tmp)))
            try:
                svc.train(TrainConfig(model=IDENT, traces=llm(300, 100 + rep), algorithm="linear"))

                def loss(version: int) -> float:
                    q = svc.predict(pattern, fresh, quantiles=levels, version=version).quantiles
                    return float(pinball_losses(y, np.log(q), levels).mean())

                for k in range(tries):
                    svc.observe(IDENT, llm(200, 1000 * rep + k))
                    d = svc.retrain(pattern)
                    if d["status"] == "retrained":
                        stored += 1
                        better += loss(d["to_version"]) < loss(d["from_version"])
            finally:
                svc.close()
    print(f"{reps * tries} retrainings of an unchanging stream: {stored} stored a version, "
          f"{better} of them better on 3,000 fresh runtimes, {stored - better} worse")


def unobserved(seeds: tuple[int, ...] = (0, 10, 20)) -> None:
    fresh = llm(4000, 77, factor=1.5, jump=True)
    y = np.array([t["runtime_ms"] for t in fresh])
    long = np.array([t["output_tokens"] >= 480 for t in fresh])
    pattern = IdentityPattern.from_parts(IDENT)
    print("| algorithm | seed | short: before | short: after | long: before | long: after | status |")
    print("|---|---|---|---|---|---|---|")
    for algorithm in ("auto", "linear"):
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                svc = PredictorService(PredictorSettings(data_dir=Path(tmp)))
                try:
                    svc.train(TrainConfig(model=IDENT, traces=llm(1500, 1 + seed, jump=True), algorithm=algorithm))

                    def ratios() -> tuple[float, float]:
                        m = svc.predict(pattern, fresh, quantiles=[0.5]).quantiles[:, 0]
                        return float(np.median((y / m)[~long])), float(np.median((y / m)[long]))

                    before = ratios()
                    svc.observe(IDENT, llm(600, 2 + seed, factor=1.5, longest=480, jump=True))
                    d = svc.retrain(pattern)
                    after = ratios()
                finally:
                    svc.close()
            print(f"| {algorithm} | {seed} | {before[0]:.2f} | {after[0]:.2f} | {before[1]:.2f} | {after[1]:.2f} | {d['status']} |",
                  flush=True)


def uniform(factors: tuple[float, ...] = (1.2, 1.5), seeds: tuple[int, ...] = (20, 21, 22)) -> None:
    """A uniform slowdown observed across the inputs: LLM requests of 16 to 4,096 input and 1
    to 1,024 output tokens (log-uniform), lognormal noise of 0.3; 1,500 training rows, then
    600 observations ``factor`` times slower from the same distribution; the new version's
    medians against the true ones, and its coverage, on 400 fresh requests."""
    def requests(n: int, seed: int) -> tuple[list[dict], np.ndarray]:
        rng = np.random.default_rng(seed)
        inp = np.exp(rng.uniform(np.log(16), np.log(4096), n)).astype(int)
        out = np.exp(rng.uniform(0.0, np.log(1024), n)).astype(int)
        typical = 25.0 + 0.04 * inp + 12.0 * out
        return [{"input_tokens": int(i), "output_tokens": int(o)} for i, o in zip(inp, out)], typical

    pattern = IdentityPattern.from_parts(IDENT)
    print("| slowdown | seed | candidate | training rows kept | new medians / true medians | coverage at 0.1 / 0.5 / 0.9 |")
    print("|---|---|---|---|---|---|")
    for factor in factors:
        for seed in seeds:
            noise = np.random.default_rng(seed + 1000)
            train, t_train = requests(1500, seed)
            observed, t_observed = requests(600, seed + 100)
            fresh, t_fresh = requests(400, seed + 200)
            for t, m in zip(train, t_train):
                t["runtime_ms"] = float(m * noise.lognormal(0, 0.3))
            for t, m in zip(observed, t_observed):
                t["runtime_ms"] = float(factor * m * noise.lognormal(0, 0.3))
            y = factor * t_fresh * noise.lognormal(0, 0.3, len(fresh))
            with tempfile.TemporaryDirectory() as tmp:
                svc = PredictorService(PredictorSettings(data_dir=Path(tmp)))
                try:
                    svc.train(TrainConfig(model=IDENT, traces=train))
                    svc.observe(IDENT, observed)
                    d = svc.retrain(pattern)
                    q = svc.predict(pattern, fresh, quantiles=[0.1, 0.5, 0.9]).quantiles
                finally:
                    svc.close()
            kept = (d.get("training_rows") or {}).get(d.get("candidate"), "-")
            cover = " / ".join(f"{np.mean(y <= q[:, k]):.2f}" for k in range(3))
            print(f"| {factor}x | {seed} | {d.get('candidate', d['status'])} | {kept} | "
                  f"{np.median(q[:, 1] / (factor * t_fresh)):.3f} | {cover} |", flush=True)


def new_values(seeds: tuple[int, ...] = (0, 1, 2)) -> None:
    speed = {"a": 1.0, "b": 2.0, "c": 4.0, "d": 0.5}
    scenarios = {  # (training (devices, batch sizes), observed, fresh)
        "new devices": ((["a", "b"], [1]), (["c", "d"], [1]), (["a", "b", "c", "d"], [1])),
        "constants varied": ((["a"], [1]), (["a", "c"], [1, 2, 4, 8]), (["a", "c"], [1, 2, 4, 8])),
    }

    def requests(n: int, rng: np.random.Generator, devices: list[str], batches: list[int]) -> tuple[list[dict], np.ndarray]:
        out = rng.integers(8, 512, n)
        device, batch = rng.choice(devices, n), rng.choice(batches, n)
        median = (20 + 12.0 * out) * np.array([speed[d] for d in device]) * (1 + 0.5 * (batch - 1))
        runtime = median * rng.lognormal(0, 0.2, n)
        rows = [{"output_tokens": int(o), "device": str(d), "batch_size": int(b), "runtime_ms": float(r)}
                for o, d, b, r in zip(out, device, batch, runtime)]
        return rows, runtime

    pattern = IdentityPattern.from_parts(IDENT)
    print("| scenario | algorithm | seed | decision | features after | fresh / median, by group (least to most) "
          "| 90% interval coverage, by group (least to most) |")
    print("|---|---|---|---|---|---|---|")
    for scenario, (trained, observed, asked) in scenarios.items():
        for algorithm in ("auto", "linear"):
            for seed in seeds:
                rng = np.random.default_rng(seed)
                fresh, y = requests(2000, rng, *asked)
                groups = {(t["device"], t["batch_size"]) for t in fresh}
                with tempfile.TemporaryDirectory() as tmp:
                    svc = PredictorService(PredictorSettings(data_dir=Path(tmp), retrain_in_worker=False))
                    try:
                        svc.train(TrainConfig(model=IDENT, traces=requests(800, rng, *trained)[0], algorithm=algorithm))
                        svc.observe(IDENT, requests(600, rng, *observed)[0])
                        d = svc.retrain(pattern)
                        q = svc.predict(pattern, fresh, quantiles=[0.05, 0.5, 0.95]).quantiles
                        names = svc.registry.latest(ModelIdentity.from_parts(IDENT)).features.names
                    finally:
                        svc.close()
                ratio, cover = [], []
                for g in groups:
                    at = np.array([(t["device"], t["batch_size"]) == g for t in fresh])
                    ratio.append(float(np.median(y[at] / q[at, 1])))
                    cover.append(float(np.mean((y[at] >= q[at, 0]) & (y[at] <= q[at, 2]))))
                print(f"| {scenario} | {algorithm} | {seed} | {d['status']} | {', '.join(names)} | "
                      f"{min(ratio):.2f} to {max(ratio):.2f} | {min(cover):.2f} to {max(cover):.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shift", type=float, default=1.5)
    ap.add_argument("--chunk", type=int, default=25)
    ap.add_argument("--min-observations", type=int, default=10**9)
    ap.add_argument("--churn", action="store_true", help="only: how many retrainings of an unchanging stream store a version")
    ap.add_argument("--unobserved", action="store_true", help="only: what a retraining keeps where nothing was observed")
    ap.add_argument("--uniform", action="store_true", help="only: a uniform slowdown observed across the inputs")
    ap.add_argument("--new-values", action="store_true", help="only: devices and batch sizes training never saw")
    args = ap.parse_args()
    if args.new_values:
        new_values()
        return
    if args.uniform:
        uniform()
        return
    if args.churn:
        churn()
        return
    if args.unobserved:
        unobserved()
        return
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
