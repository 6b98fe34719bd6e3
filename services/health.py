"""Actor health: pid probes (a new pid = Ray restarted the actor, even an idle one that no
call saw fail), probe deadlines, and consecutive failures with backoff; past the limit the
actor is handed to `replace`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import ray
from ray.exceptions import RayError
from tqdm import tqdm

from actors.fleet import ActorGroup, Member
from services.prometheus_metrics import Metrics

PROBE_EVERY_S = 1.0  # how often each actor is asked for its pid


@dataclass
class Probe:  # an info() call in flight
    member: Member
    role: str
    started: float
    idle: bool  # sent to a ready actor with no call in flight: nothing queued before it


class Health:
    def __init__(self, groups: Callable[[], list[tuple[ActorGroup, str]]], metrics: Metrics,
                 max_failures: int, replace: Callable[[Member, str, str], None],
                 on_restart: Callable[[Member, str], None]) -> None:
        self.groups, self.metrics = groups, metrics
        self.max_failures, self.replace, self.on_restart = max_failures, replace, on_restart
        self.probes: dict[ray.ObjectRef, Probe] = {}
        self.restarts: dict[str, int] = {}  # by role (the driver checkpoints this dict)

    def probe(self) -> None:
        """Ask every active member for its pid about once a second (queued behind its work)."""
        for group, role in self.groups():
            for member in group.due_for_probe(PROBE_EVERY_S):
                member.probing, member.probed_at = True, time.monotonic()
                probe = Probe(member, role, member.probed_at,
                              idle=member.ready and member.inflight == 0)
                self.probes[member.handle.info.remote()] = probe

    def overdue(self, started_before: float) -> list[tuple[Member, str]]:
        """Members that did not answer a probe sent while they were idle (they hang). One
        not placed yet (no node has its resources) or restarting has no deadline: it waits,
        without work, until it answers."""
        return [(p.member, p.role) for p in self.probes.values()
                if p.idle and p.started < started_before]

    def forget(self, member: Member) -> None:
        """Stop waiting for the probes of a member that was replaced."""
        self.probes = {r: p for r, p in self.probes.items() if p.member is not member}

    def on_probe(self, ref: ray.ObjectRef) -> None:
        probe = self.probes.pop(ref)
        member, role = probe.member, probe.role
        member.probing = False
        try:
            info = ray.get(ref)
        except RayError as e:  # dead or restarting: back off; the next probe will tell
            self.failed(member, role, e)
            return
        pid, member.ready = info["pid"], True
        self.metrics.record_actor_cpu(role, member.name, info["cpu_s"])
        if member.probed(pid):
            self.restarts[role] = self.restarts.get(role, 0) + 1
            self.metrics.record_restart(role)
            tqdm.write(f"{member.name} was restarted by Ray (pid {pid})")
            self.on_restart(member, role)

    def failed(self, member: Member, role: str, error: Exception) -> None:
        """A call on `member` failed: back off; past max_failures in a row, replace it."""
        if member.failed():  # a new fault (later ones are the same restart still under way)
            tqdm.write(f"{member.name} failed ({type(error).__name__}); its work is re-issued")
        if member.failures > self.max_failures:
            self.replace(member, role, "failures")
