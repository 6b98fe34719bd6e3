"""A rule-based reward for examples/own_data: stay on topic, be positive.

    score(prompts, completions, labels) -> one float per completion
      = 1.0 if the completion names the prompt's item again (the row's `item`, its label)
      + 0.25 per positive word, at most 4 of them

raylign calls it inside a reward actor with lists of equal length (labels: the `label_key`
column, or None when the task has none).
"""

from __future__ import annotations

import re

POSITIVE = {"good", "great", "wonderful", "amazing", "excellent", "lovely", "perfect", "best",
            "beautiful", "fun", "enjoyed", "loved", "liked", "nice", "brilliant", "superb"}


def score(prompts: list[str], completions: list[str], labels: list[str | None]) -> list[float]:
    out = []
    for completion, item in zip(completions, labels, strict=True):
        words = re.findall(r"[a-z']+", completion.lower())
        on_topic = 1.0 if item is not None and item.lower() in words else 0.0
        out.append(on_topic + 0.25 * min(4, sum(w in POSITIVE for w in words)))
    return out
