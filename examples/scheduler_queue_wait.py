"""Pick the instance whose queue finishes first, at a chosen quantile.

A scheduler placing a new task asks, for every candidate instance, how long
until that instance's queue (plus the new task) drains (a model's instances
in one request), and takes the one with the lowest p90 completion time: a
tail-aware choice that a mean-only estimate cannot make. The task an instance
is running counts by its time left: its trace states ``elapsed_ms``, how long
it has run. A scheduler with a latency objective asks instead how likely the
task is done within it on each instance (``deadline_ms``), and may refuse a task
that no instance is likely to finish in time. An instance whose running task
has run past every runtime the model knows (``stuck``: its time left counts 0,
so its wait says too little) is not chosen, and its chance is 0; where every
instance is stuck, none is chosen and the task waits for the scheduler's next try.
Once the task is placed, the tasks of that queue likely to miss the objective are
named by their completion times (``completion_times``: when each queued task is done).

    uv run python examples/train_seed_example_model.py [http://localhost:8200]   # its model, first
    uv run python examples/scheduler_queue_wait.py [http://localhost:8200]
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

from swarmpilot_predictor.client import PredictorClient, QueueWaitEstimate


@dataclass
class Instance:
    name: str
    identity: dict[str, str]  # which runtime model describes this instance
    queue: list[dict] = field(default_factory=list)  # traces of the tasks waiting on it
    running: dict | None = None  # the trace of the task it is running, if any
    started: float = 0.0  # when that task started, time.monotonic()

    def tasks_left(self) -> list[dict]:
        """The queue, after the running task stated with the milliseconds it has run."""
        if self.running is None:
            return list(self.queue)
        return [{**self.running, "elapsed_ms": 1000.0 * (time.monotonic() - self.started)}, *self.queue]


def choose_instance(client: PredictorClient, instances: list[Instance], task: dict,
                    level: float = 0.9) -> tuple[Instance | None, dict[str, float]]:
    """The instance with the lowest ``level`` quantile of completion time for ``task``: each
    instance's queue with the task at its end, the instances of a model in one request
    (one named by a ``*`` pattern alone: its traces may resolve it to another model).
    None where every instance is stuck (each scored infinite): no wait says when any
    will take the task, and placing it on the first would put it behind a hung task."""
    by_model: dict[tuple, list[Instance]] = {}
    for inst in instances:
        named = "*" not in inst.identity.values()
        by_model.setdefault(tuple(sorted(inst.identity.items())) if named else (inst.name,), []).append(inst)
    scores: dict[str, float] = {}
    for group in by_model.values():
        # shared_factor: the model's own error about the runtimes' level, and how far that
        # level moves between stretches of a run, are one error for the whole queue; without
        # it a long queue's tail is too sure (README, Modelling).
        waits: dict[str, QueueWaitEstimate] = client.queue_waits(
            group[0].identity, {inst.name: [*inst.tasks_left(), task] for inst in group},
            quantiles=[0.5, level], shared_factor=True)
        scores.update({name: math.inf if wait.stuck else wait.quantile(level) for name, wait in waits.items()})
    best = min(instances, key=lambda inst: scores[inst.name])
    return (best if math.isfinite(scores[best.name]) else None), scores


def chances_within(client: PredictorClient, instances: list[Instance], task: dict, deadline_ms: float) -> dict[str, float]:
    """Per instance, the probability that ``task``, put at the end of its queue, is done within
    ``deadline_ms`` from now: that the queue with the task drains by then."""
    chances: dict[str, float] = {}
    for inst in instances:  # (instances of one model may go in one request, as choose_instance does)
        waits = client.queue_waits(inst.identity, {inst.name: [*inst.tasks_left(), task]}, quantiles=[0.5],
                                   shared_factor=True, deadline_ms=deadline_ms)
        wait = waits[inst.name]
        chances[inst.name] = 0.0 if wait.stuck else wait.deadline_probability or 0.0
    return chances


def tasks_at_risk(client: PredictorClient, inst: Instance, deadline_ms: float, below: float = 0.5) -> list[int]:
    """The places in ``inst``'s queue (its running task first) of the tasks less than ``below``
    likely to be done within ``deadline_ms`` from now, each counting the tasks ahead of it:
    candidates to move to another instance, or to tell their clients."""
    wait = client.queue_wait(inst.identity, inst.tasks_left(), quantiles=[0.5], shared_factor=True,
                             deadline_ms=deadline_ms, completion_times=True)
    return [done.index for done in wait.completion or [] if (done.deadline_probability or 0.0) < below]


def main(url: str) -> None:
    identity = {"model_type": "gpt-3.5-turbo", "model_name": "turbo", "hardware": "A100",
                "software_name": "vllm", "software_version": "0.1.0"}
    instances = [
        Instance("a100-0", identity, [{"input_tokens": 500, "output_tokens": 400}] * 3,
                 running={"input_tokens": 800, "output_tokens": 600}, started=time.monotonic() - 2.0),
        Instance("a100-1", identity, [{"input_tokens": 100, "output_tokens": 50}] * 6),
        Instance("a100-2", identity, []),
    ]
    task = {"input_tokens": 300, "output_tokens": 200}
    slo_ms = 20_000.0
    with PredictorClient(url) as client:
        best, scores = choose_instance(client, instances, task)
        chances = chances_within(client, instances, task, slo_ms)
        for name, p90 in scores.items():
            print(f"{name}: p90 completion {p90:.1f} ms, done within {slo_ms:.0f} ms with probability {chances[name]:.3f}")
        if best is None:
            print("every instance's running task is stuck: hold the task and look at the instances")
            return
        print(f"place the task on {best.name}")
        best.queue.append(task)
        late = tasks_at_risk(client, best, slo_ms)
        print(f"{best.name}: tasks at places {late} are less than even odds to be done within {slo_ms:.0f} ms"
              if late else f"{best.name}: every task is likelier than not done within {slo_ms:.0f} ms")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8200")
