"""Atomic checkpoints: RUN_DIR/checkpoints/step-000010/{learner/, driver.json}.

A checkpoint is written into a temporary directory and renamed into place, then `LATEST` is
replaced atomically; a crash mid-write leaves the previous checkpoint valid. Each checkpoint
lists the sha256 of its files, and `latest_valid` skips one whose files do not match.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.ledger import Ledger

MANIFEST = "manifest.json"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def save_checkpoint(
    run_dir: Path, step: int, driver_state: dict, write_learner: Callable[[Path], None], keep: int
) -> Path:
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "learner").mkdir(parents=True)
    write_learner(tmp / "learner")
    (tmp / "driver.json").write_text(json.dumps(driver_state))
    manifest = {str(p.relative_to(tmp)): _digest(p) for p in _files(tmp)}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    latest_tmp = root / ".LATEST.tmp"
    latest_tmp.write_text(final.name)
    os.replace(latest_tmp, root / "LATEST")
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def is_valid(ckpt: Path) -> bool:
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    files = {str(p.relative_to(ckpt)) for p in _files(ckpt)}
    if files != set(manifest):
        return False
    return all(_digest(ckpt / name) == digest for name, digest in manifest.items())


def latest_valid(run_dir: Path) -> Path | None:
    """The newest checkpoint whose files match its manifest (None if there is none)."""
    root = run_dir / "checkpoints"
    for ckpt in sorted(root.glob("step-*"), reverse=True):
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
