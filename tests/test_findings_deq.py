"""The deq flow's findings rules (core.methods.deq.deq_findings) on hand-made epoch and inference tables of 3 seeds:
the unregularised DEQ's growth in training, and gamma 2 against gamma 0 after the last epoch, paired by seed."""
import math
import statistics

import pandas as pd
import pytest

from core.findings import COLUMNS
from core.methods.deq import (FEWER_BACKWARD_ITERATIONS, FEWER_FORWARD_ITERATIONS, GROWING_ITERATIONS,
                              GROWING_JACOBIAN, LESS_MEMORY, SAME_AS_EXPLICIT, SAME_PERFORMANCE,
                              SMALLER_CAPPED_RESIDUAL, SMALLER_JACOBIAN, deq_findings, explicit_baseline_findings)
from core.methods.deq_costs import AS_FAST_IN_INFERENCE, AS_FAST_IN_TRAINING, MINIMAL_COST, cost_findings

SCOPE = "synthetic, deq_w8, 2 epochs, 3 seeds"
DENSE, CONV = "deq_w8", "deq_conv_c4"  # the DEQ of a run: the tanh cell the baselines unroll, a conv cell (none)
CONV_WHY = ("no explicit baseline exists for the convolutional cell of deq_conv_c4: the explicit networks unroll "
            "deq_w<width>'s tanh cell, so the flow trains none beside a conv DEQ (baselines.depths: [])")
ROOT3 = math.sqrt(3)
# per (gamma, epoch): per seed (train_forward_steps, train_backward_steps, jacobian_frobenius, accuracy)
FIGURES = {(0.0, 1): [(10, 4, 0.10, 0.50)] * 3,
           (0.0, 2): [(20, 5, 0.10, 0.60), (21, 5, 0.09, 0.60), (22, 5, 0.11, 0.60)],
           (2.0, 1): [(9, 9, 0.01, 0.10)] * 3,
           (2.0, 2): [(12, 6, 0.05, 0.58), (12, 7, 0.05, 0.59), (12, 8, 0.05, 0.60)]}
# residual after 8 iterations, per (gamma, epoch), per seed (after 1 iteration it is always 1)
RESIDUALS = {(0.0, 1): [0.9] * 3, (0.0, 2): [0.5, 0.4, 0.6], (2.0, 1): [0.9] * 3, (2.0, 2): [0.1] * 3}


def tables(gammas=(0.0, 2.0), epochs=(1, 2), seeds=(0, 1, 2), caps=(1, 8)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """deq_epochs and deq_inference tables (the columns the rules read) from FIGURES and RESIDUALS."""
    names = ["train_forward_steps", "train_backward_steps", "jacobian_frobenius", "accuracy"]
    epoch_rows = [{"gamma": g, "seed": s, "epoch": e, **dict(zip(names, FIGURES[g, e][s]))}
                  for g in gammas for s in seeds for e in epochs]
    inference_rows = [{"gamma": g, "seed": s, "epoch": e, "cap": c, "accuracy": 0.5,
                       "residual": 1.0 if c == 1 else RESIDUALS[g, e][s]}
                      for g in gammas for s in seeds for e in epochs for c in caps]
    return pd.DataFrame(epoch_rows), pd.DataFrame(inference_rows)


def test_growth_without_the_regulariser_then_gamma_against_none_paired_by_seed():
    findings = deq_findings(*tables(), SCOPE)
    assert list(findings.columns) == list(COLUMNS)
    claims = [GROWING_ITERATIONS, GROWING_JACOBIAN, FEWER_FORWARD_ITERATIONS, FEWER_BACKWARD_ITERATIONS,
              SMALLER_CAPPED_RESIDUAL, SMALLER_JACOBIAN, SAME_PERFORMANCE]
    assert findings["claim"].tolist() == [c.claim for c in claims]
    assert findings["claim"][0] == "DEQs introduce potential instability to the model."
    assert findings["n_seeds"].eq(3).all() and findings["scope"].eq(SCOPE).all()
    expected = [  # (estimate, se, verdict), each by hand from FIGURES and RESIDUALS
        (11.0, 1 / ROOT3, "supported"),  # forward steps 20, 21, 22 after 10: growth 10, 11, 12
        (0.0, 0.01 / ROOT3, "inconclusive"),  # ||J|| 0.10, 0.09, 0.11 after 0.10
        (9.0, 1 / ROOT3, "supported"),  # forward steps 20, 21, 22 against 12
        (-2.0, 1 / ROOT3, "not supported"),  # backward steps 5 against 6, 7, 8
        (0.4, 0.1 / ROOT3, "supported"),  # residual after 8 iterations 0.5, 0.4, 0.6 against 0.1
        (0.05, 0.01 / ROOT3, "supported"),  # ||J|| 0.10, 0.09, 0.11 against 0.05
        (-0.01, 0.01 / ROOT3, "inconclusive"),  # accuracy 0.58, 0.59, 0.60 against 0.60: right at the -0.01 margin
    ]
    for row, (estimate, se, verdict) in zip(findings.to_dict("records"), expected):
        assert (row["estimate"], row["se"], row["verdict"]) == (pytest.approx(estimate), pytest.approx(se), verdict)
    assert "within 8 solver iterations" in findings["measure"][4] and "(gamma 2)" in findings["measure"][4]
    assert findings["rule"][6].endswith("the threshold -0.01 reads 'approximately the same' as not worse by more "
                                        "than one accuracy point (our margin: the paper gives none)")


def test_each_regularised_gamma_gets_its_own_rows():
    epochs, inference = tables()
    more = [frame.assign(gamma=4.0) for frame in (epochs[epochs["gamma"] == 2], inference[inference["gamma"] == 2])]
    findings = deq_findings(pd.concat([epochs, more[0]]), pd.concat([inference, more[1]]), SCOPE)
    assert len(findings) == 2 + 5 * 2
    assert findings["measure"].str.contains(r"\(gamma 4\)").sum() == 5


def test_settings_that_cannot_test_a_claim_say_what_to_change():
    no_baseline = deq_findings(*tables(gammas=(2.0,)), SCOPE)
    assert len(no_baseline) == 7 and no_baseline["estimate"].isna().all()
    assert no_baseline["rule"].eq("not testable here: gammas has no 0: add 0.0 (the unregularised DEQ) to gammas").all()
    only_baseline = deq_findings(*tables(gammas=(0.0,)), SCOPE)
    assert only_baseline["verdict"].tolist()[:2] == ["supported", "inconclusive"]
    assert only_baseline["rule"][2:].eq("not testable here: gammas holds only 0: add a positive gamma such as "
                                        "2.0").all()
    one_epoch = deq_findings(*tables(epochs=(2,)), SCOPE)
    assert one_epoch["rule"][:2].eq("not testable here: one epoch: growth in training needs train.epochs of 2 or "
                                    "more").all()
    assert one_epoch["verdict"][2] == "supported"
    one_cap = deq_findings(*tables(caps=(1,)), SCOPE)
    assert one_cap["rule"][4] == ("not testable here: monitor.caps holds only 1 (one iteration's residual is always "
                                  "1): add larger caps such as 8")


def test_one_seed_gives_no_verdict():
    findings = deq_findings(*tables(seeds=(0,)), SCOPE)
    assert len(findings) == 7 and findings["verdict"].eq("inconclusive").all() and findings["n_seeds"].eq(1).all()
    assert findings["rule"].eq("not testable here: 1 seed, and a verdict needs a standard error over at least 3; "
                               "set seeds to at least 3 values").all()


# The explicit baselines (core.methods.deq.explicit_baseline_findings). After the last epoch the DEQ at gamma 2 has
# accuracy 0.58, 0.59, 0.60 (FIGURES). Per (network, depth), per seed: accuracy after the last epoch (2) and memory.
BASELINE_ACCURACY = {("unrolled", 2): (0.50, 0.50, 0.50), ("explicit", 16): (0.58, 0.58, 0.59)}
BEST = {"supported": (0.58, 0.58, 0.60),  # DEQ minus best 0, 0.01, 0: above -0.01 by 4 SE
        "inconclusive": (0.60, 0.60, 0.61),  # -0.02, -0.01, -0.01: within 2 SE of -0.01
        "not supported": (0.62, 0.62, 0.64)}  # -0.04, -0.03, -0.04: below -0.01 by 8 SE
MEMORY = {("unrolled", 2, None): 50, ("unrolled", 16, None): 400, ("explicit", 16, None): 3000, ("deq", 0, 0.0): 9999}


def baseline_tables(best: tuple, deq_memory: int = 100, seeds=(0, 1, 2)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """deq_baselines and deq_costs tables with the unrolled L = 16 network's accuracies `best`; at epoch 1 an
    explicit L = 2 network is best of all, and the rules must not read it."""
    accuracy = {**BASELINE_ACCURACY, ("unrolled", 16): best}
    rows = [{"network": n, "depth": d, "seed": s, "epoch": 2, "accuracy": a[s]} for (n, d), a in accuracy.items()
            for s in seeds]
    rows += [{"network": "explicit", "depth": 2, "seed": s, "epoch": 1, "accuracy": 0.99} for s in seeds]
    memory = {**MEMORY, ("deq", 0, 2.0): deq_memory}
    costs = [{"network": n, "depth": d, "gamma": math.nan if g is None else g, "seed": s, "step_memory_bytes": m,
              "memory_method": "autograd_saved_bytes"} for (n, d, g), m in memory.items() for s in seeds]
    return pd.DataFrame(rows), pd.DataFrame(costs)


@pytest.mark.parametrize("verdict", list(BEST))
def test_the_deq_against_the_best_explicit_baseline_paired_by_seed(verdict):
    epochs, _ = tables()
    findings = explicit_baseline_findings(epochs, *baseline_tables(BEST[verdict]), SCOPE, DENSE)
    assert list(findings.columns) == list(COLUMNS) and len(findings) == 2
    assert findings["claim"].tolist() == [SAME_AS_EXPLICIT.claim, LESS_MEMORY.claim]
    assert findings["measure"][0] == ("test accuracy after the last epoch, the DEQ (gamma 2) minus the best explicit "
                                      "baseline (unrolled16, by mean accuracy over seeds)")
    estimate = {"supported": 0.01 / 3, "inconclusive": -0.04 / 3, "not supported": -0.11 / 3}[verdict]
    assert (findings["estimate"][0], findings["se"][0]) == (pytest.approx(estimate), pytest.approx(0.01 / 3))
    assert findings["verdict"][0] == verdict and findings["n_seeds"].eq(3).all()
    assert findings["rule"][0].startswith("mean paired difference over seeds > -0.01 by more than 2 SE")


@pytest.mark.parametrize("deq_memory, verdict", [(100, "supported"), (500, "not supported")])
def test_the_deq_memory_against_the_deepest_unrolled_network(deq_memory, verdict):
    epochs, _ = tables()
    findings = explicit_baseline_findings(epochs, *baseline_tables(BEST["supported"], deq_memory), SCOPE, DENSE)
    assert findings["measure"][1] == ("1 - the DEQ's (gamma 2) memory of one training step over the unrolled "
                                      "network's of depth 16 (autograd_saved_bytes): positive = the DEQ's is smaller")
    assert (findings["estimate"][1], findings["se"][1]) == (pytest.approx(1 - deq_memory / 400), 0.0)
    assert findings["verdict"][1] == verdict


def test_the_baselines_rows_say_what_to_change_when_they_cannot_be_tested():
    epochs, _ = tables()
    baselines, costs = baseline_tables(BEST["supported"])
    cases = [(explicit_baseline_findings(epochs, None, costs[costs["network"] == "deq"], SCOPE, DENSE),
              "baselines.depths is empty: add the depths of the explicit networks, e.g. [2, 4, 8, 16]"),
             (explicit_baseline_findings(epochs, None, costs[costs["network"] == "deq"], SCOPE, CONV), CONV_WHY),
             (explicit_baseline_findings(epochs[epochs["gamma"] == 0], baselines, costs, SCOPE, DENSE),
              "gammas holds no positive gamma: add one such as 2.0"),
             (explicit_baseline_findings(*[t[t["seed"] < 2] for t in (epochs, baselines, costs)], SCOPE, DENSE),
              "2 seeds, and a verdict needs a standard error over at least 3; set seeds to at least 3 values")]
    for findings, why in cases:
        assert len(findings) == 2 and findings["estimate"].isna().all() and findings["verdict"].eq("inconclusive").all()
        assert findings["rule"].eq(f"not testable here: {why}").all()
        assert findings["measure"][1].startswith("1 - the DEQ's (gamma > 0) memory of one training step over the "
                                                 "unrolled network's of depth the largest (as measured)")


# The cost claims (core.methods.deq_costs.cost_findings). Epoch seconds are one figure per (arm, epoch), repeated on
# every seed's row as the flow writes them; inference seconds are each model's own.
UNREGULARISED_SECONDS = [2.0, 2.0, 4.0, 4.0]
REGULARISED_SECONDS = {"supported": [2.0, 2.2, 4.0, 4.4],  # ratios 1.0, 1.1, 1.0, 1.1 to gamma 0: mean 1.05
                       "inconclusive": [2.2, 2.4, 4.4, 4.8],  # 1.1, 1.2, 1.1, 1.2: mean 1.15, within 2 SE of 1.2
                       "not supported": [2.8, 3.0, 5.6, 6.0]}  # 1.4, 1.5, 1.4, 1.5: mean 1.45
# per (network, depth): epoch seconds per epoch, inference seconds per seed; the deepest tied one is unrolled4
BASELINE_SECONDS = {("unrolled", 2): ([0.1] * 4, [0.01] * 3), ("unrolled", 4): ([2.0, 2.0, 2.0, 2.0], [0.1, 0.11, 0.12]),
                    ("explicit", 8): ([0.5] * 4, [0.05] * 3)}
DEQ_INFERENCE = {0.0: [9.0, 9.0, 9.0], 2.0: [0.12, 0.121, 0.18]}  # gamma 2 over unrolled4: 1.2, 1.1, 1.5


def cost_tables(regularised: list[float], gammas=(0.0, 2.0), seeds=(0, 1, 2)):
    """deq_epochs, deq_baselines and deq_costs tables (the columns the cost rules read)."""
    seconds = {0.0: UNREGULARISED_SECONDS, 2.0: regularised}
    epochs = pd.DataFrame([{"gamma": g, "seed": s, "epoch": e, "epoch_seconds": t} for g in gammas
                           for s in seeds for e, t in enumerate(seconds[g], 1)])
    baselines = pd.DataFrame([{"network": n, "depth": d, "seed": s, "epoch": e, "epoch_seconds": t}
                              for (n, d), (per_epoch, _) in BASELINE_SECONDS.items() for s in seeds
                              for e, t in enumerate(per_epoch, 1)])
    costs = [{"network": n, "gamma": math.nan, "depth": d, "seed": s, "inference_seconds": per_seed[s]}
             for (n, d), (_, per_seed) in BASELINE_SECONDS.items() for s in seeds]
    costs += [{"network": "deq", "gamma": g, "depth": 0, "seed": s, "inference_seconds": DEQ_INFERENCE[g][s]}
              for g in gammas for s in seeds]
    return epochs, baselines, pd.DataFrame(costs)


def mean_and_sample_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample standard deviation over the square root of n), with the statistics module."""
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))


@pytest.mark.parametrize("verdict", list(REGULARISED_SECONDS))
def test_the_regularisers_cost_and_the_deqs_speed_against_the_deepest_unrolled_network(verdict):
    regularised = REGULARISED_SECONDS[verdict]
    findings = cost_findings(*cost_tables(regularised), SCOPE, DENSE)
    assert list(findings.columns) == list(COLUMNS) and len(findings) == 3
    assert findings["claim"].tolist() == [MINIMAL_COST.claim, AS_FAST_IN_TRAINING.claim, AS_FAST_IN_INFERENCE.claim]
    assert findings["claim"][1] == "DEQs run with approximately the same speed as conventional deep networks."
    cost, training, inference = findings.to_dict("records")
    estimate, se = mean_and_sample_se([r / u for r, u in zip(regularised, UNREGULARISED_SECONDS)])
    assert (cost["estimate"], cost["se"], cost["verdict"]) == (pytest.approx(estimate), pytest.approx(se), verdict)
    assert cost["measure"].startswith("training seconds of an epoch of the DEQs with the regulariser (gamma 2")
    assert "< 1.2 by more than 2 SE" in cost["rule"] and "the threshold 1.2 is ours" in cost["rule"]
    # against unrolled4 (2.0 s every epoch), not the cheaper unrolled2 nor the deeper, untied explicit8
    estimate, se = mean_and_sample_se([r / 2.0 for r in regularised])
    assert (training["estimate"], training["se"]) == (pytest.approx(estimate), pytest.approx(se))
    assert training["verdict"] == "inconclusive"  # 1.0-1.1x in two epochs, 2.0-2.4x in the others: SE > 0.3
    assert "tied unrolled networks of depth 4" in training["measure"] and "replicates: the epochs" in training["rule"]
    assert (inference["estimate"], inference["se"]) == tuple(pytest.approx(v) for v in mean_and_sample_se([1.2, 1.1,
                                                                                                            1.5]))
    assert inference["verdict"] == "inconclusive" and "replicates: the seeds" in inference["rule"]
    assert "deepest tied unrolled network" in inference["rule"] and "the threshold 1.5 is ours" in inference["rule"]
    assert findings["n_seeds"].eq(3).all() and findings["scope"].eq(SCOPE).all()


@pytest.mark.parametrize("seconds, inference_seconds, verdict", [
    ([2.0, 2.2, 2.0, 2.2], [0.1, 0.11, 0.12], "supported"),  # 1.0, 1.1, 1.0, 1.1x unrolled4; inference 1x each seed
    ([4.0, 4.0, 4.0, 4.0], [0.3, 0.33, 0.36], "not supported")])  # 2x every epoch; inference 3x each seed
def test_the_speed_rows_as_fast_and_clearly_slower(seconds, inference_seconds, verdict):
    epochs, baselines, costs = cost_tables(seconds)
    costs.loc[(costs["network"] == "deq") & (costs["gamma"] == 2.0), "inference_seconds"] = inference_seconds
    _, training, inference = cost_findings(epochs, baselines, costs, SCOPE, DENSE).to_dict("records")
    estimate, se = mean_and_sample_se([t / 2.0 for t in seconds])
    assert (training["estimate"], training["se"]) == (pytest.approx(estimate), pytest.approx(se))
    ratio = inference_seconds[0] / 0.1
    assert (inference["estimate"], inference["se"]) == (pytest.approx(ratio), pytest.approx(0.0, abs=1e-12))
    assert training["verdict"] == inference["verdict"] == verdict


def test_cost_rows_that_cannot_be_tested_say_why():
    epochs, baselines, costs = cost_tables(REGULARISED_SECONDS["supported"])
    no_baselines = cost_findings(epochs, None, costs, SCOPE, DENSE)
    assert no_baselines["verdict"][0] == "supported"  # the regulariser's cost needs no baseline
    assert no_baselines["rule"][1:].eq("not testable here: baselines.depths is empty: add the depths of the explicit "
                                       "networks, e.g. [2, 4, 8, 16]").all()
    assert no_baselines["measure"][1].endswith("tied unrolled networks of depth the largest (the same cell and "
                                               "parameters), the same epoch")
    conv = cost_findings(epochs, None, costs, SCOPE, CONV)
    assert conv["rule"][1:].eq(f"not testable here: {CONV_WHY}").all() and conv["estimate"][1:].isna().all()
    only_zero = cost_findings(epochs[epochs["gamma"] != 2.0], baselines, costs, SCOPE, DENSE)
    assert len(only_zero) == 3 and only_zero["estimate"].isna().all()
    assert only_zero["rule"].eq("not testable here: gammas holds no positive gamma: add one such as 2.0").all()
    no_zero = cost_findings(epochs[epochs["gamma"] != 0.0], baselines, costs, SCOPE, DENSE)
    assert no_zero["rule"][0] == "not testable here: gammas has no 0: add 0.0 (the unregularised DEQ) to gammas"
    assert no_zero["estimate"][1:].notna().all()  # the speed rows need no gamma 0
