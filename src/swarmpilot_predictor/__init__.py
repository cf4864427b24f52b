"""SwarmPilot Predictor: runtime distributions for ML-serving schedulers."""

__version__ = "0.1.0"
