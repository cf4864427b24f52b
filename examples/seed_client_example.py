"""The seed's client example (PREDICTOR_SERVICE.md, "Using the Python Client").

Run it from the repository root against a service that has a model for
``gpt-3.5-turbo`` on ``A100`` with ``input_tokens``/``output_tokens`` features
(``examples/train_seed_example_model.py`` trains one). The only changes from the
seed: ``metadata`` is bound to a name before use (the seed's text uses it
without defining it), and the URL may come from ``PREDICTOR_URL``.

    PYTHONPATH=. uv run python examples/seed_client_example.py

(``PYTHONPATH=.``: the seed imports ``src.scheduler.predictor_client``, a path from the
repository root, and Python puts the script's own folder, ``examples/``, on the path instead.)
"""

import os

from src.scheduler.predictor_client import PredictorClient

# Initialize client
predictor = PredictorClient(base_url=os.environ.get("PREDICTOR_URL", "http://localhost:8200"))

# Check if service is available
if predictor.is_available():
    print("Predictor service is ready")

metadata = {
    "hardware": "A100",
    "input_tokens": 100,
    "output_tokens": 50
}

# Make a prediction
response = predictor.predict(
    model_type="gpt-3.5-turbo",
    metadata=metadata
)

if response.status == "success":
    print(f"Predicted quantiles: {response.quantiles}")
    print(f"Predicted times: {response.quantile_predictions}")

    # Get median prediction
    median = predictor.get_median_prediction("gpt-3.5-turbo", metadata)
    print(f"Median execution time: {median}ms")

    # Get prediction range (80% confidence)
    min_time, max_time = predictor.get_prediction_range(
        "gpt-3.5-turbo",
        metadata,
        confidence_level=0.8
    )
    print(f"Expected range: {min_time}-{max_time}ms")
