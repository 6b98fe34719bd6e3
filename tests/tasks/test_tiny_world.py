"""The tiny world (tasks/): deterministic micro build, cache, models, gold scorer."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from services.config import load_config
from tasks.tiny_world import (
    RewardScorer,
    World,
    gold_score,
    load_policy,
    prepare,
    world_digest,
    world_key,
)


def _micro_task(cache_dir):
    cfg = load_config("deploy/configs/micro.yaml")
    cfg.task.cache_dir = str(cache_dir)
    return cfg.task


def _hashes(world: World) -> dict[str, str]:
    return {
        str(p.relative_to(world.root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(world.root.rglob("*.safetensors"))
    }


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """The micro world built twice, into two fresh cache dirs, in this process."""
    a = prepare(_micro_task(tmp_path_factory.mktemp("cache-a")))
    b = prepare(_micro_task(tmp_path_factory.mktemp("cache-b")))
    return a, b


def test_micro_build_is_deterministic(two_builds):
    a, b = two_builds
    ha, hb = _hashes(a), _hashes(b)
    assert len(ha) == 1 + len(a.sft_dirs) + len(a.rm_dirs)  # base, SFT, reward models
    assert ha == hb
    assert a.train_prompts == b.train_prompts and a.heldout_texts == b.heldout_texts
    assert (a.tokenizer_dir / "tokenizer.json").read_bytes() == (
        b.tokenizer_dir / "tokenizer.json"
    ).read_bytes()
    # every file bit-identical, but for the build times in summary.json: one digest
    files = sorted(str(p.relative_to(a.root)) for p in a.root.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(b.root)) for p in b.root.rglob("*") if p.is_file())
    assert [f for f in files if (a.root / f).read_bytes() != (b.root / f).read_bytes()] in (
        [], ["summary.json"])
    assert world_digest(a.root) == world_digest(b.root)


def test_the_world_digest_sees_every_byte(two_builds, tmp_path):
    import shutil

    copy = shutil.copytree(two_builds[0].root, tmp_path / "w")
    before = world_digest(copy)
    data = bytearray((copy / "data.json").read_bytes())
    data[-2] ^= 1
    (copy / "data.json").write_bytes(bytes(data))
    assert world_digest(copy) != before


def test_world_layout(two_builds):
    w, _ = two_builds
    task = _micro_task(w.root.parent)
    assert w.root.name == world_key(task) and w.root.name.startswith("micro-")
    assert len(w.sft_dirs) == task.num_sft_seeds >= 2
    assert len(w.rm_dirs) == task.num_members
    for d in [w.base_dir, *w.sft_dirs, *w.rm_dirs]:
        assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()
    assert not set(w.train_prompts) & set(w.eval_prompts)
    assert w.train_prompts and w.eval_prompts and w.heldout_texts
    assert not list(w.root.parent.glob(".tmp-*"))  # no half-built world left behind


def test_cached_prepare_builds_nothing(two_builds, monkeypatch):
    import tasks.tiny_world as tiny_world

    w, _ = two_builds

    def no_build(*args, **kwargs):
        raise AssertionError("a cached world was built again")

    monkeypatch.setattr(tiny_world, "_build", no_build)
    again = prepare(_micro_task(w.root.parent))
    assert again.root == w.root and again.summary == w.summary


def test_reloaded_models_match(two_builds):
    w, _ = two_builds
    model, tok = load_policy(w.sft_dirs[0])
    other, _ = load_policy(w.sft_dirs[0])
    ids = tok(w.eval_prompts[:4], return_tensors="pt", padding=True)
    with torch.no_grad():
        la = model(**ids).logits
        lb = other(**ids).logits
    torch.testing.assert_close(la, lb, rtol=0, atol=0)
    assert model.config.head_dim == 64 and not model.config.tie_word_embeddings
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>" and tok.pad_token == "<pad>"
    assert ids["input_ids"][0, 0].item() == tok.bos_token_id


def test_in_memory_and_reloaded_logits_identical(tmp_path):
    """Build pieces in memory, save, reload: identical logits (a fresh model, tiny shapes)."""
    from tasks.models import ModelSize, new_causal_lm, save_model, train_tokenizer

    texts = ["The pasta was great.", "This movie was awful and boring."] * 20
    tok = train_tokenizer(texts, 300, tmp_path / "tok")
    model = new_causal_lm(ModelSize(300, 64, 1, 128), tok, seed=0).eval()
    save_model(model, tok, tmp_path / "m")
    again, tok2 = load_policy(tmp_path / "m")
    ids = tok2(texts[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(model(**ids).logits, again(**ids).logits, rtol=0, atol=0)


def test_summary(two_builds):
    s = two_builds[0].summary
    for acc in s["reward_models"]["heldout_accuracy_clean"]:
        assert isinstance(acc, float) and 0.0 <= acc <= 1.0
    sft = s["sft"]
    assert len(sft["heldout_ppl"]) == 2 and all(math.isfinite(p) for p in sft["heldout_ppl"])
    assert sft["soup_no_worse_than_mean"]
    assert set(sft["interpolation_loss"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
    assert -0.3 < sft["mean_gold_of_samples"] < 0.3  # the SFT policy is not already positive
    assert len(sft["samples"]) == 5
    assert all(isinstance(x["completion"], str) and x["completion"].strip()
               for x in sft["samples"])
    assert s["probe"]["gold"]["spam"] < s["probe"]["gold"]["fluent"]
    assert s["build_seconds"] > 0


def test_reward_scorer(two_builds):
    w, _ = two_builds
    scorer = RewardScorer(w.rm_dirs[0])
    prompts = w.eval_prompts[:5]
    scores = scorer.score(prompts, [" was great.", " was awful.", "", " I loved it.", " ."],
                          batch_size=2)
    assert len(scores) == 5 and all(math.isfinite(x) for x in scores)
    assert scorer.score([], []) == []


def test_sft_samples_decode(two_builds):
    from tasks.models import sample_completions

    w, _ = two_builds
    model, tok = load_policy(w.sft_dirs[1])
    torch.manual_seed(0)
    outs = sample_completions(model, tok, w.eval_prompts[:4], max_new_tokens=12)
    assert len(outs) == 4 and all(isinstance(o, str) for o in outs)
    assert any(o.strip() for o in outs)


# ---------------------------------------------------------------------------------------------
# Gold scorer (pure Python, no world needed)
# ---------------------------------------------------------------------------------------------

P = "This movie"
SPAM = " great great great amazing amazing wonderful"
REPEAT = " was great. It was great. It was great. It was great."
FLUENT_POS = " was really wonderful. I loved the acting. Overall, I would recommend it."
MILD_POS = " was nice."
NEUTRAL = " was long. The plot was predictable."
NEGATIVE = " was terrible. I hated the ending. What a waste of money."


def test_gold_orders_hand_written_cases():
    spam, repeat, fluent, mild, neutral, negative, empty = gold_score(
        [P] * 7, [SPAM, REPEAT, FLUENT_POS, MILD_POS, NEUTRAL, NEGATIVE, ""]
    )
    assert spam < mild < fluent
    assert repeat < fluent
    assert spam == 0.0 and empty == 0.0
    assert negative < -0.5 < 0.0 == neutral
    assert fluent > 0.8


def test_gold_is_deterministic_and_bounded():
    cases = [SPAM, FLUENT_POS, NEGATIVE, " was was was", " the the the the the"]
    a = gold_score([P] * len(cases), cases)
    assert a == gold_score([P] * len(cases), cases)
    assert all(-1.0 <= x <= 1.0 for x in a)
    with pytest.raises(ValueError):
        gold_score([P], [])


def test_corpus_is_fluent_under_gold():
    """The grammar's own reviews keep (nearly) full fluency: the gold term rewards them."""
    from statistics import median

    from tasks.corpus import generate_reviews
    from tasks.gold import fluency

    reviews = generate_reviews(500, seed=1)
    flu = [fluency(op, text[len(op):]) for op, text, _ in reviews]
    assert median(flu) == 1.0 and sum(f > 0.7 for f in flu) >= 0.98 * len(flu)


def test_disjoint_sft_data_is_a_different_world_and_shared_keeps_its_key(tmp_path):
    task = _micro_task(tmp_path)
    shared = world_key(task)
    assert world_key(task.model_copy(update={"sft_data": "shared"})) == shared
    assert world_key(task.model_copy(update={"sft_data": "disjoint"})) != shared


def test_ingredient_spread_by_hand():
    from tasks.tiny_world import ingredient_spread

    base = {"w": torch.zeros(2), "step": torch.tensor(3)}  # integer tensors are not weights
    a = {"w": torch.tensor([3.0, 0.0]), "step": torch.tensor(5)}
    b = {"w": torch.tensor([0.0, 4.0]), "step": torch.tensor(7)}
    # ||a - b|| = 5; mean distance from the base (3 + 4) / 2 = 3.5
    assert ingredient_spread([a, b], base) == pytest.approx(5 / 3.5)
    assert ingredient_spread([a, a], base) == 0.0
    assert math.isnan(ingredient_spread([a], base))


def test_ingredient_data_by_hand():
    from tasks.corpus import generate_reviews
    from tasks.tiny_world import ingredient_data

    docs = ["a", "b", "c", "d", "e", "f"]
    doms = ["food", "movie", "food", "book", "movie", "food"]
    assert ingredient_data(docs, doms, 2, "shared", 3) == [(docs, 3), (docs, 3)]
    assert ingredient_data(docs, doms, 2, "disjoint", 3) == [(["a", "c", "e"], 6),
                                                             (["b", "d", "f"], 6)]
    # sorted domains book, food, movie: ingredient 0 has book + movie, 1 has food;
    # epochs 3 x 6 / 3 = 6 each
    assert ingredient_data(docs, doms, 2, "domains", 3) == [(["b", "d", "e"], 6),
                                                            (["a", "c", "f"], 6)]
    with pytest.raises(ValueError, match="4 ingredients, only 3 domains"):
        ingredient_data(docs, doms, 4, "domains", 3)
    # the domains come with the reviews, and asking for them leaves the reviews as they were
    domains: list[str] = []
    assert generate_reviews(50, seed=3, domains=domains) == generate_reviews(50, seed=3)
    assert len(domains) == 50 and len(set(domains)) == 6


def test_domains_sft_data_is_a_world_of_its_own(tmp_path):
    task = _micro_task(tmp_path)
    keys = {world_key(task.model_copy(update={"sft_data": m}))
            for m in ("shared", "disjoint", "domains")}
    assert len(keys) == 3
