"""``swarmpilot-predictor``: serve, train, predict, list models, from a data directory or a URL."""

from __future__ import annotations

import signal
import threading


def _interrupted_while_importing(signum: int, frame: object) -> None:
    raise SystemExit(128 + signal.SIGINT)  # quiet, with the status an interrupted command has (typer's)


# Ctrl-C while the imports below run (numpy, pydantic, rich: 2 to 3 s on a loaded machine)
# ends the command as it does once it runs, not with a traceback of numpy's import; Python's
# handler is back once they are done. (Only where it is Python's: not one ignoring SIGINT, as
# a job started in the background has, nor one of the importer's own; only the main thread may set one.)
_QUIET_IMPORT = (threading.current_thread() is threading.main_thread()
                 and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
if _QUIET_IMPORT:
    signal.signal(signal.SIGINT, _interrupted_while_importing)

try:
    import contextlib
    import datetime
    import logging
    import math
    import os
    import shutil
    import stat
    import sys
    import tempfile
    from collections.abc import Iterator
    from pathlib import Path
    from typing import Any, NoReturn, Optional
    from urllib.parse import unquote

    import orjson
    import typer
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from .errors import PredictorError, json_kind, validation_message
    from .identity import IDENTITY_KEYS, WILDCARD, IdentityPattern, identity_part_problem, join_key
    from .schemas import check_levels, config_from_text, first_run_split, valid_unicode
    from .processes import alive, pid_space
    from .settings import (METRICS_DIR, MULTIPROC_ENV, PredictorSettings, listen_problem, multiproc_variable, settings_problem,
                           startup_problem)
finally:
    # Also where an import failed (an importer that goes on without this module kept the
    # handler, and its Ctrl-C then ended it with SystemExit, past its own KeyboardInterrupt handling).
    if _QUIET_IMPORT and signal.getsignal(signal.SIGINT) is _interrupted_while_importing:
        signal.signal(signal.SIGINT, signal.default_int_handler)

# Click's plain help: typer's rich panels gave every flag a "<bool>" as if it took a value, and
# cut the MODEL argument's help, the one place that spells out its five parts, at 80 columns.
app = typer.Typer(help="SwarmPilot Predictor: runtime distributions for ML inference tasks.", no_args_is_help=True,
                  rich_markup_mode=None)


def _print_version(given: bool) -> None:
    if given:
        from . import __version__

        _out(f"swarmpilot-predictor {__version__}\n")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print the version (the one /health reports) and exit.")) -> None:
    pass


# Piped or redirected, a line is not cut to a terminal's 80 columns: a script reads whole
# model keys and paths (a table's lines were truncated with "…", a written path broken in three).
# (No stdout at all, `>&-`: what would be printed is dropped, as rich does.)
class _ReaderGone(Exception):
    """The reader of the command's output closed it (``| head``): the rest is for no one."""


class _Console(Console):
    def on_broken_pipe(self) -> None:  # rich's own exits 1, with no word: read as a failure
        self.quiet = True
        raise _ReaderGone


def _out(text: str | bytes) -> None:
    """Write ``text`` to stdout now: a closed pipe is noticed here, not at the exit's flush.

    Written until all of it is taken: under PYTHONUNBUFFERED (set in many container images)
    stdout's bytes are written unbuffered, a write to a pipe closed midway takes part of
    them without an error, and the text layer drops the rest without a word (a JSON answer
    cut off read as whole, and the command ended 0).
    """
    data = text if isinstance(text, bytes) else text.encode(sys.stdout.encoding or "utf-8", sys.stdout.errors or "strict")
    try:
        sys.stdout.flush()
        out, view = sys.stdout.buffer, memoryview(data)
        while view:
            taken = out.write(view)
            view = view[taken or 0:]
        out.flush()
    except BrokenPipeError:
        raise _ReaderGone from None


console = _Console(width=None if sys.stdout is not None and sys.stdout.isatty() else 100_000)
err_console = Console(stderr=True)


def _url_given(url: Optional[str]) -> Optional[str]:
    if url is not None and not url.strip():  # an unset variable in `-u "$URL"`: not the local directory
        raise typer.BadParameter("is empty: give the service's URL, or leave --url out for a data directory")
    return url


DataDirOpt = typer.Option(None, "--data-dir", "-d", help="Data directory (default: $PREDICTOR_DATA_DIR or ./predictor_data).")
UrlOpt = typer.Option(None, "--url", "-u", callback=_url_given,
                      help="Talk to a running service at this URL instead of a data directory.")


API_KEY_ENV = "PREDICTOR_API_KEY"


def _settings(data_dir: Optional[str], flags: dict[str, str] | None = None) -> PredictorSettings:
    """Settings from the environment; ``flags`` maps the variables that a flag set to the flag, named in errors."""
    from pydantic import ValidationError

    if data_dir is not None:  # as text: typer reads --data-dir "" as the path ".", the working directory
        flags = {**(flags or {}), "PREDICTOR_DATA_DIR": "--data-dir"}
    try:
        return PredictorSettings(data_dir=data_dir) if data_dir is not None else PredictorSettings()
    except ValidationError as exc:  # a bad PREDICTOR_* variable, or a flag passed through one
        _fail(settings_problem(exc, flags))


def _service(data_dir: Optional[str], existing: bool = False):
    """The service on a local data directory, or a clear error if it cannot be used.

    ``existing``: for commands that read models, the directory must be there already: a
    mistyped ``--data-dir`` would otherwise be created, empty, and read as "no models". And
    one that holds no ``models`` folder holds no model: None, and nothing is made in it (a
    listing of a project's own folder, ``-d .``, left the service's four folders there).
    """
    # An offline command is no worker of a running service: counted into that service's
    # multi-process metrics directory, its predictions and trainings would show in the
    # service's /metrics. (prometheus_client reads the variable once, when first imported.)
    for name in (MULTIPROC_ENV, MULTIPROC_ENV.lower()):
        os.environ.pop(name, None)
    from .service import PredictorService

    settings = _existing_settings(data_dir) if existing else _settings(data_dir)
    if existing and settings.data_dir.is_dir() and not settings.models_dir.exists():
        return None  # (a file in its place: the service says so)
    try:
        return PredictorService(settings)
    except PredictorError as exc:
        _fail(exc.message)


def _existing_settings(data_dir: Optional[str]) -> PredictorSettings:
    """The settings of a data directory a command reads, which must be there already, and be
    a directory (one unusable otherwise, a file on its path say, is left for the service to say how)."""
    settings = _settings(data_dir)
    try:
        is_dir = stat.S_ISDIR(settings.data_dir.stat().st_mode)
    except FileNotFoundError:
        _fail(f"data directory {settings.data_dir} does not exist (train a model into it first, or give --url)")
    except OSError:
        return settings
    if not is_dir:  # as the service says it (a listing of its tables read it as none)
        _fail(f"cannot use {settings.data_dir} as the data directory: {settings.data_dir} is a file, not a directory")
    return settings


def _table_store(data_dir: Optional[str]):
    """The data directory's tables folder, opened with no model and no default table (a
    listing parses none; the seed's tables need no model); None where it has none."""
    root = _existing_settings(data_dir).data_dir / "tables"
    if not root.is_dir():
        return None
    from .lookup import LookupTableStore

    try:
        return LookupTableStore(root)
    except OSError as exc:
        _fail(f"tables folder {root}: cannot read it ({exc.strerror or exc})")


def _no_models(data_dir: Optional[str]) -> NoReturn:
    _fail(f"data directory {_settings(data_dir).data_dir} holds no models (it has no models folder): "
          "train one into it first, or give --url")


def _predict_on_one_blas_thread() -> None:
    from .service import predict_on_one_blas_thread  # (imported late, as the service is)

    predict_on_one_blas_thread()


def _service_or_tables(data_dir: Optional[str], lookup_table: Optional[str]) -> tuple[Any, Any]:
    """The data directory's service, or where it holds no model and a lookup table is asked
    for, its tables alone (the seed's need no model): one of the two is None; neither is
    there, the command fails saying so. BLAS on one thread, as the server runs it."""
    service = _service(data_dir, existing=True)
    store = _table_store(data_dir) if service is None and lookup_table is not None else None
    if service is None and store is None:
        _no_models(data_dir)
    _predict_on_one_blas_thread()
    return service, store


def _fail(message: str, code: int = 1) -> NoReturn:
    # One line, whatever the terminal's width; the message is text, not rich markup. Only line
    # breaks (and the indents around them) are joined: a name it quotes keeps its spaces (a
    # file 'two  spaces.jsonl' was named 'two spaces.jsonl', which is not there).
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    err_console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
    raise typer.Exit(code)


def _fail_at_start(message: str, log_format: str) -> NoReturn:
    """``serve``'s error that stops it before it starts: with ``PREDICTOR_LOG_FORMAT=json`` one
    JSON line (level ERROR), as every line the run writes."""
    if log_format == "json":
        from .logs import write_json_line

        write_json_line(logging.ERROR, message, __name__)
        raise typer.Exit(1)
    _fail(message)


def _as_flag(message: str, field: Optional[str], flags: dict[str, str]) -> str:
    """An error about a field that a flag gave, in the flag's name (``--output``, not ``table_name``)."""
    if field in flags and message.startswith(field):
        return flags[field] + message[len(field):]
    return message


def _shown(url: str) -> str:
    """``--url`` as messages show it: a password in it as ``***``, as the client's errors do
    (messages end up in logs; the client's own said it so, these quoted it)."""
    from .client import shown_url

    return shown_url(url)


@contextlib.contextmanager
def _remote(url: str, flags: dict[str, str] | None = None) -> Iterator[Any]:
    """A client of the service at ``url``, sending ``$PREDICTOR_API_KEY`` where set (from the
    environment only: a flag would show the key in the process list and the shell's history);
    its errors (unreachable, an error answer) end the command with one line, naming the
    flag (``flags``: field to flag) that gave a field the service refused."""
    import httpx

    from .client import PredictorClient, PredictorClientError

    flags = {"base_url": "--url", "api_key": API_KEY_ENV, **(flags or {})}
    try:
        with PredictorClient(url, api_key=os.environ.get(API_KEY_ENV) or None) as client:
            yield client
    except PredictorClientError as exc:
        message = _as_flag(exc.message, exc.field, flags)
        if exc.field == "api_key" and exc.message.startswith("api_key and a user"):
            # (in the CLI's terms: the key is the variable's, the user and password --url's)
            message = (f"{API_KEY_ENV} is set, and --url {_shown(url)} holds a user and password: both are sent "
                       f"as the Authorization header; unset {API_KEY_ENV}, or leave them out of --url")
        if exc.status_code == 401 and exc.field == "authorization":
            # The service says which header to send; a CLI user sends it by the variable alone.
            message += (f" ({API_KEY_ENV} is not set here: the CLI sends it as the key)" if not os.environ.get(API_KEY_ENV)
                        else f" (the CLI sent {API_KEY_ENV})")
        _fail(f"{exc.status_code}: {message}" if exc.status_code else message)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # a URL httpx cannot use
        _fail(f"cannot talk to the predictor at {_shown(url)}: {exc}")
    except OSError as exc:  # a trace file to upload that cannot be read
        _fail(f"{exc.filename or 'a file'}: cannot read it ({exc.strerror or exc})")
    except UnicodeError as exc:  # an argument of bytes that are not UTF-8 (a name, the URL): no request can carry it
        bad = ascii(exc.object[exc.start:exc.end]) if isinstance(exc, UnicodeEncodeError) else str(exc)
        _fail(f"an argument holds {bad}, which is not UTF-8 text: it cannot be sent to {ascii(_shown(url))}")
    except ValueError as exc:  # what the client refuses before sending (an identity part of blanks, say)
        _fail(str(exc))


def _existing_file(what: str):
    """A parser of a file argument that must be there (``train``'s CONFIG, ``table``'s
    TRACE_FILE), whose errors are usage errors naming the argument. An empty one is said to be
    empty: as a path it is ".", the working directory, and was refused as "file '' is a
    directory"."""

    def parse(value: Any) -> Path:
        if isinstance(value, Path):  # (a default, or a value typer already made a path)
            return value
        text = str(value)
        if not text:
            raise typer.BadParameter(f"is empty: give {what}")
        try:
            mode = os.stat(text).st_mode
        except OSError:
            raise typer.BadParameter(f"file {text!r} does not exist.") from None
        if stat.S_ISDIR(mode):
            raise typer.BadParameter(f"file {text!r} is a directory.")
        if not os.access(text, os.R_OK):
            raise typer.BadParameter(f"file {text!r} is not readable.")
        return Path(text)

    return parse


def _levels_arg(quantiles: Optional[str]) -> Optional[list[float]]:
    """``--quantiles`` as levels, checked as the HTTP API checks them."""
    if quantiles is None:
        return None
    try:
        levels = [float(q) for q in quantiles.split(",")]
    except ValueError:
        _fail(f"--quantiles is a comma-separated list of numbers, e.g. 0.5,0.9,0.99 (got {quantiles!r})")
    try:
        return check_levels(levels, "--quantiles")
    except ValueError as exc:
        _fail(str(exc))


def _name_arg(name: Optional[str], flag: str) -> Optional[str]:
    """A table's name a flag gave (``--lookup-table``, ``--output``): one of bytes that are not
    UTF-8 is refused as offline refuses it (with --url the client said it in its own terms:
    "--lookup-table is a str (...), which cannot be sent as JSON")."""
    if name is not None and not valid_unicode(name):
        _fail(f"{flag} {name!r} is not a valid file name (it holds a lone surrogate)")
    return name


def _confidence_arg(confidence_level: float) -> float:
    if not 0.0 < confidence_level < 1.0:  # NaN too
        _fail(f"--confidence-level must lie strictly between 0 and 1, got {confidence_level:g}")
    return confidence_level


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Bind address (default $PREDICTOR_HOST or 0.0.0.0)."),
    port: Optional[int] = typer.Option(None, help="Port (default $PREDICTOR_PORT or 8200)."),
    data_dir: Optional[str] = DataDirOpt,
    workers: Optional[int] = typer.Option(None, help="Worker processes sharing the data directory."),
    default_lookup_table: Optional[str] = typer.Option(None, help="Lookup table loaded at start."),
    log_level: Optional[str] = typer.Option(None, help="uvicorn log level (default $PREDICTOR_LOG_LEVEL or info)."),
    log_format: Optional[str] = typer.Option(None, help="Log lines as text or json, one JSON object a line "
                                                        "(default $PREDICTOR_LOG_FORMAT or text)."),
    access_log: Optional[bool] = typer.Option(None, "--access-log/--no-access-log",
                                              help="uvicorn's line per request (default $PREDICTOR_ACCESS_LOG or on)."),
):
    """Start the HTTP service."""
    import uvicorn

    from .logs import uvicorn_log_config

    # Settings travel through the environment so that every worker process sees them, and
    # flags are checked as the variables are.
    flags = {}
    for name, flag, value in (("PREDICTOR_HOST", "--host", host), ("PREDICTOR_PORT", "--port", port),
                              ("PREDICTOR_DATA_DIR", "--data-dir", data_dir), ("PREDICTOR_WORKERS", "--workers", workers),
                              ("DEFAULT_LOOKUP_TABLE", "--default-lookup-table", default_lookup_table),
                              ("PREDICTOR_LOG_LEVEL", "--log-level", log_level),
                              ("PREDICTOR_LOG_FORMAT", "--log-format", log_format),
                              ("PREDICTOR_ACCESS_LOG", "--access-log", access_log)):
        if value is not None:
            os.environ[name] = str(value)
            flags[name] = flag
    settings = _settings(None, flags)
    # The address first: a start refused for it leaves no data directory behind.
    problem = listen_problem(settings.host, settings.port,
                             flags.get("PREDICTOR_HOST", "PREDICTOR_HOST")) or startup_problem(settings)
    if problem:
        _fail_at_start(problem, settings.log_format)
    metrics_dir = None
    own_metrics = multiproc_variable()
    if own_metrics is not None:
        # An operator's directory: what an earlier run left there would be counted as this
        # run's (a restart's first scrape said the 5 predictions made before it).
        from .metrics import remove_exited_processes_files

        removed = remove_exited_processes_files(os.environ[own_metrics])
        if removed:
            said = (f"removed {removed} metric file(s) of processes no longer running from {own_metrics} "
                    f"({os.environ[own_metrics]}): an earlier run's counts, not this one's")
            if settings.log_format == "json":  # (every line of the run in its form)
                from .logs import write_json_line

                write_json_line(logging.WARNING, said, __name__)
            else:
                err_console.print(said, markup=False, highlight=False, soft_wrap=True)
    if settings.workers > 1:
        from .api import SUPERVISOR_ENV, warn_of_unknown_variables
        from .logs import log_beside_uvicorn

        # Said once here, where each worker would say it again.
        log_beside_uvicorn(settings.log_level, settings.log_format)
        warn_of_unknown_variables()

        os.environ[SUPERVISOR_ENV] = str(os.getpid())  # its workers stop if it dies
        if own_metrics is None:  # (one set by either name is the operator's, checked at start)
            # Every worker's counters in one place, so that a scrape (whichever worker
            # takes it) counts them all; fresh per run, as prometheus_client requires.
            try:
                metrics_dir = _fresh_metrics_dir(settings.data_dir, MEMORY_METRICS_ROOT)
            except OSError as exc:
                _fail_at_start(f"cannot create a directory for the workers' metrics in "
                               f"{settings.data_dir / METRICS_DIR} ({exc.strerror or exc})", settings.log_format)
            os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        uvicorn.run(
            "swarmpilot_predictor.api:app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level,
            access_log=settings.access_log,
            # In the service's form, with the request's id on each access line and uvicorn's lines for it.
            log_config=uvicorn_log_config(settings.log_format),
            # A worker first imports the service (seconds on a loaded machine): uvicorn's 5 s
            # start-up health check killed workers before they could answer it.
            timeout_worker_healthcheck=60,
            http="swarmpilot_predictor.protocol:BoundedHeadersProtocol",  # headers of bounded length
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


# prometheus_client writes its files through mmap: on a full disk a page of such a (sparse)
# file has no block to go to, and the worker touching it dies of SIGBUS (with the data disk
# full, both workers died, and every one started in their place). In memory they cannot
# run out with the disk.
MEMORY_METRICS_ROOT = Path("/dev/shm")


def _metrics_root(data_dir: Path, memory: Path | None) -> Path:
    """This user's folder in ``memory`` where the system has one this user may write (not
    another user's: the folder is world-writable), else ``.metrics`` in the data directory."""
    if memory is not None and memory.is_dir() and os.access(memory, os.W_OK | os.X_OK):
        root = memory / f"swarmpilot-predictor-metrics-{os.getuid()}"
        try:
            root.mkdir(mode=0o700, exist_ok=True)
            st = root.lstat()
        except OSError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077:
                return root
    root = data_dir / METRICS_DIR
    root.mkdir(exist_ok=True)
    return root


def _fresh_metrics_dir(data_dir: Path, memory: Path | None = MEMORY_METRICS_ROOT) -> str:
    """A new directory for the workers' metric files, in memory (see ``MEMORY_METRICS_ROOT``)
    or else in the data directory (not in the system's temporary directory, whose cleaner
    would remove it under a long-running service), named after this host, process-id
    namespace and process; those left by supervisors that no longer run (killed outright)
    are removed first, but only where a process id means the same as here: a data
    directory may be shared by other hosts, and by containers of one host name whose
    process ids are their own."""
    root = _metrics_root(data_dir, memory)
    host, namespace = pid_space()
    here = f"{host}-{namespace or 0}"  # not Linux: one namespace
    for old in root.iterdir():
        parts = old.name.rsplit("-", 2)  # here, the process id, mkdtemp's random part
        if len(parts) != 3 or parts[0] != here or not parts[1].isdigit():
            continue  # another host's or namespace's, or not one of ours
        if not alive(int(parts[1])):
            shutil.rmtree(old, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{here}-{os.getpid()}-", dir=root)


def _load_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        _fail(f"{path}: not a valid JSON or YAML config (not UTF-8 text: byte {exc.start})")
    except OSError as exc:
        _fail(f"{path}: cannot read the config ({exc.strerror or exc})")
    try:
        return config_from_text(text)  # as POST /train reads a config file
    except PredictorError as exc:
        _fail(f"{path}: {exc.message}")


@app.command()
def train(
    config: Path = typer.Argument(..., parser=_existing_file("a training config file (JSON or YAML)"), metavar="CONFIG",
                                  help="Training config (JSON or YAML)."),
    data_dir: Optional[str] = DataDirOpt,
    url: Optional[str] = UrlOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON answer (its metrics in full)."),
):
    """Train a model (or one per group) from a config file."""
    from pydantic import ValidationError

    from .client import PredictorClientError
    from .schemas import TrainConfig

    raw = _load_config_file(config)
    if url:
        traces = raw.get("traces")
        if isinstance(traces, list):  # inline, read from YAML: sent as a JSON config's reader reads them
            _json_can_carry([t for t in traces if isinstance(t, dict)])
        files = None
        if isinstance(traces, str) and _is_file(config.parent / traces):
            files = {Path(traces).name: config.parent / traces}
            raw = {**raw, "traces": Path(traces).name}
        try:
            with _remote(url) as client:
                try:
                    result = client.train(raw, files=files)
                except PredictorClientError as exc:
                    if files is None and isinstance(traces, str) and exc.field in ("traces", "config.traces"):
                        # The name went as a path in the service's data directory: say where
                        # the CLI looked first, and that nothing was uploaded.
                        exc.message += (f"; there is no file {str(config.parent / traces)!r} next to the config "
                                        "either, to upload")
                    if exc.field == "config" or (exc.field or "").startswith(("config.", "config[")):
                        exc.message = f"{config}: {exc.message}"  # which file, as offline
                    raise
        except KeyboardInterrupt:
            # The request was sent: the service trains on and stores the version all the same.
            _fail(f"interrupted: the service may still finish this training and store its version "
                  f"(see `models --url {_shown(url)}`)", code=130)
        _print_train(result.model_dump(mode="json", exclude_unset=True), as_json)  # the answer as sent
        return
    try:
        cfg = TrainConfig.model_validate(raw)
    except ValidationError as exc:  # as the API words it
        _fail(f"{config}: {validation_message(exc, prefix=('config',))[0]}")
    service = _service(data_dir)
    uploads = None
    if isinstance(cfg.traces, str):
        # A path in a config file on the command line is relative to the config file.
        local = (config.parent / cfg.traces)
        if _is_file(local):
            uploads = {cfg.traces: local}
        elif not _is_file(service.settings.data_dir / cfg.traces):
            # The service would name a '..' it refuses in the data directory, of a path that is
            # fine here (relative to the config file): say what is missing, and where it looked.
            stated = Path(cfg.traces)
            there = ("; a path in the data directory must be relative to it, without '..'"
                     if stated.is_absolute() or ".." in stated.parts else f", nor in the data directory {service.settings.data_dir}")
            _fail(f"{config}: traces {cfg.traces!r}: there is no file {str(local)!r} (next to the config){there}")
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,} traces"),
                  TimeElapsedColumn(), console=err_console, transient=True,
                  disable=not err_console.is_terminal) as progress:
        task = progress.add_task("reading traces", total=None)
        try:
            result = service.train(cfg, uploads, progress=lambda n: progress.advance(task, n))
        except PredictorError as exc:
            _fail(exc.message)
    _print_train(result, as_json)


def _algorithm(algorithm: Any, first_run_split: dict[str, Any] | None) -> str:
    """A model's family, or its two models' where it serves one for each kind of run."""
    if first_run_split:
        return f"{first_run_split['repeats']} (repeats) / {first_run_split['first_runs']} (first runs)"
    return str(algorithm)


def _print_train(result: dict[str, Any], as_json: bool = False) -> None:
    if as_json:
        _out(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        return
    entries = result.get("models") or [{"model_key": result["model_key"], "version": result.get("version"), "metrics": result["metrics"]}]
    table = Table(title=f"trained in {result['duration_seconds']:.2f}s")
    for col in ("model", "version", "algorithm", "rows", "rel. pinball", "coverage err", "90% interval", "median MAPE",
                "runtime/expect"):
        table.add_column(col)
    for e in entries:
        m = e["metrics"]
        table.add_row(
            escape(e["model_key"]), str(e.get("version")), escape(_algorithm(m.get("algorithm"), first_run_split(m))),
            str(m.get("rows_used")),
            _fmt(m.get("relative_pinball_loss")), _fmt(m.get("mean_abs_coverage_error")),
            _fmt((m.get("interval_coverage") or {}).get("0.9")), _fmt(m.get("median_mape")), _fmt(m.get("expect_ratio")),
        )
    console.print(table)
    # The traces not trained on, which the table's rows leave out (--json has them in full).
    for e in entries:
        data = e["metrics"].get("data") or {}
        dropped = data.get("rows_dropped") or {}
        if dropped:
            why = "; ".join(f"{reason}: {n:,}" for reason, n in dropped.items())
            console.print(f"{escape(e['model_key'])}: {sum(dropped.values()):,} of {data.get('rows_total', 0):,} "
                          f"traces not used ({escape(why)})", highlight=False)
    if result.get("rows_in_no_group"):
        console.print(f"{result['rows_in_no_group']:,} trace(s) lack a group_by key: in no group, not trained on",
                      highlight=False)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))


def _parse_key(model: str) -> IdentityPattern:
    parts = model.split("/")
    if len(parts) != 5:
        _fail("MODEL is five parts: model_type/model_name/hardware/software_name/software_version ('*' for any)")
    empty = [name for name, p in zip(IDENTITY_KEYS, parts) if not p.strip()]
    if empty:
        # A mistyped '//' would otherwise widen the match to any value, with no warning.
        _fail(f"MODEL's {', '.join(empty)} is empty: name it, or write '*' for any")
    # Segments may be URL-encoded as in the HTTP API, so 'Qwen%2FQwen2.5-7B' can name a model.
    parts = [unquote(p) for p in parts]
    for name, p in zip(IDENTITY_KEYS, parts):
        if p in (".", ".."):
            # No model has one (a URL resolves it away): offline "no trained model matches", with
            # --url the client's "identity.model_name '..' cannot be sent in a URL".
            _fail(f"MODEL's {name} is {p!r}, which no model's can be ('.' and '..' are resolved away in URLs)")
        if not valid_unicode(p):  # bytes of another encoding: offline "no trained model matches"
            _fail(f"MODEL's {name} {p!r} is not valid Unicode (it holds a lone surrogate): no model's can be")
        problem = identity_part_problem(p) if p != WILDCARD else None
        if problem is not None:
            # One too long for any model's (offline "no trained model matches", with --url the
            # client's "identity.model_name is 5,000 characters long"), or holding a control character.
            _fail(f"MODEL's {name} names no model: {problem}")
    return IdentityPattern.from_segments(*parts)


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False for a name no file can have: a long JSON trace given where a
    file may be, or a path past the file system's limits (ENAMETOOLONG is not "not there")."""
    try:
        return path.is_file()
    except OSError:
        return False


def _read_trace_arg(trace: str) -> list[dict[str, Any]]:
    """The traces TRACE names (a file) or is (JSON): at least one, each an object, whether a
    local service or ``--url``'s answers (the client refuses the others before sending)."""
    if not trace.strip():  # Path("") is ".", which read as "TRACE '' is a directory"
        _fail("TRACE is empty: give a .json, .jsonl or .csv file, or inline JSON")
    path = Path(trace)
    if _is_file(path):
        from .traces import TraceError, iter_trace_file

        try:
            traces = list(iter_trace_file(path))
        except TraceError as exc:
            _fail(str(exc))
        except OSError as exc:  # unreadable (permissions), or gone since it was looked at
            _fail(f"{trace}: cannot read it ({exc.strerror or exc})")
        if not traces:  # "0/0 predicted" and exit 0 read as success
            _fail(f"{trace}: the file holds no traces")
        return traces
    try:
        data = orjson.loads(trace)
    except orjson.JSONDecodeError as exc:
        if trace == "-":
            _fail("TRACE '-': traces are not read from stdin; give a .json, .jsonl or .csv file, or inline JSON")
        with contextlib.suppress(OSError):
            if path.is_dir():
                _fail(f"TRACE {trace!r} is a directory, not a trace file")
            if path.exists():  # a pipe (<(...), /dev/stdin), a device
                _fail(f"TRACE {trace!r} is not a regular file: pipes and devices are not read")
        if not trace.lstrip().startswith(("{", "[")):  # a file's name, most likely
            _fail(f"TRACE {trace!r}: there is no such file (nor is it a JSON object or array)")
        # Say why it is not JSON: a number beyond a float's range reads as "not a file nor JSON" otherwise.
        _fail(f"TRACE is neither a file nor a JSON object/array (as JSON: {exc})")
    traces = data if isinstance(data, list) else [data]
    if not traces:
        _fail("TRACE is an empty array: there is no trace to predict")
    for i, t in enumerate(traces):
        if not isinstance(t, dict):
            _fail(f"trace[{i}] must be a JSON object of fields, got {json_kind(t)}")
    return traces


def _json_can_carry(traces: list[dict[str, Any]], measured: str | None = None) -> list[dict[str, Any]]:
    """``traces`` as ``--url`` sends them: a CSV cell's ``nan`` or ``inf`` (JSON has neither)
    as null, a missing value, as training reads CSV's ``nan``, and its integer past 64 bits
    (CSV keeps every digit) as the float a JSON file's reader makes of it. The client refuses
    a request holding either, so one such cell, in a column the model does not even use,
    failed every trace of the file, where offline each is predicted (or scored) on its own.
    The ``measured`` runtime's ``nan`` or ``inf`` is sent as its text, which the service reads
    as that number and refuses as offline does ("must be a number in [1e-12, 1e+15]"); as null
    it was "missing measured 'runtime_ms'"."""
    from .client import json_integer

    for t in traces:
        for key, value in t.items():
            if isinstance(value, float) and not math.isfinite(value):
                t[key] = str(value) if key == measured else None
            elif isinstance(value, int) and not json_integer(value):
                try:
                    t[key] = float(value)
                except OverflowError:  # past the float range too: infinite, so missing
                    t[key] = None
    return traces


# The most traces one request may carry (the service's limit on a batch, as on an evaluation).
_TRACES_PER_REQUEST = 100_000


def _sendable(traces: list[dict[str, Any]], measured: str | None = None) -> list[dict[str, Any]]:
    """``traces`` as ``--url`` sends them (:func:`_json_can_carry`), in one request: more than
    the service takes are an error in the CLI's terms (the service's said "trace: List should
    have at most 100000 items after validation", naming its field)."""
    if len(traces) > _TRACES_PER_REQUEST:
        _fail(f"TRACE holds {len(traces):,} traces: with --url they are sent in one request, at most "
              f"{_TRACES_PER_REQUEST:,} (the service's limit); split them, or leave --url out")
    return _json_can_carry(traces, measured)


@app.command()
def predict(
    model: str = typer.Argument(..., metavar="MODEL", help="The model's five parts (above); '*' for any part."),
    trace: str = typer.Argument(..., metavar="TRACE", help="A trace file, or one trace (or an array) as JSON."),
    quantiles: Optional[str] = typer.Option(None, help="Comma-separated levels, e.g. 0.5,0.9,0.99."),
    confidence_level: float = typer.Option(0.95, "--confidence-level", "-c", help="Level of the central interval, in (0, 1)."),
    data_dir: Optional[str] = DataDirOpt,
    url: Optional[str] = UrlOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON answer."),
    shared_factor: bool = typer.Option(False, "--shared-factor",
                                       help="Multiply the total by the model's shared factor (README, Modelling)."),
    lookup_table: Optional[str] = typer.Option(None, "--lookup-table", metavar="NAME",
                                               help="Answer from this lookup table of the tables folder (the service's, with --url), not the model."),
    deadline_ms: Optional[float] = typer.Option(None, "--deadline-ms", metavar="MS",
                                                help="Also print each task's, and the total's, probability of being done within MS."),
):
    """Predict runtime distributions for traces.

    MODEL is model_type/model_name/hardware/software_name/software_version.
    """
    pattern = _parse_key(model)
    levels = _levels_arg(quantiles)
    _confidence_arg(confidence_level)
    if deadline_ms is not None and not 0.0 < deadline_ms < math.inf:  # NaN too
        _fail(f"--deadline-ms must be a positive number of milliseconds, got {deadline_ms:g}")
    _name_arg(lookup_table, "--lookup-table")
    traces = _read_trace_arg(trace)
    flags = {"lookup_table_name": "--lookup-table", "shared_factor": "--shared-factor", "deadline_ms": "--deadline-ms"}
    if url:
        with _remote(url, flags) as client:
            body = client.predict_batch(pattern.as_tuple(), _sendable(traces), confidence_level=confidence_level, quantiles=levels,
                                        lookup_table_name=lookup_table, shared_factor=shared_factor,
                                        deadline_ms=deadline_ms).model_dump(exclude_unset=True)  # the answer as sent
    else:
        service, store = _service_or_tables(data_dir, lookup_table)
        try:
            if service is not None:
                answer = service.predict(pattern, traces, confidence_level, levels, with_total=True,
                                         shared_factor=shared_factor, lookup_table=lookup_table is not None,
                                         lookup_table_name=lookup_table, deadline_ms=deadline_ms)
            else:  # tables, and no model
                from .service import predict_from_table

                answer = predict_from_table(store, lookup_table, pattern, traces, confidence_level, levels,
                                            with_total=True, shared_factor=shared_factor, deadline_ms=deadline_ms)
            body = answer.batch_response()
        except PredictorError as exc:
            _fail(_as_flag(exc.message, exc.field, flags))
    if as_json:
        _out(orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        _print_predictions(body, confidence_level, deadline_ms)
    if int(body["summary"]["failed"]) > 0:
        raise typer.Exit(1)  # a script can tell that a trace failed (the answer is printed first)


# A drawn table of many rows is slow to print (20,000 predictions offline: 17.2 s in all, 3.0
# s printed as lines): more than this are printed as tab-separated lines.
_TABLE_ROWS_MAX = 1_000


def _print_predictions(body: dict[str, Any], confidence_level: float, deadline_ms: float | None = None) -> None:
    if len(body["results"]) > _TABLE_ROWS_MAX:
        _print_prediction_lines(body, confidence_level, deadline_ms)
        return
    tabled = _from_table(body)
    running = _running(body)
    table = Table(title=escape(_predicted(body)))
    table.add_column("#")
    if tabled:
        table.add_column("match")  # exact, task_id or nearest: how far a record is from the trace
    if running:
        table.add_column("reached")  # a running task's elapsed_level: its numbers are its time left
    for q in body.get("quantiles") or []:
        table.add_column(f"p{_level(q * 100)}")
    table.add_column("mean")
    table.add_column("std")
    table.add_column(f"{_level(confidence_level)} interval")
    if deadline_ms is not None:
        table.add_column(_within(deadline_ms))
    for i, r in enumerate(body["results"]):
        first = [*_match_column(r, tabled), *_reached_column(r, running)]
        if r["status"] == "success":
            table.add_row(str(i), *first, *[_ms(v) for v in r["quantile_predictions"]], _ms(r["expect"]),
                          _ms(r["error"]), f"{_ms(r['interval'][0])} - {_ms(r['interval'][1])}",
                          *_deadline_column(r, deadline_ms))
        else:
            table.add_row(str(i), *first, f"[red]{escape(_cell(r['message']))}[/]")
    console.print(table)
    _print_total(body, confidence_level, deadline_ms)


def _ms(value: float) -> str:
    """A runtime in ms, to two decimals, or under 1 ms to three significant digits: two
    decimals printed a model of 1e-4 ms runtimes (a kernel's) as 0.00 everywhere. Past the
    longest runtime there is (1e15 ms), as ``:g`` writes it: a deadline of 1e300 was headed
    in 301 digits."""
    if value >= 1e15:
        return f"{value:.6g}"
    return f"{value:.2f}" if value >= 1 or value == 0 else f"{value:#.3g}"


def _level(value: float) -> str:
    """A level as given, to 12 digits: ``:g``'s 6 labelled 0.999999999999 "1 interval", and
    quantile 0.9999999 "p100"; 12 still drop float noise (0.07 * 100 is 7.000000000000001)."""
    return f"{value:.12g}"


def _from_table(body: dict[str, Any]) -> bool:
    """Whether a lookup table answered (each result then says how its trace found its record)."""
    return bool(body["results"]) and body["results"][0].get("source") == "lookup_table"


def _running(body: dict[str, Any]) -> bool:
    """Whether some trace was a running task (its result gives ``elapsed_level``, and its
    numbers are its time left)."""
    return any("elapsed_level" in r for r in body["results"])


def _match_column(result: dict[str, Any], tabled: bool) -> list[str]:
    return [str(result.get("match") or "")] if tabled else []


def _reached_column(result: dict[str, Any], running: bool) -> list[str]:
    if not running:
        return []
    level = result.get("elapsed_level")
    if level is None:
        return [""]
    # 1 says the model can tell nothing of what is left (every number 0: stuck); a task
    # running long, at 0.99999999993 with 265 ms left, printed 1.000 all the same.
    return [_probability(level, near_zero=False)]


def _predicted(body: dict[str, Any]) -> str:
    """``2/3 predicted``, and from which lookup table where one answered."""
    said = f"{body['summary']['success']}/{body['summary']['total']} predicted"
    return said + (f" from lookup table {body['results'][0].get('table')}" if _from_table(body) else "")


def _within(deadline_ms: float) -> str:
    """The heading of the probabilities of being done within a deadline."""
    return f"P(<= {_ms(deadline_ms)} ms)"


def _probability(p: float, near_zero: bool = True) -> str:
    """``p`` to three decimals, short of 1 never "1.000" (nor, with ``near_zero``, above 0 never
    "0.000": a task almost sure to be late is not sure to be)."""
    shown = f"{p:.3f}"
    if shown == "1.000" and p < 1:
        return ">0.999"
    return "<0.001" if near_zero and shown == "0.000" and p > 0 else shown


def _deadline_column(result: dict[str, Any], deadline_ms: float | None) -> list[str]:
    if deadline_ms is None:
        return []
    p = result.get("deadline_probability")
    return ["" if p is None else _probability(p)]


def _print_total(body: dict[str, Any], confidence_level: float, deadline_ms: float | None = None) -> None:
    if body.get("expect") is not None and len(body["results"]) > 1:
        lo, hi = body["total_interval"]
        within = body.get("total_deadline_probability")
        console.print(f"total: mean {_ms(body['expect'])} ms, std {_ms(body['error'])} ms, {_level(confidence_level)} "
                      f"interval {_ms(lo)} - {_ms(hi)} ms"
                      + ("" if deadline_ms is None or within is None else f", {_within(deadline_ms)} {_probability(within)}"))


def _print_prediction_lines(body: dict[str, Any], confidence_level: float, deadline_ms: float | None = None) -> None:
    """The predictions as tab-separated lines, a header first: a failed trace's line holds
    its message after its number."""
    levels = body.get("quantiles") or []
    tabled = _from_table(body)
    running = _running(body)
    head = ["#", *(["match"] if tabled else []), *(["reached"] if running else []),
            *(f"p{_level(q * 100)}" for q in levels), "mean", "std",
            f"{_level(confidence_level)} low", f"{_level(confidence_level)} high",
            *([] if deadline_ms is None else [_within(deadline_ms)])]
    lines = [_predicted(body), "\t".join(head)]
    for i, r in enumerate(body["results"]):
        if r["status"] == "success":
            values = [*r["quantile_predictions"], r["expect"], r["error"], *r["interval"]]
            lines.append("\t".join([str(i), *_match_column(r, tabled), *_reached_column(r, running),
                                    *(_ms(v) for v in values), *_deadline_column(r, deadline_ms)]))
        else:
            lines.append("\t".join([str(i), *_match_column(r, tabled), f"error: {_cell(r['message'])}"]))
    _out("\n".join(lines) + "\n")
    sys.stdout.flush()
    _print_total(body, confidence_level, deadline_ms)


# A message quotes names a trace or a model gave (a feature named "input\ttokens"): written
# as they are, a tab made a cell of its own and a line break a line of its own (drawn by
# rich, a tab was spaces: another name).
_CELL_ESCAPES = str.maketrans({"\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _cell(text: str) -> str:
    """``text`` as one cell on one line (of a tab-separated line, a drawn table, stderr): its
    tabs and line breaks written as escapes."""
    return text.translate(_CELL_ESCAPES)


def _listed(entries: list[Any], as_json: bool, none_said: str) -> bool:
    """A listing's JSON (``--json``), or, where it is empty, what to do: whether that said all."""
    if as_json:
        _out(orjson.dumps(entries, option=orjson.OPT_INDENT_2) + b"\n")
        return True
    if not entries:
        console.print(none_said)
        return True
    return False


@app.command()
def models(data_dir: Optional[str] = DataDirOpt, url: Optional[str] = UrlOpt,
           as_json: bool = typer.Option(False, "--json", help="Print the raw JSON list.")):
    """List trained models."""
    if url:
        with _remote(url) as client:
            entries = client.list_models_raw()
    else:
        service = _service(data_dir, existing=True)
        try:
            entries = service.list_models() if service is not None else []
        except PredictorError as exc:
            _fail(exc.message)
    if _listed(entries, as_json, "no models: train one first (`train CONFIG`)"):
        return
    table = Table(title="models")
    for col in ("model", "versions", "algorithm", "samples", "rel. pinball", "90% interval", "predictions"):
        table.add_column(col)
    for n, group in enumerate(entries):
        try:
            for m in group["models"]:
                met = m.get("metrics", {})
                # A version's metrics are what its meta file holds: one edited by hand (a coverage that
                # is no object, a figure written as text with brackets) failed the whole listing with
                # a traceback (AttributeError, rich's MarkupError). Shown as they are, not read as markup.
                coverage = met.get("interval_coverage")
                table.add_row(escape(m["key"]), ",".join(map(str, m["versions"])),
                              escape(_algorithm(m.get("algorithm"), m.get("first_run_split"))), escape(str(m.get("samples"))),
                              escape(_fmt(met.get("relative_pinball_loss"))),
                              escape(_fmt(coverage.get("0.9") if isinstance(coverage, dict) else None)),
                              escape(str(m.get("total_predictions", 0))))
        except (KeyError, TypeError, AttributeError) as exc:
            # An answer not in the service's form (another server's at --url, say): one line, not a traceback.
            _fail(f"unexpected answer from GET /models at {_shown(url or '')}: its entry [{n}] is not in the "
                  f"predictor's form ({type(exc).__name__}: {exc})")
    console.print(table)


# The largest version a request can name (JSON numbers of 64 bits, unsigned).
_VERSION_MAX = 2**64 - 1


@app.command()
def evaluate(
    model: str = typer.Argument(..., metavar="MODEL", help="The model's five parts (as predict's); '*' for any part."),
    trace: str = typer.Argument(..., metavar="TRACE",
                                help="A trace file, or traces as JSON, each with its measured runtime."),
    model_version: Optional[int] = typer.Option(None, "--model-version", metavar="N",
                                                help="Score this stored version (default: the serving, latest one)."),
    lookup_table: Optional[str] = typer.Option(None, "--lookup-table", metavar="NAME",
                                               help="Score this lookup table's answers (the service's, with --url), not the model's."),
    data_dir: Optional[str] = DataDirOpt,
    url: Optional[str] = UrlOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON answer."),
):
    """Score a model, or a lookup table, on traces with measured runtimes, recording nothing.

    Prints each level's coverage and its binomial test, the central intervals' coverage, the
    pinball loss and median error against the version's held-out figures at training.
    """
    pattern = _parse_key(model)
    if model_version is not None and model_version < 1:
        _fail(f"--model-version counts from 1, got {model_version}")
    if model_version is not None and model_version > _VERSION_MAX:
        # No request can carry it: with --url the client refused it in its own terms (an "int
        # which cannot be sent as JSON"), where offline said the model has no such version.
        _fail(f"--model-version {model_version} is past any version a model can have (at most {_VERSION_MAX})")
    if model_version is not None and lookup_table is not None:
        _fail("--model-version names a model's version, but --lookup-table answers from a table: leave one out")
    _name_arg(lookup_table, "--lookup-table")
    traces = _read_trace_arg(trace)
    flags = {"version": "--model-version", "lookup_table_name": "--lookup-table"}
    if url:
        with _remote(url, flags) as client:
            body = client.evaluate(pattern.as_tuple(), _sendable(traces, measured="runtime_ms"), model_version,
                                   lookup_table_name=lookup_table).model_dump(exclude_unset=True)
    else:
        service, store = _service_or_tables(data_dir, lookup_table)
        try:
            if service is not None:
                body = service.evaluate(pattern, traces, model_version, lookup_table is not None, lookup_table)
            else:  # tables, and no model
                from .service import evaluate_table

                body = evaluate_table(store, lookup_table, pattern, traces)
        except PredictorError as exc:
            _fail(_as_flag(exc.message, exc.field, flags))
    if as_json:
        _out(orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        _print_evaluation(body)
    if body["rejected"]:
        raise typer.Exit(1)  # a script can tell that a trace was not scored (the figures are printed first)


def _print_evaluation(body: dict[str, Any]) -> None:
    rejected = len(body["rejected"])
    scored = (f"lookup table {body['table']}" if body.get("source") == "lookup_table"
              else f"{body['model_key']} version {body['version']}")
    title = f"{scored}: {_count(body['evaluated'], 'trace')} scored"
    # (Above the table, not as its title: a title wraps at the narrow table's width.)
    console.print(escape(title + (f", {rejected:,} not" if rejected else "")), highlight=False)
    table = Table()
    for col in ("level", "coverage", "p-value"):
        table.add_column(col)
    p_values = body["calibration"]["p_values"]
    for level, got in body["coverage"].items():
        table.add_row(level, f"{got:.3f}", f"{p_values[level]:.3g}")
    console.print(table)
    heldout = body.get("heldout_at_training") or {}

    def beside(key: str, form: str = ".4f") -> str:  # the version's own figure at training, where it has one
        return f" (held out at training: {heldout[key]:{form}})" if isinstance(heldout.get(key), (int, float)) else ""

    def intervals(coverage: dict[str, Any]) -> str:
        return ", ".join(f"{float(size):.0%} {coverage[size]:.3f}" for size in body["interval_coverage"]
                         if isinstance(coverage.get(size), (int, float)))

    held = heldout.get("interval_coverage")
    held_intervals = intervals(held) if isinstance(held, dict) else ""
    calibration = body["calibration"]
    lines = [f"central intervals' coverage: {intervals(body['interval_coverage'])}"
             + (f" (held out at training: {held_intervals})" if held_intervals else ""),
             f"relative pinball loss: {body['relative_pinball_loss']:.4f}{beside('relative_pinball_loss')}",
             f"mean absolute coverage error: {body['mean_abs_coverage_error']:.4f}{beside('mean_abs_coverage_error')}",
             f"median's mean absolute percentage error: {body['median_mape']:.4f}{beside('median_mape')}"]
    if body.get("expect_ratio") is not None:
        lines.append(f"runtimes' sum / expects' sum: {body['expect_ratio']:.3f}{beside('expect_ratio', '.3f')}")
    lines.append(f"coverage test: worst level {calibration['worst_level']}, p-value {calibration['corrected_p_value']:.3g} "
                 f"(corrected over {len(p_values)} levels; small: the runtimes are not those predicted)")
    for i, message in ((r["index"], r["message"]) for r in body["rejected"][:5]):
        lines.append(f"[red]trace[{i}]: {escape(_cell(message))}[/]")
    if rejected > 5:
        lines.append(f"[red]and {rejected - 5:,} more not scored[/]")
    for line in lines:
        console.print(line, highlight=False)


@app.command("tables")
def tables_cmd(data_dir: Optional[str] = DataDirOpt, url: Optional[str] = UrlOpt,
               as_json: bool = typer.Option(False, "--json", help="Print the raw JSON list.")):
    """List lookup tables.

    Offline, the data directory's tables folder (its files, none parsed); with --url, the service's.
    """
    if url:
        with _remote(url) as client:
            entries = client.list_tables()
    else:
        # The files alone: no service, so no default table parsed (a million records: 15 s).
        store = _table_store(data_dir)
        entries = store.list() if store is not None else []
    if _listed(entries, as_json, "no lookup tables: make one with `table MODEL TRACE_FILE`"):
        return
    table = Table(title="lookup tables")
    for col in ("name", "size", "modified", "records", "models"):
        table.add_column(col)
    for n, t in enumerate(entries):
        try:
            # Rows and models are known of a table the service holds in memory (with --url: one it
            # generated or answered from); a file's own stat otherwise.
            # Each by its key, as `models` writes it and MODEL takes it: a '/' in a part is %2F
            # (joined as it was, 'llm/Qwen/Qwen2.5-7B/...' read as six parts, naming no model).
            models = ", ".join(join_key([None if i.get(k) in (None, "") else str(i.get(k)) for k in IDENTITY_KEYS])
                               for i in t.get("identities") or [])
            when = datetime.datetime.fromtimestamp(t["modified_at"], datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            table.add_row(escape(t["name"]), _size(t["size_bytes"]), when, f"{t['rows']:,}" if "rows" in t else "-",
                          escape(models) or ("[red]" + escape(t["error"]) + "[/]" if t.get("error") else "-"))
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, OSError) as exc:
            # An answer not in the service's form (another server's at --url, say): one line, not a traceback.
            _fail(f"unexpected answer from GET /tables at {_shown(url or '')}: its table [{n}] is not in the "
                  f"predictor's form ({type(exc).__name__}: {exc})")
    console.print(table)


def _size(n: float) -> str:
    """Bytes as a person reads them: ``912 B``, ``1.5 MB``."""
    unit = "B"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            break
        n /= 1024
    return f"{n:,.0f} B" if unit == "B" else f"{n:,.1f} {unit}"


@app.command("table")
def table_cmd(
    model: str = typer.Argument(..., metavar="MODEL", help="The model's five parts (above); '*' for any part."),
    trace_file: Path = typer.Argument(..., parser=_existing_file("a trace file (.json, .jsonl or .csv, optionally .gz)"),
                                      metavar="TRACE_FILE", help="Traces (.json, .jsonl or .csv, optionally .gz)."),
    output: Optional[str] = typer.Option(None, "--output", "-o",
                                         help="Table name in the data directory's tables folder; offline, one holding a '/' is a path (./out.csv); default: from the model."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="json or csv (default: from --output's suffix, which must be .json or .csv, optionally .gz; json without --output)."),
    confidence_level: float = typer.Option(0.95, "--confidence-level", "-c", help="Level of each trace's central interval, in (0, 1)."),
    knots: int = typer.Option(24, "--knots", min=0, max=64,
                              help="Further levels each record stores at most, so that answers at levels it does not store follow the model (0: none)."),
    data_dir: Optional[str] = DataDirOpt,
    url: Optional[str] = UrlOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON answer."),
):
    """Predict every trace of a file and write a lookup table.

    MODEL is model_type/model_name/hardware/software_name/software_version.
    """
    pattern = _parse_key(model)
    if not _is_file(trace_file):
        # (exists=True lets them through: a pipe, `<(zcat t.jsonl.gz)`, was refused as the
        # unsupported file '63', and a named pipe read to its end to count its lines, then
        # opened again, with no one writing: the command hung.)
        _fail(f"TRACE_FILE {str(trace_file)!r} is not a regular file: pipes and devices are not read")
    from .traces import TRACE_FILE_KINDS, trace_file_format

    if trace_file_format(trace_file.name) is None:
        # Said here, as offline says it: with --url the service named its multipart part,
        # "trace_file 'x.txt' must be ...", after the file was uploaded.
        _fail(f"unsupported trace file {str(trace_file)!r}: expected {TRACE_FILE_KINDS}")
    if url or not (output and ("/" in output or os.sep in output)):  # (offline, a path of one's own may be any bytes)
        _name_arg(output, "--output")
    if fmt is not None and fmt not in ("json", "csv"):
        _fail("--format is json or csv")
    _confidence_arg(confidence_level)
    if url:
        try:
            with _remote(url, {"table_name": "--output", "format": "--format", "knots": "--knots"}) as client:
                result = client.generate_table(pattern.as_tuple(), trace_file, confidence_level, output, fmt,
                                               knots=knots)
        except KeyboardInterrupt:
            # The upload was sent (or being sent): the service writes the table all the same, as
            # an interrupted `train --url` says of its version.
            _fail(f"interrupted: the service may still write this table (see `tables --url {_shown(url)}`)", code=130)
    else:
        out_path = None
        name = output
        if output and ("/" in output or os.sep in output):
            out_path = Path(output)
            name = None
            if output.endswith(("/", os.sep)) or out_path.is_dir():
                _fail(f"--output {output!r} is a directory: name the table file in it "
                      f"({str(out_path / ('table.' + (fmt or 'csv')))!r})")
        service = _service(data_dir, existing=True) or _no_models(data_dir)
        _predict_on_one_blas_thread()
        total = _count_records(trace_file)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} traces" if total else "{task.completed:,} traces"),
                      TimeElapsedColumn(), console=err_console, transient=True,
                      disable=not err_console.is_terminal) as progress:
            task = progress.add_task("predicting", total=total)
            try:
                result = service.generate_table(pattern, trace_file, confidence_level, name, fmt,
                                                progress=lambda n: progress.advance(task, n), out_path=out_path,
                                                knots=knots)
            except PredictorError as exc:
                _fail(_as_flag(exc.message, exc.field, {"table_name": "--output", "format": "--format", "knots": "--knots"}))
            except (FileExistsError, NotADirectoryError) as exc:  # a folder on the path is a file (/dev/null/x.csv)
                _fail(f"--output {output!r}: cannot write it ({exc.filename} is not a directory)")
            except OSError as exc:  # a path of one's own: no permission, a full disk
                _fail(f"--output {output!r}: cannot write it ({exc.strerror or exc}: {exc.filename})")
        if out_path is not None:
            _as_created_here(Path(result["path"]))
    if as_json:
        _out(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        try:
            _print_table_result(result)
        except (KeyError, TypeError, ValueError) as exc:
            # An answer not in the service's form (another server's at --url, say): one line, not a traceback.
            _fail(f"unexpected answer from POST /predict/table at {_shown(url or '')}: not in the predictor's form "
                  f"({type(exc).__name__}: {exc})")
    if result.get("failed"):
        # As predict: a script can tell that traces are missing from the table (written all the same).
        raise typer.Exit(1)


def _print_table_result(result: dict[str, Any]) -> None:
    ready = result.get("load_seconds")
    console.print(f"wrote {_count(result['rows'], 'record')} to {escape(str(result['path']))} in "
                  f"{result.get('duration_seconds', 0):.1f}s"
                  + (f", read for serving in {ready:.1f}s" if ready is not None else "")
                  + (f" ({_count(result['failed'], 'trace')} could not be predicted)" if result.get("failed") else ""),
                  soft_wrap=True)
    for line in result.get("errors") or []:
        err_console.print(f"  [yellow]{escape(_cell(line))}[/]", soft_wrap=True)  # one line each, piped too


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _as_created_here(path: Path) -> None:
    """Give a file written to a path of the user's own the mode a new file gets from the
    umask (0644 under the usual 022): files of the data directory are written 0600, as
    mkstemp makes them, and so was a table written with ``--output``."""
    umask = os.umask(0o022)  # the only way to read it is to set it (this command is one thread)
    os.umask(umask)
    try:
        os.chmod(path, 0o666 & ~umask)
    except OSError:  # a file system without modes: left as written
        pass


def _count_records(path: Path) -> int | None:
    """Lines of an uncompressed .jsonl/.csv file, for the progress bar's total (None otherwise)."""
    name = path.name.lower()
    if not name.endswith((".jsonl", ".ndjson", ".csv")):
        return None
    n = 0
    last = b"\n"
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    n += last != b"\n"
    return max(n - (1 if name.endswith(".csv") else 0), 0)


def main() -> None:
    """The command, whose output written to a full disk (``> /dev/full``) or a closed file is
    one line of error, not a traceback."""
    if sys.stdout is None:  # started with stdout closed (`>&-`): its output is dropped, as rich drops its own
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the process's stdout, open until it ends
    if getattr(sys.stdout, "errors", None) == "strict":
        # A stdout whose encoding cannot write a name (PYTHONIOENCODING=ascii, a Latin-1
        # locale) writes it escaped, as stderr does: a model on "A\xa0100" ended `models` in a traceback.
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        app()
    except _ReaderGone:
        # As a Unix tool killed by SIGPIPE (`seq 1000000 | head -1`): no message, and the
        # status 128 + SIGPIPE, where the reader's own decides a pipeline's without pipefail.
        with contextlib.suppress(OSError):  # the interpreter's last flush of stdout would fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(128 + signal.SIGPIPE) from None
    except OSError as exc:  # (a file the command names is in the error: stdout is none)
        where = str(exc.filename) if exc.filename else "writing the output"
        err_console.print(f"[bold red]error:[/] {escape(exc.strerror or str(exc))} ({escape(where)})", soft_wrap=True)
        with contextlib.suppress(OSError):  # the interpreter's last flush of stdout would fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


if __name__ == "__main__":  # pragma: no cover
    main()
