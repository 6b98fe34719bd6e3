"""services/export.py and `raylign export` on the micro world: a learner built as the run
builds it takes one real PPO step, is checkpointed, and the export loads with transformers,
peft and vLLM and gives the trained policy's logits."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.records import Sampling, ScoredSample
from actors.rollout import RolloutWorker
from learner.trainer import RolloutBatch
from learner.weights import snapshot_from_model
from services.checkpoint import DriverState, save_checkpoint
from services.cli import main
from services.config import load_config
from services.export import export_run, load_trainer
from services.ledger import Ledger
from tasks import load_task
from tests.conftest import REPO, TEST_WORLDS, require_vllm

IDS = torch.tensor([[1, 17, 42, 5, 99, 300, 7, 12], [1, 8, 9, 250, 3, 66, 41, 2]])


def micro(tmp_path, *overrides):
    return load_config(REPO / "deploy/configs/micro.yaml",
                       [f"task.cache_dir={TEST_WORLDS}", f"run_dir={tmp_path}", *overrides])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits


def trained_run(tmp_path, *overrides):
    """A run dir as `raylign train` leaves it after one step: config.json and checkpoint
    step-000001 of a learner (built as the run's learner is) that took one PPO step on
    samples of a real rollout worker. Returns (cfg, task, trainer)."""
    cfg = micro(tmp_path, *overrides)
    task = load_task(cfg)
    cfg.path.mkdir(parents=True)
    (cfg.path / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1))
    trainer = load_trainer(cfg, task)
    start = task.policy_dirs[0]
    worker = RolloutWorker("w0", start, "hf", Sampling(max_new_tokens=6), seed=0)
    worker.set_weights(0, snapshot_from_model(
        AutoModelForCausalLM.from_pretrained(start, use_safetensors=True), 0))
    samples = worker.generate([(i, f"The movie {i}") for i in range(8)])
    scored = [ScoredSample(s, (float(i),), float(i)) for i, s in enumerate(samples)]
    stats = trainer.step(RolloutBatch.from_samples(scored, trainer.pad_token_id))
    assert stats["step/skipped"] == 0.0 and trainer.version == 1
    save_checkpoint(cfg.path, 1, DriverState(steps=1).to_json(Ledger(), 0), trainer.save, keep=2)
    return cfg, task, trainer


@pytest.fixture(scope="module")
def full_run(micro_world, tmp_path_factory):
    cfg, task, trainer = trained_run(tmp_path_factory.mktemp("full"))
    return cfg, task, trainer, export_run(cfg.path)


@pytest.fixture(scope="module")
def bf16_sft(micro_world, tmp_path_factory):
    """The micro world's SFT model stored in bf16 (as published checkpoints are)."""
    out = tmp_path_factory.mktemp("bf16") / "sft"
    start = micro_world.sft_dirs[0]
    AutoModelForCausalLM.from_pretrained(start, dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(micro_world.tokenizer_dir).save_pretrained(out)
    return out


def test_bf16_checkpoint_trains_in_fp32_and_exports_bf16(bf16_sft, tmp_path):
    cfg, _, trainer = trained_run(tmp_path, f"policy.model_dir={bf16_sft}")
    assert trainer.weights_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in trainer.policy.parameters())
    assert cfg.learner_settings("bfloat16").off_policy == "tis"  # bf16 weights, fp32 learner
    out = export_run(cfg.path)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    trained = {k: v.to(torch.bfloat16) for k, v in trainer.policy.state_dict().items()}
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())


def test_full_export_is_the_trained_policy_bit_for_bit(full_run):
    cfg, task, trainer, out = full_run
    assert out == cfg.path / "export" / "step-000001"
    for name in ("config.json", "model.safetensors", "generation_config.json", "export.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "export.json").read_text())
    assert (meta["step"], meta["version"], meta["kind"]) == (1, 1, "full")
    assert meta["source_run"] == str(cfg.path.resolve())
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    assert torch.equal(logits(model), logits(trainer.policy))
    start = AutoModelForCausalLM.from_pretrained(task.policy_dirs[0], use_safetensors=True)
    assert not torch.equal(logits(model), logits(start))  # the step changed the policy
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["temperature"] == cfg.rollout.sampling.temperature and gen["do_sample"]
    assert not list((cfg.path / "export").glob(".tmp-*"))


def test_tokenizer_loads_from_the_export(full_run):
    _, task, _, out = full_run
    tok, ref = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(
        task.tokenizer_dir)
    text = "The movie was a lot of fun"
    assert tok(text)["input_ids"] == ref(text)["input_ids"]
    assert (tok.pad_token_id, tok.eos_token_id) == (ref.pad_token_id, ref.eos_token_id)


@pytest.mark.parametrize("init", ["sft", "soup"])
def test_lora_export_adapter_and_merged(micro_world, tmp_path, init):
    """The adapter applies to the start model, or (policy.init=soup) to base/, the soup."""
    from peft import PeftModel

    cfg, task, trainer = trained_run(tmp_path, "policy.lora.rank=4", f"policy.init={init}")
    out = export_run(cfg.path, merge_lora=True)
    meta = json.loads((out / "export.json").read_text())
    dirs = ["adapter", "merged"] if init == "sft" else ["base", "adapter", "merged"]
    assert (meta["kind"], meta["dirs"]) == ("lora", dirs)
    assert not (out / "model.safetensors").exists()
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4
    base_dir = task.policy_dirs[0] if init == "sft" else out / "base"
    assert adapter["base_model_name_or_path"] == str(base_dir.resolve())
    want = logits(trainer.policy)
    base = AutoModelForCausalLM.from_pretrained(adapter["base_model_name_or_path"],
                                                use_safetensors=True)
    assert not torch.allclose(logits(base), want, atol=1e-6)  # the adapter trained
    peft_model = PeftModel.from_pretrained(base, out / "adapter").eval()
    assert torch.allclose(logits(peft_model), want, atol=1e-6, rtol=0)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", use_safetensors=True)
    assert not any("lora" in k for k in merged.state_dict())
    assert torch.allclose(logits(merged), want, atol=1e-5, rtol=0)
    AutoTokenizer.from_pretrained(out / "merged")


def test_cli_export_and_its_errors(full_run, tmp_path, capsys):
    cfg, _, _, out = full_run
    assert main(["export", str(cfg.path), "--step", "1"]) == 0
    assert f"exported: {out}" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raylign export: no run dir") and err.count("\n") == 1
    assert main(["export", str(cfg.path), "--step", "7"]) == 2
    err = capsys.readouterr().err
    assert "step-000007" in err and "step-000001" in err and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((cfg.path / "config.json").read_text())
    assert main(["export", str(tmp_path / "empty")]) == 2
    assert "no valid checkpoint" in capsys.readouterr().err


def test_train_exports_the_final_policy(ray_session, micro_world, tmp_path):
    from services.bootstrap import train

    cfg = micro(tmp_path, "learner.steps=2", "checkpoint.every=0")
    summary = train(cfg)
    out = cfg.path / "export" / "step-000002"
    assert summary["export"] == str(out)
    assert json.loads((out / "export.json").read_text())["version"] == 2
    AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)


@pytest.mark.vllm
def test_export_loads_into_vllm(full_run):
    require_vllm()
    from actors.engines import VLLMEngine

    _, _, _, out = full_run
    engine = VLLMEngine(out)
    samples = engine.generate([(0, "The movie"), (1, "My sister")], Sampling(max_new_tokens=4),
                              version=1, worker_id="export")
    assert [s.prompt_id for s in samples] == [0, 1]
    assert all(1 <= len(s.response_tokens) <= 4 for s in samples)
