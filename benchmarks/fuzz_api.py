"""Random requests at the live service: a 5xx, a 4xx that does not name the field at fault,
an answer that is not JSON, a number that is not finite, a crossing or negative quantile, or
a service that stops answering is a finding.

The service (uvicorn, a fresh data directory) is trained on the H100 vision example, then
sent seven kinds of request, each drawn from a seeded generator:

- ``mangled``: a valid body of each prediction route, ``/observe`` and ``/train`` with
  one to three random changes (a value replaced by another type or an odd one, a field
  removed or added, a list grown) and now and then its JSON cut short;
- ``edge``: bodies of the right shape whose numbers are at the edges of what JSON holds
  (0, -0, 5e-324, 1.7e308, 2**63, ...), levels at and past 0 and 1, queues of 0 to 100
  tasks, running tasks' ``elapsed_ms`` among them;
- ``files``: trainings (multipart, a config naming the file) and lookup tables made from
  small trace files (JSONL, JSON, CSV, gzip) with bytes flipped, cut, repeated or odd ones
  put in;
- ``tables``: lookups in tables the service made, damaged on disk the same way;
- ``paths``: requests of every method with odd identity parts, table names, versions and
  query strings (``..``, ``%00``, an encoded slash, a parameter given twice or unknown),
  now and then a body where the route takes none, the real identity's parts among them; a
  ``HEAD`` answer must only not be a 5xx;
- ``evaluate``: ``POST /models/{identity}/evaluate`` of the vision model, of a model with a
  first-run column (trained on traces that state ``first_of_shape``) and of a ``*`` that
  names both, with 0 to 300 traces whose runtimes are at and past the edges (0, -0,
  5e-324, 1e15, 1e308, 2**64, 10**400, words, all of them one value, or far outside what
  the model was trained on), versions stored, not stored and not numbers, ``lookup_table``
  with and without a table's name (a table the script made, one damaged or not there), and
  now and then the body changed as ``mangled`` changes one. A successful answer must also
  hold its figures as numbers in their ranges (coverages and p-values in [0, 1], losses
  not negative, ``evaluated`` and ``rejected`` adding up to the traces sent);
- ``bodies``: each route's body bound (a single prediction's 1 MiB, the 64 MiB of a batch,
  queues, an observation, an evaluation and a JSON training, the 64 KiB of a route without
  options) with bodies one byte under it, at it, one byte and a few KB over it, declared
  (``Content-Length``, now and then written with leading zeros or a space after it) or
  chunked, and a ``Content-Length`` over the bound sent without its body, or with
  ``Expect: 100-continue`` (the body sent at once where within the bound, none past it): one
  over must be a 413 naming ``body`` (after ``Expect``, with ``Connection: close``), one
  within must not.

``GET /ready`` is among the ``paths`` kind's routes, and after each kind ``/ready`` must
answer 200 ``ready`` (as ``/health`` and ``/models`` must answer 200).

    uv run python benchmarks/fuzz_api.py [--seed 0] [--requests 10000] [--files 1000] [--tables 400] [--paths 3000]
                                         [--evaluate 2000] [--bodies 60]

``--concurrent SECONDS`` does something else: two LLM models on a service of two workers
(``serve --workers 2``, automatic retraining after 60 observations, 3 versions kept, the
observation logs rotated every 64 KB), and six clients that for that long predict (single,
batch, queues), observe, train (now and then both models in one background ``group_by``
job, whose status they read), retrain, delete versions and now and then a whole model,
make, read, answer from and delete lookup tables, evaluate a model or its table on traces,
and read the models, their accuracy, ``/ready`` and ``/metrics``, all at random. A 5xx or no answer is a finding; so is an error in the
service's log (its warnings are listed), a background training that has not ended within
300 s of the load or failed without a status code and message, and, once the clients
stop, a stored version that does not answer a prediction, or a prediction naming no
version that another than the newest answers, there or after the service restarts.

With ``--kill-every SECONDS`` one of the service's processes (a server worker, a training or
retraining worker, a resource tracker) is SIGKILLed that often during the load, as the
out-of-memory killer would: answers cut short, 5xx and errors in the log are then expected,
and what must hold is what was stored (every version answers, the newest by default, every
training job ends, with a status code and message where it failed), there and after a
restart.

``--cli RUNS`` runs the command line's ``train``, ``predict`` and ``table`` on such damaged
trace files instead (and now and then a damaged config): a traceback, or an exit status
other than 0, 1 or 2, is a finding.

The service's workers train at the "normal" CPU priority (``SERVICE_ENV``), so that a run
beside other busy work does not wait on trainings the default "low" priority slows down.

An error, a traceback or a Python warning (numpy's ``RuntimeWarning``) in the service's log
is a finding too; its warnings are listed.

It prints the answers' status codes and each finding (the request, what was wrong) and
exits 1 where there was one.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import math
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import Server  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
IDENTITY = {"model_type": "vision", "model_name": "resnet50", "hardware": "NVIDIA H100 80GB HBM3",
            "software_name": "torch", "software_version": "2.4"}
# Trainings at the workers' "normal" CPU priority, not the default "low" (settings.py): beside
# other work that keeps both cores busy a training at "low" gets a small share of a core (at
# "idle", the default until 2026-12-06, none), and a /train that waits for it is not answered
# within the client's time. That is the setting doing its job, not a finding (a 6.7 s training
# of --seed 11, beside two busy loops: no answer in 120 s at idle, 103 s at low).
SERVICE_ENV = {"PREDICTOR_TRAINING_PRIORITY": "normal"}
PATH = "vision/resnet50/NVIDIA%20H100%2080GB%20HBM3/torch/2.4"
TRACE = {"batch_size": 8, "image_size": 224}
VALID = [
    ("/predict/single/" + PATH, {"trace": TRACE, "confidence_level": 0.9, "quantiles": [0.5, 0.9]}),
    ("/predict/batch/" + PATH, {"trace": [TRACE, {"batch_size": 64, "image_size": 512, "elapsed_ms": 3}],
                                "quantiles": [0.5, 0.9, 0.99], "shared_factor": True}),
    ("/predict/queues/" + PATH, {"queues": {"a": [TRACE], "b": [TRACE, dict(TRACE, elapsed_ms=2.0)]},
                                 "quantiles": [0.5], "confidence_level": 0.95}),
    ("/predict/queues/" + PATH, {"queues": {"a": [TRACE, TRACE], "b": [dict(TRACE, elapsed_ms=2.0), TRACE]},
                                 "completion_times": True, "deadline_ms": 50.0}),
    ("/observe", {"model": IDENTITY, "traces": [dict(TRACE, runtime_ms=4.0)]}),
    ("/predict/table/" + PATH, {"trace": [TRACE]}),
    ("/train", {"config": {"model": IDENTITY, "traces": [dict(TRACE, runtime_ms=4.0 + i % 3) for i in range(40)]}}),
]
ODD = [None, True, False, 0, -1, 1e308, -1e308, 1e-320, "NaN", "inf", "", "x" * 5000, "\u0000", "é", [], {}, [[]],
       [None], {"a": None}, 2**64, -2**63, 0.5, "1e5", [1, 2, 3], {"batch_size": []}, "../../etc/passwd", 1.5]
FIELDS = ["quantiles", "trace", "version", "lookup_table", "lookup_table_name", "confidence_level", "elapsed_ms",
          "first_of_shape", "group_by", "features", "params", "total_distribution", "shared_factor", "completion_times",
          "deadline_ms", "extra"]
NUMBERS = [0, 1, -1, 1e-320, 5e-324, 1e-300, 1e300, 1.7e308, 2**53 + 1, 2**63, 10**30, 0.5, 3, 224, 64, 1e6, -0.0]
LEVELS = [0.0, 1.0, 1e-300, 1e-12, 0.5, 1 - 1e-12, 1 - 1e-16, 0.9999999, 1e-9, 0.25, 2, -0.1]


def mangle(value: Any, rng: random.Random) -> Any:
    """``value`` with one random change somewhere in it."""
    if isinstance(value, dict):
        out, keys = dict(value), list(value)
        act = rng.random()
        if keys and act < 0.5:
            k = rng.choice(keys)
            out[k] = mangle(out[k], rng) if rng.random() < 0.5 else rng.choice(ODD)
        elif keys and act < 0.65:
            del out[rng.choice(keys)]
        else:
            out[rng.choice(FIELDS)] = rng.choice(ODD)
        return out
    if isinstance(value, list):
        out = list(value)
        act = rng.random()
        if out and act < 0.5:
            i = rng.randrange(len(out))
            out[i] = mangle(out[i], rng) if rng.random() < 0.6 else rng.choice(ODD)
        elif act < 0.7:
            out.append(rng.choice(ODD))
        elif out:
            out = out * rng.choice([2, 50])
        return out
    return rng.choice(ODD)


def mangled(rng: random.Random) -> tuple[str, str]:
    """The ``mangled`` kind: a route and a valid body of it, changed (see the module's text)."""
    path, body = rng.choice(VALID)
    while path == "/train" and rng.random() < 0.7:  # trainings take longer: fewer of them
        path, body = rng.choice(VALID)
    for _ in range(rng.choice([1, 1, 2, 3])):
        body = mangle(body, rng)
    raw = json.dumps(body)
    if rng.random() < 0.03:
        raw = raw[:rng.randrange(len(raw) + 1)]
    return path, raw


def edge(rng: random.Random) -> tuple[str, str]:
    """The ``edge`` kind: a route and a body of the right shape with numbers at JSON's edges."""

    def trace() -> dict[str, Any]:
        t: dict[str, Any] = {"batch_size": rng.choice(NUMBERS + [8, 16]), "image_size": rng.choice(NUMBERS + [224, 512])}
        if rng.random() < 0.3:
            t["elapsed_ms"] = rng.choice(NUMBERS)
        if rng.random() < 0.2:
            t["first_of_shape"] = rng.choice([True, False])
        return t

    def options(body: dict[str, Any]) -> dict[str, Any]:
        if rng.random() < 0.5:  # mostly in order, now and then not
            levels = rng.sample(LEVELS, rng.randint(1, 4))
            body["quantiles"] = sorted(set(levels)) if rng.random() < 0.9 else levels
        if rng.random() < 0.5:
            body["confidence_level"] = rng.choice(LEVELS)
        if rng.random() < 0.3:
            body["shared_factor"] = True
        return body

    kind = rng.choice(["single", "batch", "queues", "observe"])
    if kind == "single":
        path, body = "/predict/single/" + PATH, options({"trace": trace()})
    elif kind == "batch":
        path, body = "/predict/batch/" + PATH, options({"trace": [trace() for _ in range(rng.choice([0, 1, 2, 10, 100]))]})
        if rng.random() < 0.2:
            body["total_distribution"] = False
    elif kind == "queues":
        queues = {f"q{j}": [trace() for _ in range(rng.choice([0, 1, 3, 20]))] for j in range(rng.choice([1, 2, 5]))}
        path, body = "/predict/queues/" + PATH, options({"queues": queues})
        if rng.random() < 0.4:
            body["completion_times"] = True
    else:
        path = "/observe"
        body = {"model": IDENTITY, "traces": [dict(trace(), runtime_ms=rng.choice(NUMBERS + [4.0, 12.0]))
                                              for _ in range(rng.choice([1, 5, 50]))]}
    return path, json.dumps(body)


# Bytes put into a damaged file: what breaks a JSON, CSV or text reader.
ODD_BYTES = [b"\x00", b"\xef\xbb\xbf", b"\r\n", b"\xff\xfe", b'"', b",,,", b"NaN", b"1e999", b"-0", b"-1",
             b"{}", b"[", b"[]", b"null", b"\n\n", b"\\u0000"]


def damage(data: bytes, rng: random.Random, times: int) -> bytes:
    """``data`` damaged ``times`` times: a bit flipped, the rest cut off, odd bytes put in,
    or a stretch repeated."""
    out = bytearray(data)
    for _ in range(times):
        act, at = rng.random(), rng.randrange(len(out) + 1)
        if act < 0.3 and out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif act < 0.5:
            del out[at:]
        elif act < 0.75:
            out[at:at] = rng.choice(ODD_BYTES)
        else:
            out += out[at:] * rng.choice([1, 20])
    return bytes(out)


def trace_file(rng: random.Random) -> tuple[str, bytes]:
    """A small trace file (JSONL, JSON, CSV, or gzip of JSONL) of the vision model's
    features, with its bytes damaged now and then: flipped, cut, repeated or odd ones put in."""
    rows = [{"batch_size": rng.choice([1, 8, 64]), "image_size": rng.choice([224, 512]),
             "runtime_ms": rng.uniform(2, 20)} for _ in range(rng.randint(1, 60))]
    kind = rng.choice(["jsonl", "json", "csv", "jsonl.gz"])
    if kind == "csv":
        data = ("batch_size,image_size,runtime_ms\n"
                + "".join(f"{r['batch_size']},{r['image_size']},{r['runtime_ms']}\n" for r in rows)).encode()
    elif kind == "json":
        data = json.dumps(rows).encode()
    else:
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    data = damage(data, rng, rng.choice([0, 1, 1, 2, 4]))
    if kind == "jsonl.gz":
        data = gzip.compress(data)
        if rng.random() < 0.3:  # a damaged archive
            data = data[:rng.randrange(len(data) + 1)]
    return f"t.{kind}", data


def files(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """A training of the vision model, or a lookup table made of it, from a damaged trace file."""
    name, data = trace_file(rng)
    if rng.random() < 0.25:
        return "/predict/table/" + PATH, {"files": {"trace_file": (name, data)},
                                          "data": {"table_name": "fuzz.json", "confidence_level": "0.9"}}
    config = {"model": IDENTITY, "traces": name, "features": ["batch_size", "image_size"]}
    if rng.random() < 0.2:
        config["algorithm"] = rng.choice(["auto", "linear", "lightgbm", "empirical"])
    return "/train", {"files": {"config": ("config.json", json.dumps({"config": config}).encode()),
                                "trace_file": (name, data)}}


# Path segments and queries a URL parser, a lookup by name or the file system may trip on.
SEGMENTS = ["", "*", ".", "..", "%2e%2e", "..%2F..%2Fetc%2Fpasswd", "..%5C..%5Cwin.ini", "%00", "%2F", "a%2Fb", "x" * 300,
            "%ff%fe", "%C3%A9", "%25", "%20", "~", "con", "0", "-1", "1.0", "1e3", "99999999999999999999", "%0D%0AX:1",
            ".json", "base.json", "base.csv", "a.json.tmp", "{version}"]
QUERIES = ["", "?version=1", "?version=0", "?version=x", "?version=1&version=2", "?version=%00", "?recent=5",
           "?recent=-1", "?recent=99999999999999999999", "?background=true", "?background=maybe", "?%00=1", "?=&&="]
ROUTES = [("GET", "/models/{id}"), ("HEAD", "/models/{id}"), ("GET", "/models/{id}/versions/{n}"),
          ("GET", "/models/{id}/accuracy"), ("POST", "/models/{id}/retrain"), ("DELETE", "/models/{id}"),
          ("DELETE", "/models/{id}/versions/{n}"), ("GET", "/tables/{n}"), ("HEAD", "/tables/{n}"),
          ("DELETE", "/tables/{n}"), ("GET", "/train/jobs/{n}"), ("POST", "/predict/single/{id}"),
          ("POST", "/predict/table/{id}"), ("GET", "/models"), ("GET", "/dashboard"),
          ("PUT", "/models/{id}"), ("GET", "/{n}"), ("GET", "/ready"), ("HEAD", "/ready"), ("POST", "/ready"),
          ("POST", "/models/{id}/evaluate")]


def paths(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """The ``paths`` kind: a route of every method with odd identity parts, names, versions
    and query strings (the real identity's parts among them, so some requests reach a model)."""
    method, route = rng.choice(ROUTES)
    parts = PATH.split("/")
    ident = "/".join(rng.choice(SEGMENTS) if rng.random() < 0.3 else part for part in parts)
    if rng.random() < 0.1:  # a part too few or too many
        ident = ident.rsplit("/", 1)[0] if rng.random() < 0.5 else ident + "/" + rng.choice(SEGMENTS)
    path = route.replace("{id}", ident).replace("{n}", rng.choice(SEGMENTS + ["1", "2"])) + rng.choice(QUERIES)
    body: dict[str, Any] = {"method": method}
    if route.startswith("/predict/single"):
        body["json"] = {"trace": TRACE}
    elif route.endswith("/evaluate"):
        body["json"] = {"traces": [dict(TRACE, runtime_ms=4.0)]}
    elif rng.random() < 0.2:  # a body where the route takes none (a deletion's "version", say)
        body["json"] = rng.choice([{}, {"version": 1}, [1], "x", None, {"": 0}])
    return path, body


# Runtimes an evaluation's traces carry: in the service's range [1e-12, 1e15] and past it,
# at what JSON holds, and not numbers at all.
RUNTIMES = [0, -0.0, 5e-324, 1e-300, 1e-12, 1e-9, 0.001, 1, 4.0, 12.0, 250.0, 1e6, 1e12, 1e15, 1.0000001e15, 1e300,
            1.7e308, 2**53 + 1, 2**63, 2**64, 10**30, 10**400, -1, -1e308, "12.5", "1e5", " 7 ", "NaN", "inf", "1e999",
            "", "x", None, True, False, [], {}, [4.0]]
VERSIONS = [1, 2, 3, 0, -1, 99, 2**31, 2**63, 2**64, 10**400, "1", 1.0, 1.5, True, None, [], {}]
TABLE_NAMES = ["eval.json", "eval.csv", "base.json", "base.csv", "none.json", "", "..", "../eval.json", "eval",
               "EVAL.JSON", "%00", "x" * 300, None, 1, True, []] + [f"damaged{i}.{f}" for i in range(8) for f in ("json", "csv")]
# A model with a first-run column (traces that state ``first_of_shape``), beside the vision one.
COLD = dict(IDENTITY, model_name="resnet50-cold")
COLD_PATH = "/".join(COLD.values()).replace(" ", "%20")


def evaluations(client: httpx.Client) -> Callable[[random.Random], tuple[str, str]]:
    """The ``evaluate`` kind: at its first request, trains the vision model again where an
    earlier kind deleted it (the ``paths`` kind's ``DELETE``\ s reach it now and then), trains
    the model with a first-run column and makes the lookup tables ``eval.json`` and
    ``eval.csv`` of the vision model; then draws evaluations (see the module's text)."""

    def set_up() -> None:
        if client.get(f"/models/{PATH}").status_code == 404:
            with open(EXAMPLES / "train_vision.json", "rb") as config, \
                    open(EXAMPLES / "data" / "h100_resnet50_vision.jsonl", "rb") as traces:
                client.post("/train", files={"config": config, "trace_file": traces}).raise_for_status()
        rng0 = random.Random(0)
        cold = [{"batch_size": b, "image_size": s, "first_of_shape": first,
                 "runtime_ms": (0.05 * b * s / 224) * (3.0 if first else 1.0) * math.exp(rng0.gauss(0, 0.1))}
                for b in (1, 8, 64) for s in (224, 512) for first in (True, False, False, False) for _ in range(3)]
        client.post("/train", json={"config": {"model": COLD, "traces": cold, "algorithm": "linear"}}).raise_for_status()
        rows = "".join(json.dumps({"batch_size": b, "image_size": s}) + "\n" for b in (1, 8, 64) for s in (224, 512))
        for fmt in ("json", "csv"):
            client.post("/predict/table/" + PATH, files={"trace_file": ("t.jsonl", rows.encode())},
                        data={"table_name": f"eval.{fmt}", "format": fmt, "confidence_level": "0.9"}).raise_for_status()

    set_up_yet = False

    def trace(rng: random.Random, model: str, runtime: Any, odd: float) -> dict[str, Any]:
        t: dict[str, Any] = ({"batch_size": rng.choice([1, 8, 64]), "image_size": rng.choice([224, 512])}
                             if rng.random() >= odd else
                             {"batch_size": rng.choice(NUMBERS), "image_size": rng.choice(NUMBERS)})
        if runtime is not _NONE:
            t["runtime_ms"] = runtime
        if model == "cold" and rng.random() < 0.7 or rng.random() < 0.1:
            t["first_of_shape"] = rng.choice([True, False, 1, 0, 0.5, "yes", None])
        if rng.random() < 0.1:
            t["elapsed_ms"] = rng.choice(NUMBERS)
        if rng.random() < 0.05:  # the trace's own identity: the model's, or another's
            t["model_name"] = rng.choice(["resnet50", "resnet50-cold", "other"])
        if rng.random() < 0.03:
            del t[rng.choice(list(t))]
        return t

    def make(rng: random.Random) -> tuple[str, str]:
        nonlocal set_up_yet
        if not set_up_yet:
            set_up()
            set_up_yet = True
        model = rng.choice(["vision", "vision", "cold", "star"])
        path = {"vision": PATH, "cold": COLD_PATH, "star": PATH.replace("resnet50", "*")}[model]
        n = rng.choice([0, 1, 1, 2, 3, 5, 20, 60, 300])
        how = rng.random()
        if how < 0.25:  # every runtime the same
            same = rng.choice(RUNTIMES)
            runtimes = [same] * n
        elif how < 0.4:  # far outside what the model was trained on (2 to 60 ms)
            far = rng.choice([1e-12, 1e-9, 1e-6, 1e6, 1e9, 1e12, 1e15])
            runtimes = [far * rng.uniform(1, 2) if rng.random() < 0.5 else far for _ in range(n)]
        elif how < 0.7:  # in range, as measured
            runtimes = [rng.uniform(1, 60) for _ in range(n)]
        else:  # any, some missing
            runtimes = [rng.choice(RUNTIMES) if rng.random() < 0.9 else _NONE for _ in range(n)]
        # Odd features (an extrapolation) mostly among runtimes of any kind: a set of runtimes
        # far off is checked where every trace scored is of a shape trained on.
        odd = 0.2 if how >= 0.7 else 0.01
        body: dict[str, Any] = {"traces": [trace(rng, model, r, odd) for r in runtimes]}
        if rng.random() < 0.3:
            body["version"] = rng.choice(VERSIONS)
        if rng.random() < 0.3:
            body["lookup_table"] = rng.choice([True, True, True, False, "true", 1, None])
            if rng.random() < 0.6:
                body["lookup_table_name"] = rng.choice(TABLE_NAMES)
        if rng.random() < 0.15:
            for _ in range(rng.choice([1, 2])):
                body = mangle(body, rng)
        raw = json.dumps(body)
        if rng.random() < 0.02:
            raw = raw[:rng.randrange(len(raw) + 1)]
        return f"/models/{path}/evaluate", raw

    return make


_NONE = object()  # a trace without its runtime


def wrong_in_evaluation(answer: Any, sent: str) -> list[str]:
    """What is wrong in an evaluation's successful answer beside :func:`wrong_in`'s: a figure
    that is not a number (NaN is written as null), one out of its range, or counts of the
    traces scored and rejected that do not add up to the traces ``sent``."""
    found: list[str] = []

    def number(where: str, value: Any, low: float = -math.inf, high: float = math.inf) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            found.append(f"{where} is not a number: {value!r}")
        elif not low <= value <= high:
            found.append(f"{where} is {value!r}, out of [{low:g}, {high:g}]")

    try:
        traces = json.loads(sent)["traces"]
    except (ValueError, KeyError, TypeError):
        traces = None
    # Runtimes far below or above what the models answer for the shapes they were trained on
    # (0.4 to 60 ms): every level covers all of those scored, or none.
    rejected_at = {r.get("index") for r in answer.get("rejected", []) if isinstance(r, dict)} \
        if isinstance(answer, dict) and isinstance(answer.get("rejected"), list) else set()
    scored = [t for i, t in enumerate(traces) if i not in rejected_at] if isinstance(traces, list) else []
    shaped = all(isinstance(t, dict) and t.get("batch_size") in (1, 8, 64) and t.get("image_size") in (224, 512)
                 and type(t.get("runtime_ms")) in (int, float) for t in scored)
    runtimes = [t["runtime_ms"] for t in scored] if shaped else []
    for far, covered in ((max(runtimes, default=math.inf) <= 1e-6, 1.0), (min(runtimes, default=0) >= 1e9, 0.0)):
        coverage = answer.get("coverage") if isinstance(answer, dict) else None
        if far and isinstance(coverage, dict) and any(v != covered for v in coverage.values()):
            found.append(f"runtimes {min(runtimes):g} to {max(runtimes):g} ms covered {coverage}, not {covered:g}")
    if not isinstance(answer, dict):
        return [f"not an object: {answer!r}"[:200]]
    evaluated, rejected = answer.get("evaluated"), answer.get("rejected")
    number("evaluated", evaluated, 1)
    if isinstance(traces, list) and isinstance(rejected, list) and isinstance(evaluated, int) \
            and evaluated + len(rejected) != len(traces):
        found.append(f"evaluated {evaluated} and rejected {len(rejected)} of {len(traces)} traces")
    for level, value in (answer.get("coverage") or {"(none)": None}).items():
        number(f"coverage[{level}]", value, 0, 1)
    for size, value in (answer.get("interval_coverage") or {"(none)": None}).items():
        number(f"interval_coverage[{size}]", value, 0, 1)
    number("mean_abs_coverage_error", answer.get("mean_abs_coverage_error"), 0, 1)
    for key in ("pinball_loss", "relative_pinball_loss", "median_mape"):
        number(key, answer.get(key), 0)
    for key in ("expect_ratio", "error_ratio"):
        if key in answer:
            number(key, answer[key], 0)
    calibration = answer.get("calibration") or {}
    for level, value in (calibration.get("p_values") or {"(none)": None}).items():
        number(f"calibration.p_values[{level}]", value, 0, 1)
    number("calibration.corrected_p_value", calibration.get("corrected_p_value"), 0, 1)
    for kind, got in (answer.get("by_kind") or {}).items():
        number(f"by_kind.{kind}.observations", got.get("observations"), 0)
        if got.get("observations"):
            for level, value in got.get("coverage", {"(none)": None}).items():
                number(f"by_kind.{kind}.coverage[{level}]", value, 0, 1)
            number(f"by_kind.{kind}.median_ratio", got.get("median_ratio"), 0)
    return found


# Each route's body bound (routes/common.py BodyBound) and a body it takes. The training and
# the deletion name models of their own, and the retraining one not there: the vision model stays.
MIB = 1 << 20
BOUNDS = [
    ("POST", "/predict/single/" + PATH, MIB, {"trace": TRACE}),
    ("POST", "/predict/batch/" + PATH, 64 * MIB, {"trace": [TRACE, TRACE]}),
    ("POST", "/predict/queues/" + PATH, 64 * MIB, {"queues": {"a": [TRACE]}}),
    ("POST", "/observe", 64 * MIB, {"model": IDENTITY, "traces": [dict(TRACE, runtime_ms=4.0)]}),
    ("POST", f"/models/{PATH}/evaluate", 64 * MIB, {"traces": [dict(TRACE, runtime_ms=4.0)]}),
    ("POST", "/train", 64 * MIB, {"config": {"model": dict(IDENTITY, model_name="bounds"), "algorithm": "linear",
                                             "traces": [dict(TRACE, runtime_ms=4.0 + i % 3) for i in range(30)]}}),
    ("POST", "/cache/clear", 64 * 1024, {}),
    ("POST", "/models/vision/none/h/s/1/retrain", 64 * 1024, {}),
    ("DELETE", f"/models/{PATH}/versions/999", 64 * 1024, {}),
]


def bodies(port: int) -> Callable[[random.Random], tuple[str, dict[str, Any]]]:
    """The ``bodies`` kind: a route's valid body padded (with spaces, or a long string of a
    field the route does not take) to one byte under its bound, at it, or past it, sent
    declared, chunked or (``raw``) with the head written by hand; now and then only a
    ``Content-Length`` over the bound, its body never sent, or an ``Expect: 100-continue``
    (``closes``: past the bound, where the answer must close the connection). ``expect``:
    the answer's status, 413, or any but 413."""

    def make(rng: random.Random) -> tuple[str, dict[str, Any]]:
        method, path, bound, body = rng.choice(BOUNDS)
        size = bound + rng.choice([-1, 0, 0, 1, 1, rng.randint(2, 8192)])
        raw = json.dumps(body).encode()
        if rng.random() < 0.3 and isinstance(body, dict):  # a string of an unknown field (a 422 within)
            raw = raw[:-1] + (b', "pad": "' if body else b'"pad": "')
            raw += b"x" * max(size - len(raw) - 2, 0) + b'"}'
        else:
            spaces = b" " * max(size - len(raw), 0)
            raw = spaces + raw if rng.random() < 0.5 else raw + spaces
        over = len(raw) > bound
        how = rng.choice(["declared", "chunked", "raw", "raw", "unsent", "expect"] if over
                         else ["declared", "chunked", "raw", "expect"])
        out: dict[str, Any] = {"method": method, "expect": 413 if over else "not 413", "size": len(raw)}
        if how == "declared":
            out.update(content=raw, headers={"content-type": "application/json"})
        elif how == "chunked":
            step = rng.choice([1 << 12, 1 << 16, 1 << 20])
            out.update(content=(raw[i:i + step] for i in range(0, len(raw), step)),
                       headers={"content-type": "application/json"})
        elif how == "expect":
            # Expect: 100-continue, the connection kept: within the bound the body follows at
            # once (a client need not wait for the 100), past it none is sent, and the 413 must
            # close the connection (it waited for the body, and read what came next as it).
            out["raw"] = (method.encode() + b" " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: "
                          + str(len(raw)).encode() + b"\r\n\r\n" + (b"" if over else raw))
            out["port"] = port
            out["closes"] = over
        else:
            length = str(len(raw)).encode()
            length = rng.choice([length, b"000" + length, length + b" ", b"0" * 5000 + length])
            out["raw"] = (method.encode() + b" " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"Content-Type: application/json\r\nConnection: close\r\nContent-Length: " + length
                          + b"\r\n\r\n" + (b"" if how == "unsent" else raw))
            out["port"] = port
        return path, out

    return make


def raw_exchange(port: int, method: str, path: str, request: bytes, timeout: float = 60) -> httpx.Response:
    """``request`` (its head and what is sent of its body) on a connection of its own, sent
    from a thread while the answer is read (an answer before the body's end, a 413, must
    not be lost to a write the server no longer reads), and the answer as an httpx one."""
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    failed: list[BaseException] = []

    def send() -> None:
        try:
            sock.sendall(request)
        except OSError as exc:  # the server answered and closed: read what it said
            failed.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    data = bytearray()
    try:
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            while data.startswith(b"HTTP/1.1 100 ") and b"\r\n\r\n" in data:  # an interim answer: the final one follows
                del data[:data.index(b"\r\n\r\n") + 4]
            head, sep, rest = bytes(data).partition(b"\r\n\r\n")
            if sep:
                lengths = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")[1:]
                           if line.lower().startswith(b"content-length:")]
                if lengths and len(rest) >= int(lengths[0]):
                    break
    except TimeoutError as exc:
        raise httpx.ReadTimeout(f"no answer in {timeout:g} s") from exc
    finally:
        sock.close()
        sender.join(timeout=5)
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 "):
        raise httpx.RemoteProtocolError(f"no answer ({len(data)} bytes; sending: {failed})")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if ":" in line]
    return httpx.Response(int(lines[0].split()[1]), headers=headers, content=rest,
                          request=httpx.Request(method, f"http://127.0.0.1:{port}{path}"))


def cli(runs: int, seed: int) -> list[tuple[str, str, str]]:
    """The command line's ``train``, ``predict`` and ``table`` on damaged trace files (and,
    one time in three, a damaged config), each in a process of its own, all on
    one data directory: a traceback, or an exit status other than 0, 1 or 2, is a finding."""
    import shutil
    import subprocess

    rng = random.Random(seed)
    command = shutil.which("swarmpilot-predictor") or "swarmpilot-predictor"
    findings: list[tuple[str, str, str]] = []
    codes: dict[tuple[str, int], int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = str(Path(tmp) / "data")
        for i in range(runs):
            folder = Path(tmp) / f"run{i}"
            folder.mkdir()
            name, data = trace_file(rng)
            (folder / name).write_bytes(data)
            config = json.dumps({"config": {"model": IDENTITY, "traces": name,
                                            "features": ["batch_size", "image_size"]}}).encode()
            if rng.random() < 1 / 3:
                config = damage(config, rng, 1)
            (folder / "config.json").write_bytes(config)
            op = rng.choice(["train", "predict", "table"])
            args = ([op, str(folder / "config.json")] if op == "train"
                    else [op, "vision/*/*/*/*", str(folder / name)])
            done = subprocess.run([command, *args, "--data-dir", data_dir], capture_output=True,
                                  text=True, errors="replace")
            codes[(op, done.returncode)] = codes.get((op, done.returncode), 0) + 1
            said = done.stdout + done.stderr
            if "Traceback" in said or done.returncode not in (0, 1, 2):
                findings.append((" ".join(args), repr(data[:200]), f"exit {done.returncode}: {said[-300:]}"))
    print(f"{runs} commands: " + ", ".join(f"{op} exit {code}: {n}" for (op, code), n in sorted(codes.items())))
    return findings


def damaged_tables(client: httpx.Client, folder: Path) -> Callable[[random.Random], tuple[str, str]]:
    """The ``tables`` kind: a lookup table of the vision model (JSON or CSV) made by the
    service, damaged on disk (:func:`damage`) under a new name, then asked to answer a batch."""
    base = {}
    for fmt in ("json", "csv"):
        rows = b'{"batch_size": 8, "image_size": 224}\n{"batch_size": 64, "image_size": 512}\n'
        client.post("/predict/table/" + PATH, files={"trace_file": ("t.jsonl", rows)},
                    data={"table_name": f"base.{fmt}", "format": fmt, "confidence_level": "0.9"}).raise_for_status()
        base[fmt] = (folder / f"base.{fmt}").read_bytes()
    made = itertools.count()

    def make(rng: random.Random) -> tuple[str, str]:
        fmt = rng.choice(["json", "csv"])
        name = f"damaged{next(made)}.{fmt}"
        (folder / name).write_bytes(damage(base[fmt], rng, rng.choice([1, 2, 5])))
        return "/predict/batch/" + PATH, json.dumps({"trace": [TRACE], "lookup_table": True,
                                                     "lookup_table_name": name, "quantiles": [0.5, 0.9]})

    return make


def wrong_in(answer: Any, where: str = "") -> list[str]:
    """What is wrong in a successful answer: numbers that are not finite, crossing or negative
    quantiles, a null among quantiles or in place of an expect (the service writes a NaN as null)."""
    found = []
    if isinstance(answer, float) and not math.isfinite(answer):
        found.append(f"{where}: {answer}")
    elif isinstance(answer, dict):
        for key in ("quantile_predictions", "total_quantiles", "interval", "total_interval"):
            if isinstance(answer.get(key), list) and None in answer[key]:
                found.append(f"{where}.{key} holds a null: {answer[key]}")
        if answer.get("status") == "success" and "expect" in answer and answer["expect"] is None:
            found.append(f"{where}.expect is null")
        for key in ("quantile_predictions", "total_quantiles"):
            q = answer.get(key)
            if isinstance(q, list) and all(isinstance(v, (int, float)) for v in q):
                if any(b < a for a, b in zip(q, q[1:])):
                    found.append(f"{where}.{key} crosses: {q}")
                if any(v < 0 for v in q):
                    found.append(f"{where}.{key} is negative: {q}")
        for key, value in answer.items():
            found += wrong_in(value, f"{where}.{key}")
    elif isinstance(answer, list):
        for i, value in enumerate(answer):
            found += wrong_in(value, f"{where}[{i}]")
    return found


def llm_identity(k: int) -> dict[str, str]:
    return {"model_type": "llm", "model_name": f"m{k}", "hardware": "h100", "software_name": "vllm",
            "software_version": "1"}


def llm_path(k: int) -> str:
    return "/".join(llm_identity(k).values())


def llm_traces(n: int, rng: random.Random, factor: float = 1.0) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        i, o = rng.randint(16, 2048), rng.randint(8, 512)
        out.append({"input_tokens": i, "output_tokens": o,
                    "runtime_ms": (20 + 0.02 * i + 12 * o) * factor * math.exp(rng.gauss(0, 0.2))})
    return out


# The observation logs rotate every 64 KB (about 150 observations), three files kept: the
# workers follow each other's appends across rotations.
CONCURRENT_ENV = {**SERVICE_ENV, "PREDICTOR_AUTO_RETRAIN": "true", "PREDICTOR_RETRAIN_MIN_OBSERVATIONS": "60",
                  "PREDICTOR_KEEP_VERSIONS": "3", "PREDICTOR_DRIFT_MIN_OBSERVATIONS": "20",
                  "PREDICTOR_OBSERVATIONS_MAX_FILE_MB": "0.0625", "PREDICTOR_OBSERVATIONS_MAX_FILES": "3",
                  # Each worker preloads the models at its start (none at the first, both at the
                  # restart, a killed worker's successor its own): /ready answers for both.
                  "PREDICTOR_PRELOAD_MODELS": "true"}
# Operations and how often each is drawn.
OPERATIONS = {"single": 10, "batch": 10, "queues": 5, "observe": 15, "train": 2, "retrain": 3, "delete version": 1,
              "delete model": 0.3, "models": 3, "metrics": 2, "accuracy": 3, "model": 3, "make table": 1,
              "table batch": 3, "tables": 1, "delete table": 0.3, "group training": 0.5, "job": 2, "evaluate": 2,
              "evaluate table": 1, "ready": 2}


def one_operation(client: httpx.Client, rng: random.Random, jobs: list[str]) -> tuple[str, httpx.Response | None]:
    """One random request; ``jobs``: the background trainings' job ids (shared by the clients)."""
    k = rng.randrange(2)
    op = rng.choices(list(OPERATIONS), list(OPERATIONS.values()))[0]
    path = llm_path(k)
    if op == "single":
        return op, client.post(f"/predict/single/{path}", json={"trace": llm_traces(1, rng)[0]})
    if op == "batch":
        return op, client.post(f"/predict/batch/{path}", json={"trace": llm_traces(rng.choice([1, 20, 200]), rng)})
    if op == "queues":
        return op, client.post(f"/predict/queues/{path}",
                               json={"queues": {"a": llm_traces(5, rng), "b": llm_traces(3, rng)}})
    if op == "observe":  # now and then 1.5x slower: drift, and retrainings
        return op, client.post("/observe", json={"model": llm_identity(k),
                                                 "traces": llm_traces(20, rng, rng.choice([1.0, 1.5]))})
    if op == "train":
        return op, client.post("/train", json={"config": {"model": llm_identity(k),
                                                          "traces": llm_traces(rng.choice([100, 300]), rng)}})
    if op == "retrain":
        return op, client.post(f"/models/{path}/retrain")
    if op == "delete version":
        model = client.get(f"/models/{path}")
        versions = [v["version"] for v in model.json()["model"]["version_details"]] if model.status_code == 200 else []
        if not versions:
            return op, None
        return op, client.delete(f"/models/{path}/versions/{rng.choice(versions)}")
    if op == "delete model":
        return op, client.delete(f"/models/{path}")
    if op == "make table":  # rewritten over the one of the same name
        rows = "".join(json.dumps({k: v for k, v in t.items() if k != "runtime_ms"}) + "\n" for t in llm_traces(5, rng))
        return op, client.post(f"/predict/table/{path}", files={"trace_file": ("t.jsonl", rows.encode())},
                               data={"table_name": f"t{k}.json", "confidence_level": "0.9"})
    if op == "table batch":
        return op, client.post(f"/predict/batch/{path}", json={"trace": llm_traces(3, rng), "lookup_table": True,
                                                              "lookup_table_name": f"t{k}.json"})
    if op == "tables":
        return op, client.get("/tables")
    if op == "evaluate":  # the serving version, or one named (deleted meanwhile: a 404)
        body: dict[str, Any] = {"traces": llm_traces(rng.choice([1, 20, 300]), rng, rng.choice([1.0, 1.5]))}
        if rng.random() < 0.3:
            body["version"] = rng.randint(1, 12)
        return op, client.post(f"/models/{path}/evaluate", json=body)
    if op == "evaluate table":
        return op, client.post(f"/models/{path}/evaluate", json={"traces": llm_traces(20, rng), "lookup_table": True,
                                                                "lookup_table_name": f"t{k}.json"})
    if op == "ready":
        return op, client.get("/ready")
    if op == "group training":  # both models in one background job, one group each
        traces = [dict(t, model_name=f"m{i % 2}") for i, t in enumerate(llm_traces(400, rng))]
        model = {key: value for key, value in llm_identity(0).items() if key != "model_name"}
        r = client.post("/train", params={"background": "true"},
                        json={"config": {"model": model, "group_by": ["model_name"], "traces": traces}})
        if r.status_code == 202:
            jobs.append(r.json()["job_id"])
        return op, r
    if op == "job":
        if not jobs:
            return op, None
        r = client.get(f"/train/jobs/{rng.choice(jobs)}")
        return op, r
    if op == "delete table":
        return op, client.delete(f"/tables/t{k}.json")
    if op == "models":
        return op, client.get("/models")
    if op == "metrics":
        return op, client.get("/metrics")
    if op == "accuracy":
        return op, client.get(f"/models/{path}/accuracy")
    return op, client.get(f"/models/{path}")


def stored_versions_answer(client: httpx.Client, label: str) -> list[tuple[str, str, str]]:
    """Findings: each stored version of the two models must answer a prediction, and a
    prediction that names no version must be the newest one's, the same numbers, from
    whichever worker answers (a stale cache or registry in one would answer an older one's)."""
    findings = []
    trace = {"input_tokens": 100, "output_tokens": 50}
    for k in range(2):
        path = llm_path(k)
        model = client.get(f"/models/{path}")
        if model.status_code == 404:
            print(f"{label}: {path} deleted")
            continue
        versions = [v["version"] for v in model.json()["model"]["version_details"]]
        answers = {}
        for version in versions:
            body = {"trace": trace, "version": version}
            r = client.post(f"/predict/single/{path}", json=body)
            if r.status_code != 200:
                findings.append((path, json.dumps(body), f"{label}: version {version} answered {r.status_code}: "
                                                         f"{r.text[:200]}"))
            else:
                answers[version] = r.json()["results"]["quantile_predictions"]
        # Several times, on fresh connections: the two workers take them in turn, as it falls.
        for _ in range(8):
            r = httpx.post(f"{client.base_url}/predict/single/{path}", json={"trace": trace}, timeout=300)
            result = r.json().get("results", {}) if r.status_code == 200 else {}
            if r.status_code != 200 or result.get("model_version") != max(versions) or \
                    result.get("quantile_predictions") != answers.get(max(versions)):
                findings.append((path, json.dumps({"trace": trace}), f"{label}: answered {r.status_code}, version "
                                 f"{result.get('model_version')} of {versions}: {r.text[:200]}"))
        print(f"{label}: {path} versions {versions} each answered; the newest answers without one named")
    return findings


def jobs_ended(client: httpx.Client, jobs: list[str], wait: float = 300.0) -> list[tuple[str, str, str]]:
    """Findings: a background training still queued or running ``wait`` seconds after the
    load stopped, or one that failed without a status code and message."""
    findings: list[tuple[str, str, str]] = []
    deadline = time.monotonic() + wait
    ended: dict[str, dict[str, Any]] = {}
    while len(ended) < len(jobs) and time.monotonic() < deadline:
        for job in jobs:
            if job not in ended:
                record = client.get(f"/train/jobs/{job}").json()
                if record.get("status") in ("succeeded", "failed"):
                    ended[job] = record
        time.sleep(0.5)
    outcomes: dict[str, int] = {}
    for job in jobs:
        record = ended.get(job)
        if record is None:
            findings.append((f"/train/jobs/{job}", "", f"still not ended {wait:g} s after the load"))
            continue
        error = record.get("error") or {}
        outcome = record["status"] + (f" ({error.get('status_code')}: {str(error.get('message'))[:60]})"
                                      if record["status"] == "failed" else "")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if record["status"] == "failed" and not (error.get("status_code") and error.get("message")):
            findings.append((f"/train/jobs/{job}", "", f"failed without a status code and message: {record}"))
    print(f"{len(jobs)} background trainings: " + "; ".join(f"{o}: {n}" for o, n in sorted(outcomes.items())))
    return findings


def ready_within(client: httpx.Client, wait: float, label: str) -> list[tuple[str, str, str]]:
    """Findings: ``/ready`` not 200 ``ready`` on eight fresh connections (either worker)
    within ``wait`` seconds, or a 503 without a message and ``Retry-After`` meanwhile."""
    deadline, findings, seen = time.monotonic() + wait, [], 0
    while time.monotonic() < deadline:
        answers = [httpx.get(f"{client.base_url}/ready", timeout=30) for _ in range(8)]
        for r in answers:
            if r.status_code == 503 and not (r.json().get("message") and r.headers.get("retry-after")):
                findings.append(("/ready", label, f"a 503 without a message or Retry-After: {r.text[:200]}"))
        seen += sum(r.status_code == 503 for r in answers)
        if all(r.status_code == 200 and r.json().get("status") == "ready" for r in answers):
            print(f"{label}: /ready 200 on 8 connections ({seen} 503 before)")
            return findings
        time.sleep(0.5)
    return findings + [("/ready", label, f"not ready within {wait:g} s: {[r.status_code for r in answers]}")]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux: /proc/PID/task/*/children)."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            out += [child, *descendants(child)]
    return out


def kill_now_and_then(root: int, every: float, stop: float, rng: random.Random, killed: list[str]) -> None:
    """SIGKILL one process below ``root`` (a server worker, a training or retraining worker)
    every ``every`` seconds until ``stop``: what the out-of-memory killer, or a crash, does."""
    import os
    import signal

    while time.monotonic() + every < stop:
        time.sleep(every)
        below = descendants(root)
        if not below:
            continue
        pid = rng.choice(below)
        try:
            name = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:60]
            os.kill(pid, signal.SIGKILL)
            killed.append(name)
        except OSError:
            pass


def concurrent(seconds: float, seed: int, kill_every: float = 0.0) -> list[tuple[str, str, str]]:
    """The ``--concurrent`` load; with ``kill_every``, a process of the service SIGKILLed that
    often, and then answers cut short, 5xx and errors in the log are expected, not findings:
    what must hold is what was stored (every version answers, the newest by default, every
    training job ends), there and after a restart."""
    findings: list[tuple[str, str, str]] = []
    codes: dict[tuple[str, int], int] = {}
    lock = threading.Lock()
    jobs: list[str] = []
    killed: list[str] = []
    cut_short = 0
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile("w+") as log:
        server = Server(Path(tmp), workers=2, env=CONCURRENT_ENV, output=log)
        try:
            base = f"http://127.0.0.1:{server.port}"
            with httpx.Client(base_url=base, timeout=300) as client:
                for k in range(2):
                    client.post("/train", json={"config": {"model": llm_identity(k),
                                                           "traces": llm_traces(300, random.Random(k))}}
                                ).raise_for_status()
            stop = time.monotonic() + seconds

            def run(worker_seed: int) -> None:
                nonlocal cut_short
                rng = random.Random(worker_seed)
                with httpx.Client(base_url=base, timeout=300) as client:
                    while time.monotonic() < stop:
                        try:
                            op, r = one_operation(client, rng, jobs)
                        except httpx.HTTPError as exc:
                            with lock:
                                cut_short += 1
                                if not kill_every:
                                    findings.append(("?", "", f"no answer: {exc!r}"))
                            continue
                        if r is None:
                            continue
                        with lock:
                            codes[(op, r.status_code)] = codes.get((op, r.status_code), 0) + 1
                            if r.status_code >= 500 and not kill_every:
                                findings.append((op, "", f"{r.status_code}: {r.text[:200]}"))

            threads = [threading.Thread(target=run, args=(seed * 100 + i,)) for i in range(6)]
            if kill_every:
                threads.append(threading.Thread(target=kill_now_and_then, args=(
                    server.proc.pid, kill_every, stop, random.Random(seed), killed)))
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            print(f"{sum(codes.values())} requests in {seconds:g} s: "
                  + ", ".join(f"{op} {code}: {n}" for (op, code), n in sorted(codes.items()))
                  + f"; {cut_short} cut short", flush=True)
            if kill_every:
                print(f"{len(killed)} processes killed: " + "; ".join(sorted(set(killed))), flush=True)
                time.sleep(10)  # uvicorn starts a fresh worker for each one killed
            with httpx.Client(base_url=base, timeout=300) as client:
                findings += ready_within(client, 60.0, "after the load")
                findings += jobs_ended(client, jobs)
                time.sleep(3)  # the retrainings under way land
                findings += stored_versions_answer(client, "after the load")
        finally:
            server.stop()
        restarted = Server(Path(tmp), workers=2, env=CONCURRENT_ENV, output=log)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{restarted.port}", timeout=300) as client:
                findings += ready_within(client, 60.0, "restarted")
                findings += stored_versions_answer(client, "restarted")
        finally:
            restarted.stop()
        log.seek(0)
        lines = log.read().splitlines()
        said = [line for line in lines if line.startswith(("WARNING", "ERROR", "CRITICAL", "Traceback"))]
        tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
        for i in tracebacks[:3]:  # where each ended: its last lines
            end = next((j for j in range(i + 1, len(lines)) if lines[j] and not lines[j].startswith(" ")), i)
            print("a traceback in the service's log, ending:\n    " + "\n    ".join(lines[max(i, end - 4):end + 1]))
    # What the service warned of, each kind once (the paths differ): an operator reads these.
    kinds = sorted({" ".join(line.split()[:6]) for line in said})
    print(f"the service's log: {len(said)} warnings or errors" + "".join(f"\n    {k} ..." for k in kinds))
    # Nothing here is an operator's error to look into: one logged is a false alarm, or a bug
    # (unless processes were killed: then the service says so).
    if not kill_every:
        findings += [("log", "", line) for line in said if not line.startswith("WARNING")]
    return findings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--requests", type=int, default=10_000, help="of each JSON kind (default 10,000)")
    ap.add_argument("--files", type=int, default=1_000, help="trainings and tables from damaged files (default 1,000)")
    ap.add_argument("--tables", type=int, default=400, help="lookups in tables damaged on disk (default 400)")
    ap.add_argument("--paths", type=int, default=3_000, help="requests with odd paths and queries (default 3,000)")
    ap.add_argument("--evaluate", type=int, default=2_000, help="evaluations of traces at the edges (default 2,000)")
    ap.add_argument("--bodies", type=int, default=60, help="bodies at and past each route's bound (default 60)")
    ap.add_argument("--concurrent", type=float, metavar="SECONDS",
                    help="only: six clients at once on two workers for this long (see above)")
    ap.add_argument("--cli", type=int, metavar="RUNS",
                    help="only: this many commands of the command line on damaged trace files (see cli())")
    ap.add_argument("--kill-every", type=float, default=0.0, metavar="SECONDS",
                    help="with --concurrent: SIGKILL one of the service's processes this often")
    args = ap.parse_args(argv)
    if args.concurrent:
        return report(concurrent(args.concurrent, args.seed, args.kill_every))
    if args.cli:
        return report(cli(args.cli, args.seed))
    rng = random.Random(args.seed)
    findings: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile("w+") as log:
        server = Server(Path(tmp), env=SERVICE_ENV, output=log)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=120) as client:
                with open(EXAMPLES / "train_vision.json", "rb") as config, \
                        open(EXAMPLES / "data" / "h100_resnet50_vision.jsonl", "rb") as traces:
                    trained = client.post("/train", files={"config": config, "trace_file": traces})
                if trained.status_code != 200:
                    raise RuntimeError(f"training the example failed: {trained.text}")
                kinds = (("mangled", mangled, args.requests), ("edge", edge, args.requests),
                         ("files", files, args.files), ("tables", damaged_tables(client, Path(tmp) / "tables"), args.tables),
                         ("paths", paths, args.paths), ("evaluate", evaluations(client), args.evaluate),
                         ("bodies", bodies(server.port), args.bodies))
                for name, make, count in kinds:
                    codes: dict[int, int] = {}
                    t0 = time.perf_counter()
                    for i in range(count):
                        path, body = make(rng)
                        # The kind and number name the request: the same seed draws it again.
                        raw = f"[{name} {i}] " + (body if isinstance(body, str) else repr(
                            {k: v if k not in ("content", "raw") else f"<{body['size']:,} bytes>"
                             for k, v in body.items()})[:300])
                        try:
                            if isinstance(body, str):
                                r = client.post(path, content=body, headers={"content-type": "application/json"})
                            elif "raw" in body:
                                r = raw_exchange(body["port"], body["method"], path, body["raw"])
                            else:
                                r = client.request(body.get("method", "POST"), path,
                                                   **{k: v for k, v in body.items() if k not in ("method", "expect", "size")})
                        except httpx.HTTPError as exc:
                            findings.append((path, raw, f"no answer: {exc!r}"))
                            continue
                        codes[r.status_code] = codes.get(r.status_code, 0) + 1
                        expect = body.get("expect") if isinstance(body, dict) else None
                        if expect == 413 and r.status_code != 413 or expect == "not 413" and r.status_code == 413:
                            findings.append((path, raw, f"{r.status_code}, not {expect}: {r.text[:200]}"))
                        elif expect == 413 and r.headers.get("content-type") == "application/json" \
                                and r.json().get("field") != "body":
                            findings.append((path, raw, f"a 413 naming {r.json().get('field')!r}, not the body"))
                        elif isinstance(body, dict) and body.get("closes") and r.headers.get("connection") != "close":
                            findings.append((path, raw, "a body refused unread after Expect: 100-continue, "
                                                        "the connection kept"))
                        json_answer = r.headers.get("content-type", "").startswith("application/json")
                        if r.request.method == "HEAD" or (r.status_code < 400 and not json_answer):
                            # No body to read, or a page or a table's CSV download.
                            if r.status_code >= 500:
                                findings.append((path, raw, f"{r.request.method}: {r.status_code}"))
                            continue
                        try:
                            answer = r.json()
                        except ValueError:
                            findings.append((path, raw, f"{r.status_code}, not JSON: {r.text[:200]}"))
                            continue
                        if r.status_code >= 500:
                            findings.append((path, raw, f"{r.status_code}: {r.text[:200]}"))
                        elif r.status_code >= 400 and not (isinstance(answer, dict) and answer.get("message")
                                                           and isinstance(answer.get("field"), str)):
                            # Bad input is answered with what is wrong and where (the field).
                            findings.append((path, raw, f"{r.status_code} naming no field: {r.text[:200]}"))
                        elif r.status_code == 200:
                            findings += [(path, raw, wrong) for wrong in wrong_in(answer)]
                            if path.endswith("/evaluate") and isinstance(body, str):
                                findings += [(path, raw, wrong) for wrong in wrong_in_evaluation(answer, body)]
                    print(f"{name}: {count} requests in {time.perf_counter() - t0:.0f} s, answers "
                          + ", ".join(f"{code}: {n}" for code, n in sorted(codes.items())), flush=True)
                    ready = client.get("/ready")
                    if ready.status_code != 200 or ready.json().get("status") != "ready":
                        findings.append(("/ready", f"after {name}", f"{ready.status_code}: {ready.text[:200]}"))
                for route in ("/health", "/models"):
                    if client.get(route).status_code != 200:
                        findings.append((route, "", "the service no longer answers"))
        finally:
            server.stop()
        findings += log_findings(log)
    return report(findings)


def log_findings(log: Any) -> list[tuple[str, str, str]]:
    """The service's log (uvicorn's at "warning", and what the processes print): its
    warnings listed, each kind once; an error, a traceback or a Python warning (numpy's
    "RuntimeWarning: overflow ..." of a computation that was to be silent) is a finding."""
    import re

    log.seek(0)
    lines = log.read().splitlines()
    warned = sorted({" ".join(line.split()[:6]) for line in lines if line.startswith("WARNING")})
    print(f"the service's log: {len(lines)} lines" + "".join(f"\n    {k} ..." for k in warned))
    return [("log", "", line) for line in lines
            if line.startswith(("ERROR", "CRITICAL", "Traceback")) or re.search(r"\b\w+Warning: ", line)]


def report(findings: list[tuple[str, str, str]]) -> int:
    for path, raw, what in findings[:20]:
        print(f"FINDING {path} {raw[:300]}\n    {what}")
    print(f"findings: {len(findings)}")
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
