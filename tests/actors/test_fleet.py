"""Member bookkeeping: restart detection by pid, backoff, probe scheduling (no Ray needed)."""

from __future__ import annotations

import time

from actors.fleet import ActorGroup, Member, process_info, use_assigned_cpus


def test_a_new_pid_is_a_restart_once():
    m = Member("reward0-0", handle=None)
    assert m.probed(100) is False  # first sighting
    assert m.probed(100) is False and not m.needs_weights
    assert m.probed(200) is True and m.needs_weights  # Ray restarted it
    assert m.probed(200) is False


def test_failures_back_off_and_count_new_faults_once():
    m = Member("rollout-0", handle=None)
    t0 = time.monotonic()
    assert m.failed() is True  # a new fault: back off 0.5 s from the failure
    assert t0 + 0.5 <= m.retry_at <= time.monotonic() + 0.5
    t0 = time.monotonic()
    assert m.failed() is False  # the same restart still under way: 1 s
    assert t0 + 1.0 <= m.retry_at <= time.monotonic() + 1.0
    for _ in range(10):
        m.failed()
    assert m.retry_at - time.monotonic() <= 10.0  # capped
    m.succeeded()
    assert m.failures == 0


def test_probes_skip_busy_probing_and_backing_off_members():
    group = ActorGroup("rollout", make=lambda name: None)
    group.scale_to(3)
    a, b, c = group.members.values()
    assert group.due_for_probe(1.0) == [a, b, c]
    a.probing = True
    b.failed()  # backing off
    c.probed_at = time.monotonic()  # probed just now
    assert group.due_for_probe(1.0) == []
    c.probed_at -= 1.5
    assert group.due_for_probe(1.0) == [c]
    group.scale_to(2)  # c drains: it is about to be killed, not probed
    assert c.draining and group.due_for_probe(1.0) == []


class Probe:
    def __init__(self) -> None:
        use_assigned_cpus()

    def info(self) -> dict:
        return process_info()


def test_a_roles_nice_is_added_to_its_actors_processes(ray_session):
    from services.config import Placement
    from services.fleet import remote

    def nice(placement, name):
        actor = remote(Probe, placement, name, "raylign-test-nice").remote()
        return ray_session.get(actor.info.remote())["nice"]

    base = nice(Placement(num_cpus=0), "plain")  # Ray's worker niceness
    assert base < 19 and nice(Placement(num_cpus=0, nice=2), "niced") == base + 2
