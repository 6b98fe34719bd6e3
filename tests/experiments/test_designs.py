"""The experiments' designs: every full-size arm is a valid run config, and the endpoints that
decide the verdicts compute what their docstrings say, on hand-made points."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments import module
from experiments.common import Ctx, load_cfg

WITH_ARMS = ("elastic", "soup", "together", "offpolicy")


def all_arms(mod, z: dict) -> dict[str, list[str]]:
    """The verdict arms, and with tuning (`candidates`) every setting tuned over, the verdict
    arms at each method's first setting."""
    if not hasattr(mod, "candidates"):
        return mod.arms(z)
    tuned = mod.candidates(z)
    verdict = mod.arms(z, *(next(iter(settings)) for settings in tuned.values()))
    return {**{n: ov for settings in tuned.values() for n, ov in settings.items()}, **verdict}


@pytest.mark.parametrize("name", WITH_ARMS)
def test_full_size_arms_are_valid_configs(name, tmp_path):
    mod = module(name)
    ctx = Ctx(name=name, quick=False, seeds=1, out=tmp_path, runs=tmp_path,
              world_overrides=list(getattr(mod, "WORLD", ())))
    z = mod.sizes(ctx)
    for arm, overrides in all_arms(mod, z).items():
        cfg = load_cfg(ctx, overrides)  # raises on an unknown key or a bad value
        assert cfg.learner.steps == z["steps"], arm
        assert cfg.learner.eval_every == z["eval_every"] and cfg.learner.eval_prompts > 0, arm
        assert Path(cfg.task.cache_dir) == Path(".cache/raylign")


def test_elastic_tunes_equal_budgets_and_its_arms_differ_only_in_the_reset():
    from experiments.elastic import RESETS, arms, candidates, sizes

    z = sizes(Ctx(name="elastic", quick=False, seeds=1, out=Path(), runs=Path()))
    c = candidates(z)
    assert {m: len(s) for m, s in c.items()} == {"ppo": 3, "elastic": 3}  # equal budgets
    assert [x for s in c["ppo"].values() for x in s if "kl.coef" in x] == [
        "learner.kl.coef=0.03", "learner.kl.coef=0.1", "learner.kl.coef=0.3"]
    assert z["steps"] % z["reset_every"] == z["reset_every"] - 1  # step 50 ends a cycle
    assert z["tune_seeds"] == 2
    a = arms(z, "ppo_b0.1", "er_e0.99_b0.01")
    assert a["ppo"] == c["ppo"]["ppo_b0.1"] and a["elastic"] == c["elastic"]["er_e0.99_b0.01"]
    base = set(a["elastic"])
    assert {"learner.elastic_reset.ema_decay=0.99", "learner.kl.coef=0.01"} <= base
    assert set(a["reset_init"]) - base == {"learner.elastic_reset.target=init"}
    assert set(a["reset_ema"]) - base == {"learner.elastic_reset.reset_ema=false"}
    assert len(RESETS) == 3


def test_elastic_excess_is_gold_above_the_seeds_ppo_front():
    from experiments.elastic import excess

    def pts(*xy):
        return [[{"ppl_drift": x, "kl": 10 * x, "gold": y} for x, y in xy]]

    points = {"ppo": pts((0.2, 0.1), (0.5, 0.2), (1.0, 0.5), (2.0, 0.3), (3.0, 0.7)),
              "elastic": pts((0.5, 0.1), (2.0, 0.65))}  # PPO's (2.0, 0.3) is dominated
    # the front at drift 2.0: between (1.0, 0.5) and (3.0, 0.7), 0.6
    assert excess(points, "elastic", 0, "ppl_drift") == pytest.approx(0.05)
    assert excess(points, "elastic", 0, "kl") == pytest.approx(0.05)


def test_soup_gold_at_kl_interpolates_in_order_of_kl():
    from experiments.soup import gold_at_kl

    run = [{"kl": 4.0, "gold": 0.8}, {"kl": 1.0, "gold": 0.2}, {"kl": 2.0, "gold": 0.4}]
    assert gold_at_kl(run, 3.0) == pytest.approx(0.6)
    assert gold_at_kl(run, 1.5) == pytest.approx(0.3)


def test_ensembles_tune_equal_budgets_of_valid_configs(tmp_path):
    from experiments.common import TUNE_SEED0, overrides_for
    from experiments.ensembles import candidates, sizes

    ctx = Ctx(name="ensembles", quick=False, seeds=1, out=tmp_path, runs=tmp_path)
    z = sizes(ctx)
    rm_dirs = ["/rm/a", "/rm/b", "/rm/c", "/rm/d"]
    c = candidates(z, rm_dirs)
    assert {m: len(s) for m, s in c.items()} == {"single": 3, "min": 3, "uwo": 3}
    assert z["tune_seeds"] == 2
    for settings in c.values():
        for setting in settings.values():
            ov = [x for x in overrides_for(setting, TUNE_SEED0) if "model_dirs" not in x]
            cfg = load_cfg(ctx, ov)  # raises on an unknown key or a bad value
            assert cfg.learner.steps == z["steps"] and cfg.learner.eval_prompts == 32
    # single's member follows the seed (seed mod K), so the singles average over members
    single = c["single"]["single_b0.01"]
    assert "reward.model_dirs=[/rm/c]" in overrides_for(single, 2)
    assert "reward.model_dirs=[/rm/a]" in overrides_for(single, TUNE_SEED0)  # 1000 mod 4
    assert "reward.uwo_lambda=0.5" in c["uwo"]["uwo_l0.5"]
