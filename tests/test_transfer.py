"""Pretraining and fine-tuning helpers: the batch streams, sample efficiency and the summary, against values
worked out by hand."""
import math

import numpy as np
import pandas as pd
import pytest

from core.sequence.lime import LimeConfig, generate
from core.sequence.transfer import epoch_batches, examples_needed, lime_batches, sample_efficiency, transfer_summary

SMALL = LimeConfig(rule_symbols=8, lower_symbols=8, math_symbols=8)


def test_lime_batches_are_the_datasets_examples_in_order():
    batches = lime_batches("mixed", 3, 5, SMALL)
    expected = generate("mixed", 3, 0, 5 * 900, SMALL)  # past a generation chunk (2045 examples at batch 5)
    for step in (0, 1, 408, 409, 899, 2):
        sources, targets = batches(step)
        assert [s.tolist() for s in sources] == [e.source.tolist() for e in expected[5 * step:5 * step + 5]]
        assert [t.tolist() for t in targets] == [e.target.tolist() for e in expected[5 * step:5 * step + 5]]


def test_epoch_batches_visit_each_example_once_per_epoch_in_a_new_order():
    sources = [np.array([i]) for i in range(10)]
    targets = [np.array([100 + i]) for i in range(10)]
    batches = epoch_batches(sources, targets, 3, seed=7)
    epochs = [[int(s[0]) for step in range(3 * e, 3 * e + 3) for s in batches(step)[0]] for e in range(3)]
    for seen in epochs:  # three batches of 3: one example left out each epoch
        assert len(seen) == len(set(seen)) == 9
    assert epochs[0] != epochs[1]
    assert epoch_batches(sources, targets, 3, seed=7)(4) == batches(4)  # seeded
    step_sources, step_targets = batches(5)
    assert [int(t[0]) for t in step_targets] == [100 + int(s[0]) for s in step_sources]
    assert len(epoch_batches(sources[:2], targets[:2], 3, seed=0)(0)[0]) == 2  # smaller than a batch: all of it


def test_examples_needed_interpolates_on_a_log_scale():
    assert examples_needed([100, 1000, 10000], [0.2, 0.4, 0.8], 0.6) == pytest.approx(math.sqrt(1000 * 10000))
    assert examples_needed([100, 1000], [0.2, 0.4], 0.25) == pytest.approx(100 * 10 ** 0.25)
    assert examples_needed([100, 1000], [0.7, 0.9], 0.5) == 100  # the smallest size already reaches it
    assert math.isnan(examples_needed([100, 1000], [0.1, 0.2], 0.5))
    assert examples_needed([100, 1000, 10000], [0.6, 0.3, 0.7], 0.5) == 100  # the first size that reaches it


def finetune_rows(tasks=("rewrite",)) -> pd.DataFrame:
    """Two arms x two seeds x two sizes per task, with an earlier evaluation step that must be ignored; a second task
    holds each value less 0.1."""
    final = {("scratch", 0): (0.1, 0.5), ("scratch", 1): (0.3, 0.7), ("mixed", 0): (0.6, 0.9), ("mixed", 1): (0.2, 0.4)}
    rows = []
    for shift, task in enumerate(tasks):
        for (arm, seed), exact in final.items():
            for size, value in zip((100, 1000), exact):
                rows += [{"task": task, "arm": arm, "seed": seed, "train_examples": size, "step": 50,
                          "exact_match": 0.0},
                         {"task": task, "arm": arm, "seed": seed, "train_examples": size, "step": 100,
                          "exact_match": round(value - 0.1 * shift, 10)}]
    return pd.DataFrame(rows)


def test_sample_efficiency_reads_the_last_step_of_every_task_arm_and_seed():
    table = sample_efficiency(finetune_rows(("rewrite", "rewrite_multistep")), [0.5])
    assert list(table.columns) == ["task", "arm", "seed", "threshold", "examples_needed"]
    needed = {(r.task, r.arm, r.seed): r.examples_needed for r in table.itertuples()}
    assert len(needed) == 8
    assert needed[("rewrite", "scratch", 0)] == pytest.approx(1000)
    assert needed[("rewrite", "scratch", 1)] == pytest.approx(100 * 10 ** 0.5)  # 0.3 -> 0.7 crosses 0.5 halfway
    assert needed[("rewrite", "mixed", 0)] == 100 and math.isnan(needed[("rewrite", "mixed", 1)])
    assert math.isnan(needed[("rewrite_multistep", "scratch", 0)])  # 0.0 -> 0.4
    assert needed[("rewrite_multistep", "scratch", 1)] == pytest.approx(100 * 10 ** 0.75)  # 0.2 -> 0.6
    assert needed[("rewrite_multistep", "mixed", 0)] == 100  # 0.5 at 100


def test_summary_means_and_medians_over_seeds_per_task():
    finetune = finetune_rows(("rewrite", "rewrite_multistep"))
    summary = transfer_summary(finetune, sample_efficiency(finetune, [0.5]))
    assert summary[["task", "arm", "train_examples"]].values.tolist() == [
        [task, arm, size] for task in ("rewrite", "rewrite_multistep") for arm in ("scratch", "mixed")
        for size in (100, 1000)]
    assert summary["exact_match"].tolist() == pytest.approx([0.2, 0.6, 0.4, 0.65, 0.1, 0.5, 0.3, 0.55])
    assert summary["exact_match_sem"].tolist() == pytest.approx([0.1, 0.1, 0.2, 0.25] * 2)
    assert summary["seeds"].tolist() == [2] * 8
    needed = summary["examples_for_0.5"].tolist()
    assert needed[0] == needed[1] == pytest.approx((1000 + 100 * 10 ** 0.5) / 2)  # median of two seeds that reach it
    assert math.isnan(needed[2])  # one seed of two never reaches it: the median is a miss
    assert math.isnan(needed[4]) and math.isnan(needed[6])  # multi-step: seed 0 of scratch, seed 1 of mixed miss it


def tiny_model(seed: int = 0):
    """A one-layer encoder-decoder over LIME's small vocabulary, seeded."""
    from core.models.networks import seeded_init
    from core.sequence.config import TransformerConfig
    from core.sequence.transformer import Seq2Seq

    with seeded_init(seed):
        return Seq2Seq(SMALL.total_vocab, TransformerConfig(d_model=16, heads=2, encoder_layers=1, decoder_layers=1,
                                                          feedforward=32))


def test_training_resumed_from_a_checkpoint_ends_as_if_never_stopped():
    import copy

    import torch

    from core.sequence.config import OptimConfig
    from core.sequence.transfer import train_with_evaluation

    torch.set_num_threads(1)  # the same reduction order in both trainings
    config, batches = OptimConfig(steps=9, batch_size=4, lr=1e-2, warmup=2), lime_batches("deduct", 1, 4, SMALL)
    evaluate = lambda step: {"checked_at": float(step)}  # noqa: E731
    whole, saved = tiny_model(), []

    def keep(state: dict) -> None:
        saved.append((copy.deepcopy(state), copy.deepcopy(whole.state_dict())))

    straight = train_with_evaluation(whole, batches, config, 3, evaluate, save=keep)
    assert [state["step"] for state, _ in saved] == [3, 6]  # after each record but the last
    state, weights = saved[0]
    resumed = tiny_model(seed=99)  # another initialisation: everything must come from the checkpoint
    resumed.load_state_dict(weights)
    went_on = train_with_evaluation(resumed, batches, config, 3, evaluate, state=state)
    pd.testing.assert_frame_equal(went_on, straight)
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)
