"""Actor health: pid probes (a new pid = Ray restarted the actor, even an idle one that no
call saw fail) and consecutive failures with backoff; past the limit the run gives up."""

from __future__ import annotations

import time
from collections.abc import Callable

import ray
from ray.exceptions import RayError
from tqdm import tqdm

from actors.fleet import ActorGroup, Member
from services.metrics import Metrics

PROBE_EVERY_S = 1.0  # how often each actor is asked for its pid


class Health:
    def __init__(self, groups: Callable[[], list[tuple[ActorGroup, str]]], metrics: Metrics,
                 max_failures: int, give_up: Callable[[Member, Exception], None]) -> None:
        self.groups, self.metrics = groups, metrics
        self.max_failures, self.give_up = max_failures, give_up
        self.probes: dict[ray.ObjectRef, tuple[Member, str]] = {}  # info() calls in flight
        self.restarts: dict[str, int] = {}  # by role (the driver checkpoints this dict)

    def probe(self) -> None:
        """Ask every active member for its pid about once a second (queued behind its work)."""
        for group, role in self.groups():
            for member in group.due_for_probe(PROBE_EVERY_S):
                member.probing, member.probed_at = True, time.monotonic()
                self.probes[member.handle.info.remote()] = (member, role)

    def on_probe(self, ref: ray.ObjectRef) -> None:
        member, role = self.probes.pop(ref)
        member.probing = False
        try:
            info = ray.get(ref)
        except RayError as e:  # dead or restarting: back off; the next probe will tell
            self.failed(member, role, e)
            return
        pid = info["pid"]
        self.metrics.record_actor_cpu(role, member.name, info["cpu_s"])
        if member.probed(pid):
            self.restarts[role] = self.restarts.get(role, 0) + 1
            self.metrics.record_restart(role)
            tqdm.write(f"{member.name} was restarted by Ray (pid {pid})")

    def failed(self, member: Member, role: str, error: Exception) -> None:
        """A call on `member` failed: back off; past max_failures in a row, give up."""
        if member.failed():  # a new fault (later ones are the same restart still under way)
            tqdm.write(f"{member.name} failed ({type(error).__name__}); its work is re-issued")
        if member.failures > self.max_failures:
            self.give_up(member, error)
