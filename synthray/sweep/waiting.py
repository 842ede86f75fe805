"""One line when the sweep waits for a resource that no node has and no node is starting.

A cluster whose GPU nodes never start (a cloud GPU quota of 0, no node type with the asked-for label, a local Ray
that cannot add one) leaves a sweep's GPU tasks pending forever, and Ray says nothing the sweep's console shows.
`watch` starts a daemon thread on the sweep's driver that polls the GCS every `interval` seconds: the pending
resource requests (tasks, actors and placement groups, with their label selectors) and the autoscaler's launches.
A request that no alive node could hold (its resources or its labels), while no node is being launched, for more
than `minutes`, gets one warning line naming what it asks for and the likely cause. Once per request shape.

It reads the GCS directly (ray.autoscaler.v2.sdk), so it works without the dashboard, on a local Ray as on a cluster.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("synthray")

POLL_S = 30.0
QUOTA_HINT = "README: Before your first `ray up`"
ALIVE = ("RUNNING", "IDLE")  # autoscaler_pb2.NodeStatus names of nodes that can take work

Shape = tuple[tuple[tuple[str, float], ...], tuple[tuple[str, str, tuple[str, ...]], ...]]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _request_shape(request: Any) -> Shape:
    """(resources, label constraints) of an autoscaler ResourceRequest, hashable; Ray's internal resources dropped
    (node:<ip> affinities, placement-group bundle resources)."""
    from ray.core.generated import common_pb2

    resources = tuple(sorted((k, float(v)) for k, v in request.resources_bundle.items()
                             if not k.startswith("node:") and "_group_" not in k and v))
    constraints = []
    for selector in request.label_selectors[:1]:  # the first is the selector; later ones are fallbacks
        for c in selector.label_constraints:
            op = common_pb2.LabelSelectorOperator.Name(c.operator)
            values = tuple(sorted(c.label_values, key=lambda v: (len(v), v)))
            constraints.append((c.label_key, "!in" if op.endswith("NOT_IN") else "in", values))
    return resources, tuple(sorted(constraints))


def describe(shape: Shape) -> str:
    """`{GPU: 1, CPU: 1, synthray.io/gpu-memory-gb in(80,141)}`: what a pending request asks for."""
    resources, constraints = shape
    parts = [f"{k}: {_number(v)}" for k, v in sorted(resources, key=lambda kv: (kv[0] != "GPU", kv[0]))]
    parts += [f"{key} {op}({','.join(values)})" for key, op, values in constraints]
    return "{" + ", ".join(parts) + "}"


def _fits(shape: Shape, node: Any) -> bool:
    """Whether an alive node could ever hold the request: its total resources and its labels (not what is free)."""
    resources, constraints = shape
    total = dict(node.total_resources)
    if any(total.get(k, 0.0) + 1e-9 < v for k, v in resources):
        return False
    labels = {**dict(node.labels), **dict(node.dynamic_labels)}
    for key, op, values in constraints:
        if (labels.get(key) in values) != (op == "in"):
            return False
    return True


class WaitWatcher:
    """Polls the GCS at `gcs_address`; `say` gets each warning line (default: the synthray logger, at WARNING, which
    the sweep's console shows and its log keeps)."""

    def __init__(self, gcs_address: str, minutes: float, interval: float = POLL_S,
                 say: Callable[[str], None] | None = None):
        self.gcs_address, self.minutes, self.interval = gcs_address, float(minutes), float(interval)
        self.say = say or log.warning
        self.since: dict[Shape, float] = {}  # an unplaceable request shape -> when it was first seen so
        self.warned: set[Shape] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> WaitWatcher:
        self._thread = threading.Thread(target=self._loop, name="synthray-wait-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                for line in self.check():
                    self.say(line)
            except Exception as err:  # noqa: BLE001 - a watcher must never end the sweep; a GCS hiccup is retried
                log.debug("wait watcher: %s", err)

    def check(self, now: float | None = None) -> list[str]:
        """One poll: the warning lines due now (each request shape at most once per watcher)."""
        from ray._raylet import GcsClient
        from ray.autoscaler.v2.sdk import get_cluster_resource_state, get_cluster_status
        from ray.core.generated import autoscaler_pb2

        now = time.time() if now is None else now
        state = get_cluster_resource_state(GcsClient(self.gcs_address))
        nodes = [n for n in state.node_states if autoscaler_pb2.NodeStatus.Name(n.status) in ALIVE]
        requests = [r.request for r in state.pending_resource_requests]
        requests += [req for gang in state.pending_gang_resource_requests for req in gang.requests]
        unplaceable = {shape for shape in map(_request_shape, requests) if not any(_fits(shape, n) for n in nodes)}
        self.since = {shape: self.since.get(shape, now) for shape in unplaceable}
        due = [s for s, t in self.since.items() if now - t >= self.minutes * 60 and s not in self.warned]
        if not due:
            return []
        status = get_cluster_status(self.gcs_address)
        if status.pending_launches or status.pending_nodes:
            return []  # a node is on its way; it may well hold the request
        lines = []
        for shape in due:
            self.warned.add(shape)
            waited = now - self.since[shape]
            took = f"{waited / 60:.0f} min" if waited >= 60 else f"{waited:.0f} s"
            lines.append(f"waiting {took} for {describe(shape)}: no node of the cluster has it and none has "
                         f"started; {likely_cause(shape, status)}")
        return lines


def likely_cause(shape: Shape, status: Any) -> str:
    """The likely reason no node starts: the autoscaler's last failed launch, else a GPU quota or the cluster file."""
    failed = sorted(status.failed_launches, key=lambda f: f.failed_ts_s or 0)
    if failed:
        last = failed[-1]
        detail = (last.details or "no detail").strip().splitlines()[0]
        return f"the last launch of {last.ray_node_type_name} failed: {detail} ({QUOTA_HINT})"
    resources, constraints = shape
    if any(k == "GPU" for k, _ in resources) or constraints:
        return (f"likely a cloud GPU quota of 0, or no node type in the cluster file with these resources and labels "
                f"({QUOTA_HINT})")
    return "likely no node type in the cluster file has these resources (cluster.yaml: available_node_types)"


def warning_minutes(cfg: Any) -> float:
    """`tune.wait_warning_minutes` (its default in conf/config.yaml; 0 turns the warning off)."""
    return float(cfg.tune.wait_warning_minutes)


@contextlib.contextmanager
def watch(cfg: Any, interval: float = POLL_S) -> Iterator[WaitWatcher | None]:
    """The watcher around a sweep's Tune run, on the Ray this process is connected to; nothing when it is off or
    when this process has no Ray."""
    import ray

    minutes = warning_minutes(cfg)
    if minutes <= 0 or not ray.is_initialized():
        yield None
        return
    watcher = WaitWatcher(ray.get_runtime_context().gcs_address, minutes, interval).start()
    try:
        yield watcher
    finally:
        watcher.stop()
