"""Bad input fails first and clearly: each probe below is answered before the world build or
Ray start (or, for resources, before any actor), naming where, what and why; the CLI prints
one line and exits with its class's code (2 bad input, 3 no cluster/job), no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.bootstrap import train
from services.config import ConfigError, RunConfig, load_config
from services.preflight import check_context, check_resumable
from tests.conftest import REPO, TEST_WORLDS

MICRO = "deploy/configs/micro.yaml"


@pytest.mark.parametrize("override,message", [
    ("learner.lr=.inf", "learner.lr: must be a finite number, got inf"),
    ("learner.kl.coef=.nan", "learner.kl.coef: must be a finite number"),
    ("learner.soup_weights=[.nan, .nan]", "learner.soup_weights.0: must be a finite number"),
    ("learner.soup_weights=[0.2, 0.2]", "soup_weights must be >= 0 and sum to 1"),
    ("rollout.replicas=0", "rollout.replicas: must be >= 1, got 0"),
    ("reward.replicas=0", "reward.replicas: must be >= 1, got 0"),
    ("learner.replicas=3", "learner.replicas: unknown key"),
    ("name=../../x", "name: must match"),
    ("name=", "name: must match"),
    ("metrics.host=not..a..host", "'not..a..host' is not an IP address"),
    ("metrics.host=0.0.0.0", "is not loopback: set metrics.public: true"),
    ("learner.minibatch_size=5", "minibatch_size (5) must divide samples_per_step (16)"),
    ("learner.steps=true", "learner.steps: Input should be a valid integer, got True"),
    ("learner.samples_per_step=1e9", "learner.samples_per_step: Input should be a valid "
                                     "integer, got '1e9'"),
    ("alarm.warning=2", "alarm.warning (2.0) must be <= alarm.threshold (0.1)"),
    ("alarm.action=halt", "alarm.action: must be one of 'none', 'mark' or 'stop', got 'halt'"),
    ("alarm.threshold=0", "alarm.threshold: must be > 0.0, got 0"),
])
def test_overrides_that_cannot_work_name_the_override(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(MICRO, [override])
    assert f"override '{override}'" in str(e.value) and message in str(e.value)
    errors = str(e.value).splitlines()[1:]  # one line per error, not the config dumped
    assert errors and all(x.strip().startswith(f"override '{override}'") for x in errors)


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,message", [
    ("", "run.yaml: the file is empty"),
    ("learner:\n  lr: 1.0e-4\nlearner:\n  steps: 3\n", "run.yaml:3 learner: duplicate key "
                                                       "(first at line 1)"),
    ("learner:\n  lr: 1\n  lr: 2\n", "run.yaml:3 learner.lr: duplicate key"),
    ("a: &x [1]\nb: *x\n", "run.yaml:2 YAML alias *x: aliases are not supported"),
    ("a: &a [*a]\n", "YAML alias *a"),
])
def test_yaml_that_cannot_work(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("*", r"\*")):
        load_config(write(tmp_path, text))


def test_billion_laughs_is_refused_before_expansion(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]"
              for i in range(8)]
    with pytest.raises(ConfigError, match="aliases are not supported"):  # before any
        load_config(write(tmp_path, "\n".join(lines) + "\n"))  # expansion (the first alias)


def test_max_new_tokens_beyond_the_context_fails_before_ray(micro_world, tmp_path):
    from tasks.tiny_world import task_of

    cfg = load_config(MICRO, [f"task.cache_dir={TEST_WORLDS}", "rollout.sampling.max_new_tokens="
                              "10000000", f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="leaves no room for a prompt"):
        check_context(cfg, task_of(micro_world, 0))
    with pytest.raises(ConfigError, match="leaves no room"):
        train(cfg)  # before Ray: no ray_session here, and none is started
    assert not (tmp_path / "micro").exists()


def test_a_memory_plan_over_budget_fails_before_ray(micro_world, tmp_path):
    done = run_cli("train", "--config", MICRO, f"task.cache_dir={TEST_WORLDS}",
                   f"run_dir={tmp_path}", "learner.memory_gb=0.001", timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "learner memory plan, per rank (world_size 1)" in done.stdout
    assert "learner.memory_gb: the learner needs about" in done.stderr
    assert "Traceback" not in done.stderr and "Started a local Ray" not in done.stderr


def test_a_run_dir_belongs_to_one_run(micro_world, tmp_path):
    """A second start with the same name is refused before anything is written (the first
    run's files are left as they were); --overwrite deletes the old run first."""
    from services.preflight import check_fresh

    cfg = load_config(MICRO, [f"task.cache_dir={TEST_WORLDS}", f"run_dir={tmp_path}"])
    check_fresh(cfg)  # nothing there yet
    (cfg.path / "checkpoints" / "step-000016").mkdir(parents=True)
    (cfg.path / "config.json").write_text("{}")
    done = run_cli("train", "--config", MICRO, f"task.cache_dir={TEST_WORLDS}",
                   f"run_dir={tmp_path}", "learner.steps=2")
    assert done.returncode == 2, done.stderr[-2000:]
    assert (f"{cfg.path} (config.json, checkpoints) already holds a run named 'micro': "
            "--resume continues it, --overwrite deletes it first") in done.stderr
    assert (cfg.path / "config.json").read_text() == "{}"
    check_fresh(cfg, overwrite=True)
    assert not cfg.path.exists()


def test_resume_needs_a_checkpoint_and_the_same_config(micro_world, tmp_path):
    from services.checkpoint import save_checkpoint

    cfg = load_config(MICRO, [f"task.cache_dir={TEST_WORLDS}", f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="--resume: no valid checkpoint under"):
        check_resumable(cfg)
    cfg.path.mkdir(parents=True)
    (cfg.path / "config.json").write_text(cfg.model_dump_json())
    save_checkpoint(cfg.path, 1, {}, lambda d: (Path(d) / "state.json").write_text("{}"), keep=2)
    check_resumable(load_config(MICRO, [f"task.cache_dir={TEST_WORLDS}", f"run_dir={tmp_path}",
                                        "learner.steps=8", "rollout.replicas=2"]))
    changed = load_config(MICRO, [f"task.cache_dir={TEST_WORLDS}", f"run_dir={tmp_path}",
                                  "learner.lr=0.5", "seed=3"])
    with pytest.raises(ConfigError, match=r"differs .* in learner.lr, seed \(--allow-config"):
        check_resumable(changed)
    check_resumable(changed, allow_config_change=True)


def run_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": ""}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args,code,message", [
    (["status", "--address", "127.0.0.1:1"], 3, "no Ray cluster at 127.0.0.1:1"),
    (["stop", "--address", "127.0.0.1:1"], 3, "no Ray cluster at 127.0.0.1:1"),
    (["scale", "--rollout", "0", "--address", "127.0.0.1:1"], 2,
     "--rollout: must be an integer >= 1, got '0'"),
    (["train", "--config", MICRO, "learner.lr=.inf"], 2, "learner.lr: must be a finite number"),
    (["train", "--config", MICRO, "--resume", "run_dir=/nonexistent-raylign"], 2,
     "--resume: no valid checkpoint"),
])
def test_cli_fails_in_one_line_with_its_exit_code(args, code, message):
    done = run_cli(*args)
    assert done.returncode == code, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_resources_the_embedded_ray_lacks_fail_before_any_actor(micro_world, tmp_path):
    done = run_cli("train", "--config", MICRO, f"task.cache_dir={TEST_WORLDS}",
                   f"run_dir={tmp_path}", "learner.num_cpus=64", timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "learner: one actor asks for 64 CPU; the embedded Ray has 4" in done.stderr
    assert "Traceback" not in done.stderr


SECTION_KEYS = {"learner": ["lr", "steps", "ppo_epochs", "kl", "elastic_reset", "bogus"],
                "rollout": ["replicas", "max_staleness", "sampling", "engine"],
                "reward": ["aggregation", "members", "functions"], "name": [], "seed": []}
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**9) | st.floats(allow_nan=True)
    | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["coef", "n", "x", "enabled", "path"]), inner,
                      max_size=3), max_leaves=6)


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(sorted(SECTION_KEYS)), st.one_of(
    VALUES, st.dictionaries(st.sampled_from(sum(SECTION_KEYS.values(), [])), VALUES,
                            max_size=4)), max_size=4),
    st.lists(st.tuples(st.sampled_from(["learner.lr", "rollout.sampling.n", "reward.members",
                                        "learner.kl.coef", "name", "task.kind"]),
                       st.text(max_size=6)), max_size=2))
def test_fuzz_configs_load_or_raise_config_error(tmp_path, data, overrides):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        cfg = load_config(path, [f"{k}={v}" for k, v in overrides])
    except ConfigError as e:  # the only way a config may fail, with a message
        assert str(e).strip()
        return
    assert isinstance(cfg, RunConfig)


def test_unusable_outputs_and_config_files_fail_in_one_line(micro_world, tmp_path):
    """Each probe: exit 2, one line naming the field or file, no traceback, nothing written."""
    import socket

    afile = tmp_path / "afile"
    afile.write_text("x")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    base = ["--config", MICRO, f"task.cache_dir={TEST_WORLDS}"]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        probes = [
            (["train", *base, f"run_dir={afile}"], f"run_dir: {afile} is a file"),
            (["train", *base, f"run_dir={tmp_path}/r", f"checkpoint.storage={afile}/ck"],
             f"checkpoint.storage: {afile} is a file"),
            (["train", *base, f"run_dir={tmp_path}/m", "metrics.enabled=true",
              f"metrics.port={port}"], f"metrics.port: cannot listen on 127.0.0.1:{port}"),
            (["train", "--config", str(binary)], "binary.yaml: not a text (UTF-8) file"),
            (["train", "--config", str(tmp_path)], "is a directory, not a config file"),
            (["train", *base, "seed=100000000000000000000000"], "seed: must be < 4294967296"),
            (["train", *base, "deadlines.step_s=0.001"], "deadlines.step_s: must be >= 1"),
        ]
        for args, message in probes:
            done = run_cli(*args)
            assert done.returncode == 2 and message in done.stderr, (args, done.stderr[-1500:])
            assert "Traceback" not in done.stderr
    assert not (tmp_path / "m").exists() and not (tmp_path / "r").exists()


def test_a_reward_file_that_exits_on_import_is_a_config_error(tmp_path):
    bad = tmp_path / "rewards.py"
    bad.write_text("import sys\nsys.exit(3)\n")
    done = run_cli("train", "--config", MICRO,
                   f"reward.functions=[{{path: {bad}, name: score}}]")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "called sys.exit(3)" in done.stderr and "Traceback" not in done.stderr
