"""The catalog of runs under a data root: which exist, how far each got, what each holds, and finding one by id."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.runs.completeness import changed_inputs
from core.runs.files import decode_provenance, file_metadata, resolve_root
from core.runs.store import FINDINGS, REPORT

RUN_ID = re.compile(r"[a-z_]+-[0-9a-f]{12}")
RUN_PREFIX = re.compile(r"[a-z_]+(-[0-9a-f]{0,12})?")  # the start of a run id, flow name first

# What tells runs apart at a glance, in the order `config_summary` shows it: the dataset and model (bare) first,
# then the keys a flow's registry entry names (`FlowEntry.summary_keys`), then training; a flow that names one of
# these keys itself shows it where it names it.
LEADING_SUMMARY_KEYS = ("dataset.name", "dataset.path", "dataset.n_train", "dataset.label_noise", "model")
TRAINING_SUMMARY_KEYS = ("train.epochs", "train.lr")


def summary_keys(flow_keys: Iterable[str] = ()) -> list[str]:
    """The keys `config_summary` shows for a flow whose own keys are `flow_keys`, in order."""
    flow_keys = list(flow_keys)
    return [*(key for key in LEADING_SUMMARY_KEYS if key not in flow_keys), *flow_keys,
            *(key for key in TRAINING_SUMMARY_KEYS if key not in flow_keys)]


def config_summary(config: dict[str, Any], flow_keys: Iterable[str] = ()) -> str:
    """One line of a run's salient settings, e.g. `digits n_train=300 mlp_w8_d1 runs_per_ratio=2 epochs=2`; `flow_keys`
    are the settings its flow adds (`summary_keys`)."""
    parts = []
    for key in summary_keys(flow_keys):
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None or (key == "dataset.label_noise" and value == 0):
            continue
        if isinstance(value, list):
            value = "/".join(map(str, value)) if len(value) <= 4 else f"{value[0]}..{value[-1]} ({len(value)})"
        name = key.rsplit(".", 1)[-1].replace("label_", "")
        parts.append(str(value) if key in ("dataset.name", "model") else f"{name}={value}")
    return " ".join(parts)


def run_status(folder: Path) -> str:
    """`complete` once the flow wrote its report, else how many shard tables are done."""
    if (folder / REPORT).is_file():
        return "complete"
    return f"partial ({sum(1 for _ in folder.glob('shards/**/*.parquet'))} shard tables)"


def list_runs(data_root: Path | str | None = None,
              flow_keys: Mapping[str, Iterable[str]] | None = None) -> pd.DataFrame:
    """One row per run folder: flow, run_id, status, summary, path, created, n_tables, size_bytes; `flow_keys` (flow
    name -> its summary keys, from the flows' registry) adds each flow's own settings to its summary."""
    rows = []
    for cfg in sorted(resolve_root(data_root).glob("runs/*/*/config.json")):
        run_dir = cfg.parent
        files = [p for p in run_dir.rglob("*") if p.is_file() and not p.name.startswith(".")]
        summary = config_summary(json.loads(cfg.read_text())["config"], (flow_keys or {}).get(run_dir.parent.name, ()))
        rows.append({"flow": run_dir.parent.name, "run_id": run_dir.name, "status": run_status(run_dir),
                     "summary": summary, "path": str(run_dir),
                     "created": pd.Timestamp(cfg.stat().st_mtime, unit="s", tz="UTC"),
                     "n_tables": sum(p.suffix == ".parquet" for p in files),
                     "size_bytes": sum(p.stat().st_size for p in files)})
    columns = ["flow", "run_id", "status", "summary", "path", "created", "n_tables", "size_bytes"]
    return pd.DataFrame(rows, columns=columns).sort_values("created", ignore_index=True)


def audit_run(folder: Path | str) -> pd.DataFrame:
    """One row per table and weights file of a run folder (findings.parquet aside): name, rows, columns, code_revision,
    created_at, and `changed`: the inputs it was built from that were rewritten or removed since (it is out of date)."""
    folder, rows = Path(folder), []
    for path in sorted([*folder.rglob("*.parquet"), *folder.rglob("*.safetensors")]):
        if path.name.startswith(".") or path == folder / FINDINGS:  # findings: re-derived at each end, like the report
            continue
        shape = None
        if path.suffix == ".parquet":  # one footer read gives both the shape and the provenance
            try:
                shape = pq.read_metadata(path)
            except (pa.ArrowException, OSError):
                pass
            meta = None if shape is None else decode_provenance(shape.metadata)
        else:
            meta = file_metadata(path)
        rows.append({"name": path.relative_to(folder).as_posix(), "rows": shape.num_rows if shape else None,
                     "columns": shape.num_columns if shape else None,
                     "code_revision": (meta or {}).get("code_revision", "unreadable"),
                     "created_at": (meta or {}).get("created_at"),
                     "changed": changed_inputs(folder, meta) if meta else []})
    columns = ["name", "rows", "columns", "code_revision", "created_at", "changed"]
    return pd.DataFrame(rows, columns=columns).astype({"rows": "Int64", "columns": "Int64"})


def find_run(run: str, data_root: Path | str | None = None, prefix: bool = False) -> Path:
    """The folder of run id `run` (`<flow>-<hash>`) under the data root, or an error naming what exists. With
    `prefix`, `run` may be the start of one run id (`cscore-8e05`); a start shared by several lists them. A config's
    setting that names a run gives the whole id: a run's identity must not depend on which runs exist."""
    if not (RUN_PREFIX if prefix else RUN_ID).fullmatch(run):  # also keeps `..` and absolute paths out of the data root
        raise ValueError(f"{run!r} is not a run id{' or the start of one' * prefix}: those read <flow>-<12 hex "
                         "digits>, e.g. cscore-3f9c0a1b2c3d (`regularity ls` lists them)")
    runs = resolve_root(data_root) / "runs"
    folder = runs / run.rsplit("-", 1)[0] / run
    if (folder / "config.json").is_file():
        return folder
    known = sorted(p.parent.name for p in runs.glob("*/*/config.json"))
    matches = [name for name in known if prefix and name.startswith(run)]
    if len(matches) == 1:
        return runs / matches[0].rsplit("-", 1)[0] / matches[0]
    if matches:
        raise ValueError(f"{run!r} is the start of {len(matches)} runs under {runs}: {', '.join(matches)}; "
                         "give more of the id")
    start = prefix and not RUN_ID.fullmatch(run)
    raise FileNotFoundError(f"no run {run!r}{' (nor one beginning so)' * start} under {runs}; "
                            f"runs there: {', '.join(known) or 'none'} (set --data-root if it lives elsewhere)")


def run_findings(data_root: Path | str | None = None) -> pd.DataFrame:
    """Every run's findings in one table, led by its flow, run id and status; runs written before their flow checked
    claims (no findings.parquet yet: running the same command again adds it) are left out."""
    from core.findings import COLUMNS

    frames = []
    for run in list_runs(data_root).itertuples():
        path = Path(run.path) / FINDINGS
        if path.is_file():
            frame = pd.read_parquet(path)
            frames.append(frame.assign(flow=run.flow, run_id=run.run_id, status=run.status))
    columns = ["flow", "run_id", "status", *COLUMNS]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]
