"""Averaging the model families' quantiles instead of choosing one: does it pay?

``algorithm: auto`` keeps the one family (empirical, linear, power, lightgbm) whose
cross-validated pinball loss is lowest. On few rows of noisy data, averaging the
candidates' quantile functions level by level (Vincentisation) often scores better
than any one of them. For each set of ``accuracy.py`` on its fixed 70/30 split this fits
the service's model (``auto``) and a model of each candidate family alone, and scores,
against the best baseline of ``accuracy.py``'s run on the same split:

- ``auto`` and each family alone;
- ``top2``: the equal average of the two families of lowest cross-validated loss;
- ``all``: the equal average of every candidate family;
- ``weighted``: every family weighted by ``exp(-(cv - best) / (0.02 best))``, so that a
  family 2% behind the best weighs e^-1 as much;
- ``auto+2nd``: the service's model averaged with the next-best family.

A family fitted alone has no model per kind of run (first runs and repeats: ``auto`` only),
so on the sets with first runs the blends lose that. The quantiles of an average of
non-decreasing quantile functions never cross.

    uv run --all-groups python benchmarks/family_blend.py [--sets name,...]
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy  # noqa: E402  (the sets, the split, the baselines)
from swarmpilot_predictor.modeling import QuantileModel, pinball_losses  # noqa: E402

WEIGHT_SCALE = 0.02


def blends(qs: dict[str, np.ndarray], cv: dict[str, float], chosen: str) -> dict[str, np.ndarray]:
    """The averaged quantiles, (rows, levels) each, from every family's and their CV losses."""
    ranked = sorted(cv, key=cv.get)
    if len(ranked) < 2:
        return {}
    losses = np.array([cv[f] for f in ranked])
    w = np.exp(-(losses - losses.min()) / (WEIGHT_SCALE * losses.min()))
    stack = np.array([qs[f] for f in ranked])
    second = next(f for f in ranked if f != chosen)
    return {
        "top2": stack[:2].mean(axis=0),
        "all": stack.mean(axis=0),
        "weighted": np.tensordot(w / w.sum(), stack, axes=1),
        "auto+2nd": 0.5 * (qs["auto"] + qs[second]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", help="comma-separated subset of set names (substring match)")
    args = ap.parse_args()
    sets = accuracy.real_sets() + accuracy.synthetic_sets()
    if args.sets:
        sets = [s for s in sets if any(k in s.name for k in args.sets.split(","))]
    columns = ["auto", "empirical", "linear", "power", "lightgbm", "top2", "all", "weighted", "auto+2nd"]
    print("Ratio of each model's relative pinball to the best baseline's, on the fixed split:\n")
    print("| set | chosen | " + " | ".join(columns) + " |")
    print("|---|---|" + "---:|" * len(columns))
    logs: dict[str, list[float]] = {c: [] for c in columns if c not in ("empirical", "linear", "power", "lightgbm")}
    for ts in sets:
        rows, info = accuracy.evaluate(ts)
        X, y, Xt, yt, kinds, ncats, *_ = accuracy.split_set(ts)
        best = min(r.metrics["rel_pinball"] for r in rows[1:] if not r.reference)
        auto = info["service_model"]
        qs = {"auto": rows[0].q}
        families = auto.candidate_families(len(y))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for family in families:
                qs[family] = QuantileModel(kinds, ncats, algorithm=family).fit(X, y).predict_quantiles(Xt, accuracy.LEVELS)
        cv = {f: auto.cv_[f]["pinball_loss"] for f in families if "pinball_loss" in auto.cv_.get(f, {})}
        qs |= blends(qs, cv, auto.family_)
        ratio = {k: float(pinball_losses(yt, q, accuracy.LEVELS).mean() / yt.mean()) / best for k, q in qs.items()}
        for k in logs:
            if k in ratio:
                logs[k].append(math.log(ratio[k]))
        cells = [f"{ratio[c]:.3f}" if c in ratio else "-" for c in columns]
        print(f"| {ts.name} | {auto.family_} | " + " | ".join(cells) + " |", flush=True)
    gmean = [f"{math.exp(np.mean(logs[c])):.3f}" if c in logs and len(logs[c]) == len(sets) else "" for c in columns]
    print("| **geometric mean** | | " + " | ".join(gmean) + " |")


if __name__ == "__main__":
    main()
