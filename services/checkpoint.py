"""Durable checkpoints: RUN_DIR/checkpoints/step-000010/{learner/, driver.json, manifest.json}.

A checkpoint is written into a temporary directory, its files and directories are fsynced
(files 0600, directories 0700), and it is renamed into place. Re-writing a step puts the old
directory aside (`.old-step-N-<pid>`) before the new one is renamed in and deletes it only then,
so a kill at any point leaves the old or the new step valid (`latest_valid` reads both names).
Each checkpoint lists the sha256 of its files, and `latest_valid` skips one whose files do not
match. A save that fails (a full disk, an I/O error) removes its temporary directory and raises
`CheckpointError`; the earlier checkpoints are untouched. The next save clears what a killed
one left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.ledger import Ledger

MANIFEST = "manifest.json"
CHUNK = 1 << 20
_NAME = re.compile(r"(?:\.old-)?step-(\d+)(?:-\d+)?")  # step-N, or one put aside: .old-step-N-pid


class CheckpointError(OSError):
    """A checkpoint could not be written; the earlier ones are intact."""

    def __init__(self, step: int, cause: BaseException):
        lines = str(cause).strip().splitlines()  # a Ray task error ends with its cause's line
        super().__init__(f"checkpoint of step {step} not written: {type(cause).__name__}: "
                         f"{lines[-1] if lines else ''}")
        self.step, self.errno = step, getattr(cause, "errno", None)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _step(p: Path) -> int | None:
    m = _NAME.fullmatch(p.name)
    return int(m.group(1)) if m else None


def _recover(root: Path) -> None:
    """Clear what a killed save left: temp dirs go; a step put aside comes back if its
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


def _write(tmp: Path, driver_state: dict, write_learner: Callable[[Path], None]) -> None:
    (tmp / "learner").mkdir(parents=True)
    write_learner(tmp / "learner")
    (tmp / "driver.json").write_text(json.dumps(driver_state))
    manifest = {str(p.relative_to(tmp)): _digest(p) for p in _files(tmp)}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
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


def save_checkpoint(
    run_dir: Path, step: int, driver_state: dict, write_learner: Callable[[Path], None], keep: int
) -> Path:
    """Write step `step` (the learner's files through `write_learner(dir)`), keep the newest
    `keep`; raise CheckpointError, the earlier checkpoints intact, if it cannot be written."""
    root = run_dir / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)
        _recover(root)
        _write(tmp, driver_state, write_learner)
        _swap(tmp, final)
    except Exception as e:  # OSError, or whatever the learner's save raised (e.g. safetensors')
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(step, e) from e
    steps = sorted((p for p in root.glob("step-*") if _step(p) is not None), key=_step)
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def is_valid(ckpt: Path) -> bool:
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
        files = {str(p.relative_to(ckpt)) for p in _files(ckpt)}
        return files == set(manifest) and all(
            _digest(ckpt / name) == digest for name, digest in manifest.items())
    except (OSError, ValueError):
        return False


def latest_valid(run_dir: Path) -> Path | None:
    """The newest checkpoint whose files match its manifest (None if there is none); a step
    put aside by a save that was killed counts, after its replacement."""
    root = run_dir / "checkpoints"
    found = [p for p in [*root.glob("step-*"), *root.glob(".old-step-*")] if _step(p) is not None]
    for ckpt in sorted(found, key=lambda p: (_step(p), p.name.startswith("step-")), reverse=True):
        if is_valid(ckpt):
            return ckpt
    return None


@dataclass
class DriverState:
    """What a checkpoint holds of the driver (the learner saves its own state)."""

    steps: int = 0  # learner versions published
    cursor: int = 0  # next prompt id
    ledger: Ledger = field(default_factory=Ledger)
    restarts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"steps": self.steps, "cursor": self.cursor, "ledger": self.ledger.to_json(),
                "restarts": self.restarts}

    @classmethod
    def from_json(cls, d: dict) -> DriverState:
        return cls(d["steps"], d["cursor"], Ledger.from_json(d["ledger"]), d["restarts"])
