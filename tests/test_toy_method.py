"""A method registered from a test module (tests/toy_method.py) needs no edit to any shared module: the CLI configures,
runs, lists and shows it as it does the shipped flows."""
from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import flows.common as common
from flows.cli import main
from flows.registry import FLOWS
from toy_method import CLASS_COUNTS, ENTRY

REPO = Path(__file__).parents[1]


@pytest.fixture
def toy(monkeypatch):
    """`toy` registered as a method, for this test only."""
    monkeypatch.setitem(FLOWS, "toy", ENTRY)
    return ENTRY


def test_the_toy_method_lives_outside_every_shared_module():
    """No module of core/, flows/ or tasks/ names the toy's module, flow, config or flow name."""
    names = re.compile(r"toy_method|toy_flow|ToyFlowConfig|[\"']toy[\"']")
    shared = [path for folder in ("core", "flows", "tasks") for path in (REPO / folder).rglob("*.py")]
    assert shared and not [path for path in shared if names.search(path.read_text(encoding="utf-8"))]
    assert "toy" not in FLOWS


def test_a_registry_entry_must_say_how_its_config_fails_early():
    """`early_failure` has no default: a new method cannot leave tests/test_hostile_input.py's early-stop check out."""
    from flows.registry import FlowEntry

    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'early_failure'"):
        FlowEntry("toy_method", "toy_flow", "ToyFlowConfig", "a toy")


def test_config_prints_the_toy_config_with_its_descriptions(toy, capsys):
    assert main(["config", "toy"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == [f"# toy: {toy.summary}", "# run it with: regularity run toy --config FILE"]
    assert printed[printed.index("share: true") - 1] == "# also write each class's share of the training set"
    assert "# what to count" in printed and "  name: digits" in printed and "  n_train: 40" in printed


def test_toy_run_is_listed_and_shown(toy, tmp_path, capsys, monkeypatch, prefect_harness):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))  # --ephemeral sets it; keep it local
    assert main(["run", "toy", "--ephemeral", "--data-root", str(tmp_path), "--set", "dataset.n_train=30"]) == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert folder.parent == tmp_path / "runs" / "toy"
    counts = pq.read_table(folder / "class_counts.parquet").to_pandas()
    assert counts["n_examples"].sum() == 30 and counts["share"].sum() == pytest.approx(1.0)
    report = (folder / "report.md").read_text()
    assert report.startswith(f"# toy run `{folder.name}`")
    assert f"\n- `class_counts.parquet`: {CLASS_COUNTS}\n" in report and f"\n{toy.report_summary}\n" in report

    assert main(["ls", "--flow", "toy", "--data-root", str(tmp_path)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == 2 and listing[1].split()[:3] == ["toy", folder.name, "complete"]
    assert listing[1].endswith(" digits n_train=30 share=True")
    assert main(["show", folder.name, "--data-root", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "n_train: 30" in shown and "class_counts.parquet" in shown and f"{len(counts)} rows" in shown

    # its findings, by its own rule, reach `regularity findings` and lead its report
    spread = counts["share"].max() - counts["share"].min()
    assert main(["findings", "--flow", "toy", "--data-root", str(tmp_path)]) == 0
    listed = capsys.readouterr().out.splitlines()
    verdict = "supported" if spread < 0.05 else "not supported"
    assert listed[2].startswith(f"| **{verdict}** | toy | {folder.name} | The classes of the training set are balanced.")
    assert f"| {spread:.4g} ± 0 | 1 | R1 |" in listed[2]
    assert report.index("## Findings") < report.index("## Tables")


def test_toy_early_failure_config_stops_before_any_file(toy, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "_started_from_deployment", lambda: False)
    flow_fn, config_class = toy.load()
    with pytest.raises(ValueError, match="n_train"):
        flow_fn.fn(config_class.model_validate(toy.early_failure), data_root=str(tmp_path))
    assert not (tmp_path / "runs").exists()
