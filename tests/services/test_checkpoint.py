"""Checkpoints on real files: permissions, kills at every point of a re-write, a full disk."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.checkpoint import (
    CheckpointError,
    is_valid,
    latest_valid,
    read_driver_state,
    read_file,
    save_checkpoint,
)
from services.prometheus_metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]


def writer(tag: str, size: int = 1000):
    return lambda d: (Path(d) / "state.bin").write_bytes(tag.encode()[:1] * size)


def save(run: Path, step: int, tag: str, keep: int = 3) -> Path:
    return save_checkpoint(run, step, {"tag": tag}, writer(tag), keep)


def tag(ckpt: Path) -> str:
    return json.loads((ckpt / "driver.json").read_text())["tag"]


def leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("."))


def child(script: str, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_save_then_latest_valid_private_and_clean(tmp_path):
    save(tmp_path, 1, "a")
    ckpt = save(tmp_path, 2, "b")
    assert latest_valid(tmp_path) == ckpt and tag(ckpt) == "b" and is_valid(ckpt)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-000001", "step-000002"]  # no temp dirs, no LATEST
    for p in [tmp_path / "checkpoints", *ckpt.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))
    save(tmp_path, 3, "c", keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-000002", "step-000003"]


def test_extra_files_and_the_driver_state_are_read_back(tmp_path):
    ckpt = save_checkpoint(str(tmp_path), 1, {"tag": "a"}, writer("a"), 3,
                           {"metrics.jsonl": b'{"step": 1}\n', "logs/x.txt": b"x"})
    assert ckpt == tmp_path / "checkpoints" / "step-000001" and is_valid(ckpt)
    assert read_driver_state(ckpt) == {"tag": "a"} and read_file(ckpt, "logs/x.txt") == b"x"
    assert read_file(ckpt, "metrics.jsonl") == b'{"step": 1}\n'
    assert read_file(ckpt, "nope") is None
    assert json.loads(read_file(ckpt, "manifest.json")).keys() == {
        "driver.json", "learner/state.bin", "logs/x.txt", "metrics.jsonl"}
    (ckpt / "stray").write_bytes(b"")  # a file the manifest does not list
    assert not is_valid(ckpt)
    for bad in ("driver.json", "learner/x", "../x", "/abs", "manifest.json"):
        with pytest.raises(ValueError, match="may not be named"):
            save_checkpoint(tmp_path, 2, {}, writer("b"), 3, {bad: b""})


def test_a_corrupted_file_falls_back_and_rewriting_the_step_replaces_it(tmp_path):
    save(tmp_path, 1, "a")
    bad = save(tmp_path, 2, "b")
    (bad / "learner" / "state.bin").write_bytes(b"x")
    assert latest_valid(tmp_path).name == "step-000001"
    save(tmp_path, 2, "c")  # the resumed run writes step 2 again
    assert latest_valid(tmp_path).name == "step-000002" and tag(bad) == "c"
    assert leftovers(tmp_path) == []


# Saves step 2 again (tag "new"), killing itself (SIGKILL) just before its k-th call of a
# filesystem operation that makes the checkpoint durable or swaps/deletes directories
# (k = 0: never); prints how many such calls it made.
KILL_AT_CALL = """
import os, signal, sys
from pathlib import Path
from services.checkpoint import save_checkpoint
run, kill_at, calls = Path(sys.argv[1]), int(sys.argv[2]), [0]
def killing(fn):
    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return call
for name in ("replace", "fsync", "unlink", "rmdir"):
    setattr(os, name, killing(getattr(os, name)))
save_checkpoint(run, 2, {"tag": "new"},
                lambda d: (Path(d) / "state.bin").write_bytes(b"n" * 1000), 3)
print(calls[0])
"""


def test_a_kill_at_any_point_of_a_rewrite_leaves_the_old_or_the_new_step(tmp_path):
    """Re-writing the only checkpoint (the strictest case: no earlier step to fall back on)."""
    save(tmp_path / "count", 2, "old")
    first = child(KILL_AT_CALL, tmp_path / "count", 0)
    assert first.returncode == 0, first.stderr
    n = int(first.stdout)
    assert n >= 14  # fsyncs (3 files, 2 dirs, 2 of the root), 2 renames, deleting the old
    seen = []
    for k in range(1, n + 1):
        run = tmp_path / f"kill-{k}"
        save(run, 2, "old")
        r = child(KILL_AT_CALL, run, k)
        assert r.returncode == -9, (k, r.stderr)
        ckpt = latest_valid(run)
        assert ckpt is not None, k
        assert ckpt.name == "step-000002" or ckpt.name.startswith(".old-step-000002-"), k
        seen.append(tag(ckpt))
        save(run, 3, "next")  # the next save clears what the killed one left
        assert leftovers(run) == [], k
        assert tag(run / "checkpoints" / "step-000002") == seen[-1], k
        assert latest_valid(run).name == "step-000003"
    assert seen == sorted(seen, key=["old", "new"].index)  # old ... old, new ... new
    assert seen[0] == "old" and seen[-1] == "new"


def test_a_stale_temp_dir_of_another_process_is_removed(tmp_path):
    root = tmp_path / "checkpoints"
    stale = root / ".tmp-step-000005-999999999"
    (stale / "learner").mkdir(parents=True)
    (stale / "learner" / "state.bin").write_bytes(b"half")
    (root / "LATEST").write_text("step-000005")  # written by an older version
    save(tmp_path, 1, "a")
    assert not stale.exists() and not (root / "LATEST").exists() and leftovers(tmp_path) == []


# Saves step 1, then step 2 with a learner that writes more than the file size limit
# (RLIMIT_FSIZE; SIGXFSZ ignored, so the write fails with EFBIG as on a full disk).
FULL_DISK = """
import json, resource, signal, sys
from pathlib import Path
import numpy as np
from services.checkpoint import CheckpointError, save_checkpoint
run, how = Path(sys.argv[1]), sys.argv[2]
save_checkpoint(run, 1, {"tag": "a"}, lambda d: (Path(d) / "state.bin").write_bytes(b"a"), 3)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
def learner(d):
    if how == "bytes":
        (Path(d) / "state.bin").write_bytes(b"b" * (1 << 20))
    else:  # the learner's real writer: safetensors raises its own error, not an OSError
        from safetensors.numpy import save_file
        save_file({"w": np.zeros(1 << 18, dtype=np.float32)}, str(Path(d) / "state.safetensors"))
try:
    save_checkpoint(run, 2, {"tag": "b"}, learner, 3)
except CheckpointError as e:
    print(json.dumps({"step": e.step, "errno": e.errno, "msg": str(e)}))
"""


@pytest.mark.parametrize("how", ["bytes", "safetensors"])
def test_a_full_disk_raises_checkpoint_error_and_keeps_the_earlier_checkpoint(tmp_path, how):
    r = child(FULL_DISK, tmp_path, how)
    assert r.returncode == 0, r.stderr
    err = json.loads(r.stdout)
    assert err["step"] == 2 and "checkpoint of step 2" in err["msg"], err
    assert "too large" in err["msg"], err
    if how == "bytes":
        assert err["errno"] == errno.EFBIG
    assert leftovers(tmp_path) == []
    assert latest_valid(tmp_path).name == "step-000001"


def test_a_failed_periodic_checkpoint_is_counted_and_the_run_carries_on(capsys):
    from services.pipeline import Driver

    def full_disk():
        raise CheckpointError(4, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    driver = SimpleNamespace(cfg=SimpleNamespace(checkpoint=SimpleNamespace(every=2)),
                             state=SimpleNamespace(steps=4), metrics=Metrics(),
                             _checkpoint=full_disk)
    Driver._maybe_checkpoint(driver)
    assert driver.metrics.registry.get_sample_value("raylign_checkpoint_failures_total") == 1
    assert "checkpoint of step 4 not written" in capsys.readouterr().out
