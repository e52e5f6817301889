"""Pretrain on LIME (or a control task), fine-tune on term rewriting, and measure what the pretraining bought.

The arms of one seed share everything but the pretraining task: the initialisation, the LIME sources (a control's
examples are Mixed's, copied or reversed), the downstream examples and the fine-tuning batch order. "scratch" skips
pretraining. Exact match is judged by batched greedy decoding; sample efficiency is the number of downstream training
examples at which the final exact match first reaches a threshold, interpolated on a log scale between the sizes
tried (NaN when no size reaches it).
"""
from __future__ import annotations

from dataclasses import replace
from itertools import product
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from core.findings import Claim, findings_table, not_testable, paired_difference, too_few_seeds
from core.sequence.config import DOWNSTREAM_TASKS, SCRATCH, OptimConfig
from core.sequence.lime import CONTROLS, TASKS, LimeConfig, generate
from core.sequence.transformer import Batches, Seq2Seq, adamw, exact_match, token_accuracy, train_seq2seq


def lime_batches(task: str, seed: int, batch_size: int, config: LimeConfig) -> Batches:
    """Step s's batch is examples s x batch_size onward of the LIME dataset (task, seed), generated a chunk at a time
    (bounded memory, and the same examples whatever the chunking)."""
    chunk, cached = max(batch_size, 2048 // batch_size * batch_size), {}

    def batch(step: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The sources and targets of step `step`'s batch."""
        first = step * batch_size
        block = first // chunk
        if block not in cached:
            cached.clear()
            cached[block] = generate(task, seed, block * chunk, chunk, config)
        examples = cached[block][first - block * chunk:first - block * chunk + batch_size]
        return [e.source for e in examples], [e.target for e in examples]

    return batch


def bucketed(batches: Batches, k: int, seed: int) -> Batches:
    """`batches` with length bucketing over groups of `k` steps: the examples of steps gk .. gk + k - 1 are sorted by
    source length (stable: ties keep their order), cut into batches of the sizes those steps had, and the k batches are
    taken in an order drawn from `seed + g`. Every example is still used once per group, in a batch of sources of
    similar lengths (less padding); k <= 1 gives `batches` itself."""
    if k <= 1:
        return batches
    groups = {}

    def batch(step: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The sources and targets of step `step`'s batch."""
        group, at = divmod(step, k)
        if group not in groups:
            drawn = [batches(group * k + i) for i in range(k)]
            sources = [s for batch_sources, _ in drawn for s in batch_sources]
            targets = [t for _, batch_targets in drawn for t in batch_targets]
            by_length = np.argsort([len(s) for s in sources], kind="stable")
            cut = np.split(by_length, np.cumsum([len(batch_sources) for batch_sources, _ in drawn])[:-1])
            order = torch.randperm(k, generator=torch.Generator().manual_seed(seed + group)).tolist()
            groups.clear()
            groups[group] = sources, targets, [cut[i] for i in order]
        sources, targets, rows = groups[group]
        return [sources[r] for r in rows[at]], [targets[r] for r in rows[at]]

    return batch


def staged(stages: Sequence[tuple[Batches, int]]) -> Batches:
    """A curriculum: each stage's batches for its number of steps, in turn, each stage from its own step 0 (the last
    stage's count is not checked: it runs to the end of training)."""
    starts = np.cumsum([0, *(steps for _, steps in stages[:-1])]).tolist()

    def batch(step: int) -> tuple[Sequence[np.ndarray], Sequence[np.ndarray]]:
        """The sources and targets of step `step`'s batch, from the stage it falls in."""
        stage = int(np.searchsorted(starts, step, side="right")) - 1
        return stages[stage][0](step - starts[stage])

    return batch


def epoch_batches(sources: Sequence[np.ndarray], targets: Sequence[np.ndarray], batch_size: int, seed: int) -> Batches:
    """Batches of a fixed training set: a fresh seeded order every epoch, the last partial batch dropped (a set
    smaller than one batch is one batch of all of it)."""
    size = min(batch_size, len(sources))
    per_epoch, orders = len(sources) // size, {}

    def batch(step: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The sources and targets of step `step`'s batch."""
        epoch, at = divmod(step, per_epoch)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = torch.randperm(len(sources), generator=torch.Generator().manual_seed(seed + epoch))
        rows = orders[epoch][at * size:(at + 1) * size].tolist()
        return [sources[r] for r in rows], [targets[r] for r in rows]

    return batch


def train_with_evaluation(model: Seq2Seq, batches: Batches, config: OptimConfig, eval_every: int,
                          evaluate: Callable[[int], dict[str, float]], progress: Callable[[int], None] | None = None,
                          state: dict | None = None, save: Callable[[dict], None] | None = None) -> pd.DataFrame:
    """Train, and every `eval_every` steps and at the last step record the step, the mean training loss since the
    previous record and `evaluate(steps done)`'s figures; one row per record. After each record but the last,
    `save(state)` gets what it takes to go on from there, {"step", "rows", "optimizer" (its state_dict)}; given such a
    `state` (and the model holding the weights it had then), training goes on from that step exactly as it would have
    (the batches are a function of the step)."""
    optimizer, rows, start = adamw(model, config), [], 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        rows, start = list(state["rows"]), state["step"]
    losses = []

    def record(step: int, loss: float) -> None:
        """Keep the loss; evaluate (and offer a checkpoint) at the recording steps."""
        losses.append(loss)
        if (step + 1) % eval_every == 0 or step + 1 == config.steps:
            rows.append({"step": step + 1, "train_loss": float(np.mean(losses)), **evaluate(step + 1)})
            losses.clear()
            if save is not None and step + 1 < config.steps:
                save({"step": step + 1, "rows": list(rows), "optimizer": optimizer.state_dict()})

    train_seq2seq(model, batches, config, on_step=record, progress=progress, optimizer=optimizer, start=start)
    return pd.DataFrame(rows)


def held_out_figures(model: Seq2Seq, sources: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> dict[str, float]:
    """{"exact_match": the fraction decoded exactly, "token_accuracy": the teacher-forced share of tokens right}."""
    return {"exact_match": float(exact_match(model, sources, targets).mean()),
            "token_accuracy": token_accuracy(model, sources, targets)}


def examples_needed(sizes: Sequence[int], exact: Sequence[float], threshold: float) -> float:
    """The training-set size at which `exact` (exact match at each of the increasing `sizes`) first reaches
    `threshold`, interpolated linearly in log(size) from the size before; NaN if it never does."""
    sizes, exact = np.asarray(sizes, float), np.asarray(exact, float)
    reached = np.flatnonzero(exact >= threshold)
    if not len(reached):
        return float("nan")
    first = reached[0]
    if first == 0:
        return float(sizes[0])
    below, above = exact[first - 1], exact[first]
    fraction = (threshold - below) / (above - below)
    return float(np.exp(np.log(sizes[first - 1]) + fraction * (np.log(sizes[first]) - np.log(sizes[first - 1]))))


def sample_efficiency(finetune: pd.DataFrame, thresholds: Sequence[float]) -> pd.DataFrame:
    """One row per (task, arm, seed, threshold): the downstream examples needed to reach it at the last fine-tuning
    step."""
    last = finetune[finetune["step"] == finetune["step"].max()]
    rows = []
    for (task, arm, seed), runs in last.groupby(["task", "arm", "seed"], sort=False):
        runs = runs.sort_values("train_examples")
        rows += [{"task": task, "arm": arm, "seed": seed, "threshold": t,
                  "examples_needed": examples_needed(runs["train_examples"], runs["exact_match"], t)}
                 for t in thresholds]
    return pd.DataFrame(rows, columns=["task", "arm", "seed", "threshold", "examples_needed"])


def transfer_summary(finetune: pd.DataFrame, efficiency: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, arm, train_examples): exact match at the last step, its mean, standard error and range over
    seeds, and for each threshold the median examples needed over seeds (NaN: not reached by half the seeds)."""
    last = finetune[finetune["step"] == finetune["step"].max()]
    keys = ["task", "arm", "train_examples"]
    summary = last.groupby(keys, sort=False)["exact_match"].agg(
        seeds="count", exact_match="mean", exact_match_sem="sem", exact_match_min="min",
        exact_match_max="max").reset_index()
    for threshold, rows in efficiency.groupby("threshold"):  # a miss counts as infinitely many examples
        needed = rows.assign(e=rows["examples_needed"].fillna(np.inf)).groupby(["task", "arm"])["e"].median()
        at = pd.MultiIndex.from_frame(summary[["task", "arm"]])
        summary[f"examples_for_{threshold:g}"] = needed.replace(np.inf, np.nan).reindex(at).to_numpy()
    order = {name: i for column in ("task", "arm") for i, name in enumerate(dict.fromkeys(finetune[column]))}
    return summary.sort_values(keys, key=lambda c: c.map(order) if c.name != "train_examples" else c,
                               ignore_index=True)


LIME_PAPER = ("Wu, Rabe, Li, Ba, Grosse, Szegedy: LIME: Learning Inductive Bias for Primitives of Mathematical "
              "Reasoning (ICML 2021)")
BEATS_SCRATCH = Claim(LIME_PAPER, "Models trained with LIME significantly outperform vanilla transformers on four very "
                      "different large mathematical reasoning benchmarks.", "exact match on {task} (not the "
                      "paper's benchmarks) at the last fine-tuning step, {arm} pretraining minus none "
                      "(scratch), {sizes}")
BEATS_CONTROL = Claim(LIME_PAPER, "Inductive bias is encoded in the form of datasets: tasks that require deduction, "
                      "induction and abduction, devoid of mathematical knowledge, teach the fundamental reasoning "
                      "biases.", "exact match on {task} at the last fine-tuning step, {arm} "
                      "pretraining minus the {control} control (pretrained to {control} the same sources), {sizes}")
LEARNED_EXACT_MATCH = 0.05  # held-out pretraining exact match below this is "near 0": the task was not learned (ours)
ALL_SIZES = "mean over the downstream training sizes"
EACH_SIZE_ARM = "mixed"  # the paper's LIME pretraining: its rows also say at which training-set sizes it wins


def lime_pretrain_findings(pretrain: pd.DataFrame, finetune: pd.DataFrame, scope: str) -> pd.DataFrame:
    """Each LIME arm of `finetune` against scratch and against each control, paired by seed, on each downstream task
    (in the table's order): the mean over training-set sizes, and for EACH_SIZE_ARM a row per size too; not testable
    where the arm's pretraining did not learn its task (held-out exact match at the last step of `pretrain`, the mean
    over seeds, below LEARNED_EXACT_MATCH). The tables hold lime_pretrain_curves.parquet's and
    lime_finetune_curves.parquet's columns."""
    arms, seeds = list(dict.fromkeys(finetune["arm"])), finetune["seed"].nunique()
    lime_arms = [arm for arm in arms if arm == "mixed" or arm in TASKS] or ["LIME"]
    comparisons = [(BEATS_SCRATCH, SCRATCH), *((BEATS_CONTROL, control) for control in CONTROLS if control in arms)]
    if not any(claim is BEATS_CONTROL for claim, _ in comparisons):
        comparisons.append((BEATS_CONTROL, "copy"))
    rows = []
    for task, tuned in finetune.groupby("task", sort=False):
        for (claim, baseline), arm in product(comparisons, lime_arms):
            why = untestable_transfer(pretrain, arms, arm, baseline, seeds)
            for size in [None, *sorted(tuned["train_examples"].unique())] if arm == EACH_SIZE_ARM else [None]:
                at = ALL_SIZES if size is None else f"at {size} training examples"
                measured = replace(claim, measure=claim.measure.format(arm=arm, control=baseline, sizes=at,
                                                                       task=DOWNSTREAM_TASKS[task]))
                rows.append(not_testable(measured, why, scope, seeds) if why else
                            paired_difference(measured, exact_match_gain(tuned, arm, baseline, size), scope))
    return findings_table(rows)


def untestable_transfer(pretrain: pd.DataFrame, arms: list[str], arm: str, baseline: str, seeds: int) -> str:
    """Why this run cannot test `arm` against `baseline` ('' when it can)."""
    if arm not in arms:
        return "arms has no LIME task: add mixed (or deduct, abduct, induct) to arms"
    if baseline not in arms:
        what = "scratch (no pretraining)" if baseline == SCRATCH else "a control (copy or reverse)"
        return f"arms has no {baseline}: add {what} to arms"
    curve = pretrain[pretrain["arm"] == arm]
    last = curve[curve["step"] == curve["step"].max()]
    learned = last["exact_match"].mean()
    if not learned >= LEARNED_EXACT_MATCH:  # the first reason: more seeds would not make it testable
        return (f"pretraining did not learn {arm}: held-out exact match {learned:.3f} at its last step "
                f"({int(last['step'].max())}), mean over seeds, below {LEARNED_EXACT_MATCH:g} (our 'near 0'), so "
                "nothing learned could transfer; pretrain longer (pretrain.optim.steps) or a larger transformer")
    return too_few_seeds(seeds) or ""


def exact_match_gain(finetune: pd.DataFrame, arm: str, baseline: str, size: int | None = None) -> pd.Series:
    """Per seed: `arm`'s exact match minus `baseline`'s at the last fine-tuning step, the mean over training sizes (or
    at `size` alone)."""
    last = finetune[finetune["step"] == finetune["step"].max()]
    if size is not None:
        last = last[last["train_examples"] == size]
    last = last.set_index(["arm", "seed", "train_examples"]).sort_index()
    gains = last.loc[arm, "exact_match"] - last.loc[baseline, "exact_match"]
    return gains.groupby(level="seed").mean()
