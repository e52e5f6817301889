"""`regularity`: run flows from YAML configs and manage the project-local Prefect server.

Prefect reads its settings when first imported, so this module imports flows (and with them
prefect) only after it has decided which API the run talks to.
"""
from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from core.runtime import set_wait_policy

set_wait_policy()  # before flows/ load torch (libgomp reads it once, on loading); processes started here inherit it

from flows import server  # noqa: E402
from flows.config_files import ConfigError, commented_yaml, load_config  # noqa: E402
from flows.preflight import check_data, interrupted, resolve_run_references  # noqa: E402
from flows.registry import FLOWS  # noqa: E402


def _flow_list() -> str:
    """One line per flow, for --help."""
    return "\n".join(f"  {name:15s} {entry.summary}" for name, entry in FLOWS.items())


def flow_name(name: str) -> str:
    """A flow name given on the command line, or an argparse error with the closest flow and the list."""
    if name in FLOWS:
        return name
    close = difflib.get_close_matches(name, list(FLOWS), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise argparse.ArgumentTypeError(f"unknown flow {name!r}; {hint}flows: {', '.join(sorted(FLOWS))}")


def _before_warnings(record: logging.LogRecord) -> bool:
    """A logging filter keeping warnings and errors only."""
    return record.levelno >= logging.WARNING


def quiet_prefect_exit() -> None:
    """Keep Prefect's own logger to warnings from here on: at exit it says "Stopping temporary server" (an --ephemeral
    run's API), which would come after the run folder, the line scripts read."""
    logging.getLogger("prefect").addFilter(_before_warnings)  # the same filter once, however often called


def cmd_run(args: argparse.Namespace) -> int:
    """Validate the config and its data, point Prefect at an API, run the flow, print the run folder last."""
    explicit_api = os.environ.get("PREFECT_API_URL")
    if args.ephemeral:
        os.environ.pop("PREFECT_API_URL", None)
        os.environ.update(server.ephemeral_settings())
    elif not explicit_api:
        os.environ.update(server.local_settings())  # before prefect is imported; the server starts once valid
    flow_fn, config_class = FLOWS[args.flow].load()
    recompute = [f"runtime.recompute={json.dumps(args.recompute)}"] if args.recompute else []
    config = load_config(config_class, args.config, args.set + recompute, args.flow)
    data_root = str(Path(args.data_root).resolve()) if args.data_root else None
    config = resolve_run_references(config, data_root)
    check_data(args.flow, config, data_root)
    if not args.ephemeral:
        print(f"Prefect API: {explicit_api or server.start_server()} ({server.api_owner(explicit_api)})",
              file=sys.stderr)
    try:
        run_folder = Path(flow_fn(config=config, data_root=data_root))
    except KeyboardInterrupt:
        quiet_prefect_exit()
        print(f"regularity: {interrupted(args.flow, config, data_root)}", file=sys.stderr)
        return 130
    quiet_prefect_exit()
    outputs = sorted(str(p.relative_to(run_folder)) for p in [*run_folder.glob("*.*"), *run_folder.glob("figures/*")])
    print(f"\nOutputs of {run_folder.name}:\n" + "\n".join(f"  {name}" for name in outputs), file=sys.stderr)
    print(run_folder)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print a flow's default config as YAML, ready to edit, with each setting's description above it."""
    entry = FLOWS[args.flow]
    header = [f"# {args.flow}: {entry.summary}", f"# run it with: regularity run {args.flow} --config FILE", ""]
    print("\n".join(header + commented_yaml(entry.config_class()())))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    """List the runs under the data root, newest last."""
    from core.runs.catalog import list_runs
    from core.runs.files import default_data_root

    runs = list_runs(args.data_root, {name: entry.summary_keys for name, entry in FLOWS.items()})
    if args.flow:
        runs = runs[runs["flow"] == args.flow]
    if runs.empty:
        print(f"no {args.flow + ' ' if args.flow else ''}runs under {Path(args.data_root or default_data_root()).resolve()}")
        return 0
    runs = runs.assign(size=[f"{b / 1e6:.1f} MB" for b in runs["size_bytes"]],
                       created=runs["created"].dt.strftime("%Y-%m-%d %H:%M"))
    text = ["flow", "run_id", "status", "created", "summary"]
    left = {c: f"{{:<{max(runs[c].str.len().max(), len(c))}}}".format for c in text}  # pandas right-aligns text
    table = runs[["flow", "run_id", "status", "created", "n_tables", "size", "summary"]]
    lines = table.to_string(index=False, formatters=left, justify="left").splitlines()
    print("\n".join(line.rstrip() for line in lines))
    return 0


def code_lines(audit, rerun: str) -> list[str]:
    """What `show` says about the code revisions of a run's files, and what is out of date, with the fix."""
    from core.runs.files import code_revision, short_revision

    if audit.empty:
        return []
    current, lines = code_revision(), []
    counts = audit["code_revision"].value_counts()
    written = ", ".join(f"{short_revision(rev)} ({n} file{'s' * (n != 1)})" for rev, n in counts.items())
    lines.append(f"Code: written by {written}; the code is now at {short_revision(current)}")
    if len(counts) > 1:
        for folder, part in audit.groupby(audit["name"].str.rpartition("/")[0]):
            revisions = part["code_revision"].value_counts()
            if len(revisions) > 1:
                lines.append(f"! {folder or 'the run folder'}/ mixes {len(revisions)} code revisions: " + ", ".join(
                    f"{short_revision(rev)} ({n}, e.g. {part.loc[part['code_revision'] == rev, 'name'].iloc[0]})"
                    for rev, n in revisions.items()))
    for row in audit[audit["changed"].map(len) > 0].itertuples():
        lines.append(f"! {row.name} is out of date: built from {', '.join(row.changed[:3])}"
                     f"{' ...' if len(row.changed) > 3 else ''} before it was rewritten or removed; the next run rebuilds it")
    older = int((audit["code_revision"] != current).sum())
    if older:
        lines.append(f"  to compute the {older} files of other revisions again with the current code:\n"
                     f"    {rerun} --recompute outdated")
    return lines


def file_count(count: int) -> str:
    """"1 file", "2 files"."""
    return f"{count:,d} file" + ("" if count == 1 else "s")


def cmd_show(args: argparse.Namespace) -> int:
    """Print a run's config, tables (rows, columns, code revision), figures, summary, and what is out of date."""
    import pandas as pd

    from core.runs.catalog import audit_run, find_run, run_status
    from core.runs.files import short_revision

    folder = find_run(args.run, args.data_root, prefix=True)
    doc = json.loads((folder / "config.json").read_text())
    print(f"{folder.name}  ({run_status(folder)})\n{folder}\n")
    print(yaml.safe_dump(doc["config"], sort_keys=False))
    audit = audit_run(folder)
    nested = audit["name"].str.contains("/")
    for row in audit[~nested].itertuples():
        shape = "unreadable" if pd.isna(row.rows) else f"{row.rows:,d} rows  {row.columns:>3d} columns"
        flag = "  OUT OF DATE" if row.changed else ""
        print(f"  {row.name:32s} {shape:>24s}  {short_revision(row.code_revision)}{flag}")
    for group, part in audit[nested].groupby(audit.loc[nested, "name"].str.split("/").str[0]):
        revisions = ", ".join(short_revision(r) for r in part["code_revision"].unique())
        print(f"  {group + '/':32s} {file_count(len(part)):>24s}  {revisions}")
    checkpoints = sorted(p.relative_to(folder).as_posix() for p in folder.glob("checkpoints/**/*.pt"))
    if checkpoints:  # a stopped long training (lime_pretrain's seeds): where its rerun goes on from
        print(f"  {'checkpoints/':32s} {file_count(len(checkpoints)):>24s}  training in progress; a rerun goes on "
              f"from {', '.join(checkpoints)}")
    for figure in sorted(folder.glob("figures/*.png")):
        print(f"  {figure.relative_to(folder)}")
    data_root = f" --data-root {args.data_root}" if args.data_root else ""
    lines = code_lines(audit, f"regularity run {doc['flow']} --config {folder / 'config.json'}{data_root}")
    if lines:
        print("\n" + "\n".join(lines))
    if (folder / "findings.parquet").is_file():
        print("\n" + findings_line(pd.read_parquet(folder / "findings.parquet"), doc["flow"], args.data_root))
    if (folder / "summary.parquet").is_file():
        print("\n" + pd.read_parquet(folder / "summary.parquet").to_string(index=False))
    return 0


def findings_line(findings, flow: str, data_root: str | None) -> str:
    """What `show` says of a run's findings: its verdicts counted, and the command that lists them."""
    if findings.empty:
        return "Findings: none (this flow checks no paper's claim)"
    counts = ", ".join(f"{n} {verdict}" for verdict, n in findings["verdict"].value_counts().items())
    where = f" --data-root {data_root}" if data_root else ""
    return f"Findings: {len(findings)} claims checked: {counts} (`regularity findings --flow {flow}{where}`)"


def cmd_findings(args: argparse.Namespace) -> int:
    """Every run's findings (the papers' claims its tables check, with verdicts) as one markdown table, each run's
    scope and command below it; or the table as Parquet."""
    from core.findings import findings_markdown
    from core.runs.catalog import run_findings
    from core.runs.files import resolve_root
    from flows.config_files import run_commands

    table = run_findings(args.data_root)
    if args.flow:
        table = table[table["flow"] == args.flow].reset_index(drop=True)
    if args.format == "parquet":
        output = Path(args.output or resolve_root(args.data_root) / "findings.parquet")
        table.to_parquet(output, index=False)
        print(f"{len(table)} findings of {table['run_id'].nunique()} runs written to {output}")
        return 0
    if table.empty:
        print(f"no findings under {resolve_root(args.data_root)}: every flow writes findings.parquet when a run ends "
              "(run one, or run an older run's command again to add it)")
        return 0
    runs = table.drop_duplicates("run_id")
    commands = run_commands(list(zip(runs["flow"], runs["run_id"])), args.data_root)
    lines = findings_markdown(table, lead=["flow", "run_id"]) + [""]
    lines += [f"- `{run.run_id}` ({run.status}): {run.scope}; `{commands[run.run_id]}`" for run in runs.itertuples()]
    print("\n".join(lines))
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    """Start, stop or check this checkout's Prefect server (`status` exits 1 unless it is up); never another's."""
    if args.action == "start":
        url = server.start_server()
        print(f"Prefect server up; UI at {url.removesuffix('/api')} ({server.api_owner(None)})")
    elif args.action == "stop":
        print(server.stop_server())
    else:
        said, up = server.server_status()
        print(said)
        return 0 if up else 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="regularity", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure how deep networks treat their data and weights, at scale, with Prefect.",
        epilog=f"flows:\n{_flow_list()}\n\nexample:\n  regularity run cscore --config flows/configs/cscore.yaml --set runs_per_ratio=8",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a flow; prints the run folder as its last line")
    run.add_argument("flow", type=flow_name, choices=sorted(FLOWS))
    run.add_argument("--config", help="YAML file mirroring the flow's config (see `regularity config FLOW`), or the "
                                      "config.json of a run folder to run that run again")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one field, e.g. train.lr=0.1")
    run.add_argument("--data-root", help="where runs/ and cache/ live (default: $REGULARITY_DATA_ROOT or ./data)")
    run.add_argument("--ephemeral", action="store_true", help="use a temporary in-process Prefect API instead of the local server")
    run.add_argument("--recompute", action="append", default=[], metavar="FILES",
                     help="delete these files of the run and compute them again, with everything built from them: a "
                          "name or pattern in the run folder (runs.parquet, 'shards/*'), outdated (files written by "
                          "another code revision), or all; repeatable (sets runtime.recompute)")
    run.set_defaults(handler=cmd_run)
    config = sub.add_parser("config", help="print a flow's default config as YAML")
    config.add_argument("flow", type=flow_name, choices=sorted(FLOWS))
    config.set_defaults(handler=cmd_config)
    ls = sub.add_parser("ls", help="list runs (flow, run id, status, created, tables, size, config summary)")
    ls.add_argument("--flow", type=flow_name, choices=sorted(FLOWS))
    ls.add_argument("--data-root", help="where runs/ lives (default: $REGULARITY_DATA_ROOT or ./data)")
    ls.set_defaults(handler=cmd_ls)
    show = sub.add_parser("show", help="a run's config, tables and summary")
    show.add_argument("run", help="run id, or its start when only one run begins so, e.g. cscore-1a2b3c4d5e6f or "
                                  "cscore-1a2b")
    show.add_argument("--data-root", help="where runs/ lives (default: $REGULARITY_DATA_ROOT or ./data)")
    show.set_defaults(handler=cmd_show)
    findings = sub.add_parser("findings", help="every run's findings: the papers' claims checked, with verdicts")
    findings.add_argument("--flow", type=flow_name, choices=sorted(FLOWS))
    findings.add_argument("--data-root", help="where runs/ lives (default: $REGULARITY_DATA_ROOT or ./data)")
    findings.add_argument("--format", choices=["markdown", "parquet"], default="markdown",
                          help="markdown on stdout (default), or one Parquet file")
    findings.add_argument("--output", help="the Parquet file to write (default: <data root>/findings.parquet)")
    findings.set_defaults(handler=cmd_findings)
    srv = sub.add_parser("server", help="the project-local Prefect server (SQLite under .prefect/, 127.0.0.1)")
    srv.add_argument("action", choices=["start", "stop", "status"])
    sub.add_parser("up", help="local server + every deployment + a background worker; prints the UI address").set_defaults(
        handler=lambda args: print(f"UI: {server.up()}  (deployments of deployments/prefect.yaml, work pool "
                                   f"'{server.WORK_POOL}'; stop with `regularity down`)") or 0)
    sub.add_parser("down", help="stop the worker and the server that `up` started").set_defaults(
        handler=lambda args: print(server.down()) or 0)
    srv.set_defaults(handler=cmd_server)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `regularity` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, ValueError, RuntimeError, FileNotFoundError) as err:
        print(f"regularity: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside a flow run (cmd_run answers a run's own Ctrl-C): no traceback either
        print("regularity: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
