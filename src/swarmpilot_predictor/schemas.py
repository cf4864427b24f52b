"""Wire schemas: the JSON bodies of requests and responses (pydantic v2)."""

from __future__ import annotations

import datetime
import math
import re
import sys
from collections import Counter
from typing import Any, Callable, Literal

import numpy as np
import orjson
import yaml
from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError, ValidationInfo,
                      field_validator)

from .errors import InvalidInput, cut, dotted, json_kind, listed, shown, too_many_digits, validation_message
from .identity import IDENTITY_KEYS, IDENTITY_PART_MAX, identity_part_problem
from .traces import TooLargeNumber, non_finite_place

DEFAULT_QUANTILES = [0.25, 0.5, 0.75, 0.99]


def check_levels(levels: list[float] | None, field: str) -> list[float] | None:
    if levels is None:
        return None
    if not levels:
        raise ValueError(f"{field} must not be empty")
    for q in levels:
        if not 0.0 < q < 1.0:  # (NaN included)
            raise ValueError(f"{field} must lie strictly between 0 and 1, got {q}")
    if len(levels) > 200:
        raise ValueError(f"{field} may hold at most 200 levels")
    # Answered in increasing order, so that the quantiles are too (CONTRACT: non-decreasing).
    return sorted(float(q) for q in levels)


def declared(**bounds: Any) -> Callable[[dict[str, Any]], None]:
    """A field's ``json_schema_extra``: ``bounds`` (``minItems``, ``items``, ``propertyNames``...)
    on its schema's branch other than null, for /openapi.json. Its validator checks them, in the
    service's own words; undeclared, a request that followed the schema was a 422."""
    def extra(schema: dict[str, Any]) -> None:
        for branch in schema.get("anyOf", [schema]):
            if branch.get("type") != "null":
                branch.update(bounds)
    return extra


def _not_empty(schema: dict[str, Any]) -> None:
    """A ``json_schema_extra``: each branch of ``schema``, an array or a string, not empty."""
    for branch in schema.get("anyOf", [schema]):
        bound = {"array": "minItems", "string": "minLength"}.get(branch.get("type"))
        if bound is not None:
            branch[bound] = 1


# Quantile levels as check_levels takes them.
LEVELS = declared(minItems=1, maxItems=200, items={"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1})


def parse_json_body(raw: bytes, schema: type[BaseModel], inspect: Callable[[Any], None] | None = None) -> Any:
    """``raw``, a request's JSON body, as ``schema``; ``inspect`` sees the parsed JSON first
    (to refuse a form the schema would misread). An InvalidInput naming the field otherwise."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        spelt = non_finite_place(raw)
        if spelt is not None:
            place, token = spelt
            if isinstance(token, TooLargeNumber):
                raise InvalidInput(f"{place}: {token} is beyond the largest number a double holds (about 1.8e308): "
                                   "send a finite number in range, or leave the field out", field=place) from None
            raise InvalidInput(f"{place}: {token} is not a number JSON allows (send a finite number, or leave "
                               "the field out)", field=place) from None
        raise InvalidInput(f"body is not valid JSON: {exc}", field="body") from None
    if inspect is not None:
        inspect(data)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        msg, field = validation_message(exc)
        raise InvalidInput(msg, field=field) from None


class ModelIdentityBody(BaseModel):
    model_config = ConfigDict(protected_namespaces=(), extra="forbid")

    model_type: str = Field(min_length=1, max_length=IDENTITY_PART_MAX)
    model_name: str = Field(min_length=1, max_length=IDENTITY_PART_MAX)
    hardware: str = Field(min_length=1, max_length=IDENTITY_PART_MAX)
    software_name: str = Field(min_length=1, max_length=IDENTITY_PART_MAX)
    software_version: str = Field(min_length=1, max_length=IDENTITY_PART_MAX)

    @field_validator(*IDENTITY_KEYS, mode="before")
    @classmethod
    def _not_a_number(cls, v: Any) -> Any:
        # A YAML config's software_version: 1.10 is the number 1.1 by the time it is read:
        # taken as text, it would name another version, so it is refused with the way out.
        if isinstance(v, bool):
            raise ValueError(f"must be a string, got {str(v).lower()}: quote it (YAML reads yes, no, on and off "
                             "as true and false)")
        if isinstance(v, (int, float)):
            raise ValueError(f"must be a string, got the number {v!r}: quote it (\"1.10\", not 1.10, which YAML "
                             "and JSON read as 1.1)")
        return v

    @field_validator(*IDENTITY_KEYS)
    @classmethod
    def _addressable(cls, v: str | None) -> str | None:
        # '*' (or %2A) in a URL leaves a part unspecified, and '.' or '..' are resolved away
        # by clients: a model named so could never be addressed.
        if v is None:  # a part a training config leaves to group_by
            return v
        problem = identity_part_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v


class ModelPartsBody(ModelIdentityBody):
    """A training config's ``model``: the identity parts that ``group_by`` does not name
    (all five without ``group_by``; the check is the config's, which knows both)."""

    model_type: str | None = Field(None, min_length=1, max_length=IDENTITY_PART_MAX)  # type: ignore[assignment]
    model_name: str | None = Field(None, min_length=1, max_length=IDENTITY_PART_MAX)  # type: ignore[assignment]
    hardware: str | None = Field(None, min_length=1, max_length=IDENTITY_PART_MAX)  # type: ignore[assignment]
    software_name: str | None = Field(None, min_length=1, max_length=IDENTITY_PART_MAX)  # type: ignore[assignment]
    software_version: str | None = Field(None, min_length=1, max_length=IDENTITY_PART_MAX)  # type: ignore[assignment]


class TrainConfig(BaseModel):
    """What ``POST /train`` (and ``swarmpilot-predictor train``) takes."""

    model_config = ConfigDict(protected_namespaces=(), extra="forbid")

    # (Each field's schema states the bounds its validator checks: a config that followed
    # /openapi.json, an empty traces or group_by say, was a 422.)
    group_by: list[str] | None = Field(None, json_schema_extra=declared(  # before model: model's check reads it
        minItems=1, uniqueItems=True, items={"type": "string", "enum": list(IDENTITY_KEYS)}))
    model: ModelPartsBody | None = Field(None, validate_default=True)  # its absence is named as its own error
    traces: list[dict[str, Any]] | str = Field(json_schema_extra=_not_empty)
    target: str = "runtime_ms"
    features: list[str] | None = Field(None, json_schema_extra=declared(uniqueItems=True))
    # Strict, as prediction options are: ["0.5"] or "yes" are mistakes to name, not values to guess at.
    quantiles: list[StrictFloat] = Field(default_factory=lambda: list(DEFAULT_QUANTILES), json_schema_extra=LEVELS)
    algorithm: Literal["auto", "empirical", "linear", "power", "lightgbm"] = "auto"
    params: dict[str, Any] = Field(default_factory=dict)
    first_of_shape: StrictBool = True

    @field_validator("traces", mode="before")
    @classmethod
    def _traces_form(cls, v: Any) -> Any:
        # One message in the request's own terms, where the union's two branches would each
        # report, under pydantic's names for them ('config.traces.list[dict[str,any]].0').
        if isinstance(v, str):
            return v
        if not isinstance(v, list):
            raise ValueError(f"must be a list of traces (JSON objects) or the name of a trace file, got {json_kind(v)}")
        for i, trace in enumerate(v):
            if not isinstance(trace, dict):
                raise ValueError(f"trace {i} must be a JSON object of fields, got {json_kind(trace)}")
        return v

    @field_validator("quantiles")
    @classmethod
    def _levels(cls, v: list[float]) -> list[float]:
        return sorted(set(check_levels(v, "quantiles") or []))

    @field_validator("features")
    @classmethod
    def _features(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            repeated = sorted(name for name, n in Counter(v).items() if n > 1)
            if repeated:
                raise ValueError(f"features names {', '.join(map(repr, repeated))} more than once")
        return v

    @field_validator("group_by")
    @classmethod
    def _group_by(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            bad = [k for k in v if k not in IDENTITY_KEYS]
            if bad:
                raise ValueError(f"group_by keys must be identity keys ({', '.join(IDENTITY_KEYS)}), got {listed(bad)}")
            if not v:
                raise ValueError("group_by must name at least one identity key")
            if len(set(v)) < len(v):
                raise ValueError("group_by names a key more than once")
        return v

    @field_validator("model")
    @classmethod
    def _model_parts(cls, v: ModelPartsBody | None, info: ValidationInfo) -> ModelPartsBody | None:
        if v is None and info.data.get("group_by") is None and "group_by" in info.data:
            raise ValueError("config needs 'model' (the five identity strings) or 'group_by'")
        if v is not None and info.data.get("group_by") is None:
            unset = [k for k in IDENTITY_KEYS if getattr(v, k) is None]
            if unset:
                raise ValueError(f"needs {', '.join(unset)} (the five identity strings), "
                                 "unless group_by takes them from the traces")
        return v


class TrainRequest(BaseModel):
    # A setting beside the config instead of in it ({"config": {...}, "algorithm": "linear"})
    # is a mistake (ignored, it trained with the default): check_envelope names it first;
    # this says so in the OpenAPI schema, and refuses it where a body is validated directly.
    model_config = ConfigDict(extra="forbid")

    config: TrainConfig


class AnswerSource(BaseModel):
    """Whose answers: the model's (its latest version, or ``version``) or a lookup table's
    (``lookup_table``: the default table, or ``lookup_table_name``)."""

    model_config = ConfigDict(extra="forbid")

    lookup_table: StrictBool = False
    lookup_table_name: str | None = Field(None, json_schema_extra=declared(minLength=1))
    # A stored version of the model to answer (a rollback, a comparison); default its latest.
    version: StrictInt | None = Field(None, ge=1)

    @field_validator("lookup_table_name")
    @classmethod
    def _name_for_a_table_answer(cls, v: str | None, info: ValidationInfo) -> str | None:
        # A name without "lookup_table": true would have no effect: the model would answer.
        if v is not None and info.data.get("lookup_table") is False:
            raise ValueError("names a table, but 'lookup_table' is false: the model would answer; "
                             "send \"lookup_table\": true for the table's answer, or leave the name out")
        return v

    @field_validator("version")
    @classmethod
    def _version_of_a_model(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and info.data.get("lookup_table"):
            raise ValueError("names a model's version, but a lookup table answers (from the records it holds): "
                             "leave one of them out")
        return v


class _AnswerLevels(BaseModel):
    """A prediction's levels: a base of :class:`PredictOptions` ahead of :class:`AnswerSource`,
    so that their fields come first, as they did before the answer source was shared."""

    # Strict: "0.9", true or "yes" are mistakes to name, not values to guess at.
    confidence_level: StrictFloat = Field(0.95, gt=0.0, lt=1.0)
    quantiles: list[StrictFloat] | None = Field(None, json_schema_extra=LEVELS)

    @field_validator("quantiles")
    @classmethod
    def _levels(cls, v: list[float] | None) -> list[float] | None:
        return check_levels(v, "quantiles")


# The bases' fields come in the reverse order of the bases (pydantic collects them along the
# reversed MRO): confidence_level, quantiles, lookup_table, lookup_table_name, version, then
# deadline_ms. The fields are validated in this order, and a 422's errors, its "field" (the
# first error's) and the OpenAPI schema's properties follow it: the order of the prediction
# requests before AnswerSource was shared (lookup_table first, a body with a bad
# confidence_level and a bad lookup_table was named for the other field).
class PredictOptions(AnswerSource, _AnswerLevels):
    # A time in ms: each answer then says how likely its task (its total) is done within it.
    deadline_ms: StrictFloat | None = Field(None, gt=0.0, allow_inf_nan=False)


class PredictSingleRequest(PredictOptions):
    trace: dict[str, Any]


# A batch's answer holds a value per trace and level: 100,000 traces at 200 levels made a
# 743 MB response and held the server for 21 s. At most this many values per batch.
MAX_BATCH_VALUES = 1_000_000


def batch_values_problem(n_items: int, n_levels: int, what: str = "traces", per: str | None = None) -> str | None:
    """Why ``n_items`` (``what``: traces of a batch, or queues; sent ``per`` request or batch)
    answered at ``n_levels`` levels each is too large to answer, or None."""
    if n_items * n_levels <= MAX_BATCH_VALUES:
        return None
    per = per or ("request" if what == "queues" else "batch")
    return (f"{n_items:,} {what} at {n_levels} quantile levels is more than {MAX_BATCH_VALUES:,} predicted values "
            f"in one answer; send fewer {what} per {per} or fewer levels")


class PredictBatchRequest(PredictOptions):
    # The total is the sum of independent tasks (the contract's); asked for, it is also
    # multiplied by the model's shared factor, its uncertainty about the runtimes' level.
    shared_factor: StrictBool = False
    # False: the total's mean and standard deviation only (its quantiles and interval null),
    # for a batch asked about its tasks rather than its sum: the total's distribution is most
    # of the cost of a batch of 100 (11 of 12 ms with a shape model).
    total_distribution: StrictBool = True
    trace: list[dict[str, Any]] = Field(max_length=100_000)

    @field_validator("trace")
    @classmethod
    def _answer_bounded(cls, v: list[dict[str, Any]], info: ValidationInfo) -> list[dict[str, Any]]:
        # Named levels are checked here; a model's or a table's own levels once it is known.
        quantiles = info.data.get("quantiles")  # validated before: PredictOptions' fields come first
        problem = batch_values_problem(len(v), len(quantiles)) if quantiles else None
        if problem:
            raise ValueError(problem)
        return v


# The most queues, and traces in all, one request may ask about.
MAX_QUEUES = 10_000
MAX_QUEUED_TRACES = 100_000


class PredictQueuesRequest(PredictOptions):
    """Several queues of one model's tasks (a scheduler's instances), each answered its total."""

    shared_factor: StrictBool = False
    # True: each queue also says when each of its tasks is done, the queue run in its order.
    completion_times: StrictBool = False
    # Queue name (an instance's, say) -> its traces, in the queue's order.
    queues: dict[str, list[dict[str, Any]]] = Field(min_length=1, max_length=MAX_QUEUES,
                                                    json_schema_extra=declared(propertyNames={"minLength": 1,
                                                                                              "maxLength": 200}))

    @field_validator("queues")
    @classmethod
    def _bounded(cls, v: dict[str, list[dict[str, Any]]], info: ValidationInfo) -> dict[str, list[dict[str, Any]]]:
        for name in v:
            if not 1 <= len(name) <= 200:
                raise ValueError(f"a queue's name must be 1 to 200 characters, got {shown(cut(name))}")
        n = sum(map(len, v.values()))
        if n > MAX_QUEUED_TRACES:
            raise ValueError(f"{n:,} traces in all is more than {MAX_QUEUED_TRACES:,}; send fewer queues per request")
        quantiles = info.data.get("quantiles")  # validated before: PredictOptions' fields come first
        problem = batch_values_problem(len(v), len(quantiles), "queues") if quantiles else None
        if problem:
            raise ValueError(problem)
        return v


class ObserveRequest(BaseModel):
    model_config = ConfigDict(protected_namespaces=(), extra="forbid")

    model: ModelIdentityBody
    traces: list[dict[str, Any]] = Field(min_length=1, max_length=100_000)


class _EvaluatedTraces(BaseModel):
    traces: list[dict[str, Any]] = Field(min_length=1, max_length=100_000)


class EvaluateRequest(AnswerSource, _EvaluatedTraces):
    """Traces with their measured runtimes, to score a model version, or a lookup table, on
    (recording nothing)."""

    # (traces first, then lookup_table, lookup_table_name and version, as PredictOptions' order:
    # traces came before version, and {"traces": [], "version": 0} is named for traces still.)


class NoOptions(BaseModel):
    """The body of a route that takes no options (a retraining, a deletion, the cache's
    clearing): empty or ``{}``."""

    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- responses
# Response models keep fields they do not list: newer services may send more.


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class ModelInfo(_Response):
    type: str
    name: str
    hardware: str
    software_name: str
    software_version: str


class PredictionResult(_Response):
    status: Literal["success", "error"]
    quantiles: list[float] | None = None
    quantile_predictions: list[float] | None = None
    expect: float | None = None
    error: float | None = None
    interval: list[float] | None = None
    model_info: ModelInfo | None = None
    model_version: int | None = None
    message: str | None = None
    source: str | None = None
    # The features whose value training never saw (a number past its range, a category it
    # did not learn): sent only where there is one.
    outside_training: list[str] | None = None
    # Of a running task (its trace states elapsed_ms, and the answer is its time left): the
    # level of its runtime distribution that its elapsed time has reached.
    elapsed_level: float | None = None
    # Asked with deadline_ms: the probability that the task's runtime (a running task's time
    # left) is at most that.
    deadline_probability: float | None = None
    # Of a lookup table's answer (source "lookup_table"): the table, how its record was found
    # (exact, task_id, nearest or random), a nearest record's distance, whether the model
    # version that made the record serves no more (sent where this service can tell), and a
    # record of another kind of run (first run or repeat) than the trace's.
    table: str | None = None
    match: str | None = None
    distance: float | None = None
    stale: bool | None = None
    kind_mismatch: bool | None = None


class PredictionSummary(_Response):
    total: int
    success: int
    failed: int
    confidence_level: float
    duration_seconds: float


class SinglePredictionResponse(_Response):
    summary: PredictionSummary
    results: PredictionResult


class RunningTask(_Response):
    """A queue's running task: its place in the queue, and the level of its runtime
    distribution that its time run has reached (1: stuck, nothing left that the model can tell)."""

    index: int
    elapsed_level: float


class CompletionTime(_Response):
    """When a queue's task is done (the queue run in its order): the total of its runtime and
    those of the tasks predicted ahead of it."""

    index: int  # its place in the queue
    expect: float
    error: float
    quantiles: list[float]  # at the answer's levels
    interval: list[float]  # central, at its confidence_level
    # Asked with deadline_ms: the probability that the task is done by then.
    deadline_probability: float | None = None


class QueueTotal(_Response):
    """One queue's wait: its total over the tasks predicted (null where none could be)."""

    tasks: int
    failed: int
    errors: list[dict[str, Any]]
    # Its running tasks predicted (a trace stating elapsed_ms), each {"index", "elapsed_level"}:
    # at 1 the model can tell nothing of what is left (stuck), and the total counts it as 0.
    running: list[RunningTask] = Field(default_factory=list)
    expect: float | None = None
    error: float | None = None
    total_quantiles: list[float] | None = None
    total_interval: list[float] | None = None
    # Asked with deadline_ms: the probability that the total is at most that.
    total_deadline_probability: float | None = None
    # Asked with completion_times: when each task predicted is done, in the queue's order.
    completion: list[CompletionTime] | None = None


class QueuesPredictionResponse(_Response):
    status: str
    model_key: str | None = None  # (None: a lookup table answered, ``table``)
    model_version: int | None = None
    source: str | None = None  # "lookup_table" where a table answered (none from a model)
    table: str | None = None  # that table's name
    quantiles: list[float]
    confidence_level: float
    queues: dict[str, QueueTotal]
    summary: dict[str, Any]


class BatchPredictionResponse(_Response):
    summary: PredictionSummary
    results: list[PredictionResult]
    quantiles: list[float] | None = None
    expect: float | None = None
    error: float | None = None
    total_quantiles: list[float] | None = None
    total_interval: list[float] | None = None
    total_deadline_probability: float | None = None
    source: str | None = None  # "lookup_table" where a table answered (none from a model)
    table: str | None = None  # that table's name
    total_method: str | None = None  # a table's answer's: how its total was had ("convolution")


class TrainResult(_Response):
    status: str
    model_key: str
    identity: dict[str, str] | None = None
    version: int | None = None
    metrics: dict[str, Any]
    duration_seconds: float
    models: list[dict[str, Any]] | None = None
    rows_in_no_group: int | None = None  # with group_by: the traces lacking a group_by key, trained on by no model


class HealthResponse(_Response):
    status: str
    service: str
    version: str
    mode: Literal["default", "lookup_table"]
    lookup_predictor_loaded: bool
    lookup_table: str | None = None  # the default table's name, once loaded
    lookup_table_error: str | None = None  # sent only where a configured default table could not be loaded
    models_loaded: int | None = None
    models_registered: int | None = None
    drifted_models: list[str] | None = None
    auto_retrain: bool | None = None


def _strings() -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string"}}


# An entry of GET /models, as the schema of /openapi.json gives it (the client keeps it a dict):
# the seed's fields, which the contract names, and each concrete model's entry.
MODEL_ENTRY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model_type", "model_name", "total_predictions", "hardware_types", "software_versions", "drifted",
                 "samples", "models"],
    "properties": {
        "model_type": {"type": "string"}, "model_name": {"type": "string"},
        "total_predictions": {"type": "integer"}, "hardware_types": _strings(),
        "software_versions": {**_strings(), "description": "software_name/software_version, each part as in a model key"},
        "drifted": {"type": "boolean", "description": "whether any of its models drifted"},
        "samples": {"type": "integer", "description": "its models' training rows, in all"},
        "models": {"type": "array", "items": {
            "type": "object",
            "required": ["key", *IDENTITY_KEYS, "latest_version", "versions", "total_predictions", "samples",
                         "algorithm", "features", "quantiles", "created_at", "metrics", "drifted", "observations"],
            "properties": {
                "key": {"type": "string"}, **{k: {"type": "string"} for k in IDENTITY_KEYS},
                "latest_version": {"type": "integer"}, "versions": {"type": "array", "items": {"type": "integer"}},
                "total_predictions": {"type": "integer"},
                "samples": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                "algorithm": {"type": "string"},
                "features": {"type": "array", "items": {"type": "object"}},
                "quantiles": {"type": "array", "items": {"type": "number"}},
                "created_at": {"type": "number"},
                "metrics": {"type": "object"},
                "first_run_split": {"type": "object", "description": "where repeats and first runs have a model each"},
                "drifted": {"type": "boolean"}, "observations": {"type": "integer"},
            }}},
    },
}


class ModelsResponse(_Response):
    status: str
    models: list[dict[str, Any]] = Field(json_schema_extra={"items": MODEL_ENTRY_SCHEMA})


class Ping(_Response):
    status: Literal["ok"]


class Ready(_Response):
    status: Literal["ready"]
    models_loaded: int


class CacheStats(_Response):
    status: Literal["success"]
    enabled: bool
    entries: int
    max_entries: int
    hits: int
    misses: int
    hit_rate: float


class CacheCleared(_Response):
    status: Literal["success"]
    cleared: int


class ModelDetailResponse(_Response):
    status: Literal["success"]
    model: dict[str, Any]  # the model and each version's metadata (one version's, under /versions/{n})


class ModelDeleted(_Response):
    status: Literal["success"]
    model_key: str
    deleted_versions: list[int]


class AccuracyResponse(_Response):
    status: Literal["success"]
    model_key: str
    version: int
    observations: int
    window: int
    levels: list[float]
    # The window's accuracy, once it holds an observation (each where it can be had).
    coverage: dict[str, float] | None = None
    interval_coverage: dict[str, float] | None = None
    clock_tick_ms: float | None = None
    mean_abs_coverage_error: float | None = None
    pinball_loss: float | None = None
    relative_pinball_loss: float | None = None
    median_mape: float | None = None
    expect_ratio: float | None = None
    expect_observations: int | None = None
    error_ratio: float | None = None
    error_observations: int | None = None
    by_kind: dict[str, dict[str, Any]] | None = None  # first runs' and repeats' apart
    drifted: bool
    drifted_by_kind: dict[str, bool] | None = None
    drift: dict[str, Any]
    heldout_at_training: dict[str, Any]
    recent: dict[str, Any]
    retraining: list[dict[str, Any]]


class AccuraciesResponse(_Response):
    """``GET /models/accuracy``: every model's entry as ``GET /models/{identity}/accuracy``
    answers it (its serving version), less ``status`` and ``retraining``."""

    status: Literal["success"]
    models: list[dict[str, Any]]


class EvaluationResponse(_Response):
    """A model version's accuracy on traces sent to ``POST /models/{identity}/evaluate``."""

    status: Literal["success"]
    model_key: str | None  # None: a lookup table's answers were scored (source, table)
    version: int | None
    source: Literal["lookup_table"] | None = None
    table: str | None = None
    evaluated: int  # the traces scored
    rejected: list[dict[str, Any]]  # {"index", "message"} of each trace that could not be
    levels: list[float]
    coverage: dict[str, float]
    interval_coverage: dict[str, float]
    clock_tick_ms: float | None = None
    mean_abs_coverage_error: float
    pinball_loss: float
    relative_pinball_loss: float
    median_mape: float
    expect_ratio: float | None = None
    expect_observations: int | None = None
    error_ratio: float | None = None
    error_observations: int | None = None
    by_kind: dict[str, dict[str, Any]] | None = None
    calibration: dict[str, Any]  # each level's binomial test: p_values, worst_level, corrected_p_value
    heldout_at_training: dict[str, Any]


class RetrainDecision(_Response):
    """A retraining's decision (a failed one is answered as an error)."""

    status: Literal["retrained", "kept", "skipped", "failed"]
    model_key: str
    reason: str
    from_version: int
    at: float  # when it was decided (Unix seconds)
    to_version: int | None = None  # a retrained one's new version
    message: str | None = None
    # What it weighed, as far as it went: the candidates' held-out loss on recent observations...
    observations: int | None = None
    candidate: str | None = None
    heldout_log_pinball: dict[str, float] | None = None
    heldout_rows: int | None = None
    training_rows: dict[str, int] | None = None
    older_observations_left_out: int | None = None
    gross_outliers_dropped: int | None = None
    shift: dict[str, int] | None = None
    next_try: dict[str, Any] | None = None
    seconds: float | None = None


class ObserveResponse(_Response):
    status: Literal["success"]
    model_key: str
    model_version: int
    accepted: int
    rejected: list[dict[str, Any]]  # {"index", "message"} of each trace not recorded
    drifted: bool
    retraining_scheduled: bool


class TrainJob(_Response):
    job_id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    submitted_at: float
    request_id: str | None = None  # the X-Request-ID of the request that started it (null outside one)
    started_at: float | None = None
    finished_at: float | None = None
    model_key: str | None = None  # a succeeded job's
    result: dict[str, Any] | None = None  # a succeeded job's, the answer /train gives
    error: dict[str, Any] | None = None  # a failed job's: status_code, message, field


class TablesResponse(_Response):
    status: Literal["success"]
    tables: list[dict[str, Any]]  # name, format, size_bytes, modified_at, default, loaded, ...
    default: str | None


class TableDeleted(_Response):
    status: Literal["success"]
    deleted: str


class TrainAccepted(_Response):
    """``POST /train?background=true``'s 202: the job to follow at ``status_url``."""

    status: Literal["accepted"]
    job_id: str
    status_url: str


class TableResult(_Response):
    status: Literal["successful"]
    path: str
    table_name: str | None = None
    format: str | None = None
    rows: int | None = None
    model_key: str | None = None
    model_version: int | None = None
    repeats_added: int | None = None  # repeat records written beside first runs
    failed: int | None = None
    errors: list[str] | None = None  # the first failed traces' messages
    quantiles: list[float] | None = None
    knot_levels: list[float] | None = None
    confidence_level: float | None = None
    duration_seconds: float | None = None
    load_seconds: float | None = None  # reading it back to serve (null where that failed)


class ErrorResponse(_Response):
    """Every error's answer, a 4xx or a 5xx (``detail`` repeats ``message``, where FastAPI's
    clients read it)."""

    status: Literal["error"]
    message: str
    detail: str
    field: str | None = None  # sent where one input is at fault ("identity", "trace", "body", ...)
    candidates: list[str] | None = None  # a 409's matching models; a 404's models one part away


class TableFailure(_Response):
    """``POST /predict/table``'s errors, in the seed's answer shape (with the error's HTTP status)."""

    status: Literal["failed"]
    # Always null. Typed as null alone ({"type": "null"}), it stopped openapi-generator's python
    # client ("Codegen Property not yet supported in getPydanticType").
    path: str | None = Field(description="null: a failure writes no table")
    message: str
    detail: str
    field: str | None = None
    candidates: list[str] | None = None


TOTAL_KEYS = ("expect", "error", "total_quantiles", "total_interval")
DEADLINE_KEY = "total_deadline_probability"
COMPLETION_DEADLINE_KEY = "deadline_probability"  # of a task's completion, as of a task's own runtime


def total_keys(deadline_ms: float | None) -> tuple[str, ...]:
    """The fields a batch's (a queue's) total is answered in: with a deadline, its probability too."""
    return TOTAL_KEYS if deadline_ms is None else (*TOTAL_KEYS, DEADLINE_KEY)


def total_fields(total: dict[str, Any] | None, traces: int, n_levels: int,
                 deadline_ms: float | None = None) -> dict[str, Any]:
    """A batch's (a queue's) total as its answer gives it: ``total``, where a task of its
    ``traces`` was predicted; an empty queue's, exactly 0 (a scheduler asks about idle
    instances too); else unknown, null. Asked with ``deadline_ms``, the probability that the
    total is within it too (an empty queue's: 1)."""
    if total:
        return total
    if not traces:
        out = {"expect": 0.0, "error": 0.0, "total_quantiles": [0.0] * n_levels, "total_interval": [0.0, 0.0]}
        return out if deadline_ms is None else {**out, DEADLINE_KEY: 1.0}
    return dict.fromkeys(total_keys(deadline_ms))


class RenderedPredictions:
    """The contract's JSON for a set of predictions, from the model or from a lookup table.

    Subclasses (dataclasses) provide ``ok``, ``errors``, ``levels``,
    ``confidence_level``, ``total``, ``duration_seconds``, ``deadline_ms`` and ``results()``.
    """

    deadline_ms: float | None

    def summary(self) -> dict[str, Any]:
        n_ok = int(np.count_nonzero(self.ok))
        return {
            "total": len(self.errors),
            "success": n_ok,
            "failed": len(self.errors) - n_ok,
            "confidence_level": self.confidence_level,
            "duration_seconds": self.duration_seconds,
        }

    def single_response(self) -> dict[str, Any]:
        return {"summary": self.summary(), "results": self.results()[0]}

    def batch_response(self, total_distribution: bool = True) -> dict[str, Any]:
        """The batch answer; without ``total_distribution``, the total's mean and standard
        deviation alone (its quantiles and interval null, a table's and an empty queue's too)."""
        body: dict[str, Any] = {"summary": self.summary(), "results": self.results(), "quantiles": self.levels}
        body.update(self.batch_extra())
        body.update(total_fields(self.total, len(self.errors), len(self.levels or ()), self.deadline_ms))
        if not total_distribution:
            body.update(total_quantiles=None, total_interval=None)
            if self.deadline_ms is not None:
                body[DEADLINE_KEY] = None
        return body

    def batch_extra(self) -> dict[str, Any]:
        return {}


# --------------------------------------------------------------------------- config files


def check_envelope(data: dict[str, Any]) -> None:
    """Refuse (422, naming the first) keys beside ``config`` in a ``{"config": ...}`` envelope:
    a setting put there instead of inside (``"algorithm": "linear"``) was ignored, and the
    model trained with the default."""
    beside = [k for k in data if k != "config"]
    if beside:
        raise InvalidInput(f"{listed(map(shown, beside))}: not allowed beside 'config' in a "
                           "{\"config\": ...} body: put every setting inside 'config'", field=cut(str(beside[0])))


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading a number with an exponent as JSON and YAML 1.2 do: YAML
    1.1's floats need a dot and a signed exponent, so ``1e-3`` and ``1.0e3`` were text
    (``alpha: 1e-3`` refused as the text '1e-3', a feature of such numbers a category)."""


_ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
                                    list("-+0123456789."))


def config_from_text(text: str) -> dict[str, Any]:
    """A training config's text (JSON, or YAML), as the object it holds, unwrapped from a
    ``{"config": ...}`` envelope; InvalidInput (422) naming what is wrong.

    The API's multipart ``config`` part and the CLI's ``train CONFIG`` read configs here.
    """
    from_yaml = False
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            data = yaml.load(text, Loader=_ConfigLoader)  # (safe: no object tags)
        except RecursionError:
            raise InvalidInput("config is nested too deeply", field="config") from None
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            # ValueError: a YAML value of a well-formed shape that cannot be, such as the date 2024-02-30.
            if too_many_digits(exc):
                raise InvalidInput(f"config holds an integer of more than {sys.get_int_max_str_digits()} digits, "
                                   "which no setting takes", field="config") from None
            raise InvalidInput(f"config is neither valid JSON nor YAML: {_yaml_problem(exc)}", field="config") from None
        from_yaml = True
    if isinstance(data, dict) and "config" in data and isinstance(data["config"], dict):
        check_envelope(data)
        data = data["config"]
    if from_yaml:
        # YAML has more types than JSON (bytes, dates, sets, non-string keys, NaN) and its
        # strings may hold lone surrogates: the config must be what JSON could have said.
        _check_json_compatible(data, budget=2 * len(text) + 1000)
    if not isinstance(data, dict):
        raise InvalidInput("config must be a JSON or YAML object", field="config")
    return data


def _yaml_problem(exc: Exception) -> str:
    """What is wrong with a config's YAML, in one line: where and what, without the parser's
    name for the text (``in "<unicode string>"``) or its caret drawings."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return str(exc)

    def at(mark: Any) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    said = f"{at(exc.problem_mark)}: " if exc.problem_mark is not None else ""
    said += exc.problem or "not valid YAML"
    if exc.context:
        said += f" ({exc.context}" + (f" at {at(exc.context_mark)}" if exc.context_mark is not None else "") + ")"
    return said


_YAML_TYPE_NAMES = {bytes: "binary data (!!binary)", set: "a set (!!set)", tuple: "a tuple",
                    datetime.date: "a date", datetime.datetime: "a timestamp"}


def _check_json_compatible(data: Any, budget: int) -> None:
    """Refuse (422, naming the path) a loaded YAML document that JSON could not have said.

    Only objects with string keys, arrays, strings (valid Unicode: no lone
    surrogates), finite numbers, booleans and null pass. ``budget`` caps the
    number of values visited, so that YAML aliases cannot expand a small
    document into billions of values.
    """
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    seen = 0
    while stack:
        value, path = stack.pop()
        seen += 1
        if seen > budget:
            raise InvalidInput("config: its YAML aliases expand it into too many values", field="config")
        if value is None or isinstance(value, (bool, int)):
            continue
        if isinstance(value, str):
            if not valid_unicode(value):
                _not_json(path, "a string holding a lone surrogate (not valid Unicode)")
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                _not_json(path, f"{value} is not a JSON number (JSON has no NaN or Infinity)")
            continue
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    _not_json(path, f"a key {shown(key)} that is not a string (quote it)")
                if not valid_unicode(key):
                    _not_json(path, "a key holding a lone surrogate (not valid Unicode)")
            # Reversed onto the stack: the first offending value is the one reported.
            stack.extend((item, (*path, key)) for key, item in reversed(value.items()))
            continue
        if isinstance(value, list):
            stack.extend((value[i], (*path, i)) for i in range(len(value) - 1, -1, -1))
            continue
        what = next((name for t, name in _YAML_TYPE_NAMES.items() if type(value) is t), type(value).__name__)
        _not_json(path, f"{what}, which JSON cannot hold (quote it to send a string)")


def valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _not_json(path: tuple[Any, ...], what: str) -> None:
    field = dotted(("config", *path))
    raise InvalidInput(f"{field}: {what}", field=field)


def _split_models(split: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A kept split's two models (repeats, first runs), each naming its family; None if not so."""
    models = split.get("models")
    if (isinstance(models, list) and len(models) == 2
            and all(isinstance(m, dict) and isinstance(m.get("algorithm"), str) for m in models)):
        return models
    return None


def regime_split_problem(metrics: dict[str, Any]) -> str | None:
    """What is wrong with a version's ``metrics.regime_split``, if anything (a model file's
    metadata is refused for it: every model listing reads it)."""
    split = metrics.get("regime_split")
    if split is None:
        return None
    if not isinstance(split, dict):
        return f"'metrics.regime_split' must be an object, got {json_kind(split)}"
    if not isinstance(split.get("split"), bool):
        return f"'metrics.regime_split.split' must be true or false, got {json_kind(split.get('split'))}"
    if split["split"] and _split_models(split) is None:
        return "'metrics.regime_split.models' must be two objects, one per kind of run, each with its 'algorithm'"
    return None


def first_run_split(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """From a version's training metrics, the families of its repeats' and first runs'
    models (``{"repeats": ..., "first_runs": ...}``) where it serves one for each kind of
    run; None otherwise (its ``algorithm`` is then the family that answers). Metrics that
    say it otherwise than training writes it (another server's answer) are read as no split."""
    split = metrics.get("regime_split") if isinstance(metrics, dict) else None
    if not isinstance(split, dict) or split.get("split") is not True or (models := _split_models(split)) is None:
        return None
    return {"repeats": models[0]["algorithm"], "first_runs": models[1]["algorithm"]}
