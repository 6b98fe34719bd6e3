"""Versioned weight broadcasts: the learner puts each version once; every worker reads that
one object (docs/design.md section 3). The last `keep` versions stay referenced.

Publishing never blocks the driver: `publish` hands the ref to every worker and returns; each
worker's acknowledgement is an event of the driver's loop (`acks`, routed to `on_ack`), like
a finished generation. A worker gets new prompts only once it has acknowledged a version
within the staleness window (`Member.acked`); one whose acknowledgement is overdue
(`overdue`, deadlines.publish_s) is replaced like any actor past a deadline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray
from ray.exceptions import RayError

from actors.fleet import Member
from services.prometheus_metrics import Metrics


@dataclass
class Ack:  # a set_weights call in flight
    member: Member
    version: int
    sent: float
    ready: bool  # the member was ready when sent (one still starting has no deadline)


class Broadcast:
    def __init__(self, keep: int, metrics: Metrics, deadline_s: float) -> None:
        self.keep, self.metrics, self.deadline_s = keep, metrics, deadline_s
        self.snapshots: list[tuple[int, ray.ObjectRef]] = []  # (version, ref), newest last
        self.base: tuple[int, ray.ObjectRef] | None = None  # LoRA: the frozen base weights
        self.acks: dict[ray.ObjectRef, Ack] = {}
        self._waiting: dict[int, tuple[float, int, set[str]]] = {}  # version: t0, bytes, names

    @property
    def version(self) -> int:
        """The newest published weight version."""
        return self.snapshots[-1][0]

    def publish(self, workers: list[Member], version: int, snap_ref: ray.ObjectRef,
                nbytes: int) -> None:
        """Hand the one ref to every worker (their acks arrive as events). A version not above
        the newest (the learner restored from a checkpoint) replaces the newer ones."""
        older = [s for s in self.snapshots if s[0] < version]
        self.snapshots = [*older, (version, snap_ref)][-self.keep:]
        self._waiting[version] = (time.perf_counter(), nbytes, {m.name for m in workers})
        for member in workers:
            self._send(member, version, snap_ref)
        self.metrics.set_policy_version("learner", version)

    def _send(self, member: Member, version: int, ref: ray.ObjectRef) -> None:
        ack = member.handle.set_weights.remote(version, ref)
        self.acks[ack] = Ack(member, version, time.monotonic(), member.ready)

    def send_to(self, worker: Member) -> None:
        """A new or restarted worker: (under LoRA the base weights, then) the current version.

        Ray runs these before any generate() submitted later to the same worker.
        """
        worker.acked = -1  # a fresh process holds no version until it says so
        if self.base is not None:
            worker.handle.set_weights.remote(*self.base)
        if self.snapshots:  # else the first publish reaches every worker
            self._send(worker, *self.snapshots[-1])

    def on_ack(self, ref: ray.ObjectRef) -> tuple[Member, Exception | None]:
        """A worker answered set_weights: note the version it holds (and, once every worker
        has the version, how long the broadcast took); the error if the call failed."""
        ack = self.acks.pop(ref)
        try:
            version = ray.get(ref)
        except RayError as e:
            return ack.member, e
        ack.member.acked = max(ack.member.acked, version)
        self.metrics.set_policy_version(ack.member.name, version)
        self._arrived(version, ack.member.name)
        return ack.member, None

    def _arrived(self, version: int, name: str) -> None:
        if version not in self._waiting:
            return
        t0, nbytes, names = self._waiting[version]
        names.discard(name)
        if not names:
            del self._waiting[version]
            self.metrics.record_broadcast(time.perf_counter() - t0, nbytes, version)

    def overdue(self, now: float) -> list[Member]:
        """Workers that were ready and have not acknowledged a version within deadline_s."""
        late = {a.member.name: a.member for a in self.acks.values()
                if a.ready and now - a.sent > self.deadline_s}
        return list(late.values())

    def forget(self, member: Member) -> None:
        """A worker was replaced: stop waiting for its acks."""
        self.acks = {r: a for r, a in self.acks.items() if a.member is not member}
        for version in list(self._waiting):
            self._arrived(version, member.name)
