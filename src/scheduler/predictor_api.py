"""The seed's entry points: ``python -m src.scheduler.predictor_api`` and ``uvicorn src.scheduler.predictor_api:app``."""

import logging
import sys

from pydantic import ValidationError

from swarmpilot_predictor.api import create_app, warn_of_unknown_variables
from swarmpilot_predictor.logs import log_beside_uvicorn, uvicorn_log_config, write_json_line
from swarmpilot_predictor.settings import PredictorSettings, listen_problem, settings_problem, startup_problem


def _say(settings: PredictorSettings, level: int, message: str) -> None:
    """A line written before uvicorn's logging is set up: ``error: ...`` or ``warning: ...``, or
    with PREDICTOR_LOG_FORMAT=json one JSON object, as every other line of the run."""
    if settings.log_format == "json":
        write_json_line(level, message, "src.scheduler.predictor_api")
    else:
        print(f"{logging.getLevelName(level).lower()}: {message}", file=sys.stderr)


def _app():
    """The service, its settings read and its logging set up, as the seed's entry points start it."""
    try:
        settings = PredictorSettings()
    except ValidationError as exc:  # a bad PREDICTOR_* variable: one line, as `swarmpilot-predictor serve` says it
        print(f"error: {settings_problem(exc)}", file=sys.stderr)
        raise SystemExit(1) from None
    if problem := startup_problem(settings):  # a data directory that cannot be made, say
        _say(settings, logging.ERROR, problem)
        raise SystemExit(1)
    log_beside_uvicorn(settings.log_level, settings.log_format)
    warn_of_unknown_variables()
    return settings, create_app(settings)


# Not in the service's training and retraining worker processes: spawned, each runs the main
# module again, as "__mp_main__", where `python -m` ran this one (it then built a second
# service in each worker, and warned again of every misspelt PREDICTOR_ variable).
settings, app = (None, None) if __name__ == "__mp_main__" else _app()

if __name__ == "__main__":
    import uvicorn

    if problem := listen_problem(settings.host, settings.port):  # a port in use, say: one line, not uvicorn's six
        _say(settings, logging.ERROR, problem)
        raise SystemExit(1)
    if settings.workers > 1:  # uvicorn runs an app object in one process only
        _say(settings, logging.WARNING, f"PREDICTOR_WORKERS={settings.workers} is ignored here: this runs one "
                                        "process; `swarmpilot-predictor serve` runs that many workers")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=settings.access_log, log_config=uvicorn_log_config(settings.log_format),
                http="swarmpilot_predictor.protocol:BoundedHeadersProtocol")  # headers of bounded length, as serve's
