"""`lime_data` flow: LIME's synthetic Deduct, Abduct and Induct examples, their Mixed dataset and its copy and reverse
controls, generated in shards and written to Parquet at any scale.

Wu, Rabe, Li, Ba, Grosse and Szegedy, "LIME: Learning Inductive Bias for Primitives of Mathematical Reasoning"
(ICML 2021). Pretraining a transformer on these three forms of reasoning over random symbols (a Rule, a Case that
maps its rule symbols to strings, the Result of substituting) transfers to mathematical tasks. Example i of a
dataset depends only on (seed, i) (`core/sequence/lime.py`), so every shard is an independent task, a re-run skips
the shards already written, and the data are the same whatever shard_size is. A shard is one Parquet file of
`examples/`, written one generator chunk (4,096 examples) at a time: a task's memory stays at one chunk however
large its shard. Read them with `pd.read_parquet(<run>/examples)` or DuckDB's
`read_parquet('<run>/examples/*.parquet')`.
"""
from __future__ import annotations

import shutil
from typing import Annotated, Literal

from prefect import flow
from pydantic import Field, model_validator

from core.config import Config, RuntimeConfig
from core.sequence.lime import N_SPECIAL, LimeConfig
from flows.common import checked_data_root

FLOW = "lime_data"
SHARDS_TABLE = "lime_shards.parquet"
MAX_SET = 256  # symbols of one set: an example draws its sets one symbol at a time, over a whole chunk
MAX_SHARDS = 10_000  # tasks of one run: the Prefect server records about 30 task runs a second
FIGURE_SAMPLE = 100_000  # examples whose lengths the figure shows


class LimeGenerationConfig(Config):
    """How each example is drawn (`core.sequence.lime.LimeConfig`): the vocabulary and the sizes of an example's
    symbol sets, Rule and Case. Ranges are [low, high], inclusive. The defaults are the paper's."""

    vocab_size: int = Field(1000, ge=1, le=2**31 - N_SPECIAL, description="symbols of the shared vocabulary, from "
                            f"which each example draws its three sets (token ids: {N_SPECIAL} special tokens, then "
                            "these)")
    rule_symbols: int = Field(24, ge=1, le=MAX_SET, description="rule symbols each example draws (distinct symbols; "
                              "the ones its Case maps to strings)")
    lower_symbols: int = Field(24, ge=1, le=MAX_SET, description="lower-case symbols each example draws (distinct "
                               "symbols; they make up the Case's strings with the math symbols)")
    math_symbols: int = Field(20, ge=1, le=MAX_SET, description="math symbols each example draws (distinct symbols; "
                              "they fill the Rule around its rule symbols)")
    kept_rule: list[Annotated[int, Field(ge=1, le=MAX_SET)]] = Field(
        [3, 5], min_length=2, max_length=2, description="[low, high] rule symbols kept per example (at most "
        "rule_symbols); its Rule holds 2 x that many draws of them")
    rule_math: list[Annotated[int, Field(ge=0, le=MAX_SET)]] = Field(
        [5, 19], min_length=2, max_length=2, description="[low, high] math symbols drawn into each Rule")
    case_length: list[Annotated[int, Field(ge=1, le=64)]] = Field(
        [2, 8], min_length=2, max_length=2, description="[low, high] tokens of the string the Case gives each rule "
        "symbol")
    header: Literal["used", "all"] = Field(
        "used", description="the rule symbols a source's header lists: used (those its Rule uses, in the Case's "
        "order, as the authors' generator: 48-52 header tokens at the paper's sizes) or all (every rule symbol drawn, "
        "sorted: 71 tokens, this flow's earlier header); the lower-case and math sets are listed whole either way")

    @model_validator(mode="after")
    def _the_generator_accepts_it(self) -> LimeGenerationConfig:
        self.to_core()  # LimeConfig's own checks; their messages name the field
        return self

    def to_core(self) -> LimeConfig:
        """The generator's config."""
        return LimeConfig(**{name: tuple(value) if isinstance(value, list) else value
                             for name, value in self.model_dump().items()})


class LimeDataFlowConfig(Config):
    """Examples 0 .. examples - 1 of one LIME dataset, shard_size of them per task."""

    task: Literal["deduct", "abduct", "induct", "mixed", "copy", "reverse"] = Field(
        "mixed", description="deduct (Rule + Case -> Result), abduct (Rule + Result -> Case), induct (Result + Case "
        "-> Rule), mixed (each example one of the three, drawn uniformly), or a control on mixed's sources: copy "
        "(the target is the source) or reverse (the source reversed)")
    examples: int = Field(100_000, ge=1, le=10**12, description="examples to write, indices 0 .. examples - 1")
    shard_size: int = Field(50_000, ge=1, description="examples per task, one Parquet file each (a task holds one "
                            "chunk of 4,096 examples in memory at a time, whatever this is)")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="the generator's key: example i depends only on (seed, i)")
    lime: LimeGenerationConfig = Field(LimeGenerationConfig(), description="how each example is drawn")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="execution settings; not part of the run id")

    @model_validator(mode="after")
    def _not_too_many_tasks(self) -> LimeDataFlowConfig:
        if self.shards > MAX_SHARDS:
            raise ValueError(f"examples={self.examples} in shards of shard_size={self.shard_size} makes {self.shards} "
                             f"tasks, more than {MAX_SHARDS} (the Prefect server records about 30 task runs a "
                             f"second); raise shard_size to at least {-(-self.examples // MAX_SHARDS)}")
        return self

    @property
    def shards(self) -> int:
        """Tasks of the run: shard_size examples each, fewer in the last."""
        return -(-self.examples // self.shard_size)


def check_disk_space(config: LimeDataFlowConfig, data_root: str | None) -> None:
    """Fail before any work when the data root's disk cannot hold the examples still to write: their size is
    estimated from the first examples, and the shards an earlier run of this config wrote are counted as written."""
    from core.runs.store import RunStore
    from core.sequence.lime_data import bytes_per_example
    from tasks.lime_data import EXAMPLES

    folder = RunStore.folder(FLOW, config, data_root) / EXAMPLES
    written = sum(path.stat().st_size for path in folder.glob("part-*.parquet"))
    needed = bytes_per_example(config.task, config.seed, config.lime.to_core()) * config.examples - written
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise ValueError(f"examples={config.examples} need about {needed / 1e9:,.2f} GB more on the disk of "
                         f"{existing}, which has {free / 1e9:,.2f} GB free; lower examples or choose another data root")


@flow(name=FLOW, description="LIME's Deduct, Abduct and Induct examples (or Mixed, or its copy and reverse controls) "
                             "generated in shards and written to Parquet, with their lengths by task.")
def lime_data_flow(config: LimeDataFlowConfig = LimeDataFlowConfig(), data_root: str | None = None) -> str:
    """Write (or finish writing) the examples of `config`; returns the run folder."""
    from core.findings import findings_table
    from core.plots.lime_data import lime_length_histograms
    from core.runs.store import RunStore
    from core.sequence.lime_data import length_sample, task_summary
    from flows.report import publish
    from flows.runner import configure_runtime, run_shards
    from tasks.common import combine_shards
    from tasks.lime_data import EXAMPLES, write_shard

    data_root = checked_data_root(data_root)  # a deployment parameter may not point outside
    configure_runtime(config.runtime)
    check_disk_space(config, data_root)
    store = RunStore.open(FLOW, config, data_root)
    shards = [{"store": store, "shard": s} for s in range(config.shards)]
    written = run_shards(write_shard, shards, config.runtime, "examples")
    combine_shards(store, [names[1] for names in written], SHARDS_TABLE,
                   [("shard", "ascending"), ("task", "ascending")])
    figures = store.figures(lambda: [lime_length_histograms(length_sample(store.root / EXAMPLES, FIGURE_SAMPLE),
                                                            store.root / "figures" / "lengths_by_task.png")])
    publish(store, task_summary(store.read_table(SHARDS_TABLE)), figures,
            f"LIME {config.task}: {config.examples:,} examples (seed {config.seed}) in {config.shards} shards of "
            f"{config.shard_size:,}, in {EXAMPLES}part-*.parquet",
            findings=findings_table([]))  # data for lime_pretrain, which checks the paper's claim
    return str(store.root)
