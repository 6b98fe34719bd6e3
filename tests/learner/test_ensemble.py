"""Reward aggregation and the best-of-n order-statistics estimator."""

import itertools
import math

import pytest
import torch
from torch.testing import assert_close

from learner.ensemble import aggregate, best_of_n, best_of_n_weights, kl_bon

SCORES = torch.tensor([[1.0, 0.0], [2.0, 4.0], [3.0, 2.0]])  # (K=3, B=2)


def test_aggregators():
    assert_close(aggregate(SCORES, "mean"), torch.tensor([2.0, 2.0]))
    assert_close(aggregate(SCORES, "min"), torch.tensor([1.0, 0.0]))
    assert_close(aggregate(SCORES, "single"), torch.tensor([1.0, 0.0]))
    # sample variance (ddof=1): col0 {1,2,3} -> 1; col1 {0,4,2} -> 4
    assert_close(aggregate(SCORES, "uwo", uwo_lambda=0.5, ddof=1),
                 torch.tensor([2.0 - 0.5, 2.0 - 2.0]))
    # population variance (ddof=0): 2/3 and 8/3
    assert_close(aggregate(SCORES, "uwo", uwo_lambda=0.5, ddof=0),
                 torch.tensor([2.0 - 1.0 / 3, 2.0 - 4.0 / 3]))


def test_aggregator_errors():
    with pytest.raises(ValueError, match="'max'; valid: mean, min, uwo, single"):
        aggregate(SCORES, "max")
    with pytest.raises(ValueError, match="degrees of freedom"):
        aggregate(SCORES[:1], "uwo", uwo_lambda=0.1, ddof=1)
    with pytest.raises(ValueError, match="needs uwo_lambda and ddof"):
        aggregate(SCORES, "uwo", uwo_lambda=0.1)
    with pytest.raises(ValueError, match=r"\(K, B\)"):
        aggregate(SCORES[0], "mean")


def _brute_force(proxy, values, n):
    best = []
    for subset in itertools.combinations(range(len(proxy)), n):
        i = max(subset, key=lambda j: (proxy[j], -j))  # ties: the later sample in stable order
        best.append(values[i])
    return sum(best) / len(best)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_best_of_n_matches_enumeration(n):
    g = torch.Generator().manual_seed(n)
    proxy = torch.randn(7, generator=g, dtype=torch.float64).tolist()
    gold = torch.randn(7, generator=g, dtype=torch.float64).tolist()
    assert best_of_n(proxy, n) == pytest.approx(_brute_force(proxy, proxy, n), rel=1e-12)
    assert best_of_n(proxy, n, gold) == pytest.approx(_brute_force(proxy, gold, n), rel=1e-12)


def test_best_of_n_weights_and_edges():
    w = best_of_n_weights(2, 4)  # C(i-1,1)/C(4,2) = 0, 1/6, 2/6, 3/6
    assert_close(w, torch.tensor([0.0, 1 / 6, 2 / 6, 3 / 6], dtype=torch.float64))
    assert best_of_n([3.0, 1.0, 2.0], 3) == 3.0
    assert best_of_n([3.0, 1.0, 2.0], 1) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        best_of_n([1.0, 2.0], 3)
    with pytest.raises(ValueError, match="2 proxy scores but 3"):
        best_of_n([1.0, 2.0], 1, [1.0, 2.0, 3.0])


def test_kl_bon():
    assert kl_bon(1) == 0.0
    assert kl_bon(4) == pytest.approx(math.log(4) - 0.75)
    with pytest.raises(ValueError):
        kl_bon(0)
