"""PPOTrainer on a tiny random LlamaForCausalLM with a synthetic reward (fraction of token 7)."""

import math
import types

import pytest
import torch

from learner.settings import ElasticResetSettings as ER
from learner.settings import KLSettings, LoraSettings, PPOSettings
from learner.trainer import PPOTrainer, RolloutBatch
from tests.learner.conftest import tiny_llama

TARGET = 7


def sample(trainer, seed, b=16, plen=4, tlen=8, ragged=True):
    """On-policy samples from the trainer's policy (generate), scored by the synthetic reward."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(2, plen + 1, (b,), generator=g) if ragged else torch.full((b,), plen)
    query = torch.randint(1, 50, (b, plen), generator=g)
    qmask = (torch.arange(plen)[None] >= plen - lens[:, None]).long()
    query = query * qmask  # left padding with pad id 0
    torch.manual_seed(seed)
    with torch.no_grad():
        out = trainer.policy.generate(input_ids=query, attention_mask=qmask, do_sample=True,
                                      max_new_tokens=tlen, min_new_tokens=tlen, top_k=0,
                                      pad_token_id=0)
    response = out[:, plen:]
    full = torch.full((b,), tlen)
    rlen = torch.randint(tlen // 2, tlen + 1, (b,), generator=g) if ragged else full
    rmask = (torch.arange(tlen)[None] < rlen[:, None]).long()
    response = response * rmask
    scores = ((response == TARGET) & rmask.bool()).sum(1).float() / rlen.float()
    return RolloutBatch(query, qmask, response, rmask, scores)


def params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def test_from_samples_pads_left_and_right():
    def scored(p, r, lp, reward):
        return types.SimpleNamespace(
            sample=types.SimpleNamespace(prompt_tokens=p, response_tokens=r, logprobs=lp),
            reward=reward)

    b = RolloutBatch.from_samples([scored([5, 6], [7], [-0.5], 1.0),
                                   scored([4], [8, 9, 3], [-1.0, -2.0, -3.0], -2.0)],
                                  pad_token_id=0)
    assert b.query.tolist() == [[5, 6], [0, 4]] and b.query_mask.tolist() == [[1, 1], [0, 1]]
    assert b.response.tolist() == [[7, 0, 0], [8, 9, 3]]
    assert b.response_mask.tolist() == [[1, 0, 0], [1, 1, 1]]
    assert b.scores.tolist() == [1.0, -2.0]
    assert b.logprobs.tolist() == [[-0.5, 0.0, 0.0], [-1.0, -2.0, -3.0]]
    ids, attn, pos = b.model_inputs()
    assert pos.tolist() == [[0, 1, 2, 2, 2], [0, 0, 1, 2, 3]]  # padding: not counted
    with pytest.raises(ValueError, match="empty response"):
        RolloutBatch.from_samples([scored([1], [], [], 0.0)], pad_token_id=0)


def test_logprobs_match_generate_with_left_padding():
    tr = PPOTrainer(tiny_llama(0), PPOSettings(), pad_token_id=0)
    b = sample(tr, seed=1, b=4, ragged=True)
    b.response_mask.fill_(1)  # keep the full generated response
    query = b.query
    torch.manual_seed(1)
    with torch.no_grad():
        out = tr.policy.generate(input_ids=query, attention_mask=b.query_mask, do_sample=True,
                                 max_new_tokens=8, min_new_tokens=8, top_k=0, pad_token_id=0,
                                 output_logits=True, return_dict_in_generate=True)
    b.response = out.sequences[:, query.shape[1]:]
    gen_logp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.logits], 1)
    gen_logp = gen_logp.gather(-1, b.response[..., None]).squeeze(-1)
    torch.testing.assert_close(tr.compute_logprobs(b), gen_logp, atol=1e-4, rtol=1e-4)


def test_ppo_raises_reward_and_trains_every_parameter():
    settings = PPOSettings(lr=1e-2, minibatch_size=16, ppo_epochs=2, kl=KLSettings(coef=0.01))
    tr = PPOTrainer(tiny_llama(0), settings, pad_token_id=0, seed=0)
    before_p, before_c = params(tr.policy), params(tr.critic)
    rewards = []
    for i in range(8):
        stats = tr.step(sample(tr, seed=100 + i, b=32))
        assert stats["step/skipped"] == 0
        for k in ("loss/policy", "loss/value", "policy/entropy", "kl/ref", "grad/norm"):
            assert torch.isfinite(torch.tensor(stats[k])), k
        rewards.append(stats["reward/score_mean"])
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.1, rewards
    assert stats["kl/init_k1"] > 0 and stats["kl/ref"] == stats["kl/init_k1"]
    for name, p in params(tr.policy).items():
        assert not torch.equal(p, before_p[name]), f"policy {name} did not change"
    for name, p in params(tr.critic).items():
        assert not torch.equal(p, before_c[name]), f"critic {name} did not change"
    assert tr.version == 8
    for key in ("policy/clipfrac", "policy/approx_kl", "kl/init_k2", "kl/coef", "elastic/reset",
                "time/step_s"):
        assert key in stats


@pytest.mark.parametrize("flags", [False, True])
def test_elastic_reset_every_2(flags):
    settings = PPOSettings(lr=3e-3, minibatch_size=8, ppo_epochs=1,
                           elastic_reset=ER(enabled=True, reset_every=2, ema_decay=0.9,
                                            reset_value_head=flags, reset_optimizer=flags),
                           kl=KLSettings(reference="ema"))
    tr = PPOTrainer(tiny_llama(0), settings, pad_token_id=0)
    init = params(tr.policy)
    captured = {}
    real_reset = tr.elastic.reset

    def spy(module):
        captured["ema"] = {k: v.clone() for k, v in tr.elastic.ema.items()}
        captured["critic"] = params(tr.critic)
        real_reset(module)

    tr.elastic.reset = spy
    s1 = tr.step(sample(tr, seed=1, b=8))
    assert s1["elastic/reset"] == 0 and "ema" not in captured
    s2 = tr.step(sample(tr, seed=2, b=8))
    assert s2["elastic/reset"] == 1
    after = params(tr.policy)
    for k, v in captured["ema"].items():
        assert torch.equal(after[k], v), k  # online <- pre-reset EMA, bit for bit
        assert torch.equal(tr.elastic.ema[k], init[k]), k  # EMA <- init
        assert not torch.equal(v, init[k])
    critic = params(tr.critic)
    if flags:
        assert all(torch.equal(critic[k], tr.critic_init[k]) for k in critic)
        assert len(tr.policy_opt.state) == 0 and len(tr.critic_opt.state) == 0
    else:
        assert all(torch.equal(critic[k], captured["critic"][k]) for k in critic)
        assert len(tr.policy_opt.state) > 0 and len(tr.critic_opt.state) > 0


def _all_equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(params(a).values(), params(b).values(),
                                                 strict=True))


def test_save_load_resume_is_exact(tmp_path):
    settings = PPOSettings(lr=3e-3, minibatch_size=4, ppo_epochs=2,
                           elastic_reset=ER(enabled=True, reset_every=3, ema_update="step"),
                           kl=KLSettings(adaptive=True, target=0.5, horizon=100,
                                         reference="ema"))
    tr = PPOTrainer(tiny_llama(0), settings, pad_token_id=0)
    tr.step(sample(tr, seed=1, b=8))
    tr.save(tmp_path / "ckpt")
    in_memory = tr.state_dict()
    batch = sample(tr, seed=2, b=8)

    restored = PPOTrainer(tiny_llama(0), settings, pad_token_id=0)
    restored.load(tmp_path / "ckpt")
    again = PPOTrainer(tiny_llama(0), settings, pad_token_id=0)
    again.load_state_dict(in_memory)
    stats = [t.step(batch) for t in (tr, restored, again)]
    for other in (restored, again):
        assert _all_equal(tr.policy, other.policy) and _all_equal(tr.critic, other.critic)
        assert all(torch.equal(tr.elastic.ema[k], other.elastic.ema[k]) for k in tr.elastic.ema)
        assert other.kl_ctl.value == tr.kl_ctl.value
        assert other.elastic.schedule.state_dict() == tr.elastic.schedule.state_dict()
    assert stats[0]["loss/policy"] == stats[1]["loss/policy"] == stats[2]["loss/policy"]
    assert not list(tmp_path.glob("ckpt/*.pt")) and not list(tmp_path.glob("ckpt/*.bin"))


def _poison_values(tr, call):
    """Make the critic's `call`-th forward of a step infinite (1 = experience, 2 = the first
    minibatch, 3 = the second)."""
    real, calls = tr._values, {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        v = real(*args)
        return v * float("inf") if calls["n"] == call else v

    tr._values = poisoned


def test_nan_score_skips_step_and_keeps_weights():
    settings = PPOSettings(minibatch_size=4, elastic_reset=ER(enabled=True, reset_every=1))
    tr = PPOTrainer(tiny_llama(0), settings, pad_token_id=0)
    tr.step(sample(tr, seed=1, b=8))
    state = tr.state_dict()
    bad = sample(tr, seed=2, b=8)
    bad.scores[3] = float("nan")
    stats = tr.step(bad)
    assert stats["step/skipped"] == 1 and stats["step/skip_score"] == 1 and tr.version == 1
    now = tr.state_dict()
    for group in ("policy", "critic"):
        assert all(torch.equal(now[group][k], state[group][k]) for k in state[group])
    assert now["elastic"]["schedule"] == state["elastic"]["schedule"]
    # a non-finite loss on the first minibatch: no optimizer step happened, nothing changed
    _poison_values(tr, call=2)
    stats = tr.step(sample(tr, seed=3, b=8))
    assert stats["step/skipped"] == 1 and stats["step/skip_loss"] == 1 and tr.version == 1
    now = tr.state_dict()
    assert all(torch.equal(now["policy"][k], state["policy"][k]) for k in state["policy"])
    for i in state["policy_opt"]["state"]:
        assert torch.equal(now["policy_opt"]["state"][i]["exp_avg"],
                           state["policy_opt"]["state"][i]["exp_avg"])


def test_nonfinite_loss_mid_step_stops_the_updates_before_it():
    """minibatch 2 of 4 is non-finite: minibatch 1's update stands, nothing after it runs."""
    settings = PPOSettings(minibatch_size=4, ppo_epochs=2)
    tr = PPOTrainer(tiny_llama(0), settings, pad_token_id=0)
    _poison_values(tr, call=3)
    stats = tr.step(sample(tr, seed=3, b=8))
    assert stats["step/skipped"] == 0 and stats["step/nonfinite_updates"] == 1
    assert stats["step/updates"] == 1 and tr.version == 1
    steps = {int(v["step"]) for v in tr.policy_opt.state_dict()["state"].values()}
    assert steps == {1}  # Adam stepped once: the poisoned update never reached it
    assert all(torch.isfinite(p).all() for p in tr.policy.parameters())
    assert all(p.grad is None for p in tr.policy.parameters())  # no gradient memory kept


def test_lora_trainer_moves_only_adapters_and_snapshots_lora():
    base = tiny_llama(0)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    settings = PPOSettings(lr=1e-2, minibatch_size=8, kl=KLSettings(reference="soup"))
    lora = LoraSettings(rank=4, alpha=8)
    with pytest.raises(ValueError, match="soup_state"):
        PPOTrainer(tiny_llama(0), settings, pad_token_id=0, lora=lora)
    soup = {k: v * 0.5 + w * 0.5 for (k, v), w in zip(base_state.items(),
                                                      tiny_llama(1).state_dict().values(),
                                                      strict=True)}
    tr = PPOTrainer(base, settings, pad_token_id=0, soup_state=soup, lora=lora)
    names = list(params(tr.policy))
    assert names and all("lora_" in n for n in names)
    before = params(tr.policy)
    stats = tr.step(sample(tr, seed=1, b=8))
    assert stats["kl/ref"] != stats["kl/init_k1"]  # soup reference differs from init
    after = params(tr.policy)
    assert any(not torch.equal(after[k], before[k]) for k in after)
    base_now = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                for k, v in tr.policy.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(base_now[k], base_state[k]) for k in base_state)
    snap = tr.snapshot()
    assert snap.kind == "lora" and snap.version == 1 and all(".lora_" in k for k in snap.tensors)


@pytest.mark.parametrize("target,reset_ema", [("init", True), ("ema", False)])
def test_elastic_reset_baselines(target, reset_ema):
    # reset-to-init: online <- init; reset-to-EMA without EMA reset: EMA kept after the reset
    settings = PPOSettings(lr=3e-3, minibatch_size=8, ppo_epochs=1,
                           elastic_reset=ER(enabled=True, reset_every=2, ema_decay=0.9,
                                            target=target, reset_ema=reset_ema))
    tr = PPOTrainer(tiny_llama(0), settings, pad_token_id=0)
    init = params(tr.policy)
    tr.step(sample(tr, seed=1, b=8))
    stats = tr.step(sample(tr, seed=2, b=8))
    assert stats["elastic/reset"] == 1
    after = params(tr.policy)
    for k, v in after.items():
        if target == "init":
            assert torch.equal(v, init[k]), k
        else:
            assert torch.equal(v, tr.elastic.ema[k]), k  # online <- EMA, EMA not reset
            assert not torch.equal(tr.elastic.ema[k], init[k]), k


def test_reset_flags_from_config():
    from services.config import load_config

    cfg = load_config(None, ["learner.elastic_reset.target=init",
                             "learner.elastic_reset.reset_ema=false"])
    er = cfg.learner.elastic_reset  # the config embeds the learner's own settings class
    assert isinstance(cfg.learner, PPOSettings) and isinstance(er, ER)
    assert (er.target, er.reset_ema) == ("init", False)
    default = load_config(None).learner.elastic_reset
    assert (default.target, default.reset_ema) == ("ema", True)
    with pytest.raises(ValueError, match="target"):
        ER(target="soup")


def _with_own_logprobs(tr, batch):
    batch.logprobs = tr.compute_logprobs(batch)  # mu = the learner's own policy
    return batch


@pytest.mark.parametrize("mode", ["none", "tis", "decoupled"])
def test_off_policy_with_on_policy_samples_is_plain_ppo(mode):
    plain = PPOTrainer(tiny_llama(0), PPOSettings(minibatch_size=8), pad_token_id=0)
    corrected = PPOTrainer(tiny_llama(0), PPOSettings(minibatch_size=8, off_policy=mode),
                           pad_token_id=0)
    batch = sample(plain, seed=1, b=8)
    a = plain.step(batch)
    b = corrected.step(_with_own_logprobs(corrected, sample(corrected, seed=1, b=8)))
    assert a["loss/policy"] == pytest.approx(b["loss/policy"], abs=1e-6)
    if mode != "none":
        assert b["offpolicy/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
        assert b["offpolicy/truncated_frac"] == 0.0
    for k, v in params(plain.policy).items():
        torch.testing.assert_close(v, params(corrected.policy)[k], atol=1e-5, rtol=0)


def test_off_policy_weights_a_stale_behaviour():
    tr = PPOTrainer(tiny_llama(0), PPOSettings(minibatch_size=8, off_policy="tis",
                                               off_policy_cap=1.5), pad_token_id=0)
    batch = _with_own_logprobs(tr, sample(tr, seed=2, b=8))
    batch.logprobs = batch.logprobs - 1.0 * batch.response_mask  # mu = pi_prox / e
    stats = tr.step(batch)
    assert stats["offpolicy/ratio_mean"] == pytest.approx(math.e, rel=1e-5)
    assert stats["offpolicy/truncated_frac"] == 1.0  # e > 1.5 everywhere
    assert stats["offpolicy/kl_behaviour"] == pytest.approx(math.e - 2, rel=1e-5)
    with pytest.raises(ValueError, match="needs the behaviour log-probs"):
        tr.step(sample(tr, seed=3, b=8))


def test_kl_loss_with_k1_is_rejected_and_a_one_token_batch_is_skipped():
    with pytest.raises(ValueError, match="zero expected gradient"):
        KLSettings(mode="loss", estimator="k1")
    tr = PPOTrainer(tiny_llama(0), PPOSettings(minibatch_size=1), pad_token_id=0)
    batch = sample(tr, seed=1, b=1, ragged=False)
    batch.response_mask[:, 1:] = 0  # one real token: no variance to whiten with
    stats = tr.step(batch)
    assert stats["step/skipped"] == 1 and stats["step/skip_degenerate"] == 1 and tr.version == 0


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp"])
def test_critic_free_estimators_train_without_a_critic(estimator, tmp_path):
    settings = PPOSettings(lr=1e-2, minibatch_size=8, estimator=estimator)
    tr = PPOTrainer(tiny_llama(0), settings, pad_token_id=0)
    assert tr.critic is None and tr.critic_opt is None
    before = params(tr.policy)
    for i in range(2):
        batch = sample(tr, seed=10 + i, b=16)
        batch.groups = torch.arange(16) // 4  # 4 prompts x 4 completions
        stats = tr.step(batch)
        assert stats["step/skipped"] == 0 and math.isfinite(stats["loss/policy"])
        assert stats["loss/value"] == 0.0
    assert any(not torch.equal(v, before[k]) for k, v in params(tr.policy).items())
    tr.save(tmp_path / "c")
    again = PPOTrainer(tiny_llama(0), settings, pad_token_id=0)
    again.load(tmp_path / "c")
    assert _all_equal(tr.policy, again.policy) and again.version == 2


def test_advantages_by_estimator_by_hand():
    rewards = torch.tensor([[0.0, 1.0, 2.0], [1.0, 3.0, 0.0], [2.0, 0.0, 0.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 0, 0]])
    groups = torch.tensor([0, 0, 1, 1])  # returns: 3, 4 | 2, 4
    m = mask.float()

    def adv(estimator, **kw):
        tr = PPOTrainer(tiny_llama(0), PPOSettings(estimator=estimator, **kw), pad_token_id=0)
        return tr._advantages(rewards, torch.zeros(4, 3), mask, groups)

    a, r = adv("rloo")
    torch.testing.assert_close(a, torch.tensor([[-1.0], [1.0], [-2.0], [2.0]]) * m)
    torch.testing.assert_close(r, torch.tensor([[3.0], [4.0], [2.0], [4.0]]) * m)
    a, _ = adv("grpo")  # +-1/sqrt(2) of the unbiased std, divided: +-0.7071
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(a, torch.tensor([[-s], [s], [-s], [s]]) * m, atol=1e-5, rtol=0)
    a, r = adv("reinforce_pp", whiten_advantages=False, gamma=0.5)
    expected = torch.tensor([[0 + 0.5 * 1 + 0.25 * 2, 1 + 0.5 * 2, 2.0],
                             [1 + 0.5 * 3, 3.0, 0.0], [2.0, 0, 0], [4.0, 0, 0]])
    torch.testing.assert_close(a, expected)
    torch.testing.assert_close(r, expected)


def test_reference_and_init_forwards_run_only_when_needed():
    """kl.coef 0 (fixed): no reference forward, no kl/ref; drift_every 0: no forward of the
    initial weights either. Skipping them changes no update (bit for bit)."""
    runs = {}
    for drift_every in (1, 0, 2):
        settings = PPOSettings(minibatch_size=8, kl=KLSettings(coef=0.0, reference="init"))
        tr = PPOTrainer(tiny_llama(0), settings, pad_token_id=0, drift_every=drift_every)
        calls = []
        real = tr._ref_logprobs
        tr._ref_logprobs = lambda *a, _real=real, _calls=calls: _calls.append(a[-1]) or _real(*a)
        stats = [tr.step(sample(tr, seed=i, b=8)) for i in range(2)]
        assert all("kl/ref" not in st for st in stats)
        runs[drift_every] = (calls, stats, params(tr.policy))
    assert runs[1][0] == ["init", "init"] and runs[0][0] == [] and runs[2][0] == ["init"]
    assert all("kl/init_k1" in st for st in runs[1][1])
    assert [("kl/init_k1" in st) for st in runs[2][1]] == [False, True]
    for k, v in runs[1][2].items():
        assert torch.equal(v, runs[0][2][k]) and torch.equal(v, runs[2][2][k])
