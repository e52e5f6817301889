"""Findings: a paper's claim checked against a run's own tables, one row per claim, by a rule stated in the row.

A flow's rules (in `core/methods/<method>.py`) compute each claim's estimate from its tables and pass it here; the
verdict then follows from the estimate, its standard error and the number of seeds alone, so the same tables always
give the same verdict and the rule can be tested on hand-made tables.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

COLUMNS = ("paper", "claim", "measure", "estimate", "se", "n_seeds", "verdict", "rule", "scope")
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)
Z = 2.0  # standard errors an estimate must clear for a verdict either way
MIN_SEEDS = 3  # one seed has no standard error, and two give one that is itself too noisy to judge by


@dataclass(frozen=True)
class Claim:
    """A paper's claim, as the paper states it, and the measure of a run that checks it."""

    paper: str  # authors, title and venue
    claim: str  # one sentence, as the paper states it
    measure: str  # what `estimate` is, oriented so that positive = what the claim says (or against `threshold`)


def row(claim: Claim, estimate: float, se: float, n_seeds: int, verdict: str, rule: str, scope: str) -> dict:
    """One findings row."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
    return {"paper": claim.paper, "claim": claim.claim, "measure": claim.measure, "estimate": float(estimate),
            "se": float(se), "n_seeds": int(n_seeds), "verdict": verdict, "rule": rule, "scope": scope}


def beyond(estimate: float, se: float, n_seeds: int, threshold: float = 0.0, z: float = Z) -> str:
    """`supported` when `estimate` exceeds `threshold` by more than z standard errors, `not supported` when it falls
    short of it by more than z, else (or with fewer than MIN_SEEDS seeds, or no finite estimate) `inconclusive`."""
    if n_seeds < MIN_SEEDS or not math.isfinite(estimate) or not se >= 0:
        return INCONCLUSIVE
    if estimate - threshold > z * se:
        return SUPPORTED
    if threshold - estimate > z * se:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def within(estimate: float, se: float, n_seeds: int, margin: float, z: float = Z) -> str:
    """A claim of no difference: `supported` when the whole interval estimate ± z SE lies inside ± `margin`,
    `not supported` when it lies wholly outside, else `inconclusive` (two one-sided tests)."""
    if n_seeds < MIN_SEEDS or not math.isfinite(estimate) or not se >= 0:
        return INCONCLUSIVE
    if abs(estimate) + z * se < margin:
        return SUPPORTED
    if abs(estimate) - z * se > margin:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def mean_and_se(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, standard error (sample std / sqrt n; NaN for fewer than 2) and count of the finite `values`."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return float(values.mean()), se, n


def paired_difference(claim: Claim, differences: Sequence[float], scope: str, threshold: float = 0.0) -> dict:
    """A claim that one arm beats another: `differences` holds one paired difference per seed (claimed arm minus
    the other, oriented so that positive is what the claim says); the verdict is `beyond` the threshold."""
    estimate, se, n = mean_and_se(differences)
    rule = (f"mean paired difference over seeds > {threshold:g} by more than {Z:g} SE: supported; "
            f"< {threshold:g} by more than {Z:g} SE: not supported; else inconclusive (and with < {MIN_SEEDS} seeds)")
    return row(claim, estimate, se, n, beyond(estimate, se, n, threshold), rule, scope)


def paired_equivalence(claim: Claim, differences: Sequence[float], scope: str, margin: float) -> dict:
    """A claim that two arms do about as well: one paired difference per seed; the verdict is `within` ± margin."""
    estimate, se, n = mean_and_se(differences)
    rule = (f"mean paired difference ± {Z:g} SE inside ± {margin:g}: supported; wholly outside: not supported; "
            f"else inconclusive (and with < {MIN_SEEDS} seeds)")
    return row(claim, estimate, se, n, within(estimate, se, n, margin), rule, scope)


def ratio_below(claim: Claim, ratios: Sequence[float], scope: str, threshold: float, replicates: str = "seeds",
                n_seeds: int | None = None) -> dict:
    """A claim that one arm costs less than `threshold` times another: `ratios` holds one ratio of their costs per
    replicate (`replicates`, e.g. epochs where a shard's seeds train in one pass); `supported` when the mean ratio is
    below the threshold by more than Z SE, `not supported` when above it by more. `n_seeds`: the seeds behind the
    ratios (default: one per ratio)."""
    estimate, se, n = mean_and_se(ratios)
    rule = (f"mean ratio over {replicates} < {threshold:g} by more than {Z:g} SE: supported; > {threshold:g} by more "
            f"than {Z:g} SE: not supported; else inconclusive (and with < {MIN_SEEDS} {replicates})")
    return row(claim, estimate, se, n if n_seeds is None else n_seeds, beyond(-estimate, se, n, -threshold), rule,
               scope)


def too_few_seeds(n_seeds: int, fix: str = "set seeds to at least 3 values") -> str | None:
    """Why `n_seeds` seeds give no verdict, with the `fix` (the `why` of a not_testable row); None when they do."""
    if n_seeds >= MIN_SEEDS:
        return None
    plural = "s" * (n_seeds != 1)
    return f"{n_seeds} seed{plural}, and a verdict needs a standard error over at least {MIN_SEEDS}; {fix}"


def not_testable(claim: Claim, why: str, scope: str, n_seeds: int = 0) -> dict:
    """A claim this run cannot check, and why (e.g. no known-wrong labels): an honest `inconclusive`."""
    return row(claim, math.nan, math.nan, n_seeds, INCONCLUSIVE, f"not testable here: {why}", scope)


def findings_table(rows: Sequence[dict]) -> pd.DataFrame:
    """The findings of one run, with every column even when it checks no claim."""
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    return frame.astype({"paper": str, "claim": str, "measure": str, "estimate": float, "se": float,
                         "n_seeds": "int64", "verdict": str, "rule": str, "scope": str})


def estimate_text(estimate: float, se: float) -> str:
    """`0.0213 ± 0.0041`, the estimate alone without a standard error, or `not measured`."""
    if estimate != estimate:
        return "not measured"
    return f"{estimate:.4g} ± {se:.2g}" if se == se else f"{estimate:.4g}"


def markdown_table(frame: pd.DataFrame) -> list[str]:
    """The lines of a GitHub-style markdown table of `frame`."""
    rows = [list(frame.columns), ["---"] * frame.shape[1], *frame.itertuples(index=False)]
    return ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def findings_markdown(findings: pd.DataFrame, lead: Sequence[str] = (), omit: Sequence[str] = ()) -> list[str]:
    """Findings as a markdown table, verdict first (then the `lead` columns, e.g. the run; without the `omit` ones,
    e.g. a paper a page names once), each rule said once below it as R1, R2..."""
    if findings.empty:
        return ["This flow checks no paper's claim: it produces data for the flows that do."]
    rules = list(dict.fromkeys(findings["rule"]))
    shown = pd.DataFrame({"verdict": findings["verdict"].map(lambda v: f"**{v}**")})
    for column in lead:
        shown[column] = findings[column].to_numpy()
    shown = shown.assign(
        claim=findings["claim"].to_numpy(), paper=findings["paper"].to_numpy(), measure=findings["measure"].to_numpy(),
        **{"estimate ± SE": [estimate_text(e, s) for e, s in zip(findings["estimate"], findings["se"])],
           "seeds": findings["n_seeds"].to_numpy(), "rule": [f"R{rules.index(r) + 1}" for r in findings["rule"]]})
    shown = shown.drop(columns=list(omit))
    return markdown_table(shown) + [""] + [f"- R{i}: {rule}" for i, rule in enumerate(rules, 1)]
