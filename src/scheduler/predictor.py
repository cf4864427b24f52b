"""The seed's predictor import path: lookup tables and the runtime-distribution model."""

from swarmpilot_predictor.lookup import LookupTable, LookupTableStore
from swarmpilot_predictor.modeling import QuantileModel
from swarmpilot_predictor.service import PredictorService

__all__ = ["LookupTable", "LookupTableStore", "QuantileModel", "PredictorService"]
