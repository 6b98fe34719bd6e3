"""Storage on a local path, a file:// URI and a real S3-compatible server (moto, on
127.0.0.1); checkpoints there: the manifest as the commit mark, corruption, keep, re-writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from actors import storage
from services.checkpoint import (
    checkpoints,
    is_valid,
    latest_valid,
    learner_source,
    read_driver_state,
    read_file,
    save_checkpoint,
    step_of,
)

BUCKET = "raylign-test"


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch, request):
    """A fresh prefix in BUCKET, with the endpoint and credentials from the environment."""
    for k, v in {"AWS_ENDPOINT_URL_S3": s3_server, "AWS_ACCESS_KEY_ID": "test",
                 "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    fs, _ = storage.resolve(f"s3://{BUCKET}?allow_bucket_creation=true")
    fs.create_dir(BUCKET)
    return f"s3://{BUCKET}/{request.node.name}"


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def files(tmp_path) -> Path:
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(3 * storage.CHUNK + 123))  # several chunks
    (src / "empty").write_bytes(b"")
    (src / "sub" / "deeper" / "c.json").write_text('{"x": 1}')
    return src


def round_trip(files: Path, dest: str | Path, out: Path) -> None:
    sent = storage.upload(files, dest)
    assert sent == {k: hashlib.sha256(v).hexdigest() for k, v in tree(files).items()}
    assert storage.digests(dest) == sent and storage.list_files(dest) == sorted(sent)
    assert storage.download(dest, out, sent) == sent and tree(out) == tree(files)


def test_round_trip_on_a_local_path_and_a_file_uri(files, tmp_path):
    round_trip(files, tmp_path / "plain", tmp_path / "out1")
    uri = (tmp_path / "uri").as_uri()
    assert uri.startswith("file:///") and storage.local_path(uri) == tmp_path / "uri"
    round_trip(files, uri, tmp_path / "out2")
    assert tree(tmp_path / "uri") == tree(files)
    assert storage.write_bytes(storage.join(uri, "x", "y.json"), b"{}") == hashlib.sha256(
        b"{}").hexdigest()
    assert storage.read_bytes(tmp_path / "uri" / "x" / "y.json") == b"{}"
    assert storage.children(uri) == ["a.bin", "empty", "sub", "x"]
    storage.delete(storage.join(uri, "sub"))
    assert storage.list_files(uri) == ["a.bin", "empty", "x/y.json"]
    assert storage.read_bytes(storage.join(uri, "nope")) is None
    assert storage.list_files(tmp_path / "nope") == [] and storage.children("nope") == []


def test_join_keeps_a_uri_query_and_a_path_a_path():
    uri = "s3://b/run?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join(uri, "checkpoints", "step-000001") == (
        "s3://b/run/checkpoints/step-000001?endpoint_override=127.0.0.1:9000&scheme=http")
    assert storage.name(storage.join(uri, "step-000001")) == "step-000001"
    assert storage.join(Path("/r"), "a", "b") == Path("/r/a/b")
    assert storage.local_path(uri) is None and storage.local_path("runs/a") == Path("runs/a")


def test_round_trip_on_s3_and_a_mismatch_names_the_file(files, s3, tmp_path):
    round_trip(files, s3, tmp_path / "out")
    storage.write_bytes(storage.join(s3, "sub", "deeper", "c.json"), b'{"x": 2}')
    sent = {k: hashlib.sha256(v).hexdigest() for k, v in tree(files).items()}
    with pytest.raises(storage.ChecksumError, match="sub/deeper/c.json: sha256"):
        storage.download(s3, tmp_path / "bad", sent)
    storage.delete(storage.join(s3, "empty"))
    with pytest.raises(FileNotFoundError):
        storage.download(s3, tmp_path / "missing", {"empty": sent["empty"]})


def test_the_endpoint_may_come_from_the_uri_query(files, s3, s3_server, monkeypatch):
    storage.upload(files, s3)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    host = s3_server.removeprefix("http://")
    uri = f"{s3}?endpoint_override={host}&scheme=http"
    assert storage.list_files(uri) == sorted(tree(files))


def safetensors_writer(tag: float):
    """A learner that writes a tiny safetensors file at dest through storage, like
    LearnerActor.save: locally, then uploaded; returns the digests."""
    from safetensors.numpy import save_file

    def write(dest: str) -> dict[str, str]:
        with tempfile.TemporaryDirectory() as tmp:
            save_file({"w": np.full(64, tag, dtype=np.float32)}, f"{tmp}/state.safetensors")
            Path(tmp, "state.json").write_text(json.dumps({"tag": tag}))
            return storage.upload(Path(tmp), dest)

    return write


def save(s3: str, step: int, tag: float, keep: int = 3) -> str:
    return save_checkpoint(s3, step, {"tag": tag}, safetensors_writer(tag), keep,
                           {"metrics.jsonl": f'{{"step": {step}}}\n'.encode()})


def names(s3: str) -> list[str]:
    return [storage.name(c) for c in checkpoints(s3)]


def test_checkpoints_on_s3_round_trip_and_fall_back_on_a_corrupted_object(s3, tmp_path):
    first = save(s3, 1, 1.0)
    ckpt = save(s3, 2, 2.0)
    assert ckpt == f"{s3}/checkpoints/step-000002" and latest_valid(s3) == ckpt
    assert read_driver_state(ckpt) == {"tag": 2.0} and step_of(ckpt) == 2
    assert read_file(ckpt, "metrics.jsonl") == b'{"step": 2}\n'
    src, digests = learner_source(ckpt)
    assert sorted(digests) == ["state.json", "state.safetensors"]
    storage.download(src, tmp_path / "l", digests)
    from safetensors.numpy import load_file
    assert (load_file(str(tmp_path / "l" / "state.safetensors"))["w"] == 2.0).all()

    storage.write_bytes(storage.join(ckpt, "learner", "state.safetensors"), b"garbage")
    assert not is_valid(ckpt) and latest_valid(s3) == first and latest_valid(s3, 2) is None
    again = save(s3, 2, 2.5)  # the resumed run writes step 2 again: a new attempt
    assert storage.name(again) == "step-000002-r1" and latest_valid(s3) == again
    assert names(s3) == ["step-000002-r1", "step-000001"]  # the corrupted attempt is gone
    assert read_driver_state(latest_valid(s3, 2)) == {"tag": 2.5}


def test_on_s3_a_missing_manifest_is_invalid_and_keep_keeps_the_newest(s3):
    save(s3, 1, 1.0)
    ckpt = save(s3, 2, 2.0)
    storage.delete(storage.join(ckpt, "manifest.json"))  # as a save killed before its commit
    assert not is_valid(ckpt) and step_of(latest_valid(s3)) == 1
    save(s3, 3, 3.0, keep=2)  # clears the uncommitted step 2, keeps 1 and 3
    assert names(s3) == ["step-000003", "step-000001"]
    save(s3, 4, 4.0, keep=2)
    assert names(s3) == ["step-000004", "step-000003"]
    assert [step_of(c) for c in checkpoints(s3) if is_valid(c)] == [4, 3]


def test_on_s3_a_rewrite_keeps_the_step_valid_until_its_new_manifest(s3):
    old = save(s3, 2, 2.0)
    seen = []

    def learner(dest: str) -> dict[str, str]:  # while the new attempt is being written
        seen.append(latest_valid(s3))
        return safetensors_writer(2.5)(dest)

    new = save_checkpoint(s3, 2, {"tag": 2.5}, learner, 3)
    assert seen == [old] and latest_valid(s3) == new and names(s3) == ["step-000002-r1"]
    assert read_driver_state(new) == {"tag": 2.5}


def test_on_s3_a_failed_save_leaves_nothing_and_the_earlier_checkpoints(s3):
    from services.checkpoint import CheckpointError

    save(s3, 1, 1.0)

    def broken(dest: str) -> dict[str, str]:
        storage.write_bytes(storage.join(dest, "half"), b"x")
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match="checkpoint of step 2 not written"):
        save_checkpoint(s3, 2, {}, broken, 3)
    assert names(s3) == ["step-000001"] and step_of(latest_valid(s3)) == 1

    def lying(dest: str) -> dict[str, str]:  # digests of a file it did not write
        return {"other": "0" * 64}

    with pytest.raises(CheckpointError, match="not those the manifest would list"):
        save_checkpoint(s3, 2, {}, lying, 3)
    assert names(s3) == ["step-000001"]


def test_learner_actor_saves_to_and_loads_from_s3(micro_world, s3):
    from actors.learner import LearnerActor
    from learner.settings import PPOSettings

    dirs = [str(d) for d in micro_world.sft_dirs]
    learner = LearnerActor(PPOSettings(minibatch_size=4), dirs[0], dirs, pad_token_id=0)
    learner.trainer.version = 7
    ckpt = save_checkpoint(s3, 7, {}, learner.save, 2)
    src, digests = learner_source(ckpt)
    assert {"state.safetensors", "state.json"} <= set(digests)
    again = LearnerActor(PPOSettings(minibatch_size=4), dirs[0], dirs, pad_token_id=0)
    assert again.load(src, digests) == 7
    storage.write_bytes(storage.join(src, "state.json"), b"{}")
    with pytest.raises(storage.ChecksumError, match="state.json"):
        again.load(src, digests)


def test_a_run_checkpoints_to_s3_and_resumes_in_a_fresh_run_dir(micro_world, s3, tmp_path):
    """`raylign train` with checkpoint.storage on S3, stopped (SIGTERM) after step 2, resumed
    from another run dir (a new node: nothing local), finishes with every row once and its
    outputs uploaded; no checkpoint is ever written to a local disk."""

    from tests.services.test_pipeline import TEST_WORLDS, micro, raylign_train, rows
    from tests.services.test_reliability import _sigterm_after

    overrides = ["learner.steps=5", "checkpoint.every=1", f"checkpoint.storage={s3}",
                 f"task.cache_dir={TEST_WORLDS}"]

    first = micro(tmp_path / "a", *overrides)
    _sigterm_after(raylign_train(tmp_path / "a", *overrides), first, 2)
    ckpt = latest_valid(first.storage)
    assert isinstance(ckpt, str) and ckpt.startswith(f"{s3}/micro/checkpoints/step-")
    done = step_of(ckpt)

    second = micro(tmp_path / "b", *overrides)  # the same run, from a node that has nothing
    proc = raylign_train(tmp_path / "b", *overrides, resume=True)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert f"resumed from {ckpt}" in out
    assert [r["step"] for r in rows(second)] == list(range(1, 6))  # rows 1..done came along
    summary = json.loads((second.path / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["ledger"]["trained"] == 5 * 16 and done < 5
    outputs = storage.list_files(summary["outputs"])
    assert {"summary.json", "metrics.jsonl", "config.json"} <= set(outputs)
    assert not list(tmp_path.rglob("checkpoints"))  # nothing checkpointed on a local disk
