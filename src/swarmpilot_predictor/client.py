"""Python clients for the Predictor service: :class:`PredictorClient` and :class:`AsyncPredictorClient`.

Both share one implementation of request building and response parsing
(:class:`_Calls`); they differ only in how a request is sent, as httpx's
``Client`` and ``AsyncClient`` do.
"""

from __future__ import annotations

import asyncio
import math
import numbers
import operator
import os
import re
import ssl
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence, Set as AbstractSet, Sized
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, NoReturn, Self, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx
import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .collector import collector_paused
from .errors import cut
from .identity import IDENTITY_KEYS, IdentityPattern, ModelIdentity
from .schemas import (
    BatchPredictionResponse,
    CompletionTime,
    EvaluationResponse,
    HealthResponse,
    ModelInfo,
    ModelsResponse,
    PredictionResult,
    QueuesPredictionResponse,
    Ready,
    RunningTask,
    SinglePredictionResponse,
    TrainConfig,
    TrainResult,
    valid_unicode,
)
from .settings import visible_ascii
from .traces import category_text

# What a caller imports from here, the answers' and identities' types among them: type
# checkers take a name of a typed package that another module defines only from __all__
# (pyright: '"TrainResult" is not exported from module "swarmpilot_predictor.client"').
__all__ = [
    "PredictorClient", "AsyncPredictorClient",
    "PredictorClientError", "PredictorUnavailableError", "InvalidRequestError", "JobTimeoutError",
    "QueueWaitEstimate", "IdentityLike", "ModelIdentity", "ModelInfo", "TrainConfig",
    "HealthResponse", "ModelsResponse", "TrainResult", "SinglePredictionResponse", "BatchPredictionResponse",
    "PredictionResult", "EvaluationResponse", "Ready", "RunningTask", "CompletionTime", "KEEPALIVE_EXPIRY",
    "MAX_BACKOFF",
]

T = TypeVar("T", bound=BaseModel)
IdentityLike = ModelIdentity | IdentityPattern | ModelInfo | Mapping[str, Any] | Sequence[str | None] | str


# A synchronous /train (and a requested retraining) answers when it ends: give it far longer than a prediction.
_TRAIN_TIMEOUT = 1800.0
_TABLE_TIMEOUT = 600.0
# An idle connection is dropped well before the server drops it (uvicorn: after 5 s): a
# request sent on one the server was closing was lost, and a call that is not repeated
# (observe, train) failed, "it may have been carried out", though it never arrived.
KEEPALIVE_EXPIRY = 2.0
# The longest pause between two tries of a request that could not reach the service.
MAX_BACKOFF = 10.0


class PredictorClientError(Exception):
    """The service answered with an error, or could not be reached."""

    def __init__(self, message: str, status_code: int | None = None, field: str | None = None, body: Any = None,
                 retry_after: float | None = None, request_id: str | None = None):
        super().__init__(f"{status_code}: {message}" if status_code else message)
        self.message = message
        self.status_code = status_code
        self.field = field
        self.body = body
        # Seconds the service asks to wait before sending it again (its Retry-After: a 429
        # when as many trainings are queued as it takes), or None.
        self.retry_after = retry_after
        # The call's id, which the service's log lines about it carry (a 500's traceback among
        # them): the answer's X-Request-ID, or where no answer came (a timeout, a connection
        # that dropped) or a gateway's own answer came, without it, the one the client sent it
        # with, on each of its tries; else None. For a training job that failed (wait_for_job),
        # the id of the request that started it.
        self.request_id = request_id


class PredictorUnavailableError(PredictorClientError):
    """No connection to the service after every retry, or the request timed out."""


class JobTimeoutError(PredictorClientError, TimeoutError):
    """A training job still queued or running when ``wait_for_job``'s timeout ran out.

    The service answered: the job may still end, and ``train_job`` tells how. Not a
    :class:`PredictorUnavailableError`, which a scheduler may take for a service that is down.
    """


class QueueWaitEstimate(BaseModel):
    """Distribution of the time until a queue of tasks drains, in ms (of independent tasks, or
    with ``shared_factor`` of tasks sharing their run's level)."""

    # model_version is a field, not pydantic's: pydantic before 2.10 warned of it at import.
    model_config = ConfigDict(protected_namespaces=())

    tasks: int
    failed: int
    expect: float
    error: float
    quantiles: list[float]
    quantile_predictions: list[float]
    interval: list[float]
    confidence_level: float
    # The model version that answered (its tasks', the newest if they differ); None for an
    # empty queue, and for a lookup table's answer that names none.
    model_version: int | None = None
    # Asked with deadline_ms: the probability that the queue drains within it.
    deadline_ms: float | None = None
    deadline_probability: float | None = None
    # Its running tasks (a trace stating elapsed_ms), each its place and elapsed_level, and the
    # places of those the model can tell nothing more of (elapsed_level 1: past every runtime
    # it reaches): each of those counts 0 in the wait, which then says too little.
    running: list[RunningTask] = Field(default_factory=list)
    stuck: list[int] = Field(default_factory=list)
    # Asked with completion_times: when each task predicted is done, the queue run in its
    # order (a CompletionTime each: its place, and its completion's expect, error, quantiles
    # at the same levels, interval and deadline_probability); None where not asked.
    completion: list[CompletionTime] | None = None

    def quantile(self, level: float) -> float:
        # The level asked for up to rounding (0.1 * 7 for 0.7): the nearest, within 1e-12 and
        # within a millionth of its tail (its distance from 0 or 1), or a few ulps. A bare 1e-12
        # read 5e-13 as 1e-13 and 1 - 1e-13 as 1 - 5e-13, levels the service answers apart.
        at = level
        if isinstance(level, int):
            try:
                at = float(level)
            except OverflowError:  # a whole number no float holds (10 ** 400): no level was asked so
                at = math.nan
        if self.quantiles and at == at:
            k = min(range(len(self.quantiles)), key=lambda i: abs(self.quantiles[i] - at))
            q = self.quantiles[k]
            if abs(q - at) <= max(min(1e-12, 1e-6 * min(q, 1.0 - q)), 4 * math.ulp(q)):
                return self.quantile_predictions[k]
        raise KeyError(f"level {cut(str(level))} was not requested; have {self.quantiles}")



class InvalidRequestError(PredictorClientError, ValueError):
    """A request the client refuses to send, or a client it cannot make or use: a value JSON cannot
    carry (a NaN, an infinity), a bad identity, argument or setting, a closed client, an async
    client used from a second event loop. ``.field`` names what is wrong."""


def _dumps(body: Any, root: str = "") -> bytes:
    """JSON for a request body; numpy numbers and arrays (any layout, e.g. a column slice) too.

    orjson writes NaN and infinities as ``null``, which the service would read as a
    missing value: such a body is refused here, naming the value's place. Only a body
    that holds a ``null`` at all is searched, so the common case costs nothing more.
    A value JSON has no form for (a ``Decimal``, a set, an integer beyond 64 bits) is
    refused the same way.
    """
    try:
        data = orjson.dumps(body, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:  # orjson.JSONEncodeError
        if _has_str_subclass_keys(body):
            # A key that is text of a str subclass (numpy's np.str_, from dict(zip(np.array(names),
            # row))), which orjson writes only as a value: sent under the text it holds.
            return _dumps(_with_str_keys(body), root)
        where, value = _unsendable(body, root, any_type=True) or (root, body)
        if value is _TOO_DEEP:
            # (Its repr, for the message, raised RecursionError: the call's error was Python's.)
            where = cut(where)
            raise InvalidRequestError(f"{where} is nested more than {_DEEPEST} levels deep, which cannot be sent as "
                                      "JSON", field=where) from exc
        raise InvalidRequestError(f"{where or 'the request body'} is {_shown(value)}, which cannot be sent as JSON ({exc})",
                                  field=where or None) from exc
    if b"null" in data:
        found = _unsendable(body, root, any_type=False)
        if found is not None:
            where, value = found
            raise InvalidRequestError(f"{where or 'the request body'} is {value}, which JSON cannot carry "
                                      "(leave the field out, or send None, for a missing value)", field=where or None)
    return data


def _seen_before(value: Any, seen: set[int]) -> bool:
    """Whether ``value`` is a container a walk of a body has met before (``seen``, which it
    joins): a container held twice is looked into once, and one that holds itself (which
    orjson refuses) is not walked forever."""
    if not isinstance(value, (Mapping, list, tuple)):
        return False
    if id(value) in seen:
        return True
    seen.add(id(value))
    return False


def _has_str_subclass_keys(value: Any) -> bool:
    stack = [value]
    seen: set[int] = set()
    while stack:
        value = stack.pop()
        if _seen_before(value, seen):
            continue
        if isinstance(value, Mapping):
            if any(isinstance(k, str) and type(k) is not str for k in value):
                return True
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return False


def _with_str_keys(value: Any, made: dict[int, Any] | None = None) -> Any:
    """``value`` with every mapping's keys that are a str subclass made str (the rest as they
    are). A container met again is its copy made before (``made``, by the original's id), so
    that one that holds itself is copied as holding its copy, which orjson then refuses."""
    made = {} if made is None else made
    if isinstance(value, (Mapping, list, tuple)) and id(value) in made:
        return made[id(value)]
    if isinstance(value, Mapping):
        out: dict[Any, Any] = made.setdefault(id(value), {})
        out.update({(str(k) if isinstance(k, str) else k): _with_str_keys(v, made) for k, v in value.items()})
        return out
    if isinstance(value, (list, tuple)):
        copied: list[Any] = made.setdefault(id(value), [])
        copied.extend(_with_str_keys(v, made) for v in value)
        return copied
    return value


def _shown(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:  # a list of lists thousands deep: Python's error, not the client's
        text = "nested too deeply to show"
    kind = type(value).__name__
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind} ({text[:60] + '...' if len(text) > 60 else text})"


_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


def json_integer(value: int) -> bool:
    """Whether a request may carry the integer ``value``: orjson writes 64 bits, signed or not."""
    return _INT64_MIN <= value <= _UINT64_MAX


def _unsendable(value: Any, path: str, any_type: bool) -> tuple[str, Any] | None:
    """The place (``trace[2].input_tokens``) and value of the first thing JSON cannot carry in ``value``, if any:
    a NaN or an infinity, and with ``any_type`` (after orjson refused the body) a value of a type
    it does not write; otherwise such values (a datetime, a UUID: orjson writes them) are left be."""
    stack: list[tuple[Any, str, int]] = [(value, path, 1)]
    seen: set[int] = set()
    while stack:
        value, path, depth = stack.pop()
        if _seen_before(value, seen):
            continue
        if any_type and depth > _DEEPEST and isinstance(value, (Mapping, list, tuple)):
            return path, _TOO_DEEP
        if isinstance(value, str):
            if any_type and not valid_unicode(value):  # a lone surrogate: no JSON text can hold it
                return path, value
            continue
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, float):  # numpy.float64 too
            if not math.isfinite(value):
                return path, value
        elif isinstance(value, int):
            if any_type and not json_integer(value):
                return path, value
        elif isinstance(value, Mapping):
            for k in value:  # orjson writes str keys only
                if any_type and not (isinstance(k, str) and valid_unicode(k)):
                    return _joined(path, k), k
            stack.extend((v, _joined(path, k), depth + 1) for k, v in reversed(list(value.items())))
        elif isinstance(value, (list, tuple)):
            stack.extend((value[i], f"{path}[{i}]", depth + 1) for i in range(len(value) - 1, -1, -1))
        elif isinstance(value, np.ndarray):
            if value.dtype.kind == "f" and value.size:
                bad = np.argwhere(~np.isfinite(value))
                if len(bad):
                    index = tuple(int(i) for i in bad[0])
                    return path + "".join(f"[{i}]" for i in index), value[index].item()
            elif value.dtype.kind == "O":
                stack.append((value.tolist(), path, depth))
        elif isinstance(value, np.generic):
            if value.dtype.kind == "f" and not np.isfinite(value):  # numpy.float32 and the like
                return path, value.item()
        elif callable(getattr(value, "tolist", None)):
            stack.append((value.tolist(), path, depth))  # what _json_default sends (a pandas Series, say)
        elif any_type:
            return path, value
    return None


# The deepest nesting orjson writes (a list of lists 255 deep raised "Recursion limit reached").
_DEEPEST = 254
_TOO_DEEP = object()  # what _unsendable finds past it


def _joined(path: str, key: Any) -> str:
    # A lone surrogate in a key is escaped (\ud800): raw, the error naming it could be
    # neither printed nor logged to a UTF-8 stream.
    name = str(key).encode("utf-8", "backslashreplace").decode("utf-8")
    return f"{path}.{name}" if path else name


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):  # a MappingProxyType, say
        return dict(value)
    tolist = getattr(value, "tolist", None)  # numpy arrays orjson does not take natively, numpy scalars
    if tolist is None:
        raise TypeError(f"cannot send a {type(value).__name__} as JSON")
    return tolist()


@dataclass
class _Request:
    method: str
    path: str
    json: Any = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: dict[str, str] | None = None
    params: dict[str, Any] | None = None
    response: type[BaseModel] | None = None
    extract: str | None = None  # take this key of the JSON answer before validating
    idempotent: bool = field(default=False)
    raw: bool = False  # answer is text, not JSON
    binary: bool = False  # answer is a file's bytes (table downloads)
    require: tuple[str, ...] = ()  # keys a JSON object answer must hold
    list_answer: bool = False  # the answer (its extracted key) is a JSON array, not an object
    timeout: float | None = None  # replaces the client's timeout (a table generation's own)
    timeout_at_least: float | None = None  # the client's timeout, but never less (a synchronous /train)
    # A place in the body that the caller knows by another name, for the errors that name a
    # place in it: (as sent, as the caller named it), queue_wait's one queue ("queues.queue", "trace").
    renamed: tuple[str, str] | None = None


# A prediction's model_info names the parts without the model_ prefix.
_SHORT_KEYS = ("type", "name", "hardware", "software_name", "software_version")


def identity_parts(identity: IdentityLike) -> list[Any]:
    """The five parts of an identity, ``None`` where one is left unspecified.

    Takes a :class:`ModelIdentity` or pattern, ``"type/name/hardware/software/version"``,
    a sequence of five, or a mapping keyed as the contract's ``model`` object (or as a
    prediction's ``model_info``, which is accepted as is). A mapping's unknown key is an
    error rather than a silent ``*``: a misspelt ``modelname`` would otherwise match every model.
    A number names the part a trace's number trains (``2.0`` names ``"2"``; see
    :func:`_number_part`); every other part is returned as given.
    """
    # A set's parts come in no order of their own (a set of the five strings named the model
    # "Qwen/0.4.0/H100/llm/sglang", a 404): not five parts in order.
    if (not isinstance(identity, (ModelIdentity, IdentityPattern, BaseModel, str, Mapping, Iterable))
            or isinstance(identity, (bytes, bytearray))
            or isinstance(identity, AbstractSet)):
        raise InvalidRequestError(f"identity must be a model's identity (\"type/name/hardware/software/version\", "
                                  f"a mapping of its parts, or five parts), got {_shown(identity)}", field="identity")
    if isinstance(identity, BaseModel):
        # An answer's model_info: the fields it declares, without the extra ones a newer
        # service may send beside them (clients ignore those), which read as unknown keys.
        identity = {k: getattr(identity, k) for k in type(identity).model_fields}
    if isinstance(identity, (ModelIdentity, IdentityPattern)):
        # Checked as every other form is: these dataclasses take what they are given (an
        # IdentityPattern's "" was sent as an empty segment, a number as its str()).
        parts: list[Any] = list(identity.as_tuple())
    elif isinstance(identity, str):
        # Segments may be URL-encoded as in the HTTP API and the CLI: 'Qwen%2FQwen2.5-7B'.
        parts = [unquote(p) for p in identity.split("/")]
    elif isinstance(identity, Mapping):
        keys = IDENTITY_KEYS if any(k in identity for k in IDENTITY_KEYS[:2]) or not any(
            k in identity for k in _SHORT_KEYS[:2]) else _SHORT_KEYS
        unknown = [k for k in identity if k not in keys]
        if unknown:
            raise InvalidRequestError(f"unknown identity key(s) {unknown}; an identity's keys are {list(keys)}",
                                      field=f"identity.{unknown[0]}")
        parts = [identity.get(k) for k in keys]
    else:
        parts = list(identity)
    if len(parts) != 5:
        raise InvalidRequestError("an identity has five parts: model_type, model_name, hardware, software_name, "
                                  f"software_version; got {len(parts)}", field="identity")
    for i, (key, part) in enumerate(zip(IDENTITY_KEYS, parts)):
        if not (part is None or isinstance(part, (str, int, float, np.integer, np.floating))) or isinstance(part, bool):
            # Sent as its str() it named no model ("llm/{'a': 1}/*/*/*"); a number is a version
            # (numpy's too: str(np.int64(2)) is "2").
            raise InvalidRequestError(f"identity part {key} must be a string (or None for any), got {_shown(part)}",
                                      field=f"identity.{key}")
        if isinstance(part, str) and not part.strip():
            raise InvalidRequestError(f"identity part {key} is empty; leave it unspecified with None or '*'",
                                      field=f"identity.{key}")
        if part is not None and not isinstance(part, str):
            parts[i] = _number_part(part, key)
    return [None if p in (None, "*") else p for p in parts]


def _number_part(value: Any, key: str) -> str:
    """The part a number names, as training names a trace's (``traces.category_text``): ``2``,
    ``2.0`` and ``np.float32(2.0)`` name ``"2"``, ``2.5`` names ``"2.5"``. Its ``str()``, the
    URL segment ``2.0``, named no model that a trace's 2.0 trained. A numpy float narrower
    than a double is the number it is written as (``np.float32(0.1)`` is 0.1, as a trace
    sends it), not its double's digits."""
    if isinstance(value, np.integer):
        value = int(value)
    elif isinstance(value, np.floating) and not isinstance(value, float):
        value = float(str(value))
    try:
        finite = math.isfinite(value)
    except OverflowError:  # a whole number past the float range (10 ** 400)
        finite = False
    if not finite:
        # A trace's NaN is a missing value, and its infinity (or 10 ** 400, read as one) names no
        # part: sent as "nan", "inf" or 401 digits, it asked for a model no training named so.
        raise InvalidRequestError(f"identity part {key} is {_shown(value)}, which names no model: give a finite "
                                  "number, a string, or None for any", field=f"identity.{key}")
    return category_text(value)


# The longest path segment sent, percent-encoded: no name the service holds comes near it (an
# identity part is at most 200 characters, 2,400 encoded; a table's name at most 255 bytes).
# A longer one raised httpx's InvalidURL (a URL holds at most 65,536 characters), not a client
# error naming it.
_MOST_SEGMENT_CHARS = 4096


def _segment(value: Any, field_name: str) -> str:
    """One URL path segment, percent-encoded. ``.`` and ``..`` are refused: HTTP clients
    resolve them away, so the request would reach another endpoint (``download_table(".")``
    read the table list as if it were the table); so is text that cannot be UTF-8, and text
    longer than any name the service holds."""
    text = str(value)
    if text in (".", ".."):
        raise InvalidRequestError(f"{field_name} {text!r} cannot be sent in a URL (it would be resolved away)",
                                  field=field_name)
    try:
        segment = quote(text, safe="")
    except UnicodeEncodeError:
        raise InvalidRequestError(f"{field_name} {ascii(text)} is not valid Unicode (it holds a lone surrogate)",
                                  field=field_name) from None
    if len(segment) > _MOST_SEGMENT_CHARS:
        raise InvalidRequestError(f"{field_name} is {len(text):,} characters long: no model, table or job of the "
                                  "service has a name that long", field=field_name)
    return segment


def _name_segment(value: Any, field_name: str) -> str:
    """A table's name or a job's id as a URL segment: text, not None or a number sent as ``"None"``."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequestError(f"{field_name} must be a non-empty string, got {_shown(value)}", field=field_name)
    return _segment(value, field_name)


def identity_segments(identity: IdentityLike) -> list[str]:
    """Five URL segments for an identity; unspecified parts become ``*``."""
    # (A part is named identity.model_name, as identity_parts names it.)
    return [_segment(p, f"identity.{key}") if p is not None else "*"
            for key, p in zip(IDENTITY_KEYS, identity_parts(identity))]


def _model_path(identity: IdentityLike, version: int | None = None) -> str:
    path = "/models/" + "/".join(identity_segments(identity))
    return path if version is None else f"{path}/versions/{_whole(version, 'version', noun='an integer')}"


def _flag(value: Any, name: str) -> bool:
    """A yes-or-no option as given: ``True`` or ``False`` (numpy's too), as the service's
    strict booleans take it (``shared_factor="no"`` was sent as true)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidRequestError(f"{name} must be True or False, got {_shown(value)}", field=name)
    return bool(value)


def _whole(value: Any, field_name: str, minimum: int | None = None, noun: str = "a whole number") -> int:
    """An integer (numpy's too): 1.9 is an error, not 1, and so is True."""
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        raise InvalidRequestError(f"{field_name} must be {noun}, got {value!r}", field=field_name) from None
    if minimum is not None and n < minimum:
        raise InvalidRequestError(f"{field_name} must be at least {minimum}, got {n}", field=field_name)
    return n


def _trace(trace: Any, field_name: str) -> dict[str, Any]:
    if not isinstance(trace, Mapping):
        raise InvalidRequestError(f"{field_name} must be a mapping of feature names to values, got {_shown(trace)}",
                                  field=field_name)
    return dict(trace)


def _no_empty_path(value: Any, field_name: str) -> None:
    """Refuse a path given as empty text: as a path it is ".", the working directory, and
    was read (or written) as that, "[Errno 21] Is a directory: '.'"."""
    if isinstance(value, str) and not value:
        raise InvalidRequestError(f"{field_name} is an empty path: give a file's path (or its bytes)", field=field_name)


def _listable(value: Any) -> bool:
    """An iterable of items, not one item that happens to iterate (a mapping, a string)."""
    return isinstance(value, Iterable) and not isinstance(value, (Mapping, str, bytes))


def _traces(traces: Any, field_name: str) -> list[dict[str, Any]]:
    if not _listable(traces):
        raise InvalidRequestError(f"{field_name} must be a list of traces (mappings), got {_shown(traces)}", field=field_name)
    return [_trace(t, f"{field_name}[{i}]") for i, t in enumerate(traces)]


def _levels(levels: Any) -> list[Any]:
    if not _listable(levels):
        raise InvalidRequestError(f"quantiles must be a list of levels in (0, 1), got {_shown(levels)}", field="quantiles")
    return list(levels)


_NAME_HEAD_BYTES = 1 << 16


def _trace_file_name(data: bytes) -> str:
    """A name for trace bytes sent without one, from what they hold, since the service reads
    a file by its name: gzip adds ``.gz``; an array, or an object that spans lines or holds
    ``traces``, is ``traces.json``; other objects, one a line, ``traces.jsonl``; else CSV."""
    suffix = ""
    gz = data[:2] == b"\x1f\x8b"
    if gz:
        suffix = ".gz"
        try:
            head = zlib.decompressobj(wbits=31).decompress(data[: 16 * _NAME_HEAD_BYTES], _NAME_HEAD_BYTES)
        except zlib.error:
            return "traces.jsonl.gz"  # the service says it is not gzip, naming this file
    else:
        head = data[:_NAME_HEAD_BYTES]
    head = head.removeprefix(_BOM).lstrip()
    if head[:1] == b"[":
        return "traces.json" + suffix
    if head[:1] != b"{":
        return "traces.csv" + suffix
    if _TRACES_FIRST.match(head):  # {"traces": [...]}, on one line or more: not read whole to tell
        return "traces.json" + suffix
    line = _first_line(data, gz)
    try:
        # The whole first line, however long (a row holding a long text).
        first = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "traces.json" + suffix  # pretty-printed
    return ("traces.json" if isinstance(first, dict) and isinstance(first.get("traces"), list)
            else "traces.jsonl") + suffix


def _uploaded_name(name: str) -> str:
    """A file's name as an upload carries it: one whose bytes are not UTF-8 (a Latin-1
    ``caf\xe9.jsonl``, which Python reads with a lone surrogate) with that written as an
    escape, ``caf\udce9.jsonl``; the service reads the file by its suffix. (httpx raised
    UnicodeEncodeError writing the upload's header.)"""
    return name if valid_unicode(name) else name.encode("utf-8", "backslashreplace").decode("utf-8")


def _first_line(data: bytes, gz: bool) -> bytes:
    """The first non-blank line of ``data`` (gzipped where ``gz``), without a byte order mark
    or its newline; only that line is copied (or decompressed)."""
    if not gz:
        start = len(_BOM) if data.startswith(_BOM) else 0
        while start < len(data) and data[start] in b" \t\r\n":
            start += 1
        end = data.find(b"\n", start)
        return data[start:end if end >= 0 else len(data)]
    inflate = zlib.decompressobj(wbits=31)
    parts: list[bytes] = []
    read = 0
    while not inflate.eof:
        # 64 KiB out at a time: a megabyte of gzip may hold hundreds of megabytes of text.
        source = inflate.unconsumed_tail or data[read:read + _NAME_HEAD_BYTES]
        if not inflate.unconsumed_tail:
            read += len(source)
        if not source:
            break
        try:
            part = inflate.decompress(source, _NAME_HEAD_BYTES)
        except zlib.error:
            break  # cut short: what was read is the line (the service says what is wrong)
        if not parts:  # still before the line
            part = part.removeprefix(_BOM).lstrip()
        if part:
            parts.append(part)
            if b"\n" in part:
                break
    return b"".join(parts).split(b"\n", 1)[0]


_BOM = b"\xef\xbb\xbf"
_TRACES_FIRST = re.compile(rb'\{\s*"traces"\s*:\s*\[')


class _Calls:
    """Request building and response parsing shared by both clients."""

    # -------------------------------------------------------------- requests

    @staticmethod
    def health() -> _Request:
        return _Request("GET", "/health", response=HealthResponse, idempotent=True)

    @staticmethod
    def ping() -> _Request:
        return _Request("GET", "/ping", idempotent=True)

    @staticmethod
    def ready() -> _Request:
        return _Request("GET", "/ready", response=Ready, idempotent=True)

    @staticmethod
    def models() -> _Request:
        return _Request("GET", "/models", response=ModelsResponse, idempotent=True)

    @staticmethod
    def model(identity: IdentityLike, version: int | None = None) -> _Request:
        return _Request("GET", _model_path(identity, version), extract="model", idempotent=True)

    @staticmethod
    def delete_model(identity: IdentityLike, version: int | None = None) -> _Request:
        return _Request("DELETE", _model_path(identity, version))

    @staticmethod
    def train(config: Mapping[str, Any] | TrainConfig, files: Mapping[str, Path | str | bytes] | None = None) -> _Request:
        if not isinstance(config, (Mapping, TrainConfig)):
            raise InvalidRequestError(f"config must be a mapping (or a TrainConfig), got {_shown(config)}", field="config")
        cfg = config.model_dump(exclude_none=True) if isinstance(config, TrainConfig) else dict(config)
        if not files:
            # A config already in its envelope (the form of examples/train_vision.json) is sent as
            # it is, as a config file's part is: the service reads both, and refuses keys beside it.
            body = cfg if isinstance(cfg.get("config"), Mapping) else {"config": cfg}
            return _Request("POST", "/train", json=body, response=TrainResult, timeout_at_least=_TRAIN_TIMEOUT)
        if not isinstance(files, Mapping):
            raise InvalidRequestError(f"files must be a mapping of upload names to paths or bytes, such as "
                                      f"{{'traces.jsonl': path}}, got {_shown(files)}", field="files")
        for name, content in files.items():
            if not isinstance(name, str) or not isinstance(content, (bytes, str, PathLike)):
                raise InvalidRequestError(f"files[{name!r}] must be a path or bytes under a name (str), got "
                                          f"{_shown(content)}", field=f"files[{name!r}]")
            _no_empty_path(content, f"files[{name!r}]")
            if not valid_unicode(name):  # (the config's traces name it, and cannot hold it either)
                raise InvalidRequestError(f"files[{name!r}]: an upload's name must be text that is valid Unicode "
                                          "(it holds a lone surrogate)", field=f"files[{name!r}]")
        parts = [("config", ("config.json", _dumps(cfg, "config"), "application/json"))]
        for name, content in files.items():
            data = content if isinstance(content, bytes) else Path(content).read_bytes()
            parts.append((name, (name, data, "application/octet-stream")))
        return _Request("POST", "/train", files=parts, response=TrainResult, timeout_at_least=_TRAIN_TIMEOUT)

    @staticmethod
    def train_background(config: Mapping[str, Any] | TrainConfig, files: Mapping[str, Path | str | bytes] | None = None) -> _Request:
        req = _Calls.train(config, files)
        req.params = {"background": "true"}
        req.response = None
        req.timeout_at_least = None  # it answers once the job is queued: the client's timeout holds
        return req

    @staticmethod
    def train_job(job_id: str) -> _Request:
        return _Request("GET", f"/train/jobs/{_name_segment(job_id, 'job_id')}", idempotent=True)

    @staticmethod
    def cache_stats() -> _Request:
        return _Request("GET", "/cache/stats", idempotent=True)

    @staticmethod
    def clear_cache() -> _Request:
        return _Request("POST", "/cache/clear")

    @staticmethod
    def observe(identity: IdentityLike, traces: Iterable[Mapping[str, Any]]) -> _Request:
        parts = identity_parts(identity)
        missing = [k for k, p in zip(IDENTITY_KEYS, parts) if p is None]
        if missing:
            raise InvalidRequestError(f"observations belong to one model: give its whole identity "
                                      f"({', '.join(missing)} unspecified)", field=f"model.{missing[0]}")
        model = dict(zip(IDENTITY_KEYS, (str(p) for p in parts)))
        return _Request("POST", "/observe", json={"model": model, "traces": _traces(traces, "traces")})

    @staticmethod
    def accuracy(identity: IdentityLike, version: int | None = None, recent: int | None = None) -> _Request:
        params: dict[str, int] = {}
        if version is not None:
            params["version"] = _whole(version, "version", noun="an integer")
        if recent is not None:
            params["recent"] = _whole(recent, "recent", minimum=0)
        return _Request("GET", _model_path(identity) + "/accuracy", params=params or None, idempotent=True)

    @staticmethod
    def accuracies(recent: int | None = None) -> _Request:
        params = None if recent is None else {"recent": _whole(recent, "recent", minimum=0)}
        return _Request("GET", "/models/accuracy", params=params, extract="models", idempotent=True, list_answer=True)

    @staticmethod
    def evaluate(identity: IdentityLike, traces: Iterable[Mapping[str, Any]], version: int | None = None,
                 lookup_table_name: str | None = None, lookup_table: bool | None = None) -> _Request:
        body: dict[str, Any] = {"traces": _traces(traces, "traces"),
                                **_Calls._source(lookup_table_name, lookup_table, version)}
        # Records nothing: safe to send again where no answer came.
        return _Request("POST", _model_path(identity) + "/evaluate", json=body, response=EvaluationResponse,
                        idempotent=True)

    @staticmethod
    def retrain(identity: IdentityLike) -> _Request:
        # Answered when the retraining is done, which may take as long as a training (a
        # fresh worker's start, candidates fitted on up to 20,000 observations): a client's
        # 30 s gave up on one that then stored its version.
        return _Request("POST", _model_path(identity) + "/retrain", timeout_at_least=_TRAIN_TIMEOUT)

    @staticmethod
    def metrics() -> _Request:
        return _Request("GET", "/metrics", idempotent=True, raw=True)

    @staticmethod
    def generate_table(identity: IdentityLike, trace_file: Path | str | bytes, confidence_level: float = 0.95,
                       table_name: str | None = None, format: str | None = None, filename: str | None = None,
                       timeout: float | None = None, knots: int | None = None) -> _Request:
        if not isinstance(trace_file, (bytes, str, PathLike)):
            raise InvalidRequestError(f"trace_file must be a path or bytes, got {_shown(trace_file)}", field="trace_file")
        _no_empty_path(trace_file, "trace_file")
        if timeout is not None:
            _check_timeout(timeout, "timeout")
            timeout = _seconds(timeout)
        for key, value in (("table_name", table_name), ("format", format), ("filename", filename)):
            # Form fields and a file's name, which httpx writes as UTF-8 (it raised its own
            # UnicodeEncodeError for a name listed from a Latin-1 folder).
            if isinstance(value, str) and not valid_unicode(value):
                raise InvalidRequestError(f"{key} {ascii(value)} is not valid Unicode (it holds a lone surrogate)",
                                          field=key)
        if isinstance(trace_file, bytes):
            data, name = trace_file, filename or _trace_file_name(trace_file)
        else:
            data, name = Path(trace_file).read_bytes(), filename or _uploaded_name(Path(trace_file).name)
        # Checked as the prediction routes' JSON bodies are (strict types): a form field is
        # text, and True or b"x.json" would be sent as "True" and "b'x.json'", or as the name.
        if isinstance(confidence_level, bool) or not isinstance(confidence_level, numbers.Real):
            raise InvalidRequestError(f"confidence_level must be a number, got {_shown(confidence_level)}",
                                      field="confidence_level")
        try:
            finite = math.isfinite(confidence_level)
        except OverflowError:  # a whole number past the float range (10 ** 400): OverflowError was raised
            finite = False
        if not finite:
            # As in a JSON body: refused before sending (the form would carry the text "nan").
            raise InvalidRequestError(f"confidence_level is {_shown(confidence_level)}, which cannot be sent",
                                      field="confidence_level")
        form = {"confidence_level": str(confidence_level)}
        for key, value in (("table_name", table_name), ("format", format)):
            if value is not None and not isinstance(value, str):
                raise InvalidRequestError(f"{key} must be a string, got {_shown(value)}", field=key)
        if table_name is not None:  # a blank name is the server's to refuse, not a default to fall back to
            form["table_name"] = table_name
        if format:
            form["format"] = format
        if knots is not None:
            if isinstance(knots, (bool, np.bool_)) or not isinstance(knots, numbers.Integral):
                raise InvalidRequestError(f"knots must be a whole number, got {_shown(knots)}", field="knots")
            form["knots"] = str(int(knots))
        return _Request("POST", "/predict/table/" + "/".join(identity_segments(identity)),
                        files=[("trace_file", (name, data, "application/octet-stream"))], data=form, timeout=timeout,
                        timeout_at_least=_TABLE_TIMEOUT, require=("status", "table_name", "rows"))

    @staticmethod
    def list_tables() -> _Request:
        return _Request("GET", "/tables", extract="tables", idempotent=True, list_answer=True)

    @staticmethod
    def download_table(name: str, dest: Any = None) -> _Request:
        if dest is not None and not isinstance(dest, (str, PathLike)):
            raise InvalidRequestError(f"dest must be a path, or None, got {_shown(dest)}", field="dest")
        _no_empty_path(dest, "dest")
        return _Request("GET", "/tables/" + _name_segment(name, "name"), idempotent=True, binary=True)

    @staticmethod
    def delete_table(name: str) -> _Request:
        return _Request("DELETE", "/tables/" + _name_segment(name, "name"))

    @staticmethod
    def _options(confidence_level: float, quantiles: Sequence[float] | None, lookup_table_name: str | None,
                 lookup_table: bool | None, version: int | None = None,
                 deadline_ms: float | None = None) -> dict[str, Any]:
        """A prediction's options as its body holds them (see :meth:`_source`)."""
        body: dict[str, Any] = {"confidence_level": confidence_level,
                                **_Calls._source(lookup_table_name, lookup_table, version)}
        if quantiles is not None:
            body["quantiles"] = _levels(quantiles)
        if deadline_ms is not None:
            if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, numbers.Real):
                raise InvalidRequestError(f"deadline_ms must be a number of milliseconds, got {_shown(deadline_ms)}",
                                          field="deadline_ms")
            try:
                body["deadline_ms"] = float(deadline_ms)  # (a numpy number too; its range is the service's to check)
            except OverflowError:  # a whole number past any double's (10 ** 400)
                raise InvalidRequestError(f"deadline_ms is {_shown(deadline_ms)}, beyond the largest number a double "
                                          "holds (about 1.8e308): send a finite number of milliseconds",
                                          field="deadline_ms") from None
        return body

    @staticmethod
    def _source(lookup_table_name: str | None, lookup_table: bool | None, version: int | None) -> dict[str, Any]:
        """Whose answers a body asks for, as it holds it: the model's (``version``, sent only
        when asked: a service that predates it still answers the rest) or a lookup table's. A
        ``lookup_table_name`` alone asks that table (``lookup_table`` left out: implied); with
        ``lookup_table=False`` it is refused, as the service refuses a name without the flag
        (the model would answer)."""
        if lookup_table is not None and not isinstance(lookup_table, (bool, np.bool_)):
            # As the service's strict boolean: "no" was sent as true.
            raise InvalidRequestError(f"lookup_table must be True, False or None, got {_shown(lookup_table)}",
                                      field="lookup_table")
        if lookup_table_name is not None and lookup_table is not None and not lookup_table:
            raise InvalidRequestError("lookup_table_name names a table, but lookup_table is False: the model would "
                                      "answer; leave lookup_table out (or True) to ask the table",
                                      field="lookup_table_name")
        body: dict[str, Any] = {}
        if version is not None:
            body["version"] = _whole(version, "version", noun="an integer")
        if lookup_table_name is not None:
            body["lookup_table"] = True
            body["lookup_table_name"] = lookup_table_name
        elif lookup_table:
            body["lookup_table"] = True  # the service's default table
        return body

    def predict_single(self, identity: IdentityLike, trace: Mapping[str, Any], confidence_level: float = 0.95,
                       quantiles: Sequence[float] | None = None, lookup_table_name: str | None = None,
                       lookup_table: bool | None = None, version: int | None = None,
                       deadline_ms: float | None = None) -> _Request:
        body = {"trace": _trace(trace, "trace"),
                **self._options(confidence_level, quantiles, lookup_table_name, lookup_table, version, deadline_ms)}
        return _Request("POST", "/predict/single/" + "/".join(identity_segments(identity)), json=body,
                        response=SinglePredictionResponse, idempotent=True)

    def predict_batch(self, identity: IdentityLike, traces: Iterable[Mapping[str, Any]], confidence_level: float = 0.95,
                      quantiles: Sequence[float] | None = None, lookup_table_name: str | None = None,
                      lookup_table: bool | None = None, shared_factor: bool = False, total_distribution: bool = True,
                      version: int | None = None, deadline_ms: float | None = None) -> _Request:
        body = {"trace": _traces(traces, "trace"),
                **self._options(confidence_level, quantiles, lookup_table_name, lookup_table, version, deadline_ms)}
        # Each sent only when asked: a service that predates it still answers the rest.
        if _flag(shared_factor, "shared_factor"):
            body["shared_factor"] = True
        if not _flag(total_distribution, "total_distribution"):
            body["total_distribution"] = False
        return _Request("POST", "/predict/batch/" + "/".join(identity_segments(identity)), json=body,
                        response=BatchPredictionResponse, idempotent=True)

    def predict_queues(self, identity: IdentityLike, queues: Mapping[str, Iterable[Mapping[str, Any]]],
                       confidence_level: float = 0.9, quantiles: Sequence[float] | None = (0.5, 0.9, 0.99),
                       shared_factor: bool = False, version: int | None = None, lookup_table_name: str | None = None,
                       lookup_table: bool | None = None, deadline_ms: float | None = None,
                       completion_times: bool = False) -> _Request:
        if not isinstance(queues, Mapping):
            raise InvalidRequestError(f"queues must be a mapping of queue names to lists of traces, got {_shown(queues)}",
                                      field="queues")
        named = {}
        for name, traces in queues.items():
            if not isinstance(name, str):
                raise InvalidRequestError(f"a queue's name must be a string, got {_shown(name)}", field="queues")
            # (Named as the body's places are, queues.gpu-0[2].input_tokens, and as the service names them.)
            named[name] = _traces(traces, _joined("queues", name))
        body = {"queues": named,
                **self._options(confidence_level, quantiles, lookup_table_name, lookup_table, version, deadline_ms)}
        if _flag(shared_factor, "shared_factor"):
            body["shared_factor"] = True
        if _flag(completion_times, "completion_times"):
            body["completion_times"] = True
        return _Request("POST", "/predict/queues/" + "/".join(identity_segments(identity)), json=body,
                        response=QueuesPredictionResponse, idempotent=True)

    def predict_one_queue(self, identity: IdentityLike, traces: Iterable[Mapping[str, Any]], confidence_level: float,
                          quantiles: Sequence[float] | None, shared_factor: bool, version: int | None,
                          lookup_table_name: str | None, lookup_table: bool | None,
                          deadline_ms: float | None) -> _Request:
        """``queue_wait`` with completion times: its traces (named as a batch's, ``trace[i]``)
        asked as the one queue of a queues request."""
        req = self.predict_queues(identity, {_ONE_QUEUE: _traces(traces, "trace")}, confidence_level, quantiles,
                                  shared_factor, version, lookup_table_name, lookup_table, deadline_ms, True)
        req.renamed = (f"queues.{_ONE_QUEUE}", "trace")  # (a NaN in one: trace[2].input_tokens, as queue_wait's)
        return req

    @staticmethod
    def one_queue_wait(answer: QueuesPredictionResponse, partial: bool = False,
                       deadline_ms: float | None = None) -> QueueWaitEstimate:
        """The wait of the one queue :meth:`predict_one_queue` asked for, refused as
        :meth:`queue_wait` refuses a batch's (its tasks named ``trace[i]``, not by a queue
        the caller never named)."""
        q = answer.queues[_ONE_QUEUE]
        _check_one_wait([f"trace[{e.get('index')}]: {e.get('message') or ''}" for e in q.errors],
                        q.expect is None or q.total_quantiles is None or q.total_interval is None,
                        answer.summary.get("total"), partial)
        return _Calls.queue_waits(answer, True, deadline_ms)[_ONE_QUEUE]

    def seed_predict(self, model_type: str, metadata: Mapping[str, Any], confidence_level: float,
                     quantiles: Sequence[float] | None) -> _Request:
        """The seed's ``predict``: a single prediction of ``metadata``, whose places are named
        as the caller named them (``metadata.input_tokens``, not the body's ``trace.input_tokens``)."""
        parts, trace = self.seed_identity(model_type, metadata)
        try:
            req = self.predict_single(parts, trace, confidence_level, quantiles)
        except InvalidRequestError as exc:
            # A part given in metadata (metadata.hardware), or model_type itself.
            raise _renamed(_renamed(exc, ("identity.model_type", "model_type")), ("identity", "metadata")) from exc
        req.renamed = ("trace", "metadata")
        return req

    @staticmethod
    def seed_identity(model_type: str, metadata: Mapping[str, Any]) -> tuple[list[str | None], dict[str, Any]]:
        """Split the seed's ``metadata`` into identity parts and trace features.

        ``metadata`` is a trace: a number or a boolean in an identity field names a part as a
        trace's does (``2.0`` names version ``"2"``), so it stays in the trace, the part left
        for the service to settle by it; sent as the URL's segment ``2.0``, it named only a
        version spelt so."""
        metadata = _trace(metadata, "metadata")
        by_trace = {k for k in IDENTITY_KEYS[1:] if isinstance(metadata.get(k), (bool, int, float, np.number))}
        parts: list[str | None] = [model_type] + [None if k in by_trace else metadata.get(k) for k in IDENTITY_KEYS[1:]]
        trace = {k: v for k, v in metadata.items() if k not in IDENTITY_KEYS or k in by_trace}
        return parts, trace

    # -------------------------------------------------------------- responses

    @staticmethod
    def parse(req: _Request, response: httpx.Response) -> Any:
        if 300 <= response.status_code < 400:  # the service never redirects; httpx does not follow one
            raise _unexpected(response, f"a redirect to {response.headers.get('location')!r}")
        if (req.binary or req.raw) and response.status_code < 400:
            # A proxy's or a login page's HTML is not a table nor metrics; the service never sends HTML there.
            if response.headers.get("content-type", "").lower().startswith("text/html"):
                raise _unexpected(response, "an HTML page")
            if response.status_code != 200:  # a 204's empty body is no table
                raise _unexpected(response, "not the file's content")
            return response.content if req.binary else response.text
        if response.status_code < 400 and req.response is not None and req.extract is None:
            # Parsed and validated in one pass, by pydantic's own JSON parser, without the
            # collector walking the objects it makes: for a batch of 10,000 results, 8 µs a
            # result, not 17 (more than the server spent predicting them).
            try:
                with collector_paused(len(response.content) > _LARGE_ANSWER_BYTES):
                    return req.response.model_validate_json(response.content)
            except ValidationError as exc:
                raise _unexpected(response, _invalid(exc)) from exc
        try:
            body = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            body = None
        if response.status_code >= 400:
            message = None
            field_name = None
            if isinstance(body, dict):
                message = body.get("message") or body.get("detail")
                field_name = body.get("field")
            if not isinstance(message, str):  # a proxy's page, say: said short, as a 2xx of that kind is
                message = (f"{response.status_code} {response.reason_phrase} from {response.request.method} "
                           f"{response.request.url.path}, not in the predictor's form: {response.text[:200]!r}")
            raise PredictorClientError(message, response.status_code, field_name, body,
                                       _retry_after(response.headers.get("retry-after")), _request_id(response))
        if req.extract is not None:
            if not isinstance(body, dict) or req.extract not in body:
                raise _unexpected(response, f"no {req.extract!r} in it")
            body = body[req.extract]
        if req.response is not None:
            try:
                return req.response.model_validate(body)
            except ValidationError as exc:
                raise _unexpected(response, _invalid(exc)) from exc
        if not isinstance(body, list if req.list_answer else dict):
            raise _unexpected(response, "not a JSON " + ("array" if req.list_answer else "object"))
        missing = [k for k in req.require if not isinstance(body, dict) or k not in body]
        if missing:
            raise _unexpected(response, f"no {', '.join(map(repr, missing))} in it")
        return body

    @staticmethod
    def job_outcome(job_id: str, job: dict[str, Any], deadline: float, timeout: float) -> TrainResult | None:
        """A finished job's result (or its error, raised); None while it still runs."""
        if not isinstance(job, dict) or "status" not in job:
            raise PredictorClientError(f"unexpected answer for a training job (no status): {str(job)[:200]}", body=job)
        # The id of the request that started the job, which its lines in the service's log carry
        # (not the poll's, whose lines say nothing of the training): its errors name it.
        started_by = job.get("request_id") if isinstance(job.get("request_id"), str) else None
        if job["status"] == "succeeded":
            try:
                return TrainResult.model_validate(job.get("result"))
            except ValidationError as exc:
                raise PredictorClientError(f"unexpected result for a training job: {_invalid(exc)}",
                                           body=job) from exc
        if job["status"] == "failed":
            # The service's error is an object; anything else (a proxy's or an older service's
            # text) is still this client's error, not an AttributeError.
            err = job.get("error")
            if not isinstance(err, dict):
                err = {"message": f"training failed: {str(err)[:200]}" if err else "training failed"}
            status = err.get("status_code")
            raise PredictorClientError(str(err.get("message") or "training failed"),
                                       status if isinstance(status, int) and not isinstance(status, bool) else None,
                                       err.get("field") if isinstance(err.get("field"), str) else None, job,
                                       request_id=started_by)
        if time.monotonic() > deadline:
            raise JobTimeoutError(f"training job {job_id} still {job['status']} after {timeout}s", request_id=started_by)
        return None

    @staticmethod
    def job_unreachable(exc: PredictorClientError, deadline: float) -> None:
        """``wait_for_job``'s poll that failed: raises ``exc`` unless the service could not be
        reached (or a proxy said it is down: 502, 503, 504) and the wait's time lasts. A service
        restarting keeps the job's record and settles it (a job it cut short reads ``failed``,
        503): waiting out its restart tells how the job ended, where giving up after one poll's
        retries did not."""
        down = isinstance(exc, PredictorUnavailableError) or exc.status_code in (502, 503, 504)
        if not down or time.monotonic() > deadline:
            raise exc

    @staticmethod
    def queue_wait(batch: BatchPredictionResponse, confidence_level: float, partial: bool = False,
                   deadline_ms: float | None = None) -> QueueWaitEstimate:
        if batch.summary.total == 0 and batch.expect is None:
            # An empty queue drains at once (a service that predates zero totals answers null).
            levels = batch.quantiles or []
            return QueueWaitEstimate(tasks=0, failed=0, expect=0.0, error=0.0, quantiles=levels,
                                     quantile_predictions=[0.0] * len(levels), interval=[0.0, 0.0],
                                     confidence_level=confidence_level, deadline_ms=deadline_ms,
                                     deadline_probability=None if deadline_ms is None else 1.0)
        _check_one_wait([f"trace[{i}]: {r.message or ''}" for i, r in enumerate(batch.results) if r.status != "success"],
                        batch.expect is None or batch.total_quantiles is None or batch.total_interval is None,
                        batch.summary.total, partial)
        versions = [r.model_version for r in batch.results if r.status == "success" and r.model_version is not None]
        return QueueWaitEstimate(
            model_version=max(versions, default=None),
            tasks=batch.summary.success,
            failed=batch.summary.failed,
            expect=batch.expect,
            error=batch.error or 0.0,
            quantiles=batch.quantiles or [],
            quantile_predictions=batch.total_quantiles,
            interval=batch.total_interval,
            confidence_level=confidence_level,
            deadline_ms=deadline_ms,
            deadline_probability=batch.total_deadline_probability,
            running=[RunningTask(index=i, elapsed_level=r.elapsed_level) for i, r in enumerate(batch.results)
                     if r.elapsed_level is not None],
            stuck=[i for i, r in enumerate(batch.results) if r.elapsed_level == 1.0],
        )

    @staticmethod
    def queue_waits(answer: QueuesPredictionResponse, partial: bool = False,
                    deadline_ms: float | None = None) -> dict[str, QueueWaitEstimate]:
        failures = [f"queue {name!r} trace[{e.get('index')}]: {e.get('message') or ''}"
                    for name, q in answer.queues.items() for e in q.errors]
        empty = [name for name, q in answer.queues.items() if q.expect is None or q.total_quantiles is None
                 or q.total_interval is None]
        if empty:  # its own tasks' errors say why
            own = [f"trace[{e.get('index')}]: {e.get('message') or ''}" for e in answer.queues[empty[0]].errors]
            raise PredictorClientError(f"no task of queue {empty[0]!r} could be predicted: " + _first_few(own))
        if failures and not partial:
            _refuse_partial(failures, answer.summary.get("total"), "waits")
        return {name: QueueWaitEstimate(
            model_version=answer.model_version if q.tasks else None,
            tasks=q.tasks,
            failed=q.failed,
            expect=q.expect,
            error=q.error or 0.0,
            quantiles=answer.quantiles,
            quantile_predictions=q.total_quantiles,
            interval=q.total_interval,
            confidence_level=answer.confidence_level,
            deadline_ms=deadline_ms,
            deadline_probability=q.total_deadline_probability,
            running=q.running,
            stuck=[r.index for r in q.running if r.elapsed_level == 1.0],
            completion=q.completion,
        ) for name, q in answer.queues.items()}


# The name queue_wait gives its queue where it asks as a queues request.
_ONE_QUEUE = "queue"


def _first_few(messages: list[str]) -> str:
    return "; ".join(messages[:5]) + ("; ..." if len(messages) > 5 else "")


def _check_one_wait(failures: list[str], none_predicted: bool, total: Any, partial: bool) -> None:
    """``queue_wait``'s refusals: a queue none of whose tasks could be predicted, and one
    some of whose could not (``failures``, each ``trace[i]: why``) unless ``partial``."""
    if none_predicted:
        raise PredictorClientError("no task in the queue could be predicted: " + _first_few(failures))
    if failures and not partial:
        _refuse_partial(failures, total, "wait")


def _refuse_partial(failures: list[str], total: Any, waits: str) -> NoReturn:
    """Tasks that could not be predicted would be left out of a queue's wait: an error,
    unless ``partial=True`` accepts that."""
    raise PredictorClientError(f"{len(failures)} of {total} queued tasks could not be predicted, and the {waits} "
                               "would leave them out (partial=True accepts that): " + _first_few(failures))


# An answer this large makes enough objects that Python's cyclic collector ran several times
# while they were made, each time walking all of them: more than half of the parsing time.
_LARGE_ANSWER_BYTES = 1 << 20
# A request of more traces than this is written in a worker thread by the asyncio client.
_LARGE_BATCH_TRACES = 2_000


def _traces_in(req: _Request) -> int:
    """How many traces a request's JSON body carries (a batch's or observations')."""
    if not isinstance(req.json, dict):
        return 0
    queues = req.json.get("queues")
    if isinstance(queues, dict):
        return sum(len(traces) for traces in queues.values())
    traces = req.json.get("trace", req.json.get("traces"))
    return len(traces) if isinstance(traces, list) else 0


def _retry_after(value: str | None) -> float | None:
    """A Retry-After header's delay in seconds; None for none, or for its HTTP-date form."""
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _invalid(exc: ValidationError) -> str:
    """Where an answer is not what the service sends: the first error's place and reason (a
    batch's 57th result is past the answer's first 200 characters), and how many there are."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    where = ".".join(map(str, first.get("loc", ()))) or "the answer"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{exc.title}: {where}: {first.get('msg', 'invalid')}{more}"


def _unexpected(response: httpx.Response, why: str) -> PredictorClientError:
    """A 2xx answer that is not what the service sends (a proxy's page, say)."""
    return PredictorClientError(f"unexpected answer from {response.request.method} {response.request.url.path} "
                                f"({response.status_code}, {why}): {response.text[:200]!r}", response.status_code,
                                request_id=_request_id(response))


def _request_id(response: httpx.Response) -> str | None:
    """The id the service's log lines name the request by: its answer's ``X-Request-ID``, or
    where the answer is a gateway's own (a 504 after it gave up on the service, a sign-in
    page), which does not echo it, the one the call was sent with (None was said)."""
    return response.headers.get("x-request-id") or response.request.headers.get("x-request-id")


# Errors before a request was sent: any request may be tried again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Errors after it may have been sent (the server may have acted on it): only idempotent ones are repeated.
_MAYBE_SENT = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


# The longest wait the clients time (about 31 years): past about 9.2e9 s no clock here can time
# one (its nanoseconds overflow 64 bits), and the blocking client raised OverflowError at its
# first call given sys.maxsize, "forever", where the async one waited. A longer one waits this.
_LONGEST_WAIT = 1e9


def _seconds(value: numbers.Real) -> float:
    """A timeout (or a pause) as Python's number, at most :data:`_LONGEST_WAIT`."""
    return _plain(value) if value <= _LONGEST_WAIT else _LONGEST_WAIT


def _plain(value: numbers.Real) -> float:
    """A number as Python's own (a numpy one's value), an int kept an int: it goes on to httpx,
    time.sleep and the messages that quote it."""
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _non_negative(value: Any) -> bool:
    # A numpy number is one (np.int64(5), np.float32(0.5)), as it is in a trace or deadline_ms.
    return (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
            and 0 <= value < math.inf)


class _Base:
    def __init__(self, base_url: str = "http://localhost:8200", timeout: float | None = 30.0, retries: int = 3, backoff: float = 0.1,
                 api_key: str | None = None):
        # Refused here, not at the first retry (a negative pause raised ValueError from
        # time.sleep in place of the service's unavailability).
        if isinstance(retries, (bool, np.bool_)) or not isinstance(retries, numbers.Integral) or retries < 0:
            raise InvalidRequestError(f"retries must be a whole number of at least 0, got {retries!r}", field="retries")
        if not _non_negative(backoff):
            raise InvalidRequestError(f"backoff must be a finite number of seconds, at least 0, got {backoff!r}",
                                      field="backoff")
        if timeout is not None:
            _check_timeout(timeout, "timeout")
        self.base_url = _base_url(base_url)
        self._shown_url = shown_url(self.base_url)
        # As Python's numbers (a numpy one given): they are passed on to httpx and time.sleep.
        self.timeout = None if timeout is None else _seconds(timeout)
        self.retries = int(retries)
        # (One past the float range, 10 ** 400, raised OverflowError at the first retry: it
        # waits MAX_BACKOFF, as any pause that long does.)
        self.backoff = _seconds(backoff)
        self._calls = _Calls()
        self._headers = _auth_headers(api_key)
        if self._headers and httpx.URL(self.base_url).userinfo:
            # httpx sends a URL's user and password as the Authorization header, in place of
            # the key's: the service answered 401, "send the header", to a client given one.
            raise InvalidRequestError("api_key and a user and password in base_url (user:password@host) are both "
                                      "sent as the Authorization header, and the key was dropped: give one or "
                                      "the other", field="api_key")

    def _kwargs(self, req: _Request) -> dict[str, Any]:
        # The call's id, the same on each of its tries: the service's log lines about it carry
        # it, also where no answer came back (a timeout) to say what became of it.
        headers = {"x-request-id": os.urandom(16).hex()}
        kw: dict[str, Any] = {"params": req.params, "headers": headers}
        if req.files is not None:
            kw["files"] = req.files
            kw["data"] = req.data
        elif req.json is not None:
            try:
                kw["content"] = _dumps(req.json)
            except InvalidRequestError as exc:
                raise _renamed(exc, req.renamed) from exc.__cause__
            headers["content-type"] = "application/json"
        kw["timeout"] = self._timeout(req)
        return kw

    def _timeout(self, req: _Request) -> httpx.Timeout:
        if req.timeout is not None:
            return httpx.Timeout(req.timeout)
        if req.timeout_at_least is not None and self.timeout is not None:
            # Only the wait for the answer is long (the handler trains, or makes a table):
            # connecting, waiting for a pooled connection and writing the request keep the
            # client's timeout, or a host that drops connections held a train() for 30 minutes a try.
            return httpx.Timeout(self.timeout, read=max(req.timeout_at_least, self.timeout))
        return httpx.Timeout(self.timeout)

    def _waited(self, req: _Request, exc: httpx.TimeoutException) -> float | None:
        """The timeout that ran out: the one of the wait ``exc`` ended."""
        timeout = self._timeout(req)
        if isinstance(exc, httpx.ConnectTimeout):
            return timeout.connect
        if isinstance(exc, httpx.PoolTimeout):
            return timeout.pool
        if isinstance(exc, httpx.WriteTimeout):
            return timeout.write
        return timeout.read

    def _should_retry(self, req: _Request, exc: Exception, attempt: int) -> bool:
        if attempt >= self.retries:
            return False
        # A dropped connection can follow a handler that already acted (a training saved, observations
        # counted): only a request that may be repeated is sent again then. A timeout is not retried.
        return isinstance(exc, _NOT_SENT) or (req.idempotent and isinstance(exc, _MAYBE_SENT))

    def _pause(self, attempt: int) -> float:
        """Seconds before the retry after ``attempt``: doubling from ``backoff``, to at most
        MAX_BACKOFF (20 retries would otherwise wait some 29 hours in all)."""
        return min(self.backoff * 2.0**min(attempt, 64), MAX_BACKOFF)

    def _closed_in_flight(self, req: _Request, closer: str) -> InvalidRequestError:
        """A call whose connection the client's own close() cut: not the network's fault, as
        "the connection dropped" said (a PredictorUnavailableError, the service taken for down)."""
        return InvalidRequestError(
            f"this {type(self).__name__} was closed (by {closer}) while {req.method} {req.path} "
            "was in flight" + ("" if req.idempotent else ": it was sent, and may have been carried out; check "
                               "before sending it again"))

    def _unavailable(self, req: _Request, exc: Exception) -> PredictorClientError:
        if isinstance(exc, httpx.DecodingError):
            # An answer arrived (its body's encoding is broken): the service was reached, and may have acted.
            return PredictorClientError(f"the answer to {req.method} {req.path} from {self._shown_url} could not be "
                                        f"decoded ({_cause(exc)}); the request reached the service"
                                        + ("" if req.idempotent else ", which may have carried it out"))
        if isinstance(exc, httpx.TimeoutException):
            # Waiting for the answer, the request was sent: the service may carry it out still.
            # Waiting to write it (a service that does not read), it was not sent whole: the
            # service has part of it, which it cannot carry out.
            sent = "" if req.idempotent or isinstance(exc, _NOT_SENT) else (
                ": it was not sent whole, so the service has not carried it out" if isinstance(exc, httpx.WriteTimeout)
                else ": it was sent, and may still be carried out; check before sending it again")
            return PredictorUnavailableError(f"{req.method} {req.path} to {self._shown_url} timed out after "
                                             f"{self._waited(req, exc)}s ({type(exc).__name__}){sent}")
        if isinstance(exc, _MAYBE_SENT) and not req.idempotent:
            # Sent, then the connection dropped: the service may have acted on it (a training
            # stored, observations counted); a blind retry could do it twice.
            return PredictorUnavailableError(
                f"{req.method} {req.path} was sent to the predictor at {self._shown_url}, but the connection dropped "
                f"before an answer ({_cause(exc)}): it may have been carried out; check before sending it again")
        return PredictorUnavailableError(f"cannot reach the predictor at {self._shown_url}: {_cause(exc)}")


def _renamed(error: InvalidRequestError, renamed: tuple[str, str] | None) -> InvalidRequestError:
    """``error`` naming a place of the body (``queues.queue[3].input_tokens``) as the caller
    named it (``trace[3].input_tokens``), where ``renamed`` says so; else ``error`` itself."""
    if renamed is None or error.field is None:
        return error
    sent, named = renamed
    if error.field != sent and not error.field.startswith((sent + "[", sent + ".")):
        return error
    field = named + error.field[len(sent):]
    message = field + error.message[len(error.field):] if error.message.startswith(error.field) else error.message
    return InvalidRequestError(message, field=field)


def _with_id(error: PredictorClientError, request_id: str | None) -> PredictorClientError:
    """``error`` of a call that got no answer, with the id the call was sent with."""
    error.request_id = request_id
    return error


def _wait_options(timeout: Any, poll: Any) -> tuple[float, float]:
    """``wait_for_job``'s, as Python's numbers: a NaN pause never ended, and a negative one polled without pause."""
    if not _non_negative(timeout):
        raise InvalidRequestError(f"timeout must be a finite number of seconds, at least 0, got {timeout!r}",
                                  field="timeout")
    if not (_non_negative(poll) and poll > 0):
        raise InvalidRequestError(f"poll must be a finite number of seconds over 0, got {poll!r}", field="poll")
    return _seconds(timeout), _seconds(poll)


def _check_timeout(timeout: Any, field_name: str) -> None:
    if not (_non_negative(timeout) and timeout > 0):
        raise InvalidRequestError(f"{field_name} must be a finite number of seconds over 0, or None (no limit), "
                                  f"got {timeout!r}", field=field_name)


def _base_url(value: Any) -> str:
    """The service's URL, checked when the client is made: httpx took ``http://host:99999``
    (the blocking client then sent to port 34463, its value modulo 65536) and raised its own
    errors from the constructor for others."""
    if not isinstance(value, str):
        raise InvalidRequestError(f"base_url must be the service's URL, such as http://localhost:8200, got "
                                  f"{_shown(value)}", field="base_url")
    try:
        url = httpx.URL(value)
        problem = ("its scheme is not http or https" if url.scheme not in ("http", "https")
                   else "it names no host" if not url.host
                   # (connecting, the socket layer raised UnicodeError for such a host)
                   else f"its host is not a valid domain name ({_cause_of_idna(url.raw_host)})"
                   if _cause_of_idna(url.raw_host)
                   else f"its port {url.port} is not between 1 and 65535" if url.port is not None
                   and not 1 <= url.port <= 65535
                   # httpx appends each request's path after the query: every call went to the
                   # base path ("http://host:8200?x=1": GET /?x=1/health, a 404 "no endpoint GET /").
                   else "it has a query (?...), which every request's path would be appended to"
                   if b"?" in url.raw_path else None)
    except httpx.InvalidURL as exc:
        problem = str(exc)
    except UnicodeEncodeError:  # a lone surrogate (bytes of another encoding, as Python reads them)
        # (not quoted: it may lie in the password)
        problem = "it holds a lone surrogate (bytes of another encoding), which is not UTF-8 text"
    except UnicodeError as exc:  # url.host decodes an A-label ("xn--a-"): idna's IDNAError
        problem = f"its host is not a valid domain name ({exc})"
    if problem:
        shown, hidden = _shown_refused_url(value)
        if hidden and any(quoted and quoted in hidden for quoted in re.findall(r"'([^']*)'", problem)):
            # httpx's words quote what it misread, a piece of the password ("Invalid port: 's3c'").
            problem = "it is not a valid URL (a '/', '?', '#' or '@' in a password must be percent-encoded)"
        raise InvalidRequestError(f"base_url {shown!r} is not the URL of a service, such as http://localhost:8200: "
                                  f"{problem}", field="base_url")
    return value.rstrip("/")


def _cause_of_idna(host: bytes) -> str | None:
    """Why ``host`` (a URL's, as sent) cannot be looked up, as the socket layer encodes it
    (a label empty or over 63 characters); None where it can."""
    try:
        host.decode("ascii").encode("idna")
    except UnicodeError as exc:
        return str(exc.__cause__ or exc)
    return None


def _shown_refused_url(url: str) -> tuple[str, str]:
    """A refused ``url`` as its error shows it, and the text hidden. A URL that does not parse
    may still hold a password (``http://user:pa/ss@host``: a '/', '?' or '#' in it ends the
    host part where urlsplit and httpx look, and an unclosed ``[`` is a ValueError): all from
    the first ':' after ``//`` to the last '@' is shown as ``***``, as :func:`shown_url` does."""
    shown = shown_url(url)
    head, sep, rest = url.partition("//")
    at = rest.rfind("@")
    colon = rest.find(":", 0, at) if sep and at >= 0 else -1
    if shown != url or colon < 0:
        return shown, ""
    return f"{head}//{rest[:colon]}:***{rest[at:]}", rest[colon + 1:at]


def shown_url(url: str) -> str:
    """``url`` as errors show it: a password in it (``http://user:password@host``, a proxy's
    basic auth) as ``***``, since errors are logged (the api_key is never quoted either)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # not a URL (refused, quoted as it is)
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{host}"))


def _auth_headers(api_key: str | None) -> dict[str, str]:
    """The header that carries the service's API key (``PREDICTOR_API_KEY``), sent with every
    request; none without a key."""
    if api_key is None:
        return {}
    if not isinstance(api_key, str) or not api_key or not visible_ascii(api_key):
        # Never quoted: it is a secret, and a wrong one may be another service's.
        raise InvalidRequestError("api_key must be a non-empty string of visible ASCII characters (the service's "
                                  "PREDICTOR_API_KEY)", field="api_key")
    return {"authorization": f"Bearer {api_key}"}


def _cause(exc: Exception) -> str:
    """What went wrong with a connection, never empty (httpx raises ``ReadError('')``).

    The system's error where one is behind it, said the same for both clients: the async
    one's own text was "All connection attempts failed" where the sync one said "[Errno 111]
    Connection refused". A TLS error is said in its own words: its errno is OpenSSL's code,
    not the system's (``https://`` to a plain-HTTP service read "[Errno 1] Operation not permitted").
    """
    inner: BaseException | None = exc
    seen = set()
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        if isinstance(inner, ssl.SSLError):
            return f"{type(exc).__name__}: {inner.args[1] if len(inner.args) > 1 else inner}"
        if isinstance(inner, OSError) and isinstance(inner.errno, int) and inner.errno > 0:
            return f"{type(exc).__name__}: [Errno {inner.errno}] {os.strerror(inner.errno)}"
        inner = inner.__cause__ or inner.__context__
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _reads_files(files: Mapping[str, Path | str | bytes] | None) -> bool:
    # (Not a mapping: _Calls.train refuses it, naming `files`, as the blocking client does.)
    return isinstance(files, Mapping) and any(not isinstance(content, bytes) for content in files.values())


def _many(traces: Any) -> bool:
    """Whether ``traces`` are more than the async client checks and writes on its event loop."""
    return isinstance(traces, Sized) and len(traces) > _LARGE_BATCH_TRACES


async def _built_off_loop(off_loop: bool, build, *args):
    """``build(*args)``; in a worker thread where ``off_loop`` (it reads files, or checks a
    long batch), so that it does not hold the event loop (a 200 MB upload held it 0.2 s)."""
    return await asyncio.to_thread(build, *args) if off_loop else build(*args)


class PredictorClient(_Base):
    """Blocking client. Use as a context manager, or call :meth:`close`."""

    def __init__(self, base_url: str = "http://localhost:8200", timeout: float | None = 30.0, retries: int = 3, backoff: float = 0.1,
                 *, transport: httpx.BaseTransport | None = None, api_key: str | None = None):
        super().__init__(base_url, timeout, retries, backoff, api_key)
        self._http = httpx.Client(base_url=self.base_url, timeout=self.timeout, transport=transport, headers=self._headers,
                                  limits=httpx.Limits(max_connections=100, max_keepalive_connections=20,
                                                      keepalive_expiry=KEEPALIVE_EXPIRY))

    def __enter__(self) -> Self:  # a subclass's own type, as httpx's Client does
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the client's connections; a closed client refuses further calls."""
        self._http.close()

    def _send(self, req: _Request) -> Any:
        attempt = 0
        kwargs = None
        while True:
            # Before each try: a client closed while a call waited to retry (from another
            # thread) raised httpx's RuntimeError, in its own terms.
            if self._http.is_closed:
                raise InvalidRequestError("this PredictorClient is closed (by close() or its with block): make a new one")
            try:
                kwargs = kwargs or self._kwargs(req)
                response = self._http.request(req.method, req.path, **kwargs)
                return self._calls.parse(req, response)
            except httpx.HTTPError as exc:
                rid = kwargs["headers"]["x-request-id"] if kwargs else None
                if self._http.is_closed:  # by close() in another thread (the call ends when its wait does)
                    raise _with_id(self._closed_in_flight(req, "close() or its with block"), rid) from exc
                if not self._should_retry(req, exc, attempt):
                    raise _with_id(self._unavailable(req, exc), rid) from exc
                time.sleep(self._pause(attempt))
                attempt += 1

    # -------------------------------------------------------------- endpoints

    def health(self) -> HealthResponse:
        """The service's ``GET /health``: status, mode, models registered and loaded, drifted models."""
        return self._send(self._calls.health())

    def ping(self) -> dict[str, Any]:
        """Liveness: ``{"status": "ok"}`` from the cheapest endpoint (``health`` reports more)."""
        return self._send(self._calls.ping())

    def ready(self) -> Ready:
        """The service's ``GET /ready``: ``status`` "ready" and ``models_loaded``, once the models
        it preloads at start (``PREDICTOR_PRELOAD_MODELS``) are loaded; until then a
        ``PredictorClientError`` of status 503 saying how many are (its ``retry_after`` 1 s)."""
        return self._send(self._calls.ready())

    def is_available(self) -> bool:
        """True when the service answers ``/health``; never raises."""
        try:
            return self.health().status == "healthy"
        except Exception:
            return False

    def list_models(self) -> ModelsResponse:
        """Every stored model (``GET /models``): identity, versions, features, training metrics."""
        return self._send(self._calls.models())

    def list_models_raw(self) -> list[dict[str, Any]]:
        """The models of :meth:`list_models` as plain dicts, as the seed's client returned them."""
        return [dict(m) for m in self.list_models().models]

    def get_model(self, identity: IdentityLike, version: int | None = None) -> dict[str, Any]:
        """One model's metadata (the newest version, or ``version``); a wildcard must match one model."""
        return self._send(self._calls.model(identity, version))

    def delete_model(self, identity: IdentityLike, version: int | None = None) -> dict[str, Any]:
        """Delete a model, or one ``version`` of it; the others keep serving."""
        return self._send(self._calls.delete_model(identity, version))

    def train(self, config: Mapping[str, Any] | TrainConfig, files: Mapping[str, Path | str | bytes] | None = None) -> TrainResult:
        """Train a model and wait for it (``POST /train``); ``files`` maps the config's trace names to paths or bytes."""
        return self._send(self._calls.train(config, files))

    def predict_single(self, identity: IdentityLike, trace: Mapping[str, Any], confidence_level: float = 0.95,
                       quantiles: Sequence[float] | None = None, lookup_table_name: str | None = None,
                       lookup_table: bool | None = None, version: int | None = None,
                       deadline_ms: float | None = None) -> SinglePredictionResponse:
        """The runtime distribution of one task: quantiles at ``quantiles`` (any in (0, 1)), mean,
        standard deviation and the central ``confidence_level`` interval, in ms; with
        ``deadline_ms``, the probability that it takes at most that (``deadline_probability``)."""
        return self._send(self._calls.predict_single(identity, trace, confidence_level, quantiles, lookup_table_name,
                                                     lookup_table, version, deadline_ms))

    def predict_batch(self, identity: IdentityLike, traces: Iterable[Mapping[str, Any]], confidence_level: float = 0.95,
                      quantiles: Sequence[float] | None = None, lookup_table_name: str | None = None,
                      lookup_table: bool | None = None, shared_factor: bool = False,
                      total_distribution: bool = True, version: int | None = None,
                      deadline_ms: float | None = None) -> BatchPredictionResponse:
        """:meth:`predict_single` of every task, in one request, and the distribution of their total
        (the sum of independent tasks, or with ``shared_factor`` a level they share); with
        ``deadline_ms``, each task's and the total's probability of being done within it."""
        return self._send(self._calls.predict_batch(identity, traces, confidence_level, quantiles, lookup_table_name,
                                                    lookup_table, shared_factor, total_distribution, version,
                                                    deadline_ms))

    def train_background(self, config: Mapping[str, Any] | TrainConfig,
                         files: Mapping[str, Path | str | bytes] | None = None) -> dict[str, Any]:
        """Start a training job and return at once: ``{"job_id", "status_url", ...}``."""
        return self._send(self._calls.train_background(config, files))

    def train_job(self, job_id: str) -> dict[str, Any]:
        """A training job's status, and its result or error once finished."""
        return self._send(self._calls.train_job(job_id))

    def wait_for_job(self, job_id: str, timeout: float = 600.0, poll: float = 0.2) -> TrainResult:
        """Poll a background training job until it ends; raise its error if it failed. A service
        that cannot be reached meanwhile (restarting) is polled again until ``timeout``."""
        timeout, poll = _wait_options(timeout, poll)
        deadline = time.monotonic() + timeout
        while True:
            try:
                job = self.train_job(job_id)
            except PredictorClientError as exc:
                self._calls.job_unreachable(exc, deadline)
            else:
                if (result := self._calls.job_outcome(job_id, job, deadline, timeout)) is not None:
                    return result
            time.sleep(poll)

    def cache_stats(self) -> dict[str, Any]:
        """The prediction cache of the worker that answers: entries, hits, misses, hit rate."""
        return self._send(self._calls.cache_stats())

    def clear_cache(self) -> dict[str, Any]:
        """Empty the prediction cache (of the worker that answers)."""
        return self._send(self._calls.clear_cache())

    def observe(self, identity: IdentityLike, traces: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Report measured runtimes (traces carrying the model's target, ``runtime_ms`` unless its
        training config named another) for accuracy tracking and retraining."""
        return self._send(self._calls.observe(identity, traces))

    def accuracy(self, identity: IdentityLike, version: int | None = None, recent: int | None = None) -> dict[str, Any]:
        """Rolling accuracy; ``recent`` observations (at most 5,000, 200 if not given) come with it."""
        return self._send(self._calls.accuracy(identity, version, recent))

    def accuracies(self, recent: int | None = None) -> list[dict[str, Any]]:
        """Every model's rolling accuracy (its serving version's), each entry as ``accuracy``
        answers it less its retraining decisions, in one request (``GET /models/accuracy``)."""
        return self._send(self._calls.accuracies(recent))

    def evaluate(self, identity: IdentityLike, traces: Iterable[Mapping[str, Any]], version: int | None = None,
                 lookup_table_name: str | None = None, lookup_table: bool | None = None) -> EvaluationResponse:
        """How well the model (the serving version, or ``version``), or a lookup table (as a
        prediction names it), predicts ``traces`` carrying measured runtimes, recording
        nothing: coverage per level, interval coverage, pinball loss, median error, expect
        ratio, each level's coverage test (``calibration``), and the version's held-out
        accuracy at training beside them."""
        return self._send(self._calls.evaluate(identity, traces, version, lookup_table_name, lookup_table))

    def retrain(self, identity: IdentityLike) -> dict[str, Any]:
        """Retrain a model now on its training data plus observations; the decision (a new version
        only if it beats the serving one on recent observations)."""
        return self._send(self._calls.retrain(identity))

    def metrics(self) -> str:
        """The Prometheus exposition text of ``GET /metrics``."""
        return self._send(self._calls.metrics())

    def generate_table(self, identity: IdentityLike, trace_file: Path | str | bytes, confidence_level: float = 0.95,
                       table_name: str | None = None, format: str | None = None, filename: str | None = None,
                       timeout: float | None = None, knots: int | None = None) -> dict[str, Any]:
        """Upload a trace file; the service predicts every trace and writes a lookup table.

        ``timeout`` is this call's own; ``None``: the client's, but at least 10 minutes (a large file takes a while).
        ``knots``: how many further levels each record stores at most (0 to 64; ``None``: the service's 24).
        Returns ``{"status": "successful", "path", "table_name", "rows", "failed", "knot_levels", ...}``.
        """
        return self._send(self._calls.generate_table(identity, trace_file, confidence_level, table_name, format, filename,
                                                     timeout, knots))

    def list_tables(self) -> list[dict[str, Any]]:
        """The lookup tables in the service's table directory."""
        return self._send(self._calls.list_tables())

    def download_table(self, name: str, dest: Path | str | None = None) -> bytes:
        """A table file's bytes; also written to ``dest`` when given."""
        data = self._send(self._calls.download_table(name, dest))
        if dest is not None:
            Path(dest).write_bytes(data)
        return data

    def delete_table(self, name: str) -> dict[str, Any]:
        """Delete a lookup table from the service's table directory."""
        return self._send(self._calls.delete_table(name))

    def queue_wait(self, identity: IdentityLike, traces: Iterable[Mapping[str, Any]],
                   quantiles: Sequence[float] = (0.5, 0.9, 0.99), confidence_level: float = 0.9,
                   partial: bool = False, shared_factor: bool = False, lookup_table_name: str | None = None,
                   lookup_table: bool | None = None, version: int | None = None,
                   deadline_ms: float | None = None, completion_times: bool = False) -> QueueWaitEstimate:
        """Distribution of the time until the tasks queued on one instance all finish.

        A task that cannot be predicted raises :class:`PredictorClientError` naming it,
        since the wait would leave it out; ``partial=True`` returns the wait of the
        others instead (``failed`` counts those left out). The tasks are summed as
        independent; ``shared_factor=True`` adds the model's own uncertainty about the
        runtimes' level, and how far that level moved between stretches of its training
        run, one error for the whole queue (README, Modelling). With
        ``lookup_table_name`` (or ``lookup_table``: the default table) a lookup table answers,
        as in :meth:`predict_batch`; with ``version``, that stored version of the model. With
        ``deadline_ms``, ``deadline_probability`` is the probability that the queue drains within it.
        With ``completion_times``, ``completion`` says when each task is done (asked as a
        queue of :meth:`queue_waits`).
        """
        partial, completion_times = _flag(partial, "partial"), _flag(completion_times, "completion_times")
        if completion_times:
            answer = self._send(self._calls.predict_one_queue(identity, traces, confidence_level, quantiles, shared_factor,
                                                              version, lookup_table_name, lookup_table, deadline_ms))
            return self._calls.one_queue_wait(answer, partial, deadline_ms)
        batch = self.predict_batch(identity, traces, confidence_level, quantiles, lookup_table_name, lookup_table,
                                   shared_factor=shared_factor, version=version, deadline_ms=deadline_ms)
        return self._calls.queue_wait(batch, confidence_level, partial, deadline_ms)

    def queue_waits(self, identity: IdentityLike, queues: Mapping[str, Iterable[Mapping[str, Any]]],
                    quantiles: Sequence[float] = (0.5, 0.9, 0.99), confidence_level: float = 0.9,
                    partial: bool = False, shared_factor: bool = False, lookup_table_name: str | None = None,
                    lookup_table: bool | None = None, version: int | None = None,
                    deadline_ms: float | None = None, completion_times: bool = False) -> dict[str, QueueWaitEstimate]:
        """:meth:`queue_wait` of several queues of one model's tasks (a scheduler's instances,
        by name) in one request: ``{name: QueueWaitEstimate}``, in the order given, with the
        same options. A task that cannot be predicted raises :class:`PredictorClientError`
        naming its queue and place, unless ``partial=True``; a queue none of whose tasks can be
        predicted raises either way. With ``completion_times``, each estimate's ``completion``
        says when each of its tasks is done, the queue run in its order (README, For schedulers)."""
        partial = _flag(partial, "partial")
        answer = self._send(self._calls.predict_queues(identity, queues, confidence_level, quantiles, shared_factor,
                                                       version, lookup_table_name, lookup_table, deadline_ms,
                                                       completion_times))
        return self._calls.queue_waits(answer, partial, deadline_ms)

    # -------------------------------------------------------------- the seed's API

    def predict(self, model_type: str, metadata: Mapping[str, Any], confidence_level: float = 0.95,
                quantiles: Sequence[float] | None = None) -> PredictionResult:
        """The seed's call: ``model_type`` plus ``metadata`` holding the other identity parts and the
        features; the prediction's ``results``."""
        return self._send(self._calls.seed_predict(model_type, metadata, confidence_level, quantiles)).results

    def get_median_prediction(self, model_type: str, metadata: Mapping[str, Any]) -> float:
        """The seed's call: the predicted median runtime, in ms."""
        result = self.predict(model_type, metadata, quantiles=[0.5])
        return result.quantile_predictions[0]

    def get_prediction_range(self, model_type: str, metadata: Mapping[str, Any], confidence_level: float = 0.95) -> tuple[float, float]:
        """The seed's call: the central ``confidence_level`` interval, ``(low, high)`` in ms."""
        result = self.predict(model_type, metadata, confidence_level=confidence_level)
        low, high = result.interval
        return low, high


class AsyncPredictorClient(_Base):
    """``asyncio`` twin of :class:`PredictorClient`, with the same methods as coroutines.

    At most ``max_connections`` requests are in flight at once; more wait their turn in
    the client (their ``timeout`` starts when they are sent). Left to httpx's pool, a
    thousand concurrent calls spent their timeout waiting for a connection: httpx's
    async pool does more work per waiting request the more there are.
    """

    def __init__(self, base_url: str = "http://localhost:8200", timeout: float | None = 30.0, retries: int = 3, backoff: float = 0.1,
                 *, transport: httpx.AsyncBaseTransport | None = None, max_connections: int = 100,
                 api_key: str | None = None):
        super().__init__(base_url, timeout, retries, backoff, api_key)
        max_connections = _whole(max_connections, "max_connections", minimum=1)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, transport=transport, headers=self._headers,
                                       limits=httpx.Limits(max_connections=max_connections,
                                                           max_keepalive_connections=min(20, max_connections),
                                                           keepalive_expiry=KEEPALIVE_EXPIRY))
        self._in_flight = asyncio.Semaphore(max_connections)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client's connections; a closed client refuses further calls."""
        await self._http.aclose()

    def _check_usable(self) -> None:
        if self._http.is_closed:
            raise InvalidRequestError("this AsyncPredictorClient is closed (by aclose() or its async with block): "
                                      "make a new one")
        # Its pooled connections belong to the event loop that opened them: used from another
        # (a second asyncio.run), httpx failed at random with "Event loop is closed".
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise InvalidRequestError("this AsyncPredictorClient was first used in another event loop, whose "
                                      "connections it holds: make one client in each loop (each asyncio.run)")

    async def _send(self, req: _Request) -> Any:
        self._check_usable()
        attempt = 0
        # A long batch's body is written in a worker thread (its answer is parsed here: pydantic
        # holds the GIL throughout, so a thread would not free the event loop; see the README).
        large = _traces_in(req) > _LARGE_BATCH_TRACES
        kwargs = await asyncio.to_thread(self._kwargs, req) if large else self._kwargs(req)
        while True:
            try:
                async with self._in_flight:
                    # Closed (aclose() in another task) while it waited to retry, or for its turn
                    # among max_connections: httpx raised its own RuntimeError for the latter.
                    if self._http.is_closed:
                        self._check_usable()  # says so
                    response = await self._http.request(req.method, req.path, **kwargs)
                return self._calls.parse(req, response)
            except httpx.HTTPError as exc:
                rid = kwargs["headers"]["x-request-id"]
                if self._http.is_closed:  # by aclose() in another task
                    raise _with_id(self._closed_in_flight(req, "aclose() or its async with block"), rid) from exc
                if not self._should_retry(req, exc, attempt):
                    raise _with_id(self._unavailable(req, exc), rid) from exc
                await asyncio.sleep(self._pause(attempt))
                attempt += 1

    async def health(self) -> HealthResponse:
        return await self._send(self._calls.health())

    async def ping(self) -> dict[str, Any]:
        return await self._send(self._calls.ping())

    async def ready(self) -> Ready:
        return await self._send(self._calls.ready())

    async def is_available(self) -> bool:
        try:
            return (await self.health()).status == "healthy"
        except Exception:
            return False

    async def list_models(self) -> ModelsResponse:
        return await self._send(self._calls.models())

    async def list_models_raw(self) -> list[dict[str, Any]]:
        return [dict(m) for m in (await self.list_models()).models]

    async def get_model(self, identity: IdentityLike, version: int | None = None) -> dict[str, Any]:
        return await self._send(self._calls.model(identity, version))

    async def delete_model(self, identity: IdentityLike, version: int | None = None) -> dict[str, Any]:
        return await self._send(self._calls.delete_model(identity, version))

    async def train(self, config: Mapping[str, Any] | TrainConfig, files: Mapping[str, Path | str | bytes] | None = None) -> TrainResult:
        return await self._send(await _built_off_loop(_reads_files(files), self._calls.train, config, files))

    async def predict_single(self, identity: IdentityLike, trace: Mapping[str, Any], confidence_level: float = 0.95,
                             quantiles: Sequence[float] | None = None, lookup_table_name: str | None = None,
                             lookup_table: bool | None = None, version: int | None = None,
                             deadline_ms: float | None = None) -> SinglePredictionResponse:
        return await self._send(self._calls.predict_single(identity, trace, confidence_level, quantiles, lookup_table_name,
                                                           lookup_table, version, deadline_ms))

    async def predict_batch(self, identity: IdentityLike, traces: Iterable[Mapping[str, Any]], confidence_level: float = 0.95,
                            quantiles: Sequence[float] | None = None, lookup_table_name: str | None = None,
                            lookup_table: bool | None = None, shared_factor: bool = False,
                            total_distribution: bool = True, version: int | None = None,
                            deadline_ms: float | None = None) -> BatchPredictionResponse:
        # (Checked in a worker thread where long: every value of every trace is looked at.)
        return await self._send(await _built_off_loop(
            _many(traces), self._calls.predict_batch, identity, traces,
            confidence_level, quantiles, lookup_table_name, lookup_table, shared_factor, total_distribution, version,
            deadline_ms))

    async def train_background(self, config: Mapping[str, Any] | TrainConfig,
                               files: Mapping[str, Path | str | bytes] | None = None) -> dict[str, Any]:
        return await self._send(await _built_off_loop(_reads_files(files), self._calls.train_background, config, files))

    async def train_job(self, job_id: str) -> dict[str, Any]:
        return await self._send(self._calls.train_job(job_id))

    async def wait_for_job(self, job_id: str, timeout: float = 600.0, poll: float = 0.2) -> TrainResult:
        timeout, poll = _wait_options(timeout, poll)
        deadline = time.monotonic() + timeout
        while True:
            try:
                job = await self.train_job(job_id)
            except PredictorClientError as exc:
                self._calls.job_unreachable(exc, deadline)
            else:
                if (result := self._calls.job_outcome(job_id, job, deadline, timeout)) is not None:
                    return result
            await asyncio.sleep(poll)

    async def cache_stats(self) -> dict[str, Any]:
        return await self._send(self._calls.cache_stats())

    async def clear_cache(self) -> dict[str, Any]:
        return await self._send(self._calls.clear_cache())

    async def observe(self, identity: IdentityLike, traces: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        return await self._send(await _built_off_loop(_many(traces), self._calls.observe, identity, traces))

    async def accuracy(self, identity: IdentityLike, version: int | None = None, recent: int | None = None) -> dict[str, Any]:
        return await self._send(self._calls.accuracy(identity, version, recent))

    async def accuracies(self, recent: int | None = None) -> list[dict[str, Any]]:
        return await self._send(self._calls.accuracies(recent))

    async def evaluate(self, identity: IdentityLike, traces: Iterable[Mapping[str, Any]], version: int | None = None,
                       lookup_table_name: str | None = None, lookup_table: bool | None = None) -> EvaluationResponse:
        return await self._send(await _built_off_loop(_many(traces), self._calls.evaluate, identity, traces, version,
                                                      lookup_table_name, lookup_table))

    async def retrain(self, identity: IdentityLike) -> dict[str, Any]:
        return await self._send(self._calls.retrain(identity))

    async def metrics(self) -> str:
        return await self._send(self._calls.metrics())

    async def generate_table(self, identity: IdentityLike, trace_file: Path | str | bytes, confidence_level: float = 0.95,
                             table_name: str | None = None, format: str | None = None, filename: str | None = None,
                             timeout: float | None = None, knots: int | None = None) -> dict[str, Any]:
        # Bytes are named by what they hold (a gzip file's first line decompressed): off the
        # loop too where there are many.
        off_loop = not isinstance(trace_file, bytes) or len(trace_file) > _LARGE_ANSWER_BYTES
        return await self._send(await _built_off_loop(off_loop, self._calls.generate_table, identity, trace_file,
                                                      confidence_level, table_name, format, filename, timeout, knots))

    async def list_tables(self) -> list[dict[str, Any]]:
        return await self._send(self._calls.list_tables())

    async def download_table(self, name: str, dest: Path | str | None = None) -> bytes:
        data = await self._send(self._calls.download_table(name, dest))
        if dest is not None:
            await asyncio.to_thread(Path(dest).write_bytes, data)
        return data

    async def delete_table(self, name: str) -> dict[str, Any]:
        return await self._send(self._calls.delete_table(name))

    async def queue_wait(self, identity: IdentityLike, traces: Iterable[Mapping[str, Any]],
                         quantiles: Sequence[float] = (0.5, 0.9, 0.99), confidence_level: float = 0.9,
                         partial: bool = False, shared_factor: bool = False, lookup_table_name: str | None = None,
                         lookup_table: bool | None = None, version: int | None = None,
                         deadline_ms: float | None = None, completion_times: bool = False) -> QueueWaitEstimate:
        partial, completion_times = _flag(partial, "partial"), _flag(completion_times, "completion_times")
        if completion_times:
            answer = await self._send(await _built_off_loop(_many(traces), self._calls.predict_one_queue, identity, traces,
                                                            confidence_level, quantiles, shared_factor, version,
                                                            lookup_table_name, lookup_table, deadline_ms))
            return self._calls.one_queue_wait(answer, partial, deadline_ms)
        batch = await self.predict_batch(identity, traces, confidence_level, quantiles, lookup_table_name, lookup_table,
                                         shared_factor=shared_factor, version=version, deadline_ms=deadline_ms)
        return self._calls.queue_wait(batch, confidence_level, partial, deadline_ms)

    async def queue_waits(self, identity: IdentityLike, queues: Mapping[str, Iterable[Mapping[str, Any]]],
                          quantiles: Sequence[float] = (0.5, 0.9, 0.99), confidence_level: float = 0.9,
                          partial: bool = False, shared_factor: bool = False, lookup_table_name: str | None = None,
                          lookup_table: bool | None = None, version: int | None = None,
                          deadline_ms: float | None = None, completion_times: bool = False) -> dict[str, QueueWaitEstimate]:
        partial = _flag(partial, "partial")
        many = isinstance(queues, Mapping) and sum(len(t) if isinstance(t, Sized) else 0
                                                    for t in queues.values()) > _LARGE_BATCH_TRACES
        answer = await self._send(await _built_off_loop(many, self._calls.predict_queues, identity, queues,
                                                        confidence_level, quantiles, shared_factor, version,
                                                        lookup_table_name, lookup_table, deadline_ms,
                                                        completion_times))
        return self._calls.queue_waits(answer, partial, deadline_ms)

    async def predict(self, model_type: str, metadata: Mapping[str, Any], confidence_level: float = 0.95,
                      quantiles: Sequence[float] | None = None) -> PredictionResult:
        return (await self._send(self._calls.seed_predict(model_type, metadata, confidence_level, quantiles))).results

    async def get_median_prediction(self, model_type: str, metadata: Mapping[str, Any]) -> float:
        return (await self.predict(model_type, metadata, quantiles=[0.5])).quantile_predictions[0]

    async def get_prediction_range(self, model_type: str, metadata: Mapping[str, Any], confidence_level: float = 0.95) -> tuple[float, float]:
        low, high = (await self.predict(model_type, metadata, confidence_level=confidence_level)).interval
        return low, high


# The async methods say what their blocking twins say (one text to keep true, and help() on
# either shows it).
for _name, _method in vars(AsyncPredictorClient).items():
    _twin = getattr(PredictorClient, _name, None)
    if callable(_method) and not _method.__doc__ and _twin is not None and _twin.__doc__:
        _method.__doc__ = _twin.__doc__
del _name, _method, _twin
