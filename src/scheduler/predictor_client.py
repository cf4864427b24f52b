"""The seed's client import path."""

from swarmpilot_predictor.client import AsyncPredictorClient, PredictorClient, PredictorClientError

__all__ = ["PredictorClient", "AsyncPredictorClient", "PredictorClientError"]
