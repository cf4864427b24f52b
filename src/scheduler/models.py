"""The seed's data-model import path: the request and response schemas."""

from swarmpilot_predictor.schemas import (
    BatchPredictionResponse,
    HealthResponse,
    ModelInfo,
    ModelsResponse,
    ObserveRequest,
    PredictBatchRequest,
    PredictionResult,
    PredictionSummary,
    PredictSingleRequest,
    SinglePredictionResponse,
    TrainConfig,
    TrainResult,
)

__all__ = [
    "BatchPredictionResponse", "HealthResponse", "ModelInfo", "ModelsResponse", "ObserveRequest", "PredictBatchRequest",
    "PredictionResult", "PredictionSummary", "PredictSingleRequest", "SinglePredictionResponse", "TrainConfig",
    "TrainResult",
]
