"""The lime_pretrain flow's findings rules (core.sequence.transfer.lime_pretrain_findings) on hand-made curve tables of
3 seeds: LIME pretraining against none and against a control, paired by seed, and no verdict where the pretraining
did not learn its task."""
import math
import statistics

import pandas as pd
import pytest

from core.findings import COLUMNS
from core.sequence.transfer import ALL_SIZES, BEATS_CONTROL, BEATS_SCRATCH, lime_pretrain_findings

SCOPE = "term rewriting (8/16 train, 10 test examples), 3 seeds"
# last-step exact match per (arm, train_examples), per seed; an earlier step (2) is 0 everywhere
EXACT = {("scratch", 8): [0.1, 0.1, 0.1], ("scratch", 16): [0.3, 0.3, 0.3],
         ("mixed", 8): [0.2, 0.2, 0.2], ("mixed", 16): [0.4, 0.5, 0.6],
         ("copy", 8): [0.3, 0.32, 0.34], ("copy", 16): [0.6, 0.7, 0.8]}


def finetune_table(arms=("mixed", "scratch", "copy"), seeds=(0, 1, 2), exact=None, task="rewrite") -> pd.DataFrame:
    """lime_finetune_curves rows (the columns the rules read) of one downstream task from `exact` (default EXACT)."""
    exact = exact or EXACT
    return pd.DataFrame([{"task": task, "arm": a, "seed": s, "train_examples": n, "step": t,
                          "exact_match": exact[a, n][s] if t == 4 else 0.0}
                         for a in arms for s in seeds for n in (8, 16) for t in (2, 4)])


def pretrain_table(learned=(0.5, 0.6, 0.7), arms=("mixed", "copy"), seeds=(0, 1, 2)) -> pd.DataFrame:
    """lime_pretrain_curves rows: held-out exact match 0 at step 3, `learned` (per seed) at the last step, 6."""
    return pd.DataFrame([{"arm": a, "seed": s, "step": t, "exact_match": learned[s] if t == 6 else 0.0}
                         for a in arms for s in seeds for t in (3, 6)])


def means(findings: pd.DataFrame) -> pd.DataFrame:
    """The rows of the mean over training-set sizes (the others: Mixed at each size)."""
    return findings[findings["measure"].str.endswith(ALL_SIZES)].reset_index(drop=True)


def test_lime_against_scratch_and_against_the_copy_control_paired_by_seed():
    findings = lime_pretrain_findings(pretrain_table(), finetune_table(), SCOPE)
    assert list(findings.columns) == list(COLUMNS)
    assert findings["claim"].tolist() == [BEATS_SCRATCH.claim] * 3 + [BEATS_CONTROL.claim] * 3
    assert findings["claim"][0] == ("Models trained with LIME significantly outperform vanilla transformers on four "
                                    "very different large mathematical reasoning benchmarks.")
    scratch, control = means(findings).to_dict("records")
    # against scratch: size 8 +0.1 each seed, size 16 +0.1/+0.2/+0.3; per seed the mean: 0.1, 0.15, 0.2
    assert (scratch["estimate"], scratch["se"]) == (pytest.approx(0.15), pytest.approx(0.05 / math.sqrt(3)))
    assert scratch["verdict"] == "supported" and scratch["n_seeds"] == 3
    assert scratch["measure"] == ("exact match on one-step term rewriting (not the paper's benchmarks) at the last "
                                  "fine-tuning step, mixed pretraining minus none (scratch), mean over the downstream "
                                  "training sizes")
    # against copy: size 8 -0.10/-0.12/-0.14, size 16 -0.2 each; per seed -0.15, -0.16, -0.17
    assert (control["estimate"], control["se"]) == (pytest.approx(-0.16), pytest.approx(0.01 / math.sqrt(3)))
    assert control["verdict"] == "not supported"
    assert "minus the copy control (pretrained to copy the same sources), mean over" in control["measure"]


def test_mixed_is_also_judged_at_each_training_set_size():
    findings = lime_pretrain_findings(pretrain_table(), finetune_table(), SCOPE)
    at_8, at_16 = findings.iloc[1], findings.iloc[2]  # against scratch
    assert at_8["measure"].endswith("mixed pretraining minus none (scratch), at 8 training examples")
    assert (at_8["estimate"], at_8["se"]) == (pytest.approx(0.1), pytest.approx(0.0, abs=1e-12))
    assert (at_16["estimate"], at_16["se"]) == (pytest.approx(0.2), pytest.approx(0.1 / math.sqrt(3)))
    copy_8, copy_16 = findings.iloc[4], findings.iloc[5]
    assert copy_8["measure"].endswith("the same sources), at 8 training examples")
    assert (copy_8["estimate"], copy_8["se"]) == (pytest.approx(-0.12), pytest.approx(0.02 / math.sqrt(3)))
    assert copy_16["estimate"] == pytest.approx(-0.2) and copy_16["verdict"] == "not supported"
    assert findings.iloc[[1, 2]]["verdict"].tolist() == ["supported", "supported"]


def test_other_lime_tasks_get_the_mean_over_sizes_only():
    exact = {**EXACT, **{("deduct", n): values for (arm, n), values in EXACT.items() if arm == "mixed"}}
    findings = lime_pretrain_findings(pretrain_table(arms=("mixed", "deduct", "copy")),
                                      finetune_table(("mixed", "deduct", "scratch", "copy"), exact=exact), SCOPE)
    assert findings["measure"].str.contains("deduct pretraining").sum() == 2  # against scratch, against copy
    assert findings["measure"].str.contains("mixed pretraining").sum() == 6
    deduct = findings[findings["measure"].str.contains("deduct pretraining minus none")].iloc[0]
    assert deduct["measure"].endswith(ALL_SIZES) and deduct["estimate"] == pytest.approx(0.15)


def test_each_downstream_task_is_judged_on_its_own_rows():
    multistep = {key: [value / 2 for value in values] for key, values in EXACT.items()}  # every gain halved
    both = pd.concat([finetune_table(), finetune_table(exact=multistep, task="rewrite_multistep")], ignore_index=True)
    findings = means(lime_pretrain_findings(pretrain_table(), both, SCOPE))
    assert findings["claim"].tolist() == [BEATS_SCRATCH.claim, BEATS_CONTROL.claim] * 2
    assert findings["measure"][0].startswith("exact match on one-step term rewriting (not the paper's benchmarks)")
    assert findings["measure"][2].startswith("exact match on multi-step term rewriting (not the paper's benchmarks)")
    assert findings["measure"][3].startswith("exact match on multi-step term rewriting at the last fine-tuning step")
    assert findings["estimate"].tolist() == pytest.approx([0.15, -0.16, 0.075, -0.08])
    assert findings["verdict"].tolist() == ["supported", "not supported"] * 2


def test_a_gain_within_its_noise_is_inconclusive():
    exact = {**EXACT, ("mixed", 16): [0.2, 0.5, 0.3]}  # against scratch: 8: +0.1 each; 16: -0.1, +0.2, 0
    findings = lime_pretrain_findings(pretrain_table(), finetune_table(("mixed", "scratch"), exact=exact), SCOPE)
    (scratch,) = means(findings).query("claim == @BEATS_SCRATCH.claim").to_dict("records")
    assert scratch["estimate"] == pytest.approx((0 + 0.15 + 0.05) / 3)
    assert scratch["se"] == pytest.approx(statistics.stdev([0, 0.15, 0.05]) / math.sqrt(3))
    assert scratch["verdict"] == "inconclusive"
    assert findings["verdict"][1:3].tolist() == ["supported", "inconclusive"]  # at 8: +0.1 every seed; at 16: noise


def test_pretraining_that_did_not_learn_its_task_tests_no_transfer():
    findings = lime_pretrain_findings(pretrain_table(learned=(0.0, 0.0, 0.03)), finetune_table(), SCOPE)
    assert findings["claim"].tolist() == [BEATS_SCRATCH.claim] * 3 + [BEATS_CONTROL.claim] * 3
    assert findings["verdict"].eq("inconclusive").all() and findings["estimate"].isna().all()
    assert findings["n_seeds"].eq(3).all()
    assert findings["rule"].eq("not testable here: pretraining did not learn mixed: held-out exact match 0.010 at its "
                               "last step (6), mean over seeds, below 0.05 (our 'near 0'), so nothing learned could "
                               "transfer; pretrain longer (pretrain.optim.steps) or a larger transformer").all()


def test_missing_arms_or_one_seed_say_what_to_add():
    no_control = means(lime_pretrain_findings(pretrain_table(), finetune_table(("mixed", "scratch")), SCOPE))
    assert no_control["verdict"].tolist() == ["supported", "inconclusive"]
    assert no_control["rule"][1] == "not testable here: arms has no copy: add a control (copy or reverse) to arms"
    no_scratch = lime_pretrain_findings(pretrain_table(), finetune_table(("mixed", "copy")), SCOPE)
    assert no_scratch["rule"][0] == "not testable here: arms has no scratch: add scratch (no pretraining) to arms"
    no_lime = lime_pretrain_findings(pretrain_table(arms=("copy",)), finetune_table(("scratch", "copy")), SCOPE)
    assert len(no_lime) == 2 and no_lime["rule"].eq(
        "not testable here: arms has no LIME task: add mixed (or deduct, abduct, induct) to arms").all()
    one_seed = lime_pretrain_findings(pretrain_table(seeds=(0,)), finetune_table(seeds=(0,)), SCOPE)
    assert one_seed["n_seeds"].eq(1).all() and one_seed["rule"].eq(
        "not testable here: 1 seed, and a verdict needs a standard error over at least 3; "
        "set seeds to at least 3 values").all()
