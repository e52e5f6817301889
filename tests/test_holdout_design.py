"""The balanced holdout design of the `cscore` flow: exact sizes, exact holdout counts, pure per run."""
import math

import numpy as np
import pytest
import torch

from core.training.experiment import balanced_subsets, holdout_chain, holdout_subsets, random_subsets, subset_size
from flows.cscore import DEFAULT_RATIOS, CScoreFlowConfig, plan_shards


@pytest.mark.parametrize("n, size, runs", [(10, 3, 9), (10, 7, 12), (97, 87, 30), (300, 210, 4), (1437, 1293, 16)])
def test_every_prefix_of_runs_holds_each_example_out_floor_or_ceil_times(n, size, runs):
    subsets = balanced_subsets(n, size, list(range(runs)), seed=5)
    assert subsets.sum(1).tolist() == [size] * runs
    counts = torch.cumsum((~subsets).long(), 0)  # row r: times held out by runs 0..r
    for r in range(runs):
        expected = (r + 1) * (n - size) / n
        assert set(counts[r].tolist()) <= {math.floor(expected), math.ceil(expected)}, f"after {r + 1} runs"
        assert counts[r].sum() == (r + 1) * (n - size)


def test_a_block_across_two_permutations_never_repeats_an_example():
    for seed in range(200):  # n = 10, 7 held out: blocks 2, 3, 5, 6, 8 straddle a permutation boundary
        chain = holdout_chain(10, 7, 9, seed)
        assert all(len(set(chain[b * 7 : (b + 1) * 7])) == 7 for b in range(9))
        assert all(sorted(chain[j * 10 : (j + 1) * 10]) == list(range(10)) for j in range(6))  # still permutations


def test_each_run_is_a_pure_function_of_its_own_index():
    everything = balanced_subsets(50, 35, list(range(12)), seed=3)
    assert torch.equal(balanced_subsets(50, 35, [7, 2, 11], seed=3), everything[[7, 2, 11]])
    assert not torch.equal(balanced_subsets(50, 35, list(range(12)), seed=4), everything)
    assert len({tuple(row.tolist()) for row in everything}) == 12


def test_every_example_is_held_out_by_a_run_equally_often_over_seeds():
    """Each block, the ones that straddle a permutation included, is a uniform choice of examples."""
    n, held, seeds = 10, 7, 3000
    frequency = np.zeros((4, n))
    for seed in range(seeds):
        chain = holdout_chain(n, held, 4, seed)
        for block in range(4):
            frequency[block, chain[block * held : (block + 1) * held]] += 1 / seeds
    # binomial standard error of 0.7 over 3,000 draws is 0.0084; 5 of them
    np.testing.assert_allclose(frequency, held / n, atol=0.042)


def test_no_example_misses_a_ratio_when_each_ratio_holds_out_at_least_one_run():
    for n, runs in [(1437, 16), (300, 10), (4000, 2)]:
        config = CScoreFlowConfig(runs_per_ratio=runs)
        for shard in plan_shards(config, n):
            subsets = holdout_subsets(shard["design"], n, shard["subset_size"], shard["runs"], [], shard["design_seed"])
            if (1 - shard["ratio"]) * runs >= 1:
                assert (~subsets).any(0).all(), (n, runs, shard["ratio"])
    independent = random_subsets(1437, subset_size(0.9, 1437), list(range(16)))
    assert (~independent).any(0).sum() < 1437  # the independent design loses examples at s = 0.9, R = 16


def test_ratios_get_their_own_designs_and_the_independent_design_is_kept():
    plan = plan_shards(CScoreFlowConfig(runs_per_ratio=4), 300)
    assert len({p["design_seed"] for p in plan}) == len(DEFAULT_RATIOS)
    shard = plan_shards(CScoreFlowConfig(runs_per_ratio=4, holdout_design="independent"), 300)[0]
    assert shard["design"] == "independent"
    seeds = [11, 12, 13, 14]
    assert torch.equal(holdout_subsets("independent", 300, 30, shard["runs"], seeds, shard["design_seed"]),
                       random_subsets(300, 30, seeds))


@pytest.mark.parametrize("size", [0, 10])
def test_a_subset_of_none_or_all_examples_is_refused(size):
    with pytest.raises(ValueError, match="must leave 1 to 9 of 10 in the subset"):
        balanced_subsets(10, size, [0], seed=0)
