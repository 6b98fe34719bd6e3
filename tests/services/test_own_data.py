"""Train on your own data (examples/own_data, README "Train your own model"): a prompt file, a
reward function and an HF model dir, end to end on embedded Ray, then the export loads."""

from __future__ import annotations

import json
import math

import pytest
from transformers import AutoModelForCausalLM

from actors.records import Sample
from actors.reward import RewardFunctionError, RewardMember, RewardSpec
from services.cli import main
from services.config import ConfigError, load_config
from tests.conftest import TEST_WORLDS

CONFIG = "examples/own_data/config.yaml"


def own(tmp_path, micro_world, *overrides):
    return load_config(CONFIG, [f"policy.model_dir={micro_world.sft_dirs[0]}",
                                f"run_dir={tmp_path}", *overrides])


def test_readme_commands_train_the_example_and_export_it(ray_session, micro_world, tmp_path,
                                                         capsys):
    # README: SFT=$(raylign prepare --config deploy/configs/micro.yaml --sft-dir)
    assert main(["prepare", "--config", "deploy/configs/micro.yaml",
                 f"task.cache_dir={TEST_WORLDS}", "--sft-dir"]) == 0
    sft = capsys.readouterr().out.strip()
    assert sft == str(micro_world.sft_dirs[0])
    # README: raylign train --config examples/own_data/config.yaml policy.model_dir=$SFT
    # (3 steps here, in tmp_path)
    assert main(["train", "--config", CONFIG, f"policy.model_dir={sft}", "learner.steps=3",
                 f"run_dir={tmp_path}", "learner.eval_every=3"]) == 0
    run = tmp_path / "own-data"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["ledger"] == {"trained": 3 * 16 // 4}
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        assert math.isfinite(r["reward/member0"]) and "reward/gold" not in r
        assert r["loss/value"] == 0.0  # grpo: no critic
    assert "drift/ppl_policy" in rows[-1]  # the held-out prompts serve the drift metric
    export = sorted((run / "export").iterdir())[-1]
    AutoModelForCausalLM.from_pretrained(export)


def test_too_long_prompts_are_dropped_and_counted(ray_session, micro_world, tmp_path):
    from services.bootstrap import train

    cfg = own(tmp_path, micro_world, "learner.steps=2", "task.max_prompt_tokens=9",
              "learner.eval_every=0")
    summary = train(cfg)
    ledger = summary["ledger"]
    assert ledger["trained"] == 2 * 16 // 4 and ledger["dropped:too_long"] >= 1


def test_a_gold_function_is_logged_not_trained_on(ray_session, micro_world, tmp_path):
    from services.bootstrap import train

    cfg = own(tmp_path, micro_world, "learner.steps=1", "learner.eval_every=1",
              "learner.eval_prompts=4",
              "reward.functions=[{path: examples/own_data/rewards.py, name: score}, "
              "{path: tasks.gold:gold_score, gold: true}]")
    train(cfg)
    row = json.loads((cfg.path / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(row["reward/gold"]) and "reward/member1" not in row
    assert math.isfinite(row["eval/gold"])  # held-out prompts, scored by the gold function


def test_held_out_gold_needs_a_gold_scorer_before_ray(micro_world, tmp_path):
    from services.bootstrap import train

    cfg = own(tmp_path, micro_world, "learner.steps=1", "learner.eval_prompts=4")
    with pytest.raises(ConfigError, match="learner.eval_prompts=4: task .* has no gold scorer"):
        train(cfg)
    assert not cfg.path.exists()  # refused before the run dir (or Ray) was touched


def test_bad_functions_fail_before_anything_starts(micro_world, tmp_path):
    with pytest.raises(ConfigError, match=r"reward.functions.0.path: .*no such file"):
        own(tmp_path, micro_world, "reward.functions=[{path: nope.py, name: score}]")
    with pytest.raises(ConfigError, match=r"has no callable 'scorez'"):
        own(tmp_path, micro_world,
            "reward.functions=[{path: examples/own_data/rewards.py, name: scorez}]")
    with pytest.raises(ConfigError, match="a dataset task needs policy.model_dir"):
        load_config(CONFIG)
    with pytest.raises(ConfigError, match="exceeds the policy's context"):
        own(tmp_path, micro_world, "task.max_prompt_tokens=100000")


def test_a_function_member_scores_with_labels_and_checks_its_length(tmp_path):
    member = RewardMember(0, RewardSpec(function="examples/own_data/rewards.py:score",
                                        weight=2.0), batch_size=16)
    samples = [Sample(i, [1], [2], [-1.0], 0, "w", "Review the lamp. The lamp", text)
               for i, text in enumerate(["a great lamp", "meh"])]
    assert member.score(samples, {0: "lamp", 1: "lamp"}) == [2 * 1.25, 0.0]
    (tmp_path / "bad.py").write_text("def score(p, c, l):\n    return [1.0]\n")
    bad = RewardMember(1, RewardSpec(function=f"{tmp_path / 'bad.py'}:score"), batch_size=16)
    with pytest.raises(RewardFunctionError, match="returned 1 scores for 2 completions"):
        bad.score(samples)


def gpt2_without_pad(tmp_path, micro_world):
    """A second architecture, built locally: a tiny GPT-2 whose tokenizer has no pad token."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(micro_world.tokenizer_dir)
    tok.pad_token = None
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    out = tmp_path / "gpt2"
    GPT2LMHeadModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_a_gpt2_policy_without_a_pad_token_trains_and_exports(ray_session, micro_world,
                                                              tmp_path):
    from services.bootstrap import train

    model_dir = gpt2_without_pad(tmp_path, micro_world)
    cfg = load_config(CONFIG, [f"policy.model_dir={model_dir}", f"run_dir={tmp_path}",
                               "learner.steps=2", "learner.eval_every=2"])
    summary = train(cfg)
    assert summary["steps"] == 2 and summary["ledger"] == {"trained": 2 * 16 // 4}
    exported = AutoModelForCausalLM.from_pretrained(summary["export"])
    assert type(exported).__name__ == "GPT2LMHeadModel"


def test_a_run_set_by_epochs(ray_session, micro_world, tmp_path):
    from services.bootstrap import train

    # 270 training prompts x 4 completions, 0.05 epochs = 54 samples: 4 steps of 16
    cfg = own(tmp_path, micro_world, "learner.epochs=0.05", "learner.eval_every=0")
    assert train(cfg)["steps"] == 4


def test_any_sequence_classifier_scores_at_its_last_token(micro_world, tmp_path):
    """A reward model from anywhere: a GPT-2 classifier without the tiny world's pooling
    attribute and without a pad token scores text with its own tokenizer, at the last real
    token, whatever the padding of its batch."""
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    from actors.scoring import RewardScorer

    tok = AutoTokenizer.from_pretrained(micro_world.tokenizer_dir)
    tok.pad_token = None
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        num_labels=1, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    scorer = RewardScorer(tmp_path / "rm")
    prompts = ["The movie", "I bought a lamp and it was", "My"]
    completions = [" was great.", " fine", " sister loved the long and happy film a lot"]
    together = scorer.score(prompts, completions, batch_size=3)
    alone = [scorer.score([p], [c])[0] for p, c in zip(prompts, completions)]
    assert together == pytest.approx(alone, abs=1e-5)
    assert len(set(together)) == 3


@pytest.mark.parametrize("body,message", [
    ("    return [{}[\"missing\"] for _ in completions]\n",
     "reward function {ref} raised KeyError: 'missing'"),
    ("    return [0.0] * (len(completions) - 1)\n",
     "reward function {ref} returned 7 scores for 8 completions"),
    ("    return [float(\"nan\")] * len(completions)\n",
     "samples all had non-finite rewards (NaN/inf; reward members [0])"),
])
def test_a_reward_functions_bug_stops_the_run_with_its_message(ray_session, micro_world,
                                                               tmp_path, body, message):
    """A bug in the user's reward function is not a fault to retry: the run stops at once
    (exit 4) with the function's own error; so does a function whose every reward is NaN."""
    from services.bootstrap import train
    from services.errors import RunFailed

    rewards = tmp_path / "bad_rewards.py"
    rewards.write_text(f"def score(prompts, completions, labels):\n{body}")
    cfg = own(tmp_path, micro_world, "learner.steps=2", "rollout.sampling.n=2",
              "rollout.prompts_per_batch=4",
              f"reward.functions=[{{path: {rewards}, name: score}}]")
    with pytest.raises(RunFailed) as e:
        train(cfg)
    assert message.format(ref=f"{rewards}:score") in str(e.value)
