"""The task kits' config types (the `task` section of a run config): the tiny world's and a
user's prompt files'. services/config.py composes them into the run config."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class TinyWorldConfig(Strict):
    kind: Literal["tiny_world"] = Field(
        "tiny_world", description="the task kit: tiny_world (built locally, no download) or "
        "dataset (your prompt files)")
    size: Literal["micro", "tiny", "small"] = Field(
        "tiny", description="micro builds in seconds (tests); tiny is the demo (~minutes)"
    )
    cache_dir: str = Field(".cache/raylign", description="built worlds live here, by hash")
    seed: StrictInt = Field(0, ge=0, lt=2**32,
                      description="seed of the world's build (corpus, models)")
    num_members: StrictInt = Field(4, ge=1, description="K proxy reward models to train")
    num_sft_seeds: StrictInt = Field(2, ge=1, description="SFT models (soup ingredients)")
    sft_data: Literal["shared", "disjoint", "domains"] = Field(
        "shared", description="the ingredients' SFT data: shared (every ingredient sees the "
        "whole SFT split; they differ by seed), disjoint (ingredient i of n sees every n-th "
        "review, for n times the epochs: the same number of steps on different data) or "
        "domains (ingredient i sees only the reviews of its share of the six review domains, "
        "for about the same number of steps)")
    label_noise: float = Field(0.25, ge=0, lt=0.5,
                               description="fraction of preference labels flipped")


class DatasetConfig(Strict):
    kind: Literal["dataset"] = Field(description="your prompt files (policy.model_dir is the "
                                     "policy; reward.model_dirs / reward.functions score)")
    train: str = Field(description="training prompts: a .jsonl, .json, .parquet or .csv file, "
                       "or a datasets save_to_disk dir")
    eval: str | None = Field(None, description="evaluation prompts (same formats); None = "
                             "eval_fraction of train")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="rows of train held out for "
                                 "evaluation when eval is None (seeded by the run seed)")
    prompt_key: str = Field("prompt", description="the column with the prompt: a string, or a "
                            "list of chat messages [{role, content}] (rendered with the policy "
                            "tokenizer's chat template)")
    label_key: str | None = Field(None, description="a column handed to reward functions as "
                                  "their labels (e.g. the reference answer)")
    max_prompt_tokens: StrictInt = Field(256, ge=1, description="prompts longer than this (policy "
                                   "tokens) are dropped or cut, per truncate")
    truncate: Literal["drop", "left"] = Field(
        "drop", description="drop: a longer prompt is dropped (ledger reason too_long); left: "
        "cut from the left, BOS kept (counted in rollout/prompts_truncated)")
