"""The seed's entry points: ``python -m src.scheduler.predictor_api`` and ``uvicorn src.scheduler.predictor_api:app``."""

from swarmpilot_predictor.api import create_app
from swarmpilot_predictor.settings import PredictorSettings

app = create_app(PredictorSettings())

if __name__ == "__main__":
    import uvicorn

    settings = PredictorSettings()
    uvicorn.run(app, host=settings.host, port=settings.port)
