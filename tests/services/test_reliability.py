"""Faults on a real local Ray with the micro world: nothing lost, nothing duplicated."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file, save_file

from services.bootstrap import train
from services.checkpoint import latest_valid
from tests.services.test_pipeline import micro, raylign_train, rows

REPO = Path(__file__).resolve().parents[2]


def _pid(cfg, role: str) -> int:
    handle = ray.get_actor(f"{cfg.name}:{role}", namespace=cfg.cluster.namespace)
    return ray.get(handle.info.remote())["pid"]


def _wait_for_steps(cfg, n: int, timeout: float = 300) -> None:
    path = cfg.path / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {n} steps in {path} after {timeout}s")


def _sigterm_after(proc, cfg, steps: int) -> str:
    """SIGTERM a `raylign train` process once `steps` rows are logged; it must checkpoint and
    exit 130. Returns its output."""
    try:
        _wait_for_steps(cfg, steps)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, out[-3000:]
    return out


def test_kill_rollout_worker_and_reward_actor_mid_run(ray_session, micro_world, tmp_path):
    cfg = micro(tmp_path, "learner.steps=8", "checkpoint.every=0")
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(summary=train(cfg)))
    thread.start()
    _wait_for_steps(cfg, 1)
    os.kill(_pid(cfg, "rollout-0"), signal.SIGKILL)
    _wait_for_steps(cfg, 3)
    os.kill(_pid(cfg, "reward1-0"), signal.SIGKILL)
    thread.join(timeout=600)
    summary = result["summary"]
    assert summary["steps"] == 8
    assert summary["restarts"].get("rollout", 0) >= 1
    assert summary["restarts"].get("reward", 0) >= 1
    ledger = summary["ledger"]  # balanced (train() checks), every step full
    assert ledger["trained"] == 8 * cfg.learner.samples_per_step
    assert all(r["rollout/staleness_max"] <= cfg.rollout.max_staleness for r in rows(cfg))


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "learner" / "state.safetensors"))


DETERMINISTIC = ["learner.steps=6", "rollout.max_staleness=0", "rollout.engine=hf",
                 "rollout.replicas=1", "checkpoint.every=1"]


@pytest.fixture(scope="module")
def straight(ray_session, micro_world, tmp_path_factory):
    """A deterministic run that no fault touched: what a faulted run must end with."""
    cfg = micro(tmp_path_factory.mktemp("straight"), *DETERMINISTIC)
    assert train(cfg)["steps"] == 6
    return cfg


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_a_killed_learner_is_restored_from_its_checkpoint(straight, tmp_path):
    """kill -9 of the learner mid-run: it comes back from the newest checkpoint, the driver
    rewinds to it, and the run ends with the weights of a run that never failed."""
    cfg = micro(tmp_path, *DETERMINISTIC)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(summary=train(cfg)))
    thread.start()
    _wait_for_steps(cfg, 3)
    os.kill(_pid(cfg, "learner-0"), signal.SIGKILL)
    thread.join(timeout=600)
    summary = result["summary"]
    assert summary["steps"] == 6 and summary["restarts"]["learner"] >= 1
    assert summary["ledger"]["trained"] == 6 * cfg.learner.samples_per_step
    assert [r["step"] for r in rows(cfg)] == list(range(1, 7))  # redone rows logged once
    _same_weights(latest_valid(straight.path), latest_valid(cfg.path))


def test_sigterm_then_resume_matches_an_uninterrupted_run(straight, micro_world, tmp_path):
    deterministic = DETERMINISTIC

    # The same run in a real `raylign train` process, SIGTERMed after step 2, then resumed.
    interrupted = micro(tmp_path / "b", *deterministic)
    _sigterm_after(raylign_train(tmp_path / "b", *deterministic), interrupted, 2)
    summary = json.loads((interrupted.path / "summary.json").read_text())
    assert summary["interrupted"] and 2 <= summary["steps"] < 6, summary

    resumed = train(interrupted, resume=True)
    assert resumed["steps"] == 6 and not resumed["interrupted"]
    assert resumed["ledger"]["trained"] == 6 * straight.learner.samples_per_step
    _same_weights(latest_valid(straight.path), latest_valid(interrupted.path))


def test_truncated_checkpoint_falls_back_to_the_previous_one(ray_session, micro_world, tmp_path):
    cfg = micro(tmp_path, "learner.steps=3", "checkpoint.every=1", "checkpoint.keep=3")
    train(cfg)
    newest = latest_valid(cfg.path)
    assert newest is not None and newest.name == "step-000003"
    state = newest / "learner" / "state.safetensors"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a crash mid-write
    assert latest_valid(cfg.path).name == "step-000002"
    resumed = train(micro(tmp_path, "learner.steps=4", "checkpoint.every=1",
                          "checkpoint.keep=3"), resume=True)
    assert resumed["steps"] == 4
    steps = [r["step"] for r in rows(cfg)]
    assert steps == [1, 2, 3, 4]  # the row of the lost step 3 went; the redone one stays


def test_nonfinite_rewards_are_quarantined(ray_session, micro_world, tmp_path):
    """A reward model whose embedding row for one frequent token is NaN scores NaN on every
    sample containing it: those samples are dropped (counted), the rest train normally."""
    from transformers import AutoTokenizer

    poisoned = tmp_path / "rm-nan"
    shutil.copytree(micro_world.rm_dirs[0], poisoned)
    weights = load_file(str(poisoned / "model.safetensors"))
    key = next(k for k in weights if k.endswith("embed_tokens.weight"))
    tok = AutoTokenizer.from_pretrained(micro_world.tokenizer_dir)
    token = tok(" was", add_special_tokens=False)["input_ids"][0]
    weights[key][token] = float("nan")
    save_file(weights, str(poisoned / "model.safetensors"), metadata={"format": "pt"})
    dirs = [str(poisoned), *[str(d) for d in micro_world.rm_dirs[1:]]]
    cfg = micro(tmp_path, "learner.steps=3", f"reward.model_dirs=[{', '.join(dirs)}]")
    summary = train(cfg)
    assert summary["steps"] == 3
    dropped = summary["ledger"].get("dropped:nonfinite_reward", 0)
    assert dropped > 0
    assert summary["ledger"]["trained"] == 3 * cfg.learner.samples_per_step
    for r in rows(cfg):
        assert r["loss/policy"] == r["loss/policy"] and r["reward/proxy"] == r["reward/proxy"]


@pytest.mark.parametrize("problem", ["missing", "pickle"])
def test_bad_model_dir_fails_before_ray_starts(tmp_path, problem):
    model = tmp_path / "model"
    if problem == "pickle":
        model.mkdir()
        (model / "config.json").write_text("{}")
        (model / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", "train", "--config", "deploy/configs/micro.yaml",
         f"policy.model_dir={model}", f"run_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "policy.model_dir:" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout
    assert not (tmp_path / "micro").exists()  # nothing started, nothing written


def test_a_killed_learner_rank_restores_the_group_from_its_checkpoint(straight, tmp_path):
    """kill -9 of rank 1 of a learner group mid-run: rank 0's next call fails, the driver
    replaces the group (its other ranks die with rank 0) and restores it from the newest
    checkpoint; the ledger is exact and every step is logged once."""
    cfg = micro(tmp_path, *DETERMINISTIC, "learner.world_size=2")
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(summary=train(cfg)))
    thread.start()
    _wait_for_steps(cfg, 3)
    leader = ray.get_actor(f"{cfg.name}:learner-0", namespace=cfg.cluster.namespace)
    os.kill(ray.get(leader.rank_infos.remote())[1]["pid"], signal.SIGKILL)
    thread.join(timeout=600)
    summary = result["summary"]
    assert summary["steps"] == 6 and summary["restarts"]["learner"] >= 1
    assert summary["ledger"]["trained"] == 6 * cfg.learner.samples_per_step
    assert [r["step"] for r in rows(cfg)] == list(range(1, 7))
    # world size 2 trains what world size 1 did (fp32 master weights, summed in another order)
    wa, wb = _weights(latest_valid(straight.path)), _weights(latest_valid(cfg.path))
    for key in (k for k in wa if k.startswith("policy/")):
        torch.testing.assert_close(wb[key], wa[key], rtol=0, atol=1e-3)
