"""The seed's client import path."""

from swarmpilot_predictor.client import (
    AsyncPredictorClient,
    InvalidRequestError,
    JobTimeoutError,
    PredictorClient,
    PredictorClientError,
    PredictorUnavailableError,
    QueueWaitEstimate,
)

__all__ = [
    "PredictorClient",
    "AsyncPredictorClient",
    "PredictorClientError",
    "PredictorUnavailableError",
    "InvalidRequestError",
    "JobTimeoutError",
    "QueueWaitEstimate",
]
