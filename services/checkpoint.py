"""Durable checkpoints: STORAGE/checkpoints/step-000010/{learner/, driver.json, manifest.json}.

STORAGE is a local path or a URI (`s3://bucket/prefix`, `gs://...`, `file:///abs/path`; see
actors.storage). Each checkpoint's manifest lists the sha256 of every other file in it, and
a checkpoint is valid only if its files are exactly those, with those digests: `latest_valid`
returns the newest valid one and skips the rest.

On a local path (or file://) a checkpoint is written into a temporary directory, its files and
directories are fsynced (files 0600, directories 0700), and it is renamed into place.
Re-writing a step puts the old directory aside (`.old-step-N-<pid>`) before the new one is
renamed in and deletes it only then, so a kill at any point leaves the old or the new step
valid (`latest_valid` reads both names). The next save clears what a killed one left behind.

An object store has no atomic rename, so there the manifest, written last, is the commit
mark: each object appears whole when written, and a checkpoint without its manifest is not
valid. A step is never re-written in place: a re-write goes to a new attempt
(`step-N-r1`, `step-N-r2`, ...), `latest_valid` prefers the newest valid attempt of a step,
and the older attempts of the step are deleted (manifest first) only after the new manifest
is written. So a step that was valid stays valid at every point of a re-write, and a kill
leaves at most a manifest-less attempt, which the next save deletes.

A save that fails (a full disk, an I/O error) removes what it wrote and raises
`CheckpointError`; the earlier checkpoints are untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from actors import storage as store
from services.alarm import Alarm
from services.ledger import Ledger

MANIFEST = "manifest.json"
DRIVER = "driver.json"
RECOMMENDED = "recommended.json"
# step-N; put aside by a local re-write: .old-step-N-pid; an object store's re-write: step-N-rK
_NAME = re.compile(r"(\.old-)?step-(\d+)(?:-(r)?(\d+))?")

Location = Path | str  # a local path, or a URI
WriteLearner = Callable[[str], "dict[str, str] | None"]


class CheckpointError(OSError):
    """A checkpoint could not be written; the earlier ones are intact."""

    def __init__(self, step: int, cause: BaseException):
        lines = str(cause).strip().splitlines()  # a Ray task error ends with its cause's line
        super().__init__(f"checkpoint of step {step} not written: {type(cause).__name__}: "
                         f"{lines[-1] if lines else ''}")
        self.step, self.errno = step, getattr(cause, "errno", None)


def _key(name: str) -> tuple[int, bool, int] | None:
    """Newer sorts higher: (step, not put aside, attempt); None for another name."""
    m = _NAME.fullmatch(name)
    return (int(m.group(2)), not m.group(1), int(m.group(4)) if m.group(3) else 0) if m else None


def step_of(ckpt: Location) -> int:
    """The step a checkpoint holds."""
    return _key(store.name(ckpt))[0]


def _root(storage: Location) -> Location:
    local = store.local_path(storage)
    return store.join(str(storage) if local is None else local, "checkpoints")


def _candidates(root: Location) -> list[Location]:
    found = [n for n in store.children(root) if _key(n) is not None]
    return [store.join(root, n) for n in sorted(found, key=_key, reverse=True)]


def checkpoints(storage: Location) -> list[Location]:
    """Every checkpoint under STORAGE/checkpoints, valid or not, newest first."""
    return _candidates(_root(storage))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _recover(root: Path) -> None:
    """Clear what a killed local save left: temp dirs go; a step put aside comes back if its
    replacement never arrived, else goes. (`LATEST`, written by older versions, goes too.)"""
    for tmp in root.glob(".tmp-step-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for old in root.glob(".old-step-*"):
        final = root / old.name.removeprefix(".old-").rsplit("-", 1)[0]
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)
    (root / "LATEST").unlink(missing_ok=True)


def _write(tmp: Path, files: dict[str, bytes], write_learner: WriteLearner) -> None:
    (tmp / "learner").mkdir(parents=True)
    write_learner(str(tmp / "learner"))
    for name, data in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
    (tmp / MANIFEST).write_text(json.dumps(store.digests(tmp), indent=1))
    for p in [*sorted(tmp.rglob("*"), reverse=True), tmp]:  # each dir after its contents
        p.chmod(0o700 if p.is_dir() else 0o600)
        _fsync(p)


def _swap(tmp: Path, final: Path) -> None:
    """Rename tmp to final; an existing final is put aside first and deleted last."""
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
        _fsync(final.parent)
    try:
        os.replace(tmp, final)
    except OSError:
        if old.exists():
            os.replace(old, final)
        raise
    _fsync(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _save_local(root: Path, step: int, files: dict[str, bytes], write_learner: WriteLearner
                ) -> Path:
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)
        _recover(root)
        _write(tmp, files, write_learner)
        _swap(tmp, final)
    except Exception as e:  # OSError, or whatever the learner's save raised (e.g. safetensors')
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(step, e) from e
    return final


def _remove(ckpt: Location) -> None:
    if isinstance(ckpt, Path):
        shutil.rmtree(ckpt, ignore_errors=True)
        return
    with contextlib.suppress(OSError):  # the manifest first: a part left is not valid
        store.delete(store.join(ckpt, MANIFEST))
        store.delete(ckpt)


def _save_remote(root: str, step: int, files: dict[str, bytes], write_learner: WriteLearner
                 ) -> str:
    attempts = [_key(store.name(c))[2] for c in _candidates(root) if step_of(c) == step]
    ckpt = store.join(root, f"step-{step:06d}" + (f"-r{max(attempts) + 1}" if attempts else ""))
    try:
        learner_dir = store.join(ckpt, "learner")
        learner = write_learner(str(learner_dir))
        manifest = {f"learner/{k}": v for k, v in
                    (store.digests(learner_dir) if learner is None else learner).items()}
        manifest |= {n: store.write_bytes(store.join(ckpt, n), data) for n, data in files.items()}
        if store.list_files(ckpt) != sorted(manifest):
            raise OSError(f"{ckpt}: the files stored are not those the manifest would list "
                          f"({store.list_files(ckpt)} != {sorted(manifest)})")
        store.write_bytes(store.join(ckpt, MANIFEST), json.dumps(manifest, indent=1).encode())
    except Exception as e:  # whatever the learner's save or the store raised
        _remove(ckpt)
        raise CheckpointError(step, e) from e
    return ckpt
def _driver_files(driver_state: dict, extra_files: dict[str, bytes]) -> dict[str, bytes]:
    def bad(name: str) -> bool:
        parts = name.split("/")
        return name in (MANIFEST, DRIVER) or parts[0] == "learner" or bool(
            {"", ".", ".."} & set(parts))

    if wrong := [n for n in extra_files if bad(n)]:
        raise ValueError(f"extra checkpoint files may not be named {wrong} (reserved, or not "
                         "a relative path)")
    return {DRIVER: json.dumps(driver_state).encode(), **extra_files}


def _prune(root: Location, ckpt: Location, keep: int, protect: Collection[int] = ()) -> None:
    """Keep `ckpt`, the newest `keep` steps committed (with a manifest) and the steps in
    `protect`; other attempts of ckpt's step and ones never committed (a killed save's) go."""
    found = _candidates(root)
    committed = [c for c in found if store.exists(store.join(c, MANIFEST))]
    kept = set(sorted({step_of(c) for c in committed})[-keep:]) | set(protect)
    for c in found:
        if c != ckpt and (c not in committed or step_of(c) not in kept
                          or step_of(c) == step_of(ckpt)):
            _remove(c)


def save_checkpoint(storage: Location, step: int, driver_state: dict,
                    write_learner: WriteLearner, keep: int,
                    extra_files: dict[str, bytes] | None = None,
                    protect: Collection[int] = ()) -> Location:
    """Write step `step` under STORAGE/checkpoints: the learner's files through
    `write_learner(dest)` (it writes them at `dest`, its learner/ location, and returns their
    {relative path: sha256}, or None to have them hashed here), `driver_state` as driver.json,
    and `extra_files` ({relative name: bytes}); keep the newest `keep` steps and the steps in
    `protect` (the alarm's recommended checkpoint and its candidate). Returns the
    checkpoint (a Path on local storage, else a URI). Raises CheckpointError, the earlier
    checkpoints intact, if it cannot be written."""
    files = _driver_files(driver_state, extra_files or {})
    root = _root(storage)
    if isinstance(root, Path):
        ckpt = _save_local(root, step, files, write_learner)
    else:
        ckpt = _save_remote(root, step, files, write_learner)
    _prune(root, ckpt, keep, protect)
    return ckpt


def write_recommended(storage: Location, info: dict) -> None:
    """STORAGE/recommended.json: the checkpoint the over-optimisation alarm recommends."""
    store.write_bytes(store.join(storage, RECOMMENDED), json.dumps(info, indent=1).encode())


def read_recommended(storage: Location) -> dict | None:
    """What `write_recommended` wrote, or None if the run's alarm recommended nothing."""
    blob = store.read_bytes(store.join(storage, RECOMMENDED))
    return None if blob is None else json.loads(blob)


def _manifest(ckpt: Location) -> dict[str, str]:
    return json.loads(store.read_bytes(store.join(ckpt, MANIFEST)) or b"null")


def is_valid(ckpt: Location) -> bool:
    """Whether ckpt's files are exactly those its manifest lists, with those sha256s."""
    try:
        found = store.digests(ckpt)
        return found.pop(MANIFEST, None) is not None and found == _manifest(ckpt)
    except (OSError, ValueError):
        return False


def latest_valid(storage: Location, step: int | None = None) -> Location | None:
    """The newest valid checkpoint under STORAGE/checkpoints (of `step`, if given), or None;
    on a local path, a step put aside by a save that was killed counts, after its
    replacement. (It reads every file of each checkpoint it checks.)"""
    return next((c for c in checkpoints(storage)
                 if (step is None or step_of(c) == step) and is_valid(c)), None)


def read_file(ckpt: Location, name: str) -> bytes | None:
    """The bytes of a checkpoint's file (e.g. an extra file), or None if it has none."""
    return store.read_bytes(store.join(ckpt, name))


def read_driver_state(ckpt: Location) -> dict:
    """The driver state a checkpoint holds (DriverState.from_json reads it)."""
    return json.loads(read_file(ckpt, DRIVER))


def learner_source(ckpt: Location) -> tuple[str, dict[str, str]]:
    """Where a checkpoint's learner files are and their {relative path: sha256}: the
    arguments of LearnerActor.load."""
    return str(store.join(ckpt, "learner")), {
        k.removeprefix("learner/"): v for k, v in _manifest(ckpt).items()
        if k.startswith("learner/")}


@dataclass
class DriverState:
    """What a checkpoint holds of the driver besides its prompts (the ledger and the cursor,
    which the driver's PromptFlow owns); the learner saves its own state."""

    steps: int = 0  # learner versions published
    restarts: dict[str, int] = field(default_factory=dict)  # by Ray, per role
    replacements: dict[str, int] = field(default_factory=dict)  # new actors, per role
    alarm: Alarm | None = None  # the over-optimisation alarm's state
    candidate: int | None = None  # newest checkpoint step taken while the alarm was ok
    recommended: int | None = None  # the candidate when the alarm fired

    def to_json(self, ledger: Ledger, cursor: int) -> dict:
        """This state with the prompts' (`cursor`: the next new prompt id)."""
        return {"steps": self.steps, "cursor": cursor, "ledger": ledger.to_json(),
                "restarts": self.restarts, "replacements": self.replacements,
                "alarm": self.alarm and self.alarm.to_json(), "candidate": self.candidate,
                "recommended": self.recommended}

    @classmethod
    def from_json(cls, d: dict) -> tuple[DriverState, Ledger, int]:
        """(the state, the ledger, the cursor) of `to_json`'s dict."""
        state = cls(d["steps"], d["restarts"], d.get("replacements", {}),
                    Alarm.from_json(d["alarm"]) if d.get("alarm") else None,
                    d.get("candidate"), d.get("recommended"))
        return state, Ledger.from_json(d["ledger"]), d["cursor"]
