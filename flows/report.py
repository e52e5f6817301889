"""Prefect artifacts that summarise a run: a table and a markdown note naming its files."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from core.runs.store import REPORT, RunStore, atomic_write


def publish(store: RunStore, summary: pd.DataFrame, figures: list[Path], description: str) -> None:
    """A table artifact of `summary`, and a markdown report of the run's tables and figures, as an artifact
    and as `report.md` in the run folder."""
    key = store.run_id.lower().replace("_", "-")  # artifact keys: lowercase letters, digits, dashes
    create_table_artifact(key=f"{key}-summary", table=summary.round(4).to_dict("records"), description=description)
    tables = sorted(p.relative_to(store.root) for p in store.root.glob("*.parquet"))
    lines = [f"# {store.flow} run `{store.run_id}`", "", description, "", f"Run folder: `{store.root}`", "", "## Tables", ""]
    lines += [f"- `{t}`" for t in tables] + ["", "## Figures", ""]
    lines += [f"- `{f.relative_to(store.root)}` ({f.as_uri()})" for f in figures]
    lines += ["", "## Summary", "", *markdown_table(summary.round(4))]
    create_markdown_artifact(key=f"{key}-report", markdown="\n".join(lines), description=description)
    report = "\n".join(lines).encode() + b"\n"
    atomic_write(store.root / REPORT, lambda f: f.write(report))  # written last: the run is complete


def markdown_table(frame: pd.DataFrame) -> list[str]:
    """The lines of a GitHub-style markdown table of `frame`."""
    rows = [list(frame.columns), ["---"] * frame.shape[1], *frame.itertuples(index=False)]
    return ["| " + " | ".join(map(str, row)) + " |" for row in rows]
