"""The seed's client, at the seed's import path (``src.scheduler.predictor_client``) and test
command (``uv run pytest tests/test_predictor_client.py``): its methods, its example, its modules.

The seed's tests needed a running service; these start one (uvicorn on a free port).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from src.scheduler.predictor_client import PredictorClient

from .conftest import REPO_ROOT, SEED_IDENTITY, serve_trained


@pytest.fixture(scope="module")
def trained_server(tmp_path_factory):
    with serve_trained(tmp_path_factory.mktemp("seed_client") / "data", [(SEED_IDENTITY, 1)]) as srv:
        yield srv


def test_seed_methods(trained_server):
    metadata = {"hardware": "A100", "input_tokens": 100, "output_tokens": 50}
    with PredictorClient(trained_server.url) as client:
        response = client.predict(model_type="gpt-3.5-turbo", metadata=metadata)
        assert response.status == "success"
        assert response.quantiles == [0.25, 0.5, 0.75, 0.99]
        median = client.get_median_prediction("gpt-3.5-turbo", metadata)
        assert response.quantile_predictions[0] < median < response.quantile_predictions[2]
        low, high = client.get_prediction_range("gpt-3.5-turbo", metadata, confidence_level=0.8)
        wide_low, wide_high = client.get_prediction_range("gpt-3.5-turbo", metadata, confidence_level=0.99)
        assert wide_low < low < median < high < wide_high


def test_seed_example_runs_verbatim(trained_server):
    # PYTHONPATH=. as in the README: the seed imports `src.scheduler.predictor_client`.
    env = {**os.environ, "PREDICTOR_URL": trained_server.url, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "examples/seed_client_example.py"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "Predictor service is ready"
    assert lines[1] == "Predicted quantiles: [0.25, 0.5, 0.75, 0.99]"
    assert lines[3].startswith("Median execution time: ") and lines[3].endswith("ms")
    low, high = (float(v) for v in lines[4].removeprefix("Expected range: ").removesuffix("ms").split("-"))
    assert 0 < low < high


def test_the_seed_modules_import_from_their_paths():
    from src.scheduler import models, predictor, predictor_client
    from swarmpilot_predictor import client, lookup, modeling, schemas

    assert predictor_client.PredictorClient is client.PredictorClient
    assert models.PredictSingleRequest is schemas.PredictSingleRequest
    assert models.SinglePredictionResponse is schemas.SinglePredictionResponse
    assert predictor.LookupTable is lookup.LookupTable and predictor.QuantileModel is modeling.QuantileModel


def test_the_seed_path_exports_the_clients_errors_and_estimates():
    import src.scheduler.predictor_client as seed
    import swarmpilot_predictor.client as client

    for name in seed.__all__:
        assert getattr(seed, name) is getattr(client, name)
    assert {"PredictorUnavailableError", "InvalidRequestError", "QueueWaitEstimate"} <= set(seed.__all__)
