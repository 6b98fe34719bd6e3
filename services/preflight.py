"""Checks that run before Ray starts and before anything is written: a bad config, run dir,
resume, context or resource request fails here with a ConfigError (exit 2)."""

from __future__ import annotations

import json
import shutil

from actors import storage
from services.config import ConfigError, RunConfig, model_context, resumable_fields
from tasks.base import Task


def check_resumable(cfg: RunConfig, allow_config_change: bool = False) -> None:
    """--resume needs a valid checkpoint and the config the run was started with (the one
    saved with the checkpoint; but for the fields the schema marks RESUMABLE), unless
    allow_config_change."""
    from services.checkpoint import latest_valid, read_file

    ckpt = latest_valid(cfg.storage)
    if ckpt is None:
        raise ConfigError(f"--resume: no valid checkpoint under {cfg.storage}/checkpoints")
    blob = read_file(ckpt, "config.json") or (cfg.path / "config.json").read_bytes()
    saved, now = _flat(json.loads(blob)), _flat(cfg.model_dump(mode="json"))
    changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k)
                     and not k.startswith(resumable_fields()))
    if changed and not allow_config_change:
        raise ConfigError(f"--resume: the config differs from the run's (saved with {ckpt}) in "
                          f"{', '.join(changed)} (--allow-config-change resumes anyway)")


def check_fresh(cfg: RunConfig, overwrite: bool = False) -> None:
    """A run dir belongs to one run: a start without --resume into a dir (or checkpoint
    storage) that holds a run is refused, or with `overwrite` that run is deleted first."""
    from services.checkpoint import checkpoints

    held = [n for n in ("config.json", "checkpoints", "metrics.jsonl", "summary.json", "export")
            if (cfg.path / n).exists()]
    stored = cfg.storage != cfg.path and bool(checkpoints(cfg.storage))
    if not held and not stored:
        return
    where = f"{cfg.path} ({', '.join(held)})" if held else f"{cfg.storage}/checkpoints"
    if not overwrite:
        raise ConfigError(f"{where} already holds a run named '{cfg.name}': --resume continues "
                          "it, --overwrite deletes it first, or choose another name (name=...) "
                          "or run_dir")
    if stored and storage.local_path(cfg.storage) is None:
        raise ConfigError(f"--overwrite: {cfg.storage}/checkpoints holds this name's "
                          "checkpoints on object storage; delete them there or choose another "
                          "name")
    shutil.rmtree(cfg.path, ignore_errors=True)
    if stored:
        shutil.rmtree(storage.local_path(cfg.storage) / "checkpoints", ignore_errors=True)


def check_outputs(cfg: RunConfig) -> None:
    """Where the run writes, and the port it serves, are usable (before anything is written):
    run_dir and a local checkpoint.storage are directories this process may write (or can be
    made), and metrics.port is free."""
    import socket
    import tempfile

    places = [("run_dir", cfg.path)]
    local = storage.local_path(cfg.storage)
    if local is not None and local != cfg.path:
        places.append(("checkpoint.storage", local))
    for field, path in places:
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise ConfigError(f"{field}: {existing} is a file, not a directory ({path} cannot "
                              "be made)")
        try:  # a real write (permissions, read-only mounts, immutable dirs)
            tempfile.TemporaryFile(dir=existing).close()
        except OSError as e:
            raise ConfigError(f"{field}: cannot write in {existing} ({e.strerror}), so "
                              f"{path} cannot hold the run's files") from None
    m = cfg.metrics
    if m.enabled and m.port:
        with socket.socket() as sock:
            try:
                sock.bind((m.host, m.port))
            except OSError as e:
                raise ConfigError(f"metrics.port: cannot listen on {m.host}:{m.port} "
                                  f"({e.strerror}); choose another port, or 0 for any free "
                                  "one") from None


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def check_context(cfg: RunConfig, task: Task) -> int | None:
    """max_new_tokens must leave the policy's context room for a prompt; returns the
    context (None if the policy's config names none)."""
    context = model_context(cfg.start_dir(task))
    if context is not None and cfg.rollout.sampling.max_new_tokens >= context:
        raise ConfigError(f"rollout.sampling.max_new_tokens ({cfg.rollout.sampling.max_new_tokens})"
                          f" leaves no room for a prompt in the policy's context ({context})")
    return context


def check_resources(cfg: RunConfig, members: int, cluster: dict[str, float]) -> None:
    """Every role's actors fit the embedded Ray's resources (before any actor is created:
    Ray would wait for them forever)."""
    roles = [("learner", cfg.learner, cfg.learner.world_size),
             ("rollout", cfg.rollout, cfg.rollout.replicas),
             ("reward", cfg.reward, cfg.reward.replicas * members)]
    need: dict[str, float] = {}
    for role, res, n in roles:
        ask = {"CPU": res.num_cpus, "GPU": res.num_gpus, **res.resources}
        for name, amount in ask.items():
            if amount > cluster.get(name, 0.0):
                raise ConfigError(f"{role}: one actor asks for {amount:g} {name}; the embedded "
                                  f"Ray has {cluster.get(name, 0.0):g}")
            need[name] = need.get(name, 0.0) + n * amount
    for name, amount in need.items():
        if amount > cluster.get(name, 0.0) + 1e-9:
            raise ConfigError(f"the run's actors ask for {amount:g} {name} in all (learner x "
                              f"world_size, rollout x replicas, reward x members x replicas); "
                              f"the embedded Ray has {cluster.get(name, 0.0):g} (cluster.num_cpus)")
