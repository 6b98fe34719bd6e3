"""Faults that Ray alone does not heal, on a real local Ray with the micro world: a hung actor
(SIGSTOP: a real hang, not a mock), an actor whose restart budget is spent, a learner that
lost its state, a killed controller, a driver killed with kill -9."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time

import psutil
import pytest
import ray

from services.bootstrap import train
from services.checkpoint import latest_valid, step_of
from services.control import controller_name
from services.errors import RunFailed
from tests.services.test_pipeline import micro, raylign_train, rows
from tests.services.test_reliability import _pid, _wait_for_steps

DEADLINES = ["deadlines.generate_s=8", "deadlines.score_s=8", "deadlines.probe_s=8",
             "deadlines.publish_s=8"]


def _in_thread(cfg, **kw) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        try:
            result["summary"] = train(cfg, **kw)
        except RunFailed as e:
            result["error"] = str(e)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def _controller_pid(cfg) -> int:
    controller = ray.get_actor(controller_name(cfg.name), namespace=cfg.cluster.namespace)
    return ray.get(controller.poll.remote())[2]


def test_hung_worker_spent_reward_member_and_killed_controller_are_replaced(
        ray_session, micro_world, tmp_path):
    cfg = micro(tmp_path, "learner.steps=10", "checkpoint.every=0", "reward.max_restarts=0",
                "checkpoint.max_actor_failures=2", *DEADLINES)
    thread, result = _in_thread(cfg)
    _wait_for_steps(cfg, 1)
    hung = _pid(cfg, "rollout-0")
    os.kill(hung, signal.SIGSTOP)  # generate (and every later call) never returns
    _wait_for_steps(cfg, 3)
    os.kill(_pid(cfg, "reward1-0"), signal.SIGKILL)  # max_restarts 0: dead for good
    _wait_for_steps(cfg, 5)
    os.kill(_controller_pid(cfg), signal.SIGKILL)  # Ray restarts it; the driver re-seeds it
    _wait_for_steps(cfg, 6)
    controller = ray.get_actor(controller_name(cfg.name), namespace=cfg.cluster.namespace)
    ray.get(controller.set_replicas.remote("rollout", 2))  # ops still reach the run
    thread.join(timeout=600)
    summary = result["summary"]
    assert summary["steps"] == 10
    assert summary["replaced"] == {"rollout": 1, "reward": 1}
    assert summary["ledger"]["trained"] == 10 * cfg.learner.samples_per_step
    assert [r["step"] for r in rows(cfg)] == list(range(1, 11))
    with pytest.raises(ProcessLookupError):  # the hung process was killed
        os.kill(hung, signal.SIGCONT)


def test_a_killed_learner_without_a_checkpoint_stops_the_run(ray_session, micro_world,
                                                            tmp_path):
    cfg = micro(tmp_path, "learner.steps=40", "checkpoint.every=0")
    thread, result = _in_thread(cfg)
    _wait_for_steps(cfg, 2)
    os.kill(_pid(cfg, "learner-0"), signal.SIGKILL)
    thread.join(timeout=600)
    assert "summary" not in result, "the run went on from the initial weights"
    assert "no checkpoint to restore it from" in result["error"]


def _actor_pid(driver_pid: int, cls: str) -> int:
    """The pid of a Ray worker process (a descendant of the driver) running actor `cls`."""
    for proc in psutil.Process(driver_pid).children(recursive=True):
        try:
            if any(part.startswith(f"ray::{cls}") for part in proc.cmdline()):
                return proc.pid
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no {cls} process under pid {driver_pid}")


def test_sigterm_with_a_hung_learner_stops_in_bounded_time(micro_world, tmp_path):
    overrides = ["learner.steps=40", "checkpoint.every=1", "deadlines.step_s=10", *DEADLINES]
    cfg = micro(tmp_path, *overrides)
    proc = raylign_train(tmp_path, *overrides)
    try:
        _wait_for_steps(cfg, 2)
        os.kill(_actor_pid(proc.pid, "LearnerActor"), signal.SIGSTOP)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode in (4, 130), out[-3000:]
    ckpt = latest_valid(cfg.path)  # the last one written before the hang stays valid
    assert ckpt is not None and step_of(ckpt) >= len(rows(cfg)) - 1 >= 1


def test_driver_kill_9_then_resume(ray_session, micro_world, tmp_path):
    overrides = ["learner.steps=8", "checkpoint.every=2"]
    cfg = micro(tmp_path, *overrides)
    proc = raylign_train(tmp_path, *overrides)
    try:
        _wait_for_steps(cfg, 5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert not (cfg.path / "summary.json").exists()
    summary = train(cfg, resume=True)
    assert summary["steps"] == 8 and not summary["interrupted"]
    assert summary["ledger"]["trained"] == 8 * cfg.learner.samples_per_step
    assert [r["step"] for r in rows(cfg)] == list(range(1, 9))  # no row twice
    assert json.loads((cfg.path / "summary.json").read_text())["steps"] == 8


def test_a_hung_rollout_worker_never_stalls_the_run(ray_session, micro_world, tmp_path):
    """SIGSTOP one of two rollout workers mid-run, with deadlines.publish_s (60 s) far above
    the others (5 s): publishing is asynchronous, so the healthy worker keeps generating and
    the learner keeps stepping; the stopped worker is replaced within its 5 s deadlines."""
    cfg = micro(tmp_path, "learner.steps=24", "checkpoint.every=0", "rollout.replicas=2",
                "deadlines.generate_s=5", "deadlines.probe_s=5", "deadlines.publish_s=60")
    thread, result = _in_thread(cfg)
    _wait_for_steps(cfg, 4)
    hung = _pid(cfg, "rollout-0")
    os.kill(hung, signal.SIGSTOP)
    stopped = time.time()
    thread.join(timeout=600)
    summary = result["summary"]
    assert summary["steps"] == 24 and summary["replaced"] == {"rollout": 1}
    assert summary["ledger"]["trained"] == 24 * cfg.learner.samples_per_step
    times = [r["time"] for r in rows(cfg)]
    assert [r["step"] for r in rows(cfg)] == list(range(1, 25))
    after = [t for t in times if t > stopped]
    gaps = [b - a for a, b in zip([stopped, *after], after)]
    assert max(gaps) < 25, gaps  # bounded by the 5 s deadlines (and start-up), not publish_s
    with contextlib.suppress(psutil.NoSuchProcess):  # the hung process is killed: it exits
        psutil.Process(hung).wait(timeout=60)  # (psutil.TimeoutExpired if it does not)
