"""`raylign export`: a run's trained policy as files anyone can load.

From a checkpoint of RUN_DIR (the newest valid one, or `step`), the learner is rebuilt as the
run built it (`RUN_DIR/config.json`, the task, `build_policy` + `PPOTrainer`), its state loaded,
and the policy written to RUN_DIR/export/step-NNNNNN/:

  full fine-tuning: an HF model dir (config.json, model.safetensors, generation_config.json,
                    the tokenizer): `AutoModelForCausalLM.from_pretrained(dir)`, or vLLM
  LoRA:             adapter/ (peft's adapter, `PeftModel.from_pretrained(base, dir)`; its
                    base_model_name_or_path is the absolute start model, or base/ when the
                    policy started from the soup), and with merge_lora merged/ (the adapter
                    merged into a copy of the base: a plain HF model dir)

generation_config.json carries the run's sampling (temperature, top_k, top_p): the policy was
trained on the log-probs of that distribution. `export.json` says what was exported from where.
The export is written into a temporary dir and renamed into place.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from actors.scoring import pad_token_id


class ExportError(RuntimeError):
    """The run dir, its config or the checkpoint is missing or unusable."""


def _say(msg: str) -> None:
    print(f"export: {msg}", flush=True)


def _run_config(run_dir: Path):
    from pydantic import ValidationError

    from services.config import RunConfig

    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise ExportError(f"no run dir {run_dir}")
    if not path.is_file():
        raise ExportError(f"{path} is missing: not a run dir (raylign train writes it)")
    try:
        return RunConfig.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as e:
        first = str(e).strip().splitlines()
        raise ExportError(f"{path}: not a valid run config: {' '.join(first[:3])}") from None


def _checkpoint(where: Path | str, step: int | None) -> Path | str:
    """The newest valid checkpoint under `where` (RUN_DIR or checkpoint.storage/<name>), or
    the valid one of `step`."""
    from actors.storage import name
    from services.checkpoint import checkpoints, latest_valid, step_of

    ckpt = latest_valid(where, step)
    if ckpt is not None:
        return ckpt
    if step is None:
        raise ExportError(f"no valid checkpoint under {where}/checkpoints")
    have = sorted(name(c) for c in checkpoints(where))
    what = "" if step in map(step_of, checkpoints(where)) else "no "
    raise ExportError(f"{what}checkpoint step-{step:06d} {'is not valid ' if not what else ''}"
                      f"under {where}/checkpoints (there are: {', '.join(have) or 'none'})")


def load_trainer(cfg, task, learner_dir: Path | None = None):
    """The run's PPOTrainer, built by the learner actor's own code (`LearnerActor` with
    `learner_args`, in this process), with the state in `learner_dir` loaded (a checkpoint's
    learner/). The caller's torch RNG state is left as it was (the learner's state holds an
    RNG state of its own)."""
    from transformers import AutoTokenizer

    from actors.learner import LearnerActor
    from services.fleet import learner_args

    tokenizer = AutoTokenizer.from_pretrained(task.tokenizer_dir)
    with torch.random.fork_rng(devices=[]):
        # one process whatever the run's learner.world_size: checkpoints hold full tensors
        args = {**learner_args(cfg, task, tokenizer), "world_size": 1}
        trainer = LearnerActor(**args).trainer
        if learner_dir is not None:
            trainer.load(learner_dir)
    return trainer


def _write_model_dir(model, out: Path, tokenizer, generation: dict,
                     dtype: torch.dtype) -> None:
    """An HF model dir in `dtype` (the checkpoint's: the learner's fp32 master weights are
    cast back): config, weights (safetensors), generation config, tokenizer."""
    model.to(dtype)
    model.generation_config.update(**generation)
    model.save_pretrained(out)  # transformers 5 writes safetensors only
    tokenizer.save_pretrained(out)


def export_run(run_dir: str | Path, step: int | None = None, merge_lora: bool = False,
               recommended: bool = False) -> Path:
    """Export the policy of RUN_DIR's checkpoint (`step`, or the newest valid one) to
    RUN_DIR/export/step-NNNNNN/ (see the module docstring); returns that dir. `recommended`:
    the checkpoint the over-optimisation alarm recommended, to RUN_DIR/export/recommended/.
    Raises ExportError for a missing run dir, config or checkpoint."""
    from transformers import AutoTokenizer

    from actors import storage
    from services.checkpoint import learner_source, read_recommended, step_of
    from tasks import load_task

    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    where = run_dir if cfg.checkpoint.storage is None else cfg.storage
    if recommended:
        if step is not None:
            raise ExportError("--recommended and --step both name a checkpoint: give one")
        step = (read_recommended(where) or {}).get("step")
        if step is None:
            raise ExportError(f"run {run_dir}: its over-optimisation alarm recommended no "
                              f"checkpoint (no {where}/recommended.json)")
    ckpt = _checkpoint(where, step)
    step_n = step_of(ckpt)
    ckpt_name = "recommended" if recommended else f"step-{step_n:06d}"
    _say(f"run {run_dir} ({cfg.name}), checkpoint {storage.name(ckpt)}")
    task = load_task(cfg)
    src, digests = learner_source(ckpt)
    with tempfile.TemporaryDirectory(prefix="raylign-export-") as tmp:
        learner_dir = storage.local_path(src)
        if learner_dir is None:  # on object storage: fetched and checked first
            learner_dir = Path(tmp)
            storage.download(src, learner_dir, digests)
        trainer = load_trainer(cfg, task, learner_dir)
    lora = cfg.policy.lora is not None
    _say(f"learner state loaded: version {trainer.version} "
         f"({'LoRA rank ' + str(cfg.policy.lora.rank) if lora else 'full fine-tuning'})")

    start_dir = Path(cfg.start_dir(task)).resolve()
    tokenizer = AutoTokenizer.from_pretrained(cfg.policy.model_dir or task.tokenizer_dir)
    s = cfg.rollout.sampling
    generation = {"do_sample": True, "temperature": s.temperature, "top_k": s.top_k,
                  "top_p": s.top_p, "bos_token_id": tokenizer.bos_token_id,
                  "eos_token_id": tokenizer.eos_token_id,
                  "pad_token_id": pad_token_id(tokenizer)}

    root = run_dir / "export"
    final = root / ckpt_name
    tmp = root / f".tmp-{ckpt_name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        written: list[str] = []
        policy = trainer.policy
        if not lora:
            _write_model_dir(policy, tmp, tokenizer, generation, trainer.weights_dtype)
            written.append(".")
        else:
            base_path = str(start_dir)
            if cfg.policy.init == "soup":  # the adapter applies to the soup, not to start_dir
                _write_model_dir(copy.deepcopy(policy).unload(), tmp / "base", tokenizer,
                                 generation, trainer.weights_dtype)
                base_path = str((final / "base").resolve())
                written.append("base")
                _say("wrote base/ (the soup the adapter applies to)")
            policy.save_pretrained(tmp / "adapter", safe_serialization=True)
            tokenizer.save_pretrained(tmp / "adapter")
            _point_adapter_at(tmp / "adapter", base_path)
            written.append("adapter")
            _say(f"wrote adapter/ (base: {base_path})")
            if merge_lora:
                _write_model_dir(copy.deepcopy(policy).merge_and_unload(), tmp / "merged",
                                 tokenizer, generation, trainer.weights_dtype)
                written.append("merged")
                _say("wrote merged/ (the adapter merged into the base)")
        meta = {"step": step_n, "version": trainer.version, "source_run": str(run_dir.resolve()),
                "checkpoint": str(ckpt.resolve() if isinstance(ckpt, Path) else ckpt),
                "config": cfg.name,
                "config_digest": cfg.digest(), "kind": "lora" if lora else "full",
                "dirs": written, "base_model": None if not lora else base_path}
        (tmp / "export.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _say(f"done: {final}")
    return final


def _point_adapter_at(adapter_dir: Path, base: str) -> None:
    """Set the adapter's base_model_name_or_path (peft writes the path the base was loaded
    from, possibly relative to the run's working dir)."""
    path = adapter_dir / "adapter_config.json"
    conf = json.loads(path.read_text())
    conf["base_model_name_or_path"] = base
    path.write_text(json.dumps(conf, indent=2, sort_keys=True))
