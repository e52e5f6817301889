"""The shared findings rules (core.findings), their report section, and every run's findings in one table."""
import json
import math

import pandas as pd
import pytest

from core.findings import (COLUMNS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Claim, beyond, findings_markdown,
                           findings_table, mean_and_se, not_testable, paired_difference, paired_equivalence,
                           ratio_below, within)
from core.runs.catalog import run_findings
from core.runs.store import FINDINGS

CLAIM = Claim("A. Author, A paper (ICML 2021)", "Arm A beats arm B.", "A - B test accuracy, paired by seed")


def test_mean_and_se_by_hand():
    """[1, 2, 6]: mean 3, sample std sqrt(7), SE sqrt(7/3); non-finite values are dropped first."""
    assert mean_and_se([1, 2, 6, float("nan")]) == pytest.approx((3.0, math.sqrt(7 / 3), 3))
    estimate, se, n = mean_and_se([0.4])
    assert (estimate, n) == (0.4, 1) and math.isnan(se)


@pytest.mark.parametrize("estimate, se, n, verdict", [
    (0.05, 0.02, 3, SUPPORTED),  # 2.5 SE above 0
    (0.05, 0.025, 3, INCONCLUSIVE),  # exactly 2 SE: not beyond
    (-0.05, 0.02, 3, NOT_SUPPORTED),
    (0.05, 0.0, 3, SUPPORTED),  # seeds that agree exactly
    (0.05, 0.01, 1, INCONCLUSIVE),  # one seed: no verdict
    (0.05, 0.0, 2, INCONCLUSIVE),  # two seeds that agree: still no verdict
    (float("nan"), 0.01, 3, INCONCLUSIVE),
    (0.05, float("nan"), 3, INCONCLUSIVE),
])
def test_beyond(estimate, se, n, verdict):
    assert beyond(estimate, se, n) == verdict


def test_beyond_a_threshold():
    """Against a threshold of 0.9: 0.95 ± 0.02 clears it, 0.85 ± 0.02 falls short of it, 0.92 ± 0.02 neither."""
    assert [beyond(e, 0.02, 4, threshold=0.9) for e in (0.95, 0.85, 0.92)] == [SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE]


@pytest.mark.parametrize("estimate, se, verdict", [
    (0.002, 0.003, SUPPORTED),  # 0.002 + 0.006 < 0.01
    (-0.002, 0.003, SUPPORTED),
    (0.03, 0.005, NOT_SUPPORTED),  # 0.03 - 0.01 > 0.01
    (-0.03, 0.005, NOT_SUPPORTED),
    (0.008, 0.003, INCONCLUSIVE),  # the interval straddles the margin
])
def test_within(estimate, se, verdict):
    assert within(estimate, se, 3, margin=0.01) == verdict


def test_paired_difference_row():
    """Three seeds' differences 0.03, 0.04, 0.05: mean 0.04, SE 0.01/sqrt(3), supported; the row says its rule."""
    row = paired_difference(CLAIM, [0.03, 0.04, 0.05], "digits, mlp_w8_d1, 3 seeds")
    assert list(row) == list(COLUMNS)
    assert row["estimate"] == pytest.approx(0.04) and row["se"] == pytest.approx(0.01 / math.sqrt(3))
    assert (row["n_seeds"], row["verdict"], row["claim"]) == (3, SUPPORTED, "Arm A beats arm B.")
    assert row["rule"].startswith("mean paired difference over seeds > 0 by more than 2 SE: supported")
    flipped = paired_difference(CLAIM, [-0.03, -0.04, -0.05], "s")
    assert flipped["verdict"] == NOT_SUPPORTED and flipped["estimate"] == pytest.approx(-0.04)
    assert paired_difference(CLAIM, [0.05, -0.04, 0.01], "s")["verdict"] == INCONCLUSIVE


def test_paired_equivalence_row():
    row = paired_equivalence(CLAIM, [0.001, -0.002, 0.001], "s", margin=0.02)
    assert row["verdict"] == SUPPORTED and row["estimate"] == pytest.approx(0.0)
    assert "inside ± 0.02" in row["rule"]


@pytest.mark.parametrize("ratios, verdict", [
    ([1.0, 1.1, 1.2], SUPPORTED),  # mean 1.1, SE 0.1/sqrt(3) = 0.058: 0.2 below 1.3 is 3.5 SE
    ([1.4, 1.5, 1.6], NOT_SUPPORTED),  # 0.2 above 1.3: 3.5 SE
    ([1.1, 1.3, 1.5], INCONCLUSIVE),  # mean 1.3 on the threshold
    ([1.0, 1.0], INCONCLUSIVE),  # two replicates: no verdict
])
def test_ratio_below_a_threshold(ratios, verdict):
    row = ratio_below(CLAIM, ratios, "s", 1.3, "epochs", n_seeds=5)
    assert row["verdict"] == verdict and row["n_seeds"] == 5  # the seeds behind the ratios, not the epochs
    expected_se = math.sqrt(sum((r - sum(ratios) / len(ratios)) ** 2 for r in ratios) / (len(ratios) - 1) / len(ratios))
    assert (row["estimate"], row["se"]) == (pytest.approx(sum(ratios) / len(ratios)), pytest.approx(expected_se))
    assert row["rule"] == ("mean ratio over epochs < 1.3 by more than 2 SE: supported; > 1.3 by more than 2 SE: not "
                           "supported; else inconclusive (and with < 3 epochs)")
    assert ratio_below(CLAIM, ratios, "s", 1.3)["n_seeds"] == len(ratios)  # by default one seed per ratio


def test_not_testable_and_bad_verdicts():
    row = not_testable(CLAIM, "no label noise: set dataset.label_noise", "s")
    assert row["verdict"] == INCONCLUSIVE and math.isnan(row["estimate"]) and row["n_seeds"] == 0
    assert row["rule"] == "not testable here: no label noise: set dataset.label_noise"
    from core.findings import row as finding_row
    with pytest.raises(ValueError, match="verdict 'confirmed' is not one of supported, not supported, inconclusive"):
        finding_row(CLAIM, 1.0, 0.1, 3, "confirmed", "r", "s")


def test_too_few_seeds_says_why_and_how():
    from core.findings import too_few_seeds

    assert too_few_seeds(3) is None
    needs = "a verdict needs a standard error over at least 3"
    assert too_few_seeds(1) == f"1 seed, and {needs}; set seeds to at least 3 values"
    assert too_few_seeds(2, "add one") == f"2 seeds, and {needs}; add one"


def test_findings_table_keeps_its_columns_when_empty():
    empty = findings_table([])
    assert list(empty.columns) == list(COLUMNS) and empty.empty
    assert empty.dtypes["estimate"] == float and str(empty.dtypes["n_seeds"]) == "int64"


def test_markdown_says_each_rule_once():
    table = findings_table([paired_difference(CLAIM, [0.03, 0.04, 0.05], "digits"),
                            paired_difference(CLAIM, [-0.03, -0.04, -0.05], "digits"),
                            not_testable(CLAIM, "one seed", "digits")])
    lines = findings_markdown(table)
    assert lines[0] == "| verdict | claim | paper | measure | estimate ± SE | seeds | rule |"
    assert "| **supported** | Arm A beats arm B. |" in lines[2] and "0.04 ± 0.0058 | 3 | R1 |" in lines[2]
    assert "| **inconclusive** |" in lines[4] and "| not measured | 0 | R2 |" in lines[4]
    assert lines[5:] == ["", f"- R1: {table['rule'][0]}", "- R2: not testable here: one seed"]
    led = findings_markdown(table.assign(run_id="toy-aaaaaaaaaaaa"), lead=["run_id"])
    assert led[0].startswith("| verdict | run_id | claim |") and "| **supported** | toy-aaaaaaaaaaaa |" in led[2]
    assert findings_markdown(table, omit=["paper", "measure"])[0] == "| verdict | claim | estimate ± SE | seeds | rule |"
    assert findings_markdown(findings_table([])) == [
        "This flow checks no paper's claim: it produces data for the flows that do."]


def test_run_findings_gathers_every_run(tmp_path):
    """Two runs with findings and one without (written before findings existed): the table holds the two, led by
    their flow, run id and status."""
    for flow, run, rows in [("toy", "toy-aaaaaaaaaaaa", [paired_difference(CLAIM, [0.03, 0.04, 0.05], "s")]),
                            ("toy", "toy-bbbbbbbbbbbb", [not_testable(CLAIM, "why", "s")]),
                            ("toy", "toy-cccccccccccc", None)]:
        folder = tmp_path / "runs" / flow / run
        folder.mkdir(parents=True)
        (folder / "config.json").write_text('{"flow": "toy", "config": {}}')
        if rows is not None:
            findings_table(rows).to_parquet(folder / FINDINGS)
            (folder / "report.md").write_text("done")
    table = run_findings(tmp_path)
    assert list(table.columns) == ["flow", "run_id", "status", *COLUMNS]
    assert sorted(table["run_id"]) == ["toy-aaaaaaaaaaaa", "toy-bbbbbbbbbbbb"]
    assert set(table["status"]) == {"complete"}
    assert sorted(table["verdict"]) == [INCONCLUSIVE, SUPPORTED]
    assert list(run_findings(tmp_path / "nothing").columns) == list(table.columns)
    assert isinstance(run_findings(tmp_path / "nothing"), pd.DataFrame)


def test_the_findings_command_lists_every_run_with_its_command(tmp_path, capsys):
    """`regularity findings`: one markdown table over the runs, each run's scope and the command that gives it (the
    flow's default config, a shipped config, else the run's own config.json); `--format parquet` writes the table."""
    from core.config import run_id
    from flows.cli import main
    from flows.config_files import SHIPPED_CONFIGS, load_config
    from flows.registry import FLOWS

    default = run_id("dct_sparse", FLOWS["dct_sparse"].config_class()())
    synthetic = str(SHIPPED_CONFIGS / "deq-synthetic.yaml")
    read = {"dataset": "0123456789abcdef"}  # the fingerprint of a file the run read enters its id
    shipped = run_id("deq", load_config(FLOWS["deq"].config_class(), synthetic, [], "deq"), read)
    runs = [("dct_sparse", default, [paired_difference(CLAIM, [0.03, 0.04, 0.05], "mnist1d, 3 seeds")]),
            ("deq", shipped, [not_testable(CLAIM, "why", "synthetic, 1 seed")]),
            ("deq", "deq-000000000000", [paired_difference(CLAIM, [-0.03, -0.04, -0.05], "mnist1d, 3 seeds")])]
    for flow, run, rows in runs:
        folder = tmp_path / "runs" / flow / run
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"config": {}, "inputs": read if run == shipped else None}))
        findings_table(rows).to_parquet(folder / FINDINGS)
    assert main(["findings", "--data-root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| verdict | flow | run_id | claim | paper | measure | estimate ± SE | seeds | rule |"
    assert sorted(line.split(" | ")[2] for line in lines[2:5]) == sorted(run for _, run, _ in runs)
    assert f"- `{default}` (partial (0 shard tables)): mnist1d, 3 seeds; `regularity run dct_sparse`" in lines
    assert (f"- `{shipped}` (partial (0 shard tables)): synthetic, 1 seed; "
            "`regularity run deq --config flows/configs/deq-synthetic.yaml`") in lines
    assert ("- `deq-000000000000` (partial (0 shard tables)): mnist1d, 3 seeds; "
            f"`regularity run deq --config {tmp_path}/runs/deq/deq-000000000000/config.json`") in lines
    assert main(["findings", "--data-root", str(tmp_path), "--flow", "deq", "--format", "parquet"]) == 0
    written = pd.read_parquet(tmp_path / "findings.parquet")
    assert capsys.readouterr().out == f"2 findings of 2 runs written to {tmp_path / 'findings.parquet'}\n"
    assert sorted(written["run_id"]) == ["deq-000000000000", shipped] and list(written.columns)[:3] == [
        "flow", "run_id", "status"]
    assert main(["findings", "--data-root", str(tmp_path / "empty")]) == 0
    assert capsys.readouterr().out.startswith(f"no findings under {tmp_path / 'empty'}")


def test_show_counts_a_runs_verdicts(tmp_path, capsys):
    from flows.cli import main

    folder = tmp_path / "runs" / "deq" / "deq-0123456789ab"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"flow": "deq", "run_id": "deq-0123456789ab", "config": {}}')
    findings_table([paired_difference(CLAIM, [0.03, 0.04, 0.05], "s"), paired_difference(CLAIM, [0.1, 0.2, 0.3], "s"),
                    not_testable(CLAIM, "why", "s")]).to_parquet(folder / FINDINGS)
    assert main(["show", "deq-0123", "--data-root", str(tmp_path)]) == 0
    assert (f"\nFindings: 3 claims checked: 2 supported, 1 inconclusive (`regularity findings --flow deq --data-root "
            f"{tmp_path}`)\n") in capsys.readouterr().out
    findings_table([]).to_parquet(folder / FINDINGS)
    assert main(["show", "deq-0123", "--data-root", str(tmp_path)]) == 0
    assert "\nFindings: none (this flow checks no paper's claim)\n" in capsys.readouterr().out
