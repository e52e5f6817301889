"""Tasks of the `lime_pretrain` flow: one arm's pretraining, every seed; one arm's fine-tuning, every seed and
downstream training-set size. Each seed's files are written as it finishes, so a stopped run resumes by seed, and a
seed stopped mid-pretraining goes on from its last held-out check (a checkpoint, core.runs.checkpoints)."""
from __future__ import annotations

import time

import pandas as pd
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from core.config import derive_seed
from core.models.networks import seeded_init
from core.runs.checkpoints import read_checkpoint, remove_checkpoint, write_checkpoint
from core.runs.store import RunStore
from core.runtime import resolve_device
from core.sequence import multistep, rewriting
from core.sequence.config import SCRATCH
from core.sequence.lime import generate
from core.sequence.rewriting import RewriteConfig
from core.sequence.transfer import (bucketed, epoch_batches, held_out_figures, lime_batches, staged,
                                   train_with_evaluation)
from core.sequence.transformer import Batches, Seq2Seq
from core.training.experiment import DRAW_STREAM, INIT_STREAM, MONITOR_STREAM, ORDER_STREAM, SUBSET_STREAM, model_seed
from tasks.common import compute_once, task_threads

PRETRAIN_SHARDS, FINETUNE_SHARDS = "shards/pretrain/", "shards/finetune/"
DOWNSTREAM_SPLITS = {"rewrite": rewriting.split, multistep.TASK: multistep.split}  # of each DOWNSTREAM_TASKS name
PRETRAIN_COLUMNS = ["arm", "seed", "step", "train_loss", "exact_match", "token_accuracy", "seconds"]
FINETUNE_COLUMNS = ["task", "arm", "seed", "train_examples", "step", "train_loss", "exact_match", "token_accuracy",
                    "seconds"]


def weights_name(arm: str, seed: int) -> str:
    """The pretrained weights of (arm, seed)."""
    return f"pretrained/{arm}-seed{seed}.safetensors"


def downstream_config(store: RunStore) -> RewriteConfig:
    """The rewriting task of the run, in the model's vocabulary."""
    config = store.config
    return RewriteConfig(max_depth=config.downstream.max_depth, vocab_size=config.lime.vocab_size)


def downstream_split(store: RunStore, downstream: str, seed: int) -> tuple[list, list]:
    """(train, test) of task `downstream` for seed index `seed`: the largest training set (the smaller ones are its
    prefixes) and the test set (multi-step examples draw apart from one-step ones of the same seed: its SALT)."""
    config = store.config.downstream
    return DOWNSTREAM_SPLITS[downstream](derive_seed(model_seed(store.config.seed, seed), SUBSET_STREAM),
                                         max(config.train_examples), config.test_examples, downstream_config(store))


def new_model(store: RunStore, seed: int) -> Seq2Seq:
    """Seed `seed`'s initial network (the same for every arm), on the run's device."""
    config = store.config
    with seeded_init(derive_seed(model_seed(config.seed, seed), INIT_STREAM)):
        model = Seq2Seq(config.lime.to_core().total_vocab, config.transformer)
    return model.to(resolve_device(config.runtime.device))


def _prepare(store: RunStore) -> None:
    """This task's torch threads."""
    torch.set_num_threads(task_threads(store.config.runtime))


def bar(total: int, what: str):
    """A progress bar over steps, and the callback that moves it."""
    progress = tqdm(total=total, desc=what, unit="step", leave=False)
    return progress, lambda done: progress.update(done - progress.n)


@task(cache_policy=NO_CACHE, task_run_name="pretrain-{arm}")
def pretrain_arm(store: RunStore, arm: str) -> list[str]:
    """Pretrain every seed's network on task `arm`; a seed whose files exist is skipped."""
    _prepare(store)
    names = []
    for seed in store.config.seeds:
        files = [f"{PRETRAIN_SHARDS}{arm}-seed{seed}.parquet", weights_name(arm, seed)]
        compute_once(store, files, lambda: _pretrain(store, arm, seed, files))
        names += files
    return names


def _pretrain(store: RunStore, arm: str, seed: int, files: list[str]) -> None:
    """Pretrain one seed and write its curve and weights; a stopped seed goes on from its last held-out check
    (checkpoints/pretrain/<arm>-seed<seed>.pt, removed once the weights are written)."""
    config, logger = store.config, get_run_logger()
    lime, pretrain, base = config.lime.to_core(), config.pretrain, model_seed(config.seed, seed)
    model, checkpoint = new_model(store, seed), f"pretrain/{arm}-seed{seed}.pt"
    state = read_checkpoint(store, checkpoint)
    if state is not None:
        model.load_state_dict(state["model"])
        logger.info("pretrain %s, seed %d: going on from step %d (%s)", arm, seed, state["step"], checkpoint)
    start = time.perf_counter() - (state["rows"][-1]["seconds"] if state else 0.0)  # the seed's, over its runs
    held_out = generate(arm, derive_seed(base, MONITOR_STREAM), 0, pretrain.eval_examples, lime)
    sources, targets = [e.source for e in held_out], [e.target for e in held_out]
    batches = pretraining_batches(config, arm, base)
    progress, moved = bar(pretrain.optim.steps, f"pretrain {arm} seed {seed}")

    def evaluate(step: int) -> dict[str, float]:
        """Exact match and token accuracy on held-out examples of the pretraining task, logged."""
        figures = {**held_out_figures(model, sources, targets), "seconds": time.perf_counter() - start}
        logger.info("pretrain %s, seed %d, step %d/%d: exact match %.3f, token accuracy %.3f, %.0f s", arm, seed, step,
                    pretrain.optim.steps, figures["exact_match"], figures["token_accuracy"], figures["seconds"])
        return figures

    def save(training: dict) -> None:
        """The training state and the model's weights, as one checkpoint."""
        write_checkpoint(store, checkpoint, {**training, "model": model.state_dict()})

    with progress:
        curve = train_with_evaluation(model, batches, pretrain.optim, pretrain.eval_every, evaluate, moved, state, save)
    store.write_table(files[0], curve.assign(arm=arm, seed=seed)[PRETRAIN_COLUMNS])
    store.write_tensors(files[1], model.state_dict())
    remove_checkpoint(store, checkpoint)


def pretraining_batches(config, arm: str, base: int) -> Batches:
    """Every pretraining step's batch of `arm` for the seed whose model seed is `base`, under the flow's `config`: the
    curriculum's stages in turn (stage i's examples from its own draw stream), then the run's lime setting; each stage
    length-bucketed."""
    pretrain = config.pretrain
    draws = [derive_seed(base, DRAW_STREAM, stage + 1) for stage in range(len(pretrain.curriculum))]
    settings = [(stage.lime(config.lime), stage.steps) for stage in pretrain.curriculum]
    settings.append((config.lime, pretrain.optim.steps - sum(stage.steps for stage in pretrain.curriculum)))
    draws.append(derive_seed(base, DRAW_STREAM))  # one per seed, as before curricula
    order = derive_seed(base, ORDER_STREAM)  # the same bucket order for every arm
    return staged([(bucketed(lime_batches(arm, draw, pretrain.optim.batch_size, lime.to_core()),
                             pretrain.bucket_batches, order), steps) for draw, (lime, steps) in zip(draws, settings)])


@task(cache_policy=NO_CACHE, task_run_name="finetune-{arm}")
def finetune_arm(store: RunStore, arm: str) -> list[str]:
    """Fine-tune every seed's network of `arm` on every downstream task at every training-set size; a (seed, task)
    whose table exists (and was built from its pretrained weights as they are) is skipped."""
    _prepare(store)
    names = []
    for seed in store.config.seeds:
        pretrained = [] if arm == SCRATCH else [weights_name(arm, seed)]
        for downstream in store.config.downstream.tasks:
            name = f"{FINETUNE_SHARDS}{downstream}/{arm}-seed{seed}.parquet"
            compute_once(store, [name], lambda: _finetune(store, downstream, arm, seed, name, pretrained), pretrained)
            names.append(name)
    return names


def _finetune(store: RunStore, downstream: str, arm: str, seed: int, name: str, pretrained: list[str]) -> None:
    """Fine-tune one seed on one downstream task at every size and write its curves."""
    config, logger = store.config, get_run_logger()
    sizes, base = config.downstream.train_examples, model_seed(config.seed, seed)
    train, test = downstream_split(store, downstream, seed)
    test_sources, test_targets = [e.source for e in test], [e.target for e in test]
    weights = store.read_tensors(pretrained[0]) if pretrained else None  # read once, loaded at every size
    curves = []
    for size in sizes:  # a prefix of the same examples: nested training sets
        start, model = time.perf_counter(), new_model(store, seed)
        if weights is not None:
            model.load_state_dict(weights)  # copies: `weights` stays as read
        batches = epoch_batches([e.source for e in train[:size]], [e.target for e in train[:size]],
                                config.downstream.optim.batch_size, derive_seed(base, ORDER_STREAM))
        progress, moved = bar(config.downstream.optim.steps, f"fine-tune {arm} seed {seed} on {size} {downstream}")

        def evaluate(step: int) -> dict[str, float]:
            """Exact match and token accuracy on the test examples."""
            return {**held_out_figures(model, test_sources, test_targets), "seconds": time.perf_counter() - start}

        with progress:
            curve = train_with_evaluation(model, batches, config.downstream.optim, config.downstream.eval_every,
                                          evaluate, moved)
        curves.append(curve.assign(train_examples=size))
        logger.info("fine-tune %s, seed %d, %s, %d examples: exact match %.3f, %.0f s", arm, seed, downstream, size,
                    curve["exact_match"].iloc[-1], time.perf_counter() - start)
    table = pd.concat(curves, ignore_index=True).assign(task=downstream, arm=arm, seed=seed)[FINETUNE_COLUMNS]
    store.write_table(name, table, built_from=pretrained or None)
