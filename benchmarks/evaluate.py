"""What `POST /models/{identity}/evaluate` (the CLI's `evaluate`) tells of a model on traces it
never saw, and what it costs.

The repository's two ResNet-50 traces (`examples/data`): the H100's and the H200's. Each is
split 70/30 at random (seed 12345); the service (in-process, `algorithm` auto) trains a
model of batch size and image size on each training part, and each model is evaluated on its own held-out part and on
the other GPU's whole trace: the question an operator asks before serving a new instance
with an existing model. Printed per pair: traces scored, the 90% interval's coverage, the
mean absolute coverage error, the relative pinball loss, the median's MAPE, the runtimes'
sum over the expects' sum, and the coverage test's corrected p-value; then the time each
evaluation took, in-process.

    uv run python benchmarks/evaluate.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from swarmpilot_predictor.identity import IdentityPattern
from swarmpilot_predictor.schemas import TrainConfig
from swarmpilot_predictor.service import PredictorService
from swarmpilot_predictor.settings import PredictorSettings

DATA = Path(__file__).resolve().parent.parent / "examples" / "data"
SETS = {"H100": "h100_resnet50_vision.jsonl", "H200": "h200_resnet50_vision.jsonl"}


def identity(gpu: str) -> dict[str, str]:
    return {"model_type": "vision", "model_name": "resnet50", "hardware": gpu, "software_name": "torch",
            "software_version": "2"}


def split(traces: list[dict], seed: int = 12345) -> tuple[list[dict], list[dict]]:
    order = np.random.default_rng(seed).permutation(len(traces))
    cut = int(0.7 * len(traces))
    return [traces[i] for i in sorted(order[:cut])], [traces[i] for i in sorted(order[cut:])]


def main() -> None:
    traces = {gpu: [orjson.loads(line) for line in (DATA / name).read_bytes().splitlines() if line.strip()]
              for gpu, name in SETS.items()}
    parts = {gpu: split(t) for gpu, t in traces.items()}
    with tempfile.TemporaryDirectory() as tmp:
        service = PredictorService(PredictorSettings(data_dir=Path(tmp) / "data"))
        try:
            for gpu, (train, _) in parts.items():
                # The features both traces state (the H100's also has a phase column the H200's lacks).
                result = service.train(TrainConfig(model=identity(gpu), traces=train,
                                                   features=["batch_size", "image_size"]))
                print(f"{gpu}: trained on {len(train):,} traces, algorithm {result['metrics']['algorithm']}",
                      file=sys.stderr)
            print("| model | evaluated on | traces | 90% coverage | MACE | rel. pinball | median MAPE "
                  "| runtimes / expects | coverage test's p | took |")
            print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for gpu in parts:
                pattern = IdentityPattern.from_parts(identity(gpu))
                for other in parts:
                    held_out = parts[other][1] if other == gpu else traces[other]
                    said = f"its held-out {len(held_out):,}" if other == gpu else f"the {other}'s whole trace"
                    t0 = time.perf_counter()
                    answer = service.evaluate(pattern, held_out)
                    took = time.perf_counter() - t0
                    print(f"| {gpu} | {said} | {answer['evaluated']:,} | {answer['interval_coverage']['0.9']:.3f} | "
                          f"{answer['mean_abs_coverage_error']:.4f} | {answer['relative_pinball_loss']:.4f} | "
                          f"{answer['median_mape']:.3f} | {answer.get('expect_ratio', float('nan')):.3f} | "
                          f"{answer['calibration']['corrected_p_value']:.3g} | {took * 1e3:.0f} ms |")
        finally:
            service.close()


if __name__ == "__main__":
    main()
