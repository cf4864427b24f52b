"""Service configuration, read from ``PREDICTOR_*`` environment variables."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .atomic import link_loop
from .errors import StorageError, shown
from .workers import DEFAULT_PRIORITY

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's
LogFormat = Literal["text", "json"]


# Counts and sizes past any the service could hold: beyond, a value such as 1e20 started the
# service and then failed the answers that carry it (JSON integers stop at 64 bits).
MAX_COUNT = 10**12
MAX_MB = 1e9  # a petabyte
MAX_SECONDS = 1e9  # thirty years
# A shorter key can be guessed; an API key is a random string, not a password to remember.
API_KEY_MIN_LENGTH = 16


def visible_ascii(text: str) -> bool:
    """Whether ``text`` is printable ASCII without spaces: what an HTTP header can carry as a
    bearer token (a space would split "Bearer <key>")."""
    return all("!" <= c <= "~" for c in text)


class PredictorSettings(BaseSettings):
    # Errors' text quotes no value (settings_problem quotes them, but never a key): an
    # API key with a stray character would otherwise be printed whole in a traceback.
    model_config = SettingsConfigDict(env_prefix="PREDICTOR_", extra="ignore", hide_input_in_errors=True)

    data_dir: Path = Path("./predictor_data")
    host: str = "0.0.0.0"
    port: int = Field(default=8200, ge=0, le=65535)
    # Worker processes of `serve`; a typo of a few zeros would fork until the machine stalls.
    workers: int = Field(default=1, ge=1, le=256)
    # The seed names this variable without our prefix; accept both spellings.
    default_lookup_table: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DEFAULT_LOOKUP_TABLE", "PREDICTOR_DEFAULT_LOOKUP_TABLE"),
    )
    max_loaded_models: int = Field(default=256, ge=1, le=MAX_COUNT)
    # Versions kept per model, the newest, as each new one is stored (0: all of them).
    keep_versions: int = Field(default=0, ge=0, le=MAX_COUNT)
    # Load every model's latest version in the background at start (newest first, up to
    # max_loaded_models), so that the first prediction of each does not pay for its loading.
    preload_models: bool = False
    # Trainings queued or running in one worker process at a time (each queued one holds its
    # request body); more get a 429.
    max_queued_trainings: int = Field(default=16, ge=1, le=MAX_COUNT)
    # The CPU priority of the worker processes that train and retrain (see workers.py's
    # WORKER_PRIORITIES): idle yields to all other work, so on a machine kept busy it can wait
    # indefinitely; low and normal get a share of a busy CPU. Low by default: beside the
    # requests it cost them no more than idle did (benchmarks/retraining_load.py), and a
    # training or retraining on a busy machine ends, late, rather than never.
    training_priority: Literal["idle", "low", "normal"] = DEFAULT_PRIORITY
    # Seconds a training (POST /train) may run before its worker is stopped and it fails
    # (0: no limit): trainings run one at a time, so one that never ends holds all the others.
    training_timeout_s: float = Field(default=3600, ge=0, le=MAX_SECONDS, allow_inf_nan=False)
    # Largest request body accepted (JSON or uploaded files), in MB; larger ones get a 413; 0: no limit.
    max_upload_mb: float = Field(default=512, ge=0, le=MAX_MB, allow_inf_nan=False)
    # Records in a lookup table that generation writes (0: no limit). Every worker holds a
    # table it answers from in memory: a 39 MB CSV of 5 million traces made a 2.4 GB table.
    max_table_rows: int = Field(default=1_000_000, ge=0, le=MAX_COUNT)
    log_level: str = "info"
    # How the log lines are written: text, as uvicorn writes its, or one JSON object a line
    # (logs.JsonFormatter), for a log pipeline to read without patterns.
    log_format: LogFormat = "text"
    # uvicorn's line per request (serve and the seed's entry point; a `uvicorn` command's own
    # flag governs there). Off, a single prediction's p50 was 0.14 to 0.28 ms, on 0.31 to 0.46
    # (benchmarks/latency.py --only accesslog); requests are counted in /metrics either way.
    access_log: bool = True
    # Prediction cache entries (0 turns it off); see the README for when it pays.
    cache_size: int = Field(default=10_000, ge=0, le=MAX_COUNT)
    # Batch predictions worked on at once, each in a thread of its own (the others wait their
    # turn without one), apart from the thread pool of /health, /models and model loading.
    batch_threads: int = Field(default=4, ge=1, le=256)
    # Accuracy monitoring and online retraining. Values that would turn them into
    # nonsense (no window, keeping no observation file) are refused at startup.
    accuracy_window: int = Field(default=1000, ge=1, le=MAX_COUNT)
    drift_alpha: float = Field(default=1e-3, gt=0, lt=1, allow_inf_nan=False)
    drift_min_observations: int = Field(default=30, ge=1, le=MAX_COUNT)
    auto_retrain: bool = False
    retrain_min_observations: int = Field(default=200, ge=1, le=MAX_COUNT)
    # A retraining fits its candidates on at most this many of the newest observations.
    retrain_max_observations: int = Field(default=20_000, ge=50, le=MAX_COUNT)
    # Retrainings fit in a separate worker process (one per service process, started
    # at the first retraining); off, in a thread of the serving process, beside the requests.
    retrain_in_worker: bool = True
    observations_max_file_mb: float = Field(default=8.0, gt=0, le=MAX_MB, allow_inf_nan=False)
    observations_max_files: int = Field(default=8, ge=1, le=MAX_COUNT)
    # FastAPI's native OpenTelemetry (traces, metrics, logs through the globally
    # configured providers). Off by default: even unconfigured, it is consulted on
    # every request; Prometheus metrics are always at /metrics.
    opentelemetry: bool = False
    # The key the routes that change state require (``Authorization: Bearer <key>``); unset,
    # none is required. A SecretStr, so that no repr, log line or error message shows it.
    api_key: SecretStr | None = None

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir_named(cls, v: object) -> object:
        if isinstance(v, str) and not v.strip():  # read as a path, "" is ".": the working directory, by accident
            raise ValueError("must name a directory; empty, it would be the working directory")
        if isinstance(v, str) and (v != v.strip() or any(c < " " or c == "\x7f" for c in v)):
            # A value from a file or a template with its line break ('/srv/data\n') started the
            # service on a new, empty directory of that name beside the real one.
            raise ValueError("must not begin or end with whitespace nor hold a control character (a line break "
                             "from a file or a template?): it would name a new, empty directory")
        return v

    @field_validator("host")
    @classmethod
    def _host_named(cls, v: str) -> str:
        # Empty, uvicorn bound every interface, IPv6 ones too: wider than the default 0.0.0.0,
        # from a variable set by a template whose value was missing, say.
        if not v.strip():
            raise ValueError("is empty: name the address to bind (0.0.0.0 for every IPv4 interface, :: for every "
                             "IPv6 one too), or unset the variable for the default, 0.0.0.0")
        return v

    @field_validator("default_lookup_table")
    @classmethod
    def _default_table_can_be_a_table(cls, v: str | None) -> str | None:
        # A file that is missing yet may be generated later (and is then loaded); a name that
        # no table file can have is a mistake now, refused at start as other wrong values are.
        if v is None:
            return v
        from .traces import TRACE_FILE_KINDS, trace_file_format  # (numpy: not for every command's start)

        if not v.strip():
            raise ValueError("is empty: name a table file, or unset the variable to serve without a default")
        if trace_file_format(Path(v).name, stem_required=True) is None:
            raise ValueError(f"{Path(v).name!r}: a lookup table is a {TRACE_FILE_KINDS} file")
        return v

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format_any_case(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v  # as the level is read: JSON is json

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, v: str) -> str:
        if v.lower() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return v.lower()

    @field_validator("api_key")
    @classmethod
    def _api_key_usable(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        key = v.get_secret_value()
        if not key:
            raise ValueError("is empty: set a key, or unset the variable to require none")
        if not visible_ascii(key):
            raise ValueError("must be visible ASCII characters, without spaces")
        if len(key) < API_KEY_MIN_LENGTH:
            raise ValueError(f"must be at least {API_KEY_MIN_LENGTH} characters long "
                             "(a random one: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return v

    @field_validator("drift_min_observations")
    @classmethod
    def _drift_within_window(cls, v: int, info: ValidationInfo) -> int:
        window = info.data.get("accuracy_window")
        if window is not None and v > window:
            raise ValueError(f"must be at most PREDICTOR_ACCURACY_WINDOW ({window}): drift is tested on the "
                             "window's observations, and would never be")
        return v

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def tables_dir(self) -> Path:
        return self.data_dir / "tables"

    @property
    def observations_dir(self) -> Path:
        return self.data_dir / "observations"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / JOBS_FOLDER

    @property
    def state_dirs(self) -> tuple[Path, ...]:
        """The folders the service cannot do without: the data directory and its models,
        tables and observations (not ``jobs/``: trainings' records, made again as needed)."""
        return self.data_dir, self.models_dir, self.tables_dir, self.observations_dir

    def ensure_dirs(self) -> None:
        for d in self.state_dirs:
            try:
                d.mkdir(parents=True, exist_ok=True)
            except FileExistsError:  # a file, or a link to one or to nothing, where the folder goes
                raise StorageError(f"cannot use {self.data_dir} as the data directory: {_no_folder(d)}",
                                   field="data_dir") from None
            except OSError as exc:
                raise StorageError(f"cannot use {self.data_dir} as the data directory: cannot create {d} "
                                   f"({exc.strerror or exc})", field="data_dir") from None
        # Trainings' records only: a read-only copy without it (an older service made it at
        # its first training) is still served, and warned of (unwritable_dirs).
        with contextlib.suppress(OSError):
            self.jobs_dir.mkdir(exist_ok=True)

    def missing_dir(self) -> str | None:
        """The first of :attr:`state_dirs` that is not there (or no folder), or None; not
        ``jobs/``, whose records an operator may clear, and which a training makes again."""
        for d in self.state_dirs:
            try:
                if stat.S_ISDIR(os.stat(d).st_mode):
                    continue
            except OSError:
                pass
            return str(d)
        return None

    def unwritable_dirs(self) -> list[str]:
        """One line for each folder of the data directory this process cannot write in (a
        read-only volume, an immutable folder): such a service serves what is stored, and every
        training, observation or table generation fails (a training after all its work)."""
        import tempfile

        problems = []
        for d, what in ((self.models_dir, "trainings and retrainings"), (self.tables_dir, "table generation"),
                        (self.observations_dir, "observations"), (self.jobs_dir, "trainings")):
            try:
                # A name of its own (not the pid's: another container's process may share it).
                fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=d)
            except OSError as exc:
                problems.append(f"{d} is not writable ({exc.strerror or exc}): {what} will fail")
                continue
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
        return problems


def _no_folder(path: Path) -> str:
    """Why folder ``path`` cannot be made (``mkdir`` found a name taken): the first of it and
    the folders above it that is there and is no folder. A link to nothing (a volume not
    mounted yet) was called "a file, not a directory", also where it was a folder above."""
    for p in (path, *path.parents):
        if os.path.lexists(p) and not p.is_dir():
            if p.is_symlink() and not p.exists():
                if link_loop(p):  # (a link to itself was said to lead to nothing)
                    return f"{p} is a loop of symbolic links (a link to {os.readlink(p)}), not a folder"
                return f"{p} is a symbolic link to {os.readlink(p)}, which does not exist (a volume not mounted?)"
            return f"{p} is a file, not a directory"
    return f"{path} is a file, not a directory"


# The data directory's folder of training job records.
JOBS_FOLDER = "jobs"

# PREDICTOR_ variables that are not settings of the service but are read by its examples (the
# seed's client example reads the service's address from PREDICTOR_URL).
NOT_SETTINGS = frozenset({"PREDICTOR_URL"})


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line for each ``PREDICTOR_`` variable in ``environ`` that is no setting, naming
    the setting it may have meant: pydantic-settings ignores such a name, so a misspelt
    ``PREDICTOR_APIKEY`` left every route open and said nothing."""
    import difflib

    # Compared without the prefix, which every name shares and would make any two alike.
    known = sorted(name.upper() for name in PredictorSettings.model_fields)
    lines = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("PREDICTOR_") or upper.removeprefix("PREDICTOR_") in known or upper in NOT_SETTINGS:
            continue
        close = difflib.get_close_matches(upper.removeprefix("PREDICTOR_"), known, n=1, cutoff=0.7)
        meant = f" (did you mean PREDICTOR_{close[0]}?)" if close else ""
        lines.append(f"{shown(name)} is not a setting of this service{meant}: it is ignored")
    return lines


# In the data directory: the metric files of `serve --workers N`'s workers, one folder per running service.
METRICS_DIR = ".metrics"
# prometheus_client's own variable: where its multi-process mode keeps every process's values.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiproc_variable() -> str | None:
    """The variable that sets prometheus_client's multi-process directory, if one is set:
    ``PROMETHEUS_MULTIPROC_DIR``, else the older, lower-case name, which it also reads."""
    return next((v for v in (MULTIPROC_ENV, MULTIPROC_ENV.lower()) if os.environ.get(v)), None)


def startup_problem(settings: PredictorSettings) -> str | None:
    """Why a service with ``settings`` cannot start, in one line (the data directory cannot
    be made, or prometheus_client's multi-process directory is unusable), or None."""
    try:
        settings.ensure_dirs()
    except StorageError as exc:
        return exc.message
    variable = multiproc_variable()
    if variable is not None:
        multiproc = os.environ[variable]
        try:
            os.makedirs(multiproc, exist_ok=True)
        except OSError as exc:
            return f"{variable}: cannot make {multiproc!r} a directory ({exc.strerror or exc})"
        if not os.access(multiproc, os.W_OK | os.X_OK):
            return f"{variable}: {multiproc!r} is not writable by this user"
    return None


def listen_problem(host: str, port: int, host_name: str = "PREDICTOR_HOST") -> str | None:
    """Why the server could not listen on ``host:port`` (a port in use, a host unknown), or None.

    Checked before uvicorn starts, which would say it in several log lines and exit 3.
    Bound as asyncio binds (each resolved address; IPv6 ones IPv6-only); an error this
    check cannot name is left to uvicorn.
    """
    import socket

    if not host:
        return None  # every interface, as asyncio takes it
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        return f"{host_name} {host!r} cannot be resolved ({getattr(exc, 'strerror', None) or exc})"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPV6_V6ONLY"):
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                where = f"[{address[0]}]:{port}" if family == socket.AF_INET6 else f"{address[0]}:{port}"
                if exc.errno == errno.EADDRINUSE:
                    return f"cannot listen on {where} (address already in use): is another server running there?"
                if exc.errno == errno.EACCES:
                    return f"cannot listen on {where} (permission denied: ports below 1024 need privileges)"
                if exc.errno == errno.EADDRNOTAVAIL:
                    return f"cannot listen on {where} ({host_name} {host!r} is not an address of this machine)"
    return None


def settings_problem(exc: ValidationError, named: Mapping[str, str] | None = None) -> str:
    """One line naming each bad variable, for a service that cannot start; ``named`` renames
    variables (to the command-line flag that set one)."""
    def name(loc: tuple) -> str:
        field = str(loc[0]).lower() if loc else "settings"  # (an alias's error is located by the alias)
        variable = "PREDICTOR_" + field.upper()
        if field == "default_lookup_table" and ("DEFAULT_LOOKUP_TABLE" in os.environ or variable not in os.environ):
            variable = "DEFAULT_LOOKUP_TABLE"  # the seed's name, read first
        return (named or {}).get(variable, variable)

    def got(e: dict) -> str:
        return "" if e["loc"] and e["loc"][0] == "api_key" else f" (got {shown(e.get('input'))})"  # never shown

    return "; ".join(f"{name(e['loc'])}: {e['msg'].removeprefix('Value error, ')}{got(e)}" for e in exc.errors())
