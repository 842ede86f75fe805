"""Build leases: one builder per artifact key across the whole Ray cluster, through a named actor on the head node.

A lease is held while its owner renews it (a heartbeat thread, every `ttl / 4`). An owner that dies stops renewing,
and the lease lapses `ttl` seconds later, so a crashed builder never blocks the key for good. The actor keeps no
durable state: if it is lost (the head restarts), builders re-acquire on their next heartbeat, and the manifest
protocol in `synthray.core.artifacts` still keeps readers from ever seeing a half-built artifact.

Without Ray (plain Python calling a stage), there is no one to race with across nodes, and every lease is granted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any

log = logging.getLogger("synthray")

ACTOR_NAME = "synthray-leases"
NAMESPACE = "synthray"


class LeaseTable:
    """Ray actor: key -> (owner, expiry on the actor's monotonic clock)."""

    def __init__(self) -> None:
        self.leases: dict[str, tuple[str, float]] = {}

    def acquire(self, key: str, owner: str, ttl: float) -> bool:
        """Take or renew `key` for `owner` unless another owner holds an unexpired lease."""
        now = time.monotonic()
        held = self.leases.get(key)
        if held is not None and held[0] != owner and held[1] > now:
            return False
        self.leases[key] = (owner, now + ttl)
        return True

    def release(self, key: str, owner: str) -> None:
        if self.leases.get(key, ("",))[0] == owner:
            del self.leases[key]

    def holder(self, key: str) -> str | None:
        held = self.leases.get(key)
        return held[0] if held and held[1] > time.monotonic() else None


def lease_table() -> Any | None:
    """The cluster's lease actor (created on first use, on the head node), or None without Ray."""
    import ray

    if not ray.is_initialized():
        return None
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = next((n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"]), None)
    actor = ray.remote(LeaseTable).options(
        name=ACTOR_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached", num_cpus=0,
        max_restarts=-1, max_task_retries=-1,
        # On the head: worker nodes come and go (spot, scale-down); the head lives as long as the cluster. An explicit
        # strategy also keeps the actor out of the placement group of the Tune trial that first asks for it.
        scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=True) if head else "DEFAULT",
    )
    return actor.remote()


class Lease:
    """`with Lease(key, ttl) as lease: if lease.held: ...` claims `key` cluster-wide for the block's duration."""

    def __init__(self, key: str, ttl: float):
        self.key, self.ttl = key, float(ttl)
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held = False
        self._table: Any = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> Lease:
        import ray

        self._table = lease_table()
        if self._table is None:
            self.held = True
            return self
        self.held = bool(ray.get(self._table.acquire.remote(self.key, self.owner, self.ttl)))
        if self.held:
            self._beat = threading.Thread(target=self._heartbeat, name="synthray-lease", daemon=True)
            self._beat.start()
        return self

    def _heartbeat(self) -> None:
        import ray

        while not self._stop.wait(self.ttl / 4):
            try:
                if not ray.get(self._table.acquire.remote(self.key, self.owner, self.ttl)):
                    log.warning("lease on %s was taken over by another builder; both write the same bytes", self.key)
            except Exception as err:  # noqa: BLE001 - a lost heartbeat must not kill the build it protects
                log.warning("lease heartbeat for %s failed: %s", self.key, err)

    def __exit__(self, *exc: Any) -> None:
        import ray

        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        if self._table is not None and self.held:
            try:
                ray.get(self._table.release.remote(self.key, self.owner))
            except Exception:  # noqa: BLE001 - the lease lapses on its own
                pass
