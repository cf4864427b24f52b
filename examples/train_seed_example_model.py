"""Train the model the seed's client example asks for, on synthetic LLM traces.

    uv run python examples/train_seed_example_model.py [http://localhost:8200]
"""

import sys

import numpy as np

from swarmpilot_predictor.client import PredictorClient


def synthetic_llm_traces(n: int = 500, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    inp = rng.integers(16, 2048, n)
    out = rng.integers(8, 512, n)
    runtime = (20 + 0.02 * inp + 12.0 * out) * rng.lognormal(0.0, 0.15, n)
    return [{"input_tokens": int(i), "output_tokens": int(o), "runtime_ms": float(r)} for i, o, r in zip(inp, out, runtime)]


def main(url: str) -> None:
    config = {
        "model": {"model_type": "gpt-3.5-turbo", "model_name": "turbo", "hardware": "A100",
                  "software_name": "vllm", "software_version": "0.1.0"},
        "traces": synthetic_llm_traces(),
    }
    with PredictorClient(url) as client:
        result = client.train(config)
    print(f"trained {result.model_key} v{result.version}: algorithm {result.metrics['algorithm']}, "
          f"90% interval coverage {result.metrics['interval_coverage']['0.9']:.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8200")
