"""Random requests at the live service: a 5xx, a 4xx that does not name the field at fault,
an answer that is not JSON, a number that is not finite, a crossing or negative quantile, or
a service that stops answering is a finding.

The service (uvicorn, a fresh data directory) is trained on the H100 vision example, then
sent five kinds of request, each drawn from a seeded generator:

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
  ``HEAD`` answer must only not be a 5xx.

    uv run python benchmarks/fuzz_api.py [--seed 0] [--requests 10000] [--files 1000] [--tables 400] [--paths 3000]

``--concurrent SECONDS`` does something else: two LLM models on a service of two workers
(``serve --workers 2``, automatic retraining after 60 observations, 3 versions kept, the
observation logs rotated every 64 KB), and six clients that for that long predict (single,
batch, queues), observe, train (now and then both models in one background ``group_by``
job, whose status they read), retrain, delete versions and now and then a whole model,
make, read, answer from and delete lookup tables, and read the models, their accuracy and
``/metrics``, all at random. A 5xx or no answer is a finding; so is an error in the
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
    ("/observe", {"model": IDENTITY, "traces": [dict(TRACE, runtime_ms=4.0)]}),
    ("/predict/table/" + PATH, {"trace": [TRACE]}),
    ("/train", {"config": {"model": IDENTITY, "traces": [dict(TRACE, runtime_ms=4.0 + i % 3) for i in range(40)]}}),
]
ODD = [None, True, False, 0, -1, 1e308, -1e308, 1e-320, "NaN", "inf", "", "x" * 5000, "\u0000", "é", [], {}, [[]],
       [None], {"a": None}, 2**64, -2**63, 0.5, "1e5", [1, 2, 3], {"batch_size": []}, "../../etc/passwd", 1.5]
FIELDS = ["quantiles", "trace", "version", "lookup_table", "lookup_table_name", "confidence_level", "elapsed_ms",
          "first_of_shape", "group_by", "features", "params", "total_distribution", "shared_factor", "extra"]
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
          ("PUT", "/models/{id}"), ("GET", "/{n}")]


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
    elif rng.random() < 0.2:  # a body where the route takes none (a deletion's "version", say)
        body["json"] = rng.choice([{}, {"version": 1}, [1], "x", None, {"": 0}])
    return path, body


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
    """What is wrong in a successful answer: numbers that are not finite, crossing or negative quantiles."""
    found = []
    if isinstance(answer, float) and not math.isfinite(answer):
        found.append(f"{where}: {answer}")
    elif isinstance(answer, dict):
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
                  "PREDICTOR_OBSERVATIONS_MAX_FILE_MB": "0.0625", "PREDICTOR_OBSERVATIONS_MAX_FILES": "3"}
# Operations and how often each is drawn.
OPERATIONS = {"single": 10, "batch": 10, "queues": 5, "observe": 15, "train": 2, "retrain": 3, "delete version": 1,
              "delete model": 0.3, "models": 3, "metrics": 2, "accuracy": 3, "model": 3, "make table": 1,
              "table batch": 3, "tables": 1, "delete table": 0.3, "group training": 0.5, "job": 2}


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
                findings += jobs_ended(client, jobs)
                time.sleep(3)  # the retrainings under way land
                findings += stored_versions_answer(client, "after the load")
        finally:
            server.stop()
        restarted = Server(Path(tmp), workers=2, env=CONCURRENT_ENV, output=log)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{restarted.port}", timeout=300) as client:
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
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp), env=SERVICE_ENV)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=120) as client:
                with open(EXAMPLES / "train_vision.json", "rb") as config, \
                        open(EXAMPLES / "data" / "h100_resnet50_vision.jsonl", "rb") as traces:
                    trained = client.post("/train", files={"config": config, "trace_file": traces})
                if trained.status_code != 200:
                    raise RuntimeError(f"training the example failed: {trained.text}")
                kinds = (("mangled", mangled, args.requests), ("edge", edge, args.requests),
                         ("files", files, args.files), ("tables", damaged_tables(client, Path(tmp) / "tables"), args.tables),
                         ("paths", paths, args.paths))
                for name, make, count in kinds:
                    codes: dict[int, int] = {}
                    t0 = time.perf_counter()
                    for i in range(count):
                        path, body = make(rng)
                        # The kind and number name the request: the same seed draws it again.
                        raw = f"[{name} {i}] " + (body if isinstance(body, str) else repr(body)[:300])
                        try:
                            if isinstance(body, str):
                                r = client.post(path, content=body, headers={"content-type": "application/json"})
                            else:
                                r = client.request(body.get("method", "POST"), path,
                                                   **{k: v for k, v in body.items() if k != "method"})
                        except httpx.HTTPError as exc:
                            findings.append((path, raw, f"no answer: {exc!r}"))
                            continue
                        codes[r.status_code] = codes.get(r.status_code, 0) + 1
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
                    print(f"{name}: {count} requests in {time.perf_counter() - t0:.0f} s, answers "
                          + ", ".join(f"{code}: {n}" for code, n in sorted(codes.items())), flush=True)
                for route in ("/health", "/models"):
                    if client.get(route).status_code != 200:
                        findings.append((route, "", "the service no longer answers"))
        finally:
            server.stop()
    return report(findings)


def report(findings: list[tuple[str, str, str]]) -> int:
    for path, raw, what in findings[:20]:
        print(f"FINDING {path} {raw[:300]}\n    {what}")
    print(f"findings: {len(findings)}")
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
