"""The Task protocol's prompt stream: seeded shuffles per epoch, stable ids (resume)."""

from __future__ import annotations

import pytest

from tasks.base import PromptStream

PROMPTS = tuple(f"p{i}" for i in range(10))


def test_each_epoch_is_a_permutation_and_epochs_differ():
    stream = PromptStream(PROMPTS, seed=0)
    epoch0 = [stream.text(i) for i in range(10)]
    epoch1 = [stream.text(i) for i in range(10, 20)]
    assert sorted(epoch0) == sorted(PROMPTS) == sorted(epoch1)
    assert epoch0 != list(PROMPTS)  # shuffled, not file order
    assert epoch0 != epoch1
    assert [stream.epoch(i) for i in (0, 9, 10, 19, 20)] == [0, 0, 1, 1, 2]


def test_order_depends_on_the_seed_only():
    a, b, c = PromptStream(PROMPTS, 0), PromptStream(PROMPTS, 0), PromptStream(PROMPTS, 1)
    assert [a.text(i) for i in range(30)] == [b.text(i) for i in range(30)]
    assert [a.text(i) for i in range(10)] != [c.text(i) for i in range(10)]


def test_an_id_means_the_same_text_in_any_order_of_asking():
    stream = PromptStream(PROMPTS, seed=3)
    forward = {i: stream.text(i) for i in range(25)}
    assert {i: PromptStream(PROMPTS, 3).text(i) for i in reversed(range(25))} == forward


def test_no_prompts_is_an_error():
    with pytest.raises(ValueError, match="no training prompts"):
        PromptStream((), seed=0)


def test_stratified_takes_every_type_in_turn_in_a_fixed_order():
    from tasks.base import stratified

    prompts = ["I liked it and", "I hated it and", "My kid said", "The plot was", "The end",
               "the cast", "My dog"]
    picked = stratified(prompts, 5)
    # types in sorted order: "i", "my", "the"; one of each, then the next round
    assert [p.split()[0].casefold() for p in picked] == ["i", "my", "the", "i", "my"]
    assert len(set(picked)) == 5 and picked == stratified(list(reversed(prompts)), 5)
    assert stratified(prompts, 100) == stratified(prompts, 7) and len(stratified(prompts, 100)) == 7
    assert stratified(prompts, 0) == [] and stratified([], 3) == []
    assert len({tuple(stratified(prompts, 7, seed=k)) for k in range(10)}) > 1  # seeded order
