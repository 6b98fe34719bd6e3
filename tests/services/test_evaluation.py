"""Held-out evaluation's inputs (services/evaluation.py): prompts cut as the engines cut them."""

from __future__ import annotations

from services.config import load_config
from services.evaluation import HeldOut
from tasks import load_task
from tests.conftest import REPO, TEST_WORLDS


def test_held_out_prompts_are_cut_from_the_left_to_max_prompt_tokens(micro_world):
    cfg = load_config(REPO / "deploy/configs/micro.yaml",
                      [f"task.cache_dir={TEST_WORLDS}", "learner.eval_prompts=2"])
    task = load_task(cfg)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(task.tokenizer_dir)
    long = " ".join(task.eval_prompts[:20])  # far over the limit below
    limit = 20  # a single prompt fits, twenty of them joined do not
    task = type(task)(**{**task.__dict__, "eval_prompts": [long, task.eval_prompts[0]],
                         "max_prompt_tokens": limit})
    held = HeldOut.build(cfg, task, tok, gold="tasks.gold:gold_score")
    ids = dict(zip(held.prompts, held.prompt_ids, strict=True))
    full, cut = tok(long)["input_ids"], ids[long]
    assert len(full) > limit
    assert len(cut) == limit and cut[-(limit - 1):] == full[-(limit - 1):]
    assert (cut[0] == tok.bos_token_id) == (full[0] == tok.bos_token_id)  # a BOS is kept
    short = task.eval_prompts[1]
    assert ids[short] == tok(short)["input_ids"]  # short prompts: untouched
