"""Prefect artifacts that summarise a run: a table and a markdown note naming its files."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from core.findings import findings_markdown, markdown_table
from core.runs.files import atomic_write
from core.runs.store import FINDINGS, REPORT, RunStore
from flows.registry import FLOWS, FlowEntry


def publish(store: RunStore, summary: pd.DataFrame, figures: list[Path], description: str,
            findings: pd.DataFrame) -> None:
    """`findings.parquet` (the paper's claims checked, `core.findings`), a table artifact of `summary`, and a markdown
    report, findings first, then the run's tables (each with what its rows and numbers are, from the flow's registry
    entry), its figures and its summary, as an artifact and as `report.md` in the run folder."""
    key = store.run_id.lower().replace("_", "-")  # artifact keys: lowercase letters, digits, dashes
    create_table_artifact(key=f"{key}-summary", table=summary.round(4).to_dict("records"), description=description)
    entry = FLOWS.get(store.flow, FlowEntry("", "", "", "", early_failure={}))
    lines = [f"# {store.flow} run `{store.run_id}`", "", description, "", f"Run folder: `{store.root}`", ""]
    store.remove_corrupt(FINDINGS)
    if not (store.is_complete(FINDINGS) and store.read_table(FINDINGS).equals(findings)):
        store.write_table(FINDINGS, findings)  # only when new or changed: a re-run of a finished run writes nothing
    if not findings.empty:
        create_table_artifact(key=f"{key}-findings", table=findings.round(4).to_dict("records"),
                              description=f"the papers' claims checked by {store.run_id}, by each row's rule")
    scopes = [f"- Scope: {scope}" for scope in dict.fromkeys(findings["scope"])]
    lines += ["## Findings", "", *findings_markdown(findings), *scopes, ""]
    lines += [f"**Where to look:** {entry.question}", ""] if entry.question else []
    lines += ["## Tables", "", *table_lines(store.root, entry.tables), "", "## Figures", ""]
    lines += [f"- `{f.relative_to(store.root)}` ({f.as_uri()})" for f in figures]
    lines += ["", "## Summary", "", *([entry.report_summary, ""] if entry.report_summary else [])]
    lines += markdown_table(summary.round(4))
    create_markdown_artifact(key=f"{key}-report", markdown="\n".join(lines), description=description)
    report = "\n".join(lines).encode() + b"\n"
    atomic_write(store.root / REPORT, lambda f: f.write(report))  # written last: the run is complete


def table_lines(folder: Path, described: dict[str, str]) -> list[str]:
    """One line per table of the run folder: the described ones present (names or patterns, in the order given) with
    what they hold, then the other top-level tables by name."""
    present = [(name, text) for name, text in described.items() if any(folder.glob(name))]
    others = sorted({p.name for p in folder.glob("*.parquet")} - {name for name, _ in present})
    return [f"- `{name}`: {text}" for name, text in present] + [f"- `{name}`" for name in others]

