"""ActorGroup: the actors of one role, scaled up or down while a run goes on.

New members are started (and handed the current weights by `on_start`) before they get work;
members scaled away stop receiving work and are killed once their in-flight calls finished,
so nothing is lost. Restarts by Ray (`max_restarts`) keep the handle; the driver probes each
member's process id about once a second and counts a restart when it changes (so a restart of
an idle actor, which no call ever sees fail, is counted too). A member that hung or keeps
failing is `replace`d: killed, and a new actor under a new name takes its place.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import ray


def cpu_seconds() -> float:
    """CPU time this process has used (user + system), for `raylign_actor_cpu_seconds_total`."""
    t = os.times()
    return t.user + t.system


def process_info() -> dict:
    """What every actor's `info()` answers a health probe with: its process, CPU, niceness and
    node."""
    return {"pid": os.getpid(), "cpu_s": cpu_seconds(), "nice": os.nice(0),
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None}


NICE_ENV = "RAYLIGN_NICE"  # niceness an actor adds to its process (`<role>.nice`)


def nice_options(nice: int) -> dict:
    """Ray actor options that make the actor add `nice` to its process's niceness."""
    return {"runtime_env": {"env_vars": {NICE_ENV: str(nice)}}} if nice else {}


def use_assigned_cpus() -> int | None:
    """Inside a Ray actor: torch threads = the CPUs Ray assigned it (at least 1), and the
    role's niceness (RAYLIGN_NICE, from `nice_options`) added to the process's, so that where
    roles share cores the ones with a lower niceness (the learner) get more of them. Ray may
    hand an actor a worker process it started for other work, whose thread count would
    otherwise stay, and floating-point results depend on the thread count. None outside an
    actor."""
    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return None
    import torch

    nice = int(os.environ.get(NICE_ENV, "0"))
    if nice:
        os.nice(nice)  # 19 at most; raising niceness needs no privilege

    threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 0)))
    torch.set_num_threads(threads)
    return threads


@dataclass
class Member:
    name: str
    handle: ray.actor.ActorHandle
    inflight: int = 0
    draining: bool = False
    failures: int = 0  # consecutive failures; reset by a success
    retry_at: float = 0.0  # after a failure: no work before this time (Ray is restarting it)
    needs_weights: bool = False  # restarted: hand it the current weights before new work
    ready: bool = False  # answered a probe since it started or last failed: it may get work
    pid: int | None = None  # the process last seen by a probe (a new pid = a restart)
    probing: bool = False  # a probe (`info()`) is in flight
    probed_at: float = 0.0
    acked: int = -1  # the newest weight version it acknowledged (rollout workers)

    def failed(self) -> bool:
        """Note a failed call; back off exponentially (0.5 s, 1 s, ... 10 s). True if it was
        the first failure in a row (a new fault, rather than the same restart under way)."""
        self.failures += 1
        self.ready = False  # no work until a probe shows it back (e.g. placed on a node again)
        self.retry_at = time.monotonic() + min(10.0, 0.5 * 2 ** (self.failures - 1))
        self.needs_weights = True
        return self.failures == 1

    def probed(self, pid: int) -> bool:
        """Note a probe's answer; True if the process changed (Ray restarted the actor)."""
        restarted = self.pid is not None and pid != self.pid
        self.pid = pid
        if restarted:
            self.needs_weights = True
        return restarted

    def succeeded(self) -> None:
        self.failures = 0


class ActorGroup:
    def __init__(
        self,
        role: str,
        make: Callable[[str], ray.actor.ActorHandle],
        on_start: Callable[[Member], None] | None = None,
    ) -> None:
        self.role = role
        self._make = make
        self._on_start = on_start
        self._ids = itertools.count()
        self.members: dict[str, Member] = {}

    def active(self) -> list[Member]:
        return [m for m in self.members.values() if not m.draining]

    def _start(self) -> Member:
        name = f"{self.role}-{next(self._ids)}"
        member = Member(name, self._make(name))
        self.members[name] = member
        if self._on_start is not None:
            self._on_start(member)
        return member

    def replace(self, member: Member) -> Member:
        """Kill `member` (its calls in flight fail) and start a new actor in its place."""
        ray.kill(member.handle, no_restart=True)
        del self.members[member.name]
        return self._start()

    def scale_to(self, n: int) -> None:
        active = self.active()
        for _ in range(n - len(active)):
            self._start()
        for member in sorted(active, key=lambda m: m.name)[n:] if n < len(active) else []:
            member.draining = True  # `reap` kills it once its in-flight calls are done

    def wait_ready(self, timeout: float = 600) -> None:
        """Block until every active member answers `info()`, and mark it ready (the driver
        learns this from its probes; a caller without them uses this)."""
        ray.get([m.handle.info.remote() for m in self.active()], timeout=timeout)
        for m in self.active():
            m.ready = True

    def due_for_probe(self, every: float) -> list[Member]:
        """Active members to probe now: none in flight, not backing off, the last one `every`
        s ago (draining members are not probed: they are about to be killed)."""
        now = time.monotonic()
        return [m for m in self.active()
                if not m.probing and m.retry_at <= now and now - m.probed_at >= every]

    def pick(self, cap: int, min_version: int | None = None) -> Member | None:
        """The least-loaded ready member with fewer than `cap` calls in flight (members
        not yet placed, restarting or backing off after a failure are skipped; with
        `min_version`, so are those that have not acknowledged that weight version)."""
        now = time.monotonic()
        free = [m for m in self.active() if m.ready and m.inflight < cap and m.retry_at <= now
                and (min_version is None or m.acked >= min_version)]
        return min(free, key=lambda m: (m.inflight, m.name)) if free else None

    def reap(self) -> list[str]:
        """Kill drained members (no calls in flight); returns their names."""
        done = [m for m in self.members.values()
                if m.draining and m.inflight == 0 and not m.probing]
        for m in done:
            ray.kill(m.handle, no_restart=True)
            del self.members[m.name]
        return [m.name for m in done]

    def shutdown(self) -> None:
        for m in self.members.values():
            ray.kill(m.handle, no_restart=True)
        self.members.clear()
