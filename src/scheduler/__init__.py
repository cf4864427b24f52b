"""Compatibility with the seed's import paths; the code lives in ``swarmpilot_predictor``."""
