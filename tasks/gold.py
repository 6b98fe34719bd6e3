"""The gold (oracle) reward of the tiny world: sentiment that only fluent text can earn.

    gold(prompt, completion) = compound(completion) * fluency(prompt, completion)

    compound  = VADER compound score of the completion text, in [-1, 1]
    fluency   = grammatical**2 * repetition * density, in [0, 1]
    grammatical = fraction of the completion's word bigrams (the first one joined to the
                  prompt's last word) that the review grammar can produce
                  (`corpus.grammar_bigrams()`, an exact set)
    repetition  = min(1, distinct_words / words / REPEAT_FLOOR): a text that repeats itself
                  (distinct ratio under REPEAT_FLOOR) loses reward in proportion
    density     = min(1, (1 + DENSITY_CAP * words) / sentiment_words): sentiment words
                  (|VADER valence| >= 1) beyond one plus DENSITY_CAP of the (alphabetic) words
                  dilute the reward away

Words are lower-cased `[a-z']+` runs and punctuation marks. An empty completion scores 0.
Degenerate spam ("great great great amazing amazing wonderful") has no grammatical bigram and
scores 0; a fluent positive review scores close to its compound. The scorer is pure Python,
deterministic, and independent of every learned model. The two constants were set so that the
grammar's own reviews keep fluency 1 (the tests check the corpus median).
"""

from __future__ import annotations

import functools

from tasks.corpus import grammar_bigrams, vader_lexicon, words_of

REPEAT_FLOOR = 0.6  # distinct-word ratio below which repetition is penalised
DENSITY_CAP = 0.3  # sentiment-word share (after the first) above which it is diluted


@functools.lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def fluency(prompt: str, completion: str) -> float:
    """grammatical**2 * repetition * density (see the module docstring), in [0, 1]."""
    words = words_of(completion)
    if not words:
        return 0.0
    head = words_of(prompt)[-1:]
    seq = head + words
    pairs = list(zip(seq, seq[1:]))
    if not pairs:  # one word and no prompt: no evidence of grammar
        return 0.0
    allowed = grammar_bigrams()
    grammatical = sum(p in allowed for p in pairs) / len(pairs)
    repetition = min(1.0, len(set(words)) / len(words) / REPEAT_FLOOR)
    lex = vader_lexicon()
    tokens = [w for w in words if w.isalpha()]
    n_sent = sum(abs(lex.get(w, 0.0)) >= 1.0 for w in tokens)
    density = min(1.0, (1.0 + DENSITY_CAP * len(tokens)) / max(1, n_sent))
    return grammatical**2 * repetition * density


def compound(text: str) -> float:
    """VADER compound sentiment of `text`, in [-1, 1]."""
    return float(_analyzer().polarity_scores(text)["compound"]) if text.strip() else 0.0


def gold_score(prompts: list[str], completions: list[str], labels=None) -> list[float]:
    """gold = compound(completion) * fluency(prompt, completion), one float per pair (the
    reward-function signature; the tiny world has no labels)."""
    if len(prompts) != len(completions):
        raise ValueError(f"gold_score: {len(prompts)} prompts but {len(completions)} completions")
    return [compound(c) * fluency(p, c) if c.strip() else 0.0 for p, c in zip(prompts, completions)]
