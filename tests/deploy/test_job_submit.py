"""docs/deploy.md step 2 for real: a `ray start` head on 127.0.0.1 with token auth (Ray 2.60's
default), a second node, and `raylign train` submitted with `ray job submit --working-dir`: the
job trains and succeeds, every socket of the cluster listens on loopback. And a driver that
cannot reach its cluster exits 3 at once instead of `ray.init` retrying for ever.

Isolation from the user's and other tests' Ray: a temp dir of our own (`--temp-dir`: session,
sockets, the `ray_current_cluster` address file that a job's driver is pointed at), a token
file of our own (`RAY_AUTH_TOKEN_PATH`; ~/.ray/auth_token is neither read nor written), free
ports. `ray stop` would stop every Ray of this user on the machine (other tests' clusters
too), so teardown kills only this cluster's processes: each `ray start` runs in a new session
whose daemons keep its process group, plus their descendants (Ray workers call setsid)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, TEST_WORLDS

RAY = str(Path(sys.executable).with_name("ray"))
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
SAMPLES_PER_STEP = 16  # deploy/configs/micro.yaml learner.samples_per_step

# A second node on this machine, on loopback, through `ray start`'s own code. Ray 2.60 refuses
# a non-head node when RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with 1 rewrites 127.0.0.1 in
# --address and --node-ip-address to the host's external IP (resolve_ip_for_localhost). So the
# env var stays 0 (addresses stay 127.0.0.1) and only the refusal is switched off.
RAY_START_ANOTHER_NODE = (
    "import sys, types; import ray._private.ray_constants as c; import ray.scripts.scripts as s; "
    "s.ray_constants = types.SimpleNamespace(**{**vars(c), 'ENABLE_RAY_CLUSTER': True}); "
    "sys.exit(s.main())"
)


def free_port() -> int:
    """A free port on 127.0.0.1 outside 10002-19999 (Ray's worker ports)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not 10002 <= port <= 19999:
            return port


def cluster_processes(groups: list[int]) -> set[psutil.Process]:
    """The daemons of our `ray start`s (their process groups) and everything they started."""
    procs = set()
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) in groups:
                procs.add(p)
        except (ProcessLookupError, psutil.Error):
            pass
    for p in list(procs):
        with contextlib.suppress(psutil.Error):
            procs.update(p.children(recursive=True))
    return procs


def kill_cluster(groups: list[int]) -> None:
    procs = cluster_processes(groups)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def ray_start(args: list[str], env: dict, groups: list[int]) -> str:
    """Run `ray start` (args after `start`) in a session of its own; returns its output."""
    proc = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    groups.append(proc.pid)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"ray start timed out:\n{out[-3000:]}")
    assert proc.returncode == 0, f"{' '.join(args[:3])} failed:\n{out[-3000:]}"
    return out


@pytest.fixture
def loopback_cluster():
    """A head (4 CPUs, the dashboard for job submission) and a worker node (2 CPUs, the custom
    resource `rollout`), both on 127.0.0.1, token auth; yields (env for clients, dashboard
    address, GCS port, process groups). Started as docs/deploy.md step 2 says, with our
    ports, temp dirs and token."""
    tmp = Path(tempfile.mkdtemp(prefix="rlj-", dir="/tmp"))  # short: unix sockets live here
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           # `raylign` for the job's entrypoint: the driver's PATH is the head's
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    port, dashboard = free_port(), free_port()
    groups: list[int] = []
    try:
        head = ray_start([
            RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
            "--num-cpus=4", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={free_port()}",
            "--disable-usage-stats", f"--temp-dir={tmp / 'ray'}"], env, groups)
        assert "Local node IP: 127.0.0.1" in strip_ansi(head), head[-3000:]
        node = ray_start([
            sys.executable, "-c", RAY_START_ANOTHER_NODE, "start",
            f"--address=127.0.0.1:{port}", "--num-cpus=2", "--node-ip-address=127.0.0.1",
            '--resources={"rollout": 2}', f"--dashboard-agent-listen-port={free_port()}",
            # a temp dir of its own, as on another machine: in the head's, this node's
            # runtime-env agent unpacks the job's working dir over the one the driver runs in
            f"--temp-dir={tmp / 'node'}"], env, groups)
        assert "Local node IP: 127.0.0.1" in strip_ansi(node), node[-3000:]
        yield env, f"http://127.0.0.1:{dashboard}", port, groups
    finally:
        kill_cluster(groups)
        shutil.rmtree(tmp, ignore_errors=True)


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_ray_job_submit_trains_on_a_loopback_cluster(loopback_cluster, micro_world, tmp_path):
    env, dashboard, port, groups = loopback_cluster
    store = tmp_path / "store"  # outlives the job; run_dir stays relative (the default):
    job = f"raylign-test-{secrets.token_hex(4)}"  # inside the job's temporary working dir
    # rollout on the worker node (only it has `rollout`): the job spans both nodes
    submit = [RAY, "job", "submit", "--address", dashboard, "--submission-id", job,
              "--working-dir", str(REPO), "--",
              "raylign", "train", "--config", "deploy/configs/micro.yaml", "learner.steps=2",
              "cluster.address=auto", f"task.cache_dir={TEST_WORLDS}",
              f"checkpoint.storage={store}", "rollout.resources.rollout=1"]
    started = time.monotonic()
    try:
        done = subprocess.run(submit, env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=300)
    except subprocess.TimeoutExpired as e:
        subprocess.run([RAY, "job", "stop", "--address", dashboard, job], env=env,
                       capture_output=True, timeout=60)
        pytest.fail(f"the job did not finish in 300 s:\n{(e.stdout or b'')[-4000:]!r}")
    log = strip_ansi(done.stdout + done.stderr)
    status = subprocess.run([RAY, "job", "status", "--address", dashboard, job], env=env,
                            capture_output=True, text=True, timeout=60)
    state = strip_ansi(status.stdout + status.stderr)
    assert f"Job '{job}' succeeded" in state, (state, log[-4000:])  # JobStatus.SUCCEEDED
    assert done.returncode == 0, log[-4000:]
    # the driver joined the head on loopback (the bug: it dialled the host's external IP)
    assert "Connecting to existing Ray cluster at address: 127.0.0.1:" in log, log[-4000:]

    outputs = store / "micro" / "outputs"  # summary, metrics, plots, the export
    summary = json.loads((outputs / "summary.json").read_text())
    assert summary["steps"] == 2 and not summary["interrupted"]
    assert summary["outputs"] == str(outputs)
    assert (outputs / "export" / "step-000002" / "model.safetensors").is_file()
    assert list((store / "micro" / "checkpoints").glob("step-*"))
    ledger = summary["ledger"]
    assert ledger["trained"] == 2 * SAMPLES_PER_STEP
    assert set(ledger) <= {"trained"} | {k for k in ledger if k.startswith("dropped:")}

    listening = set()
    for p in cluster_processes(groups):
        with contextlib.suppress(psutil.Error):
            listening |= {(c.laddr.ip, c.laddr.port, p.name()) for c in p.net_connections("inet")
                          if c.status == psutil.CONN_LISTEN}
    assert listening and all(ip in LOOPBACK for ip, _, _ in listening), sorted(listening)

    # ops commands join a loopback cluster the same way, even with the env var at Ray's Linux
    # default (1): ray.init connects at once and finds no job (the run has ended)
    ops = subprocess.run([sys.executable, "-m", "services.cli", "status", "--address",
                          f"127.0.0.1:{port}"], cwd=REPO, capture_output=True, text=True,
                         env={**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}, timeout=120)
    assert ops.returncode == 3 and "no running raylign job" in ops.stderr, ops.stderr[-3000:]
    print(f"job {job}: {time.monotonic() - started:.0f} s")


def test_a_driver_without_its_cluster_exits_3_at_once(tmp_path):
    """A job's driver gets RAY_ADDRESS=127.0.0.1:PORT; nothing there (and the env var at 1,
    which made Ray dial the external IP): one line, exit 3, in seconds."""
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{free_port()}",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "train", "--config", "deploy/configs/micro.yaml",
         "cluster.address=auto", f"run_dir={tmp_path}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr[-3000:]
    assert f"no Ray cluster at {env['RAY_ADDRESS']}: " in done.stderr  # not the external IP
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60
