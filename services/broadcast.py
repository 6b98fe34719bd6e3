"""Versioned weight broadcasts: the learner puts each version once; every worker reads that
one object (docs/design.md section 3). The last `keep` versions stay referenced."""

from __future__ import annotations

import contextlib
import time

import ray
from ray.exceptions import RayError

from actors.fleet import Member
from services.metrics import Metrics


class Broadcast:
    def __init__(self, keep: int, metrics: Metrics, deadline_s: float) -> None:
        self.keep, self.metrics, self.deadline_s = keep, metrics, deadline_s
        self.snapshots: list[tuple[int, ray.ObjectRef]] = []  # (version, ref), newest last
        self.base: tuple[int, ray.ObjectRef] | None = None  # LoRA: the frozen base weights

    @property
    def version(self) -> int:
        """The newest published weight version."""
        return self.snapshots[-1][0]

    def publish(self, workers: list[Member], version: int, snap_ref: ray.ObjectRef,
                nbytes: int) -> list[Member]:
        """Hand the one ref to every worker and wait for their acks (not fire-and-forget);
        returns the workers that did not ack within the deadline. A version not above the
        newest (the learner restored from a checkpoint) replaces the newer ones."""
        t0 = time.perf_counter()
        older = [s for s in self.snapshots if s[0] < version]
        self.snapshots = [*older, (version, snap_ref)][-self.keep:]
        acks = [m.handle.set_weights.remote(version, snap_ref) for m in workers]
        done, _ = ray.wait(acks, num_returns=len(acks), timeout=self.deadline_s)
        self.metrics.record_broadcast(time.perf_counter() - t0, nbytes, version)
        for member, ack in zip(workers, acks):
            if ack in done:
                with contextlib.suppress(RayError):  # a dead worker is handled by its next call
                    self.metrics.set_policy_version(member.name, ray.get(ack))
        self.metrics.set_policy_version("learner", version)
        return [m for m, ack in zip(workers, acks) if ack not in done]

    def send_to(self, worker: Member) -> None:
        """A new or restarted worker: (under LoRA the base weights, then) the current version.

        Ray runs these before any generate() submitted later to the same worker.
        """
        if self.base is not None:
            worker.handle.set_weights.remote(*self.base)
        if self.snapshots:  # else the first publish reaches every worker
            worker.handle.set_weights.remote(*self.snapshots[-1])
