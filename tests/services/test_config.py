"""Config loading: every class of error names the file, the line and the field."""

from pathlib import Path

import pytest

from services.config import ConfigError, RunConfig, load_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def error_of(path, overrides=None) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    return str(e.value)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "deploy/configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "deploy/configs" / name)
    assert isinstance(cfg, RunConfig)


def test_out_of_range_names_file_line_and_field(tmp_path):
    path = write(tmp_path, "name: x\nlearner:\n  lr: 1.0e-4\n  elastic_reset:\n"
                           "    ema_decay: 1.5\n")
    assert "run.yaml:5 learner.elastic_reset.ema_decay: must be < 1.0, got 1.5" in error_of(path)


def test_unknown_key_suggests_the_close_one(tmp_path):
    path = write(tmp_path, "learner:\n  ppo_epoch: 3\n")
    assert "run.yaml:2 learner.ppo_epoch: unknown key (did you mean 'ppo_epochs'?)" in error_of(
        path)


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    msg = error_of(write(tmp_path, "metrics:\n  zzz: 1\n"))
    assert "run.yaml:2 metrics.zzz: unknown key; valid keys: enabled, host, public, port" in msg


def test_wrong_type(tmp_path):
    msg = error_of(write(tmp_path, "rollout:\n  replicas: many\n"))
    assert "run.yaml:2 rollout.replicas:" in msg and "valid integer" in msg and "'many'" in msg


def test_unknown_enum_value(tmp_path):
    msg = error_of(write(tmp_path, "reward:\n  aggregation: median\n"))
    assert "run.yaml:2 reward.aggregation: must be one of" in msg and "'median'" in msg


def test_yaml_syntax_error_has_a_line(tmp_path):
    msg = error_of(write(tmp_path, "learner:\n  lr: [1, 2\nrollout: {}\n"))
    assert msg.startswith("run.yaml:3 YAML syntax error")


def test_missing_file():
    assert "config file not found" in error_of("/nonexistent/run.yaml")


def test_missing_model_dir_path(tmp_path):
    msg = error_of(write(tmp_path, "policy:\n  model_dir: /no/such/model\n"))
    assert "run.yaml:2 policy.model_dir: no such directory '/no/such/model'" in msg


def test_cross_field_minibatch_must_divide(tmp_path):
    msg = error_of(write(tmp_path, "learner:\n  samples_per_step: 10\n  minibatch_size: 4\n"))
    assert "run.yaml:1 learner:" in msg
    assert "minibatch_size (4) must divide samples_per_step (10)" in msg


def test_cross_field_worst_case_needs_two_members(tmp_path):
    msg = error_of(write(tmp_path, "reward:\n  aggregation: min\n  members: 1\n"))
    assert "needs at least 2 members, got 1" in msg


def test_overrides_apply_and_are_validated(tmp_path):
    cfg = load_config(REPO / "deploy/configs/tiny.yaml", ["learner.lr=3e-5", "rollout.replicas=3"])
    assert cfg.learner.lr == 3e-5 and cfg.rollout.replicas == 3
    msg = error_of(REPO / "deploy/configs/tiny.yaml", ["learner.kl.coef=-1"])
    assert "override 'learner.kl.coef=-1': learner.kl.coef: must be >= 0" in msg
    assert "expected dotted.key=value" in error_of(None, ["learner.lr"])


def test_every_error_reported_at_once(tmp_path):
    msg = error_of(write(tmp_path, "rollout:\n  engine: gpu\n  replicas: -1\n"))
    assert "run.yaml:2 rollout.engine" in msg and "run.yaml:3 rollout.replicas" in msg


def test_digest_is_stable_and_sensitive():
    a, b = load_config(None), load_config(None)
    assert a.digest() == b.digest()
    assert load_config(None, ["seed=1"]).digest() != a.digest()


def _model_dir(tmp_path, name="m"):
    import torch
    from safetensors.torch import save_file

    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama"}')
    save_file({"w": torch.arange(64, dtype=torch.float32)}, str(d / "model.safetensors"))
    return d


def test_model_dir_checks(tmp_path):
    good = _model_dir(tmp_path)
    assert load_config(None, [f"policy.model_dir={good}"]).policy.model_dir == str(good)

    pickled = _model_dir(tmp_path, "pickled")
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    msg = error_of(None, [f"policy.model_dir={pickled}"])
    assert "no *.safetensors weights" in msg
    assert "pytorch_model.bin: pickles are never loaded" in msg

    truncated = _model_dir(tmp_path, "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[:-10])
    msg = error_of(None, [f"reward.model_dirs=[{good}, {truncated}]"])
    assert "reward.model_dirs.1:" in msg and "model.safetensors" in msg

    garbage = _model_dir(tmp_path, "garbage")
    (garbage / "model.safetensors").write_bytes(b"\x00" * 5)
    assert "not a valid safetensors file" in error_of(None, [f"policy.model_dir={garbage}"])

    (garbage / "config.json").write_text("{broken")
    assert "config.json in" in error_of(None, [f"policy.model_dir={garbage}"])


def test_every_config_field_has_a_description():
    from services.config import RunConfig, fields_of

    missing, seen = [], 0

    def walk(model, prefix: str) -> None:
        nonlocal seen
        for name, info in fields_of(model).items():
            seen += 1
            if not (info.description or "").strip():
                missing.append(prefix + name)
            for sub in (info.annotation, *getattr(info.annotation, "__args__", ())):
                if fields_of(sub) is not None:
                    walk(sub, f"{prefix}{name}.")

    walk(RunConfig, "")
    assert seen > 80 and not missing, missing


def test_learner_section_is_the_learner_settings_and_has_no_replicas():
    from learner.settings import PPOSettings
    from services.config import ConfigError, load_config

    cfg = load_config(None, ["learner.lr=0.5", "learner.kl.coef=0.2"])
    assert isinstance(cfg.learner, PPOSettings)
    assert (cfg.learner.lr, cfg.learner.kl.coef) == (0.5, 0.2)
    with pytest.raises(ConfigError, match="learner.replicas: unknown key"):
        load_config(None, ["learner.replicas=3"])
    with pytest.raises(ConfigError, match="learner.lr: must be > 0"):
        load_config(None, ["learner.lr=-1"])


def test_top_k_top_p_sampling_is_corrected_off_policy():
    """The engines' log-probs under top-k/top-p are of the truncated distribution: the default
    resolves to tis (the learner recomputes its own), and off_policy=none is refused."""
    micro, sync = "deploy/configs/micro.yaml", "rollout.max_staleness=0"
    assert load_config(micro, [sync]).learner_settings().off_policy == "none"
    for sampling in ("rollout.sampling.top_k=5", "rollout.sampling.top_p=0.9"):
        assert load_config(micro, [sync, sampling]).learner_settings().off_policy == "tis"
        with pytest.raises(ConfigError, match="learner.off_policy=none with rollout.sampling"):
            load_config(micro, [sampling, "learner.off_policy=none"])
    # a bf16 checkpoint sampled in fp32 on CPU, trained by an fp32 learner: same numerics
    assert load_config(micro, [sync]).learner_settings("bfloat16").off_policy == "none"
    gpu = load_config(micro, [sync, "rollout.num_gpus=1"])
    assert gpu.rollout_dtype("bfloat16") == "bfloat16"
    assert gpu.learner_settings("bfloat16").off_policy == "tis"  # bf16 engines, fp32 learner


def test_overrides_reach_list_items(tmp_path):
    path = write(tmp_path, "reward:\n  functions:\n    - path: examples/own_data/rewards.py\n"
                           "      name: score\n")
    cfg = load_config(path, ["reward.functions.0.weight=2", "reward.functions.0.gold=true"])
    assert cfg.reward.functions[0].weight == 2.0 and cfg.reward.functions[0].gold
    assert "reward.functions has items 0..0, not '3'" in error_of(
        path, ["reward.functions.3.weight=2"])
    assert "override 'reward.functions.0.weight=abc': reward.functions.0.weight" in error_of(
        path, ["reward.functions.0.weight=abc"])
    assert "learner.lr: Input should be a valid number" in error_of(path, ["learner.lr.x=1"])


def test_a_model_of_the_wrong_kind_is_refused(tmp_path):
    """A causal LM as a reward model, a classifier as the policy: refused before anything
    loads (either would get a randomly initialised head)."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, pad_token_id=0)
    lm, clf = tmp_path / "lm", tmp_path / "clf"
    LlamaForCausalLM(config).save_pretrained(lm)
    LlamaForSequenceClassification(config).save_pretrained(clf)
    msg = error_of(None, [f"reward.model_dirs=[{clf}, {lm}]"])
    assert "reward.model_dirs.1:" in msg and "holds a LlamaForCausalLM, not a sequence" in msg
    msg = error_of(None, [f"policy.model_dir={clf}"])
    assert "policy.model_dir:" in msg and "LlamaForSequenceClassification, not a causal LM" in msg


def test_gpt2_context_is_read_and_checked(tmp_path):
    """GPT-2 names its context n_positions: read through AutoConfig, and a dataset task whose
    prompts and completions cannot fit it is refused before anything starts."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from services.config import model_context

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=128, n_embd=16, n_layer=1,
                               n_head=2)).save_pretrained(gpt2)
    assert "max_position_embeddings" not in (gpt2 / "config.json").read_text()
    assert model_context(gpt2) == 128
    msg = error_of(REPO / "examples/own_data/config.yaml",
                   [f"policy.model_dir={gpt2}", "task.max_prompt_tokens=500"])
    assert "task.max_prompt_tokens + rollout.sampling.max_new_tokens = 516 exceeds the " \
           "policy's context (128 positions)" in msg


def test_the_schema_marks_what_a_resume_may_change():
    """How long to run, how many actors, where it reports: no field that changes what a step
    computes (preflight.check_resumable refuses any other difference)."""
    from services.config import resumable_fields

    assert set(resumable_fields()) == {
        "run_dir", "rollout.replicas", "reward.replicas", "learner.world_size",
        "learner.gradient_checkpointing", "learner.memory_gb", "learner.steps", "learner.epochs",
        "metrics.", "checkpoint.", "deadlines.", "cluster."}
