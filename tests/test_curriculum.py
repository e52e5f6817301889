"""A pretraining curriculum (`pretrain.curriculum`, `core.sequence.transfer.staged`): each stage's batches for its
steps, then the run's own LIME setting from its own step 0, unchanged by the stages before it; stages validated with
the run's config, before any work."""
import numpy as np
import pytest
from pydantic import ValidationError

from core.config import derive_seed
from core.sequence.lime import parse_case
from core.sequence.transfer import bucketed, lime_batches, staged
from core.training.experiment import DRAW_STREAM, ORDER_STREAM
from flows.lime_pretrain import CurriculumStage, LimePretrainFlowConfig
from tasks.lime_pretrain import pretraining_batches

BASE = 12345  # a model seed


def test_staged_runs_each_stage_for_its_steps_each_from_its_own_step_0():
    stages = [(lambda step, name=name: ([name], [step]), steps) for name, steps in (("a", 2), ("b", 3), ("c", 1))]
    batches = staged(stages)
    assert [batches(step) for step in range(8)] == [(["a"], [0]), (["a"], [1]), (["b"], [0]), (["b"], [1]),
                                                    (["b"], [2]), (["c"], [0]), (["c"], [1]), (["c"], [2])]


def config(curriculum: list[dict], steps: int = 40) -> LimePretrainFlowConfig:
    return LimePretrainFlowConfig.model_validate({"pretrain": {"optim": {"steps": steps, "batch_size": 8},
                                                               "bucket_batches": 4, "curriculum": curriculum}})


def test_without_a_curriculum_the_batches_are_the_runs_as_before_curricula():
    plain = config([])
    before = bucketed(lime_batches("deduct", derive_seed(BASE, DRAW_STREAM), 8, plain.lime.to_core()), 4,
                      derive_seed(BASE, ORDER_STREAM))
    now = pretraining_batches(plain, "deduct", BASE)
    for step in (0, 5, 39):
        assert all(np.array_equal(x, y) for ours, theirs in zip(now(step), before(step)) for x, y in zip(ours, theirs))


def test_a_stage_draws_its_own_ranges_and_the_run_setting_follows_from_its_own_step_0():
    stage = {"steps": 8, "kept_rule": [1, 1], "rule_math": [0, 0], "case_length": [1, 1]}
    staged_run, plain = config([stage]), config([])
    batches, after = pretraining_batches(staged_run, "deduct", BASE), pretraining_batches(plain, "deduct", BASE)
    for step in range(8):  # one rule symbol twice, no math: Rule A A, Case A : x, Result x x
        sources, targets = batches(step)
        assert {len(t) for t in targets} == {2} and all(t[0] == t[1] for t in targets)
        assert all(len(parse_case(s[-3:])) == 1 for s in sources)
    for step in (8, 20, 39):
        ours, theirs = batches(step), after(step - 8)
        assert all(np.array_equal(x, y) for o, t in zip(ours, theirs) for x, y in zip(o, t))


def test_stages_are_checked_with_the_run_before_any_work():
    with pytest.raises(ValidationError, match=r"curriculum's stages take 40 steps, not fewer than "
                                              r"pretrain.optim.steps \(40\)"):
        config([{"steps": 30}, {"steps": 10}])
    with pytest.raises(ValidationError, match=r"pretrain.curriculum\[1\]: kept_rule must be \(low, high\) with 1 <= "
                                              r"low <= high <= 8, not \(2, 9\)"):
        config([{"steps": 1}, {"steps": 1, "kept_rule": [2, 9]}])
    assert CurriculumStage(steps=5).lime(config([]).lime).case_length == [1, 3]  # the run's sets, the stage's ranges
