"""Workloads that ``accuracy.py`` does not hold: the service against the same baselines.

Each set is generated from a cost model of a kind of inference run the accuracy
benchmark has no set of, and split 70/30 as there (``accuracy.evaluate``):

- ``padding_buckets``: an embedding model whose sequences are padded to 32, 64, ...,
  512 tokens, with batches that are not a multiple of 8 a quarter slower; 2% noise.
  The runtime is a step function of the sequence length and batch size.
- ``multitenant``: six models on five accelerators (a feature), memory- or
  compute-bound, a 32B model offloaded (5x) on the two small cards, noise that is
  larger on shared cards.
- ``multitenant_hidden``: the same runs with the accelerator in the model identity's
  ``hardware`` part, so no method sees it: each model's runtimes are a mixture.
- ``image_generation``: three resolutions, three step counts, two samplers, and a
  tiled VAE decode retried after running out of memory, more often at high resolution.

    uv run python benchmarks/other_workloads.py [--sets padding_buckets,...] [--seeds 11,22,33] [--fresh N]

It prints, per set and seed, the service's relative pinball loss and its ratio to the
best baseline's, its mean absolute coverage error and 90% interval coverage, then the
median ratio of each set. With ``--fresh N`` every method trains on the same 70% and is
scored on N new runs of the generator (seed + 500) instead of the other 30%: a test set of
a few hundred runs decides ratios within a few percent.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy  # noqa: E402  (the baselines and the split of the accuracy benchmark)


def padding_buckets(n: int, seed: int) -> accuracy.TraceSet:
    rng = np.random.default_rng(seed)
    length = np.clip(np.round(rng.lognormal(4.3, 0.9, n)), 4, 512).astype(int)
    batch = rng.integers(1, 129, n)
    edges = [32, 64, 128, 256, 512]
    bucket = np.array(edges)[np.searchsorted(edges, length)]
    base = (3.0 + 0.0009 * batch * bucket * (1 + bucket / 1024)) * np.where(batch % 8 == 0, 1.0, 1.25)
    y = base * np.exp(0.02 * rng.standard_normal(n))
    return accuracy.TraceSet("padding_buckets", [
        {"max_seq_len": int(s), "batch_size": int(b), "runtime_ms": float(r)} for s, b, r in zip(length, batch, y)])


def multitenant(n: int, seed: int, hidden: bool = False) -> accuracy.TraceSet:
    rng = np.random.default_rng(seed)
    cards = ["A100", "H100", "L4", "T4", "MI300X"]
    models = ["llama-8b", "mistral-7b", "qwen-32b", "phi-3", "sdxl", "whisper-l"]
    card = rng.choice(cards, n)
    model = rng.choice(models, n)
    tokens = rng.integers(16, 512, n)
    flops = {"A100": 1.0, "H100": 0.45, "L4": 3.5, "T4": 8.0, "MI300X": 0.6}  # time per unit of compute
    memory = {"A100": 1.0, "H100": 0.6, "L4": 3.0, "T4": 3.4, "MI300X": 0.45}  # time per byte moved
    size = {"llama-8b": 8, "mistral-7b": 7, "qwen-32b": 32, "phi-3": 3.8, "sdxl": 3.5, "whisper-l": 1.5}
    bound = {"llama-8b": 1, "mistral-7b": 1, "qwen-32b": 1, "phi-3": 1, "sdxl": 0, "whisper-l": 0.3}  # memory share
    f = np.array([flops[c] for c in card])
    m = np.array([memory[c] for c in card])
    b = np.array([bound[x] for x in model])
    params = np.array([size[x] for x in model])
    offloaded = (params > 20) & np.isin(card, ["L4", "T4"])
    per_token = params * (b * m + (1 - b) * f) * 1.2 * np.where(offloaded, 5, 1)
    noise = np.where(card == "T4", 0.35, np.where(card == "L4", 0.15, 0.05))
    y = (30 + tokens * per_token) * np.exp(noise * rng.standard_normal(n))
    # A field named like an identity part is no feature (accuracy.split_set drops it).
    where = "hardware" if hidden else "accelerator"
    return accuracy.TraceSet("multitenant_hidden" if hidden else "multitenant", [
        {where: str(c), "model": str(x), "gen_tokens": int(t), "runtime_ms": float(r)}
        for c, x, t, r in zip(card, model, tokens, y)])


def image_generation(n: int, seed: int) -> accuracy.TraceSet:
    rng = np.random.default_rng(seed)
    res = rng.choice([512, 768, 1024], n)
    steps = rng.choice([20, 30, 50], n)
    sampler = rng.choice(["euler", "dpmpp_2m_sde"], n)
    per_step = 11 * (res / 512) ** 2.3 * np.where(sampler == "dpmpp_2m_sde", 1.9, 1.0)
    decode = 80 * (res / 512) ** 2
    retried = rng.random(n) < 0.08 * (res / 1024) ** 2  # out of memory: a tiled decode, 7x
    y = (steps * per_step + decode * (1 + 6 * retried)) * np.exp(0.015 * rng.standard_normal(n)) + 5 * rng.exponential(1, n)
    return accuracy.TraceSet("image_generation", [
        {"width": int(r), "height": int(r), "steps": int(s), "sampler": str(m), "runtime_ms": float(v)}
        for r, s, m, v in zip(res, steps, sampler, y)])


# name -> (generator of n runs from a seed, runs per set)
GENERATORS = {
    "padding_buckets": (padding_buckets, 2500),
    "multitenant": (multitenant, 2500),
    "multitenant_hidden": (lambda n, seed: multitenant(n, seed, hidden=True), 2500),
    "image_generation": (image_generation, 1200),
}
SETS = {name: (lambda seed, gen=gen, n=n: gen(n, seed)) for name, (gen, n) in GENERATORS.items()}
FRESH_SEED_OFFSET = 500


def with_fresh_runs(name: str, seed: int, runs: int) -> tuple[accuracy.TraceSet, tuple[np.ndarray, np.ndarray]]:
    """The set's usual 70% of training runs followed by ``runs`` new ones, and the indices of each."""
    gen, n = GENERATORS[name]
    ts = gen(n, seed)
    tr, _ = accuracy.split(len(ts.traces))
    fresh = gen(runs, seed + FRESH_SEED_OFFSET)
    both = accuracy.TraceSet(ts.name, [ts.traces[i] for i in tr] + fresh.traces)
    return both, (np.arange(len(tr)), np.arange(len(tr), len(both.traces)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--seeds", default="11,22,33")
    ap.add_argument("--fresh", type=int, default=0, metavar="N",
                    help="score on N new runs of each generator instead of the 30%% test split")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    ratios: dict[str, list[float]] = {}
    print("| set | seed | test rows | service | chose | best baseline | ratio | MACE | cov. 90% |")
    print("|---|---:|---:|---:|---|---|---:|---:|---:|")
    for name in args.sets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            t0 = time.perf_counter()
            if args.fresh:
                rows, info = accuracy.evaluate(*with_fresh_runs(name, seed, args.fresh))
            else:
                rows, info = accuracy.evaluate(SETS[name](seed))
            service = rows[0].metrics
            baselines = {r.method: r.metrics["rel_pinball"] for r in rows[1:] if not r.reference}
            best = min(baselines, key=baselines.get)
            ratio = service["rel_pinball"] / baselines[best]
            ratios.setdefault(name, []).append(ratio)
            print(f"| {name} | {seed} | {info['test_rows']} | {service['rel_pinball']:.4f} | {rows[0].note} | "
                  f"{best} {baselines[best]:.4f} | {ratio:.3f} | {service['mace']:.4f} | {service['cov90']:.3f} |",
                  flush=True)
            print(f"({name}, seed {seed}: {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    print("\n| set | median ratio | largest |\n|---|---:|---:|")
    for name, values in ratios.items():
        print(f"| {name} | {statistics.median(values):.3f} | {max(values):.3f} |")


if __name__ == "__main__":
    main()
