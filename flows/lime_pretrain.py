"""`lime_pretrain` flow: does pretraining on LIME teach a small transformer something a downstream task can use?

Wu, Rabe, Li, Ba, Grosse and Szegedy, "LIME: Learning Inductive Bias for Primitives of Mathematical Reasoning" (ICML
2021). A transformer encoder-decoder is pretrained on a LIME task (Mixed, Deduct, Abduct or Induct) or on a control of
the same sources (copy or reverse them), or not at all ("scratch"), then fine-tuned on term rewriting with a fixed rule
set at several training-set sizes: one rule applied once (`core/sequence/rewriting.py`) and, with `downstream.tasks`, a
chain of rules applied in turn (`core/sequence/multistep.py`). Every arm of a seed starts from the same initialisation,
and sees the same sources in pretraining and the same examples and batch order in fine-tuning. The claim to check: LIME
pretraining reaches a given exact match with fewer downstream examples than scratch, and more than a control that only
teaches copying.
"""
from __future__ import annotations

from typing import Annotated, Literal

from prefect import flow
from pydantic import Field, ValidationError, field_validator, model_validator

from core.config import ADDED_SETTING, Config, RuntimeConfig
from core.sequence.config import ARMS, DOWNSTREAM_TASKS, SCRATCH
from core.sequence.config import MAX_LENGTH, OptimConfig, TransformerConfig
from flows.common import checked_data_root, distinct_values
from flows.lime_data import LimeGenerationConfig

FLOW = "lime_pretrain"
Arm = Literal[ARMS]
DownstreamTask = Literal[tuple(DOWNSTREAM_TASKS)]


class CurriculumStage(Config):
    """A curriculum stage: `steps` steps of the arm's task drawn with these Rule and Case ranges (the run's symbol
    sets, vocabulary and header otherwise), before the run's own `lime` setting."""

    steps: int = Field(ge=1, description="optimizer updates of this stage")
    kept_rule: list[Annotated[int, Field(ge=1)]] = Field([1, 2], min_length=2, max_length=2, description="[low, high] "
                                                          "rule symbols kept per example (lime.kept_rule)")
    rule_math: list[Annotated[int, Field(ge=0)]] = Field([2, 6], min_length=2, max_length=2, description="[low, high] "
                                                          "math symbols drawn into each Rule (lime.rule_math)")
    case_length: list[Annotated[int, Field(ge=1)]] = Field([1, 3], min_length=2, max_length=2, description="[low, "
                                                            "high] tokens of each Case string (lime.case_length)")

    def lime(self, run: LimeGenerationConfig) -> LimeGenerationConfig:
        """The run's LIME generator with this stage's ranges."""
        return LimeGenerationConfig.model_validate({**run.model_dump(), "kept_rule": self.kept_rule,
                                                    "rule_math": self.rule_math, "case_length": self.case_length})


class PretrainConfig(Config):
    """Pretraining: every step draws a fresh batch of the arm's task, so no example is seen twice."""

    optim: OptimConfig = Field(OptimConfig(steps=1000, batch_size=32, lr=2e-3, warmup=100),
                               description="optimizer and schedule of pretraining")
    eval_every: int = Field(500, ge=1, description="steps between exact-match checks on held-out examples")
    eval_examples: int = Field(100, ge=1, le=100_000, description="held-out examples of the pretraining task decoded "
                               "at each check")
    bucket_batches: Annotated[int, ADDED_SETTING] = Field(0, ge=0, le=4096, description="length bucketing: the "
                                                          "examples of this many consecutive steps are sorted by "
                                                          "source length, cut into as many batches and taken in a "
                                                          "seeded order (each still used once); 0 or 1: none, every "
                                                          "batch padded to its longest (bench/lime_throughput.py: "
                                                          "1.35x the tokens/s at 8; bench/lime_learning.py: the same "
                                                          "learning curve)")
    curriculum: Annotated[list[CurriculumStage], ADDED_SETTING] = Field(
        [], description="stages of shorter Rules and Cases trained first, in order, their steps part of optim.steps; "
        "the learning-rate schedule spans all steps and held-out checks are always on the run's own lime setting "
        "(bench/lime_learning.py); empty: none")


class DownstreamConfig(Config):
    """Fine-tuning on term rewriting: nested training sets, one test set per seed and task."""

    tasks: Annotated[list[DownstreamTask], ADDED_SETTING] = Field(
        ["rewrite"], min_length=1, description="downstream tasks, each fine-tuned afresh from every arm: rewrite (one "
        "rule applied once at the root, core/sequence/rewriting.py) or rewrite_multistep (a chain of rules applied in "
        "turn, core/sequence/multistep.py)")
    train_examples: list[int] = Field([300, 1000, 3000], min_length=1, description="training-set sizes (each a "
                                      "prefix of the next); every arm fine-tunes afresh at each")
    test_examples: int = Field(500, ge=1, le=100_000, description="test examples, none with a training source")
    max_depth: int = Field(2, ge=0, le=5, description="depth of the terms substituted for the rule's variables (at "
                           "most 5: deeper multi-step targets could pass the transformer's 1,024 positions)")
    optim: OptimConfig = Field(OptimConfig(steps=1000, batch_size=32, lr=2e-3, warmup=50),
                               description="optimizer and schedule of every fine-tuning run (the same step count at "
                               "every size)")
    eval_every: int = Field(250, ge=1, description="steps between exact-match checks on the test set")
    thresholds: list[float] = Field([0.5, 0.9], min_length=1, description="exact-match levels of the "
                                    "sample-efficiency table (examples needed to reach each)")

    @field_validator("tasks")
    @classmethod
    def _distinct_tasks(cls, tasks: list[str]) -> list[str]:
        return distinct_values(tasks, lambda task: True, "distinct tasks")

    @field_validator("train_examples")
    @classmethod
    def _increasing(cls, sizes: list[int]) -> list[int]:
        return distinct_values(sizes, lambda n: 1 <= n <= 10_000_000, "distinct sizes from 1 to 10,000,000")

    @field_validator("thresholds")
    @classmethod
    def _fractions(cls, thresholds: list[float]) -> list[float]:
        return distinct_values(thresholds, lambda t: 0 < t <= 1, "distinct exact-match levels in (0, 1]")


# Short Rules (1-2 kept rule symbols, 2-6 math symbols) and Cases (1-3 tokens) at 8/8/8 symbols: held-out Deduct exact
# match 0.91 after 20,000 steps on one CPU thread, 0.995 after 30,000 (bench/lime_learning.py); the paper's ranges: 0
LEARNED_LIME = LimeGenerationConfig(rule_symbols=8, lower_symbols=8, math_symbols=8, kept_rule=[1, 2], rule_math=[2, 6],
                                    case_length=[1, 3])


class LimePretrainFlowConfig(Config):
    """Pretraining arms x seeds, each fine-tuned at every downstream training-set size."""

    arms: list[Arm] = Field(list(ARMS), min_length=1, description="scratch (no pretraining), a LIME task (mixed, "
                            "deduct, abduct, induct) or a control on Mixed's sources (copy, reverse)")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="seed indices: initialisation, pretraining and "
                             "downstream data, batch order; the same for every arm")
    transformer: TransformerConfig = Field(TransformerConfig(), description="the encoder-decoder's shape")
    lime: LimeGenerationConfig = Field(LEARNED_LIME, description="the LIME generator; by default smaller symbol sets "
                                       "than the paper's 24/24/20 and shorter Rules and Cases, which this 2-core CPU "
                                       "learns (docs/lime_pretrain.md; the paper's ranges: "
                                       "flows/configs/lime-pretrain-paper-ranges.yaml)")
    pretrain: PretrainConfig = Field(PretrainConfig(optim=OptimConfig(steps=30_000, batch_size=32, lr=2e-3, warmup=300),
                                                    eval_every=2000, eval_examples=200, bucket_batches=8),
                                     description="pretraining")
    downstream: DownstreamConfig = Field(DownstreamConfig(tasks=list(DOWNSTREAM_TASKS)),
                                         description="the rewriting tasks and their fine-tuning")
    seed: int = Field(0, ge=0, description="run seed: every seed index's streams derive from it")
    runtime: RuntimeConfig = Field(RuntimeConfig(max_workers=2), description="execution settings (two arms at once "
                                   "by default: one small network keeps one core busy); not part of the run id")

    @field_validator("arms")
    @classmethod
    def _distinct_arms(cls, arms: list[str]) -> list[str]:
        if len(set(arms)) != len(arms):
            raise ValueError(f"arms must be distinct; got {arms}")
        return arms

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        return distinct_values(seeds, lambda s: s >= 0, "distinct non-negative seeds")

    @model_validator(mode="after")
    def _curriculum_fits(self) -> LimePretrainFlowConfig:
        stages = self.pretrain.curriculum
        if sum(stage.steps for stage in stages) >= self.pretrain.optim.steps:
            raise ValueError(f"pretrain.curriculum's stages take {sum(stage.steps for stage in stages)} steps, not "
                             f"fewer than pretrain.optim.steps ({self.pretrain.optim.steps}): the run's own lime "
                             "setting would never be trained")
        for index, stage in enumerate(stages):
            try:
                stage.lime(self.lime)
            except ValidationError as err:
                raise ValueError(f"pretrain.curriculum[{index}]: {err.errors()[0]['msg'].removeprefix('Value error, ')}"
                                 ) from None
        return self

    @field_validator("runtime")
    @classmethod
    def _fp32(cls, runtime: RuntimeConfig) -> RuntimeConfig:
        if runtime.precision != "fp32":  # the sequence models' training has no autocast: a setting it would ignore
            raise ValueError(f"runtime.precision={runtime.precision} is not supported by lime_pretrain, which trains "
                             "in fp32")
        return runtime


def check_sequences_fit(config: LimePretrainFlowConfig) -> None:
    """Refuse, before any work, LIME settings whose longest sequence (a source, or a copied source after BOS) is
    longer than the transformer's position table."""
    longest = config.lime.to_core().longest_source + 1
    if longest > MAX_LENGTH:
        raise ValueError(f"LIME sequences of these lime settings reach {longest} tokens, more than the transformer's "
                         f"{MAX_LENGTH} positions; lower lime.case_length, lime.rule_math or the symbol sets")


@flow(name=FLOW, description="Pretrain a small transformer on LIME (or a control, or nothing), fine-tune it on "
                             "one-step term rewriting; exact-match curves and sample efficiency per arm.")
def lime_pretrain_flow(config: LimePretrainFlowConfig = LimePretrainFlowConfig(), data_root: str | None = None) -> str:
    """Run (or resume) the comparison of `config`; returns the run folder."""
    from core.plots.lime_pretrain import lime_sample_efficiency, lime_transfer_curves
    from core.runs.store import RunStore
    from core.sequence.transfer import lime_pretrain_findings, sample_efficiency, transfer_summary
    from flows.common import run_scope
    from flows.report import publish
    from flows.runner import configure_runtime, run_shards
    from tasks.common import combine_shards
    from tasks.lime_pretrain import finetune_arm, pretrain_arm

    data_root = checked_data_root(data_root)
    configure_runtime(config.runtime)
    check_sequences_fit(config)
    store = RunStore.open(FLOW, config, data_root)
    pretrained = [arm for arm in config.arms if arm != SCRATCH]
    written = run_shards(pretrain_arm, [{"store": store, "arm": a} for a in pretrained], config.runtime,
                         "pretraining") if pretrained else []
    tuned = run_shards(finetune_arm, [{"store": store, "arm": a} for a in config.arms], config.runtime, "fine-tuning")
    curves = [name for names in written for name in names if name.endswith(".parquet")]
    keys = [("arm", "ascending"), ("seed", "ascending")]
    if curves:
        combine_shards(store, curves, "lime_pretrain_curves.parquet", [*keys, ("step", "ascending")])
    finetuned = [name for names in tuned for name in names]
    combine_shards(store, finetuned, "lime_finetune_curves.parquet",
                   [("task", "ascending"), *keys, ("train_examples", "ascending"), ("step", "ascending")])
    finetune = store.read_table("lime_finetune_curves.parquet")
    efficiency = sample_efficiency(finetune, config.downstream.thresholds)
    store.remove_corrupt("lime_sample_efficiency.parquet")
    if not store.is_complete("lime_sample_efficiency.parquet", ["lime_finetune_curves.parquet"]):
        store.write_table("lime_sample_efficiency.parquet", efficiency, built_from=["lime_finetune_curves.parquet"])
    pretrain = store.read_table("lime_pretrain_curves.parquet") if curves else finetune.iloc[:0]
    folder = store.root / "figures"
    figures = store.figures(lambda: [lime_transfer_curves(pretrain, finetune, folder / "exact_match_curves.png"),
                                     lime_sample_efficiency(finetune, folder / "sample_efficiency.png")])
    shape, downstream = config.transformer, config.downstream
    sizes, layers = "/".join(map(str, downstream.train_examples)), f"{shape.encoder_layers}+{shape.decoder_layers}"
    scope = (f"{' and '.join(DOWNSTREAM_TASKS[task] for task in downstream.tasks)} ({sizes} train, "
             f"{downstream.test_examples} test examples), transformer d_model {shape.d_model} {layers} layers, "
             f"{config.pretrain.optim.steps} pretraining steps, {run_scope(config)}")
    publish(store, transfer_summary(finetune, efficiency), figures,
            f"transformer d_model {shape.d_model}, {layers} layers: arms {', '.join(config.arms)} x "
            f"{len(config.seeds)} seeds; {config.pretrain.optim.steps} pretraining steps, fine-tuned on {sizes} "
            f"examples of {', '.join(downstream.tasks)}", findings=lime_pretrain_findings(pretrain, finetune, scope))
    return str(store.root)
