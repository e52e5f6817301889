"""Config groups and checks shared by the flows that train models on seeded subsets."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from pydantic import Field, field_validator

from core.config import Config, RuntimeConfig
from core.data.config import DatasetConfig
from core.models.names import DCT_FAMILIES, ModelNameError, parse_model_name
from core.training.config import TrainConfig

if TYPE_CHECKING:  # annotations only: these load torch and pandas, which reading a config must not
    import pandas as pd
    from core.data.datasets import Dataset
    from core.runs.store import RunStore



class SubsetTrainingConfig(Config):
    """What every subset-training flow shares: data, model, optimiser, seed, sharding, runtime."""

    dataset: DatasetConfig = Field(DatasetConfig(), description="what to train on")
    model: str = Field("mlp_w64_d2", description="registry name, e.g. mlp_w64_d2, cnn1d_w32_d3, cnn_w16_d4, "
                       "lenet_300_100, or the name of an installed package's regularity.models entry point")
    train: TrainConfig = Field(TrainConfig(), description="optimiser and schedule")
    seed: int = Field(0, ge=0, description="run seed; model k's seed is derived from (seed, k)")
    shard_size: int = Field(16, ge=1, description="models trained together in one task (one vectorized pass)")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="execution settings; not part of the run id")

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        return sgd_trainable_model(name)


def distinct_values(values: list, allowed: Callable[[Any], bool], requirement: str, descending: bool = False) -> list:
    """A config list's values sorted (the same grid in any order is the same run id), once each is `allowed` and
    none repeats; else a ValueError saying they must be `requirement`."""
    if not all(map(allowed, values)) or len(set(values)) != len(values):
        raise ValueError(f"must be {requirement}; got {values}")
    return sorted(values, reverse=descending)


def sgd_trainable_model(name: str) -> str:
    """`name`, if the registry or an installed entry point knows it (else the list of valid names) and plain training
    trains it: a subspace network needs its coefficients drawn every step (core.methods.subspaces.SubspaceTraining),
    which these flows do not."""
    if parse_model_name(name).endpoints:
        raise ValueError(f"{name!r} is a subspace network: its coefficients are drawn every step by "
                         "core.methods.subspaces.SubspaceTraining, which this flow does not run; "
                         "use the plain name")
    return name


def plain_stackable_model(name: str, builds: str) -> str:
    """`name`, if it is a plain network of a family the stacked fast path runs (no dct_ or subspace prefix: the flow
    builds those itself, as `builds` says); else a ValueError."""
    spec = parse_model_name(name)  # raises with the list of valid patterns
    if spec.dct_plus_sparse or spec.endpoints or spec.family not in DCT_FAMILIES:
        raise ValueError(f"{name!r} is not a plain network of {', '.join(DCT_FAMILIES)}; {builds}")
    return name


def _started_from_deployment() -> bool:
    """Whether the current flow run was created from a deployment (the UI's Custom run, `run_deployment`, a
    schedule, the API); read from the run's own context, so no API call. False outside a flow run."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    flow_run = getattr(context, "flow_run", None)
    return getattr(flow_run, "deployment_id", None) is not None


def checked_data_root(data_root: str | None, from_deployment: bool | None = None) -> str | None:
    """The `data_root` a flow was given, once it is allowed to write there; else a ValueError naming it.

    Who may choose what:
      - On this machine the data root is the user's choice: `regularity run --data-root` (passed on resolved and
        absolute), `$REGULARITY_DATA_ROOT` (data_root left empty), or a direct Python call of the flow function.
        Such a value is returned as it is: any folder may hold runs.
      - A value that arrives as a parameter of a flow run started from a deployment (`from_deployment`; by default
        read from the run's context) comes from whoever can reach the Prefect server. It must
          1. be an absolute path (not `~/...`, not relative to the worker's working directory),
          2. have no `..` component,
          3. lie under the default data root, or name a folder that does not exist yet, is empty, or already is a
             data root (holds `runs/` or `cache/`), and not a file.
        So a deployment parameter cannot make the worker write runs/ and cache/ into an existing folder of other
        files (`/etc`, a home directory, the checkout) nor climb out of a path with `..`. It can still name a new
        folder wherever the worker's user may create one: run the worker as a user without rights to system folders.
    A blank value means the default data root, as an empty `--data-root` does.
    """
    from core.runs.files import default_data_root

    if data_root is not None and not str(data_root).strip():
        return None
    if data_root is None or not (_started_from_deployment() if from_deployment is None else from_deployment):
        return data_root
    default = default_data_root()
    rule = (f"a run started from a deployment writes only under the default data root {default}, or to a new or "
            "empty folder, or to an existing data root (one holding runs/ or cache/); leave data_root empty for "
            "the default, or run from the CLI with --data-root")
    path = Path(data_root)
    if not path.is_absolute():
        raise ValueError(f"data_root={data_root!r} is refused: not an absolute path; {rule}")
    if ".." in path.parts:
        raise ValueError(f"data_root={data_root!r} is refused: it has a '..' component; {rule}")
    resolved = path.resolve()  # symlinks followed: a link to /etc is /etc
    if resolved.is_relative_to(default):
        return data_root
    if resolved.exists():
        if not resolved.is_dir():
            raise ValueError(f"data_root={data_root!r} is refused: it is a file, not a folder; {rule}")
        try:
            entries = set(os.listdir(resolved))
        except OSError as err:
            raise ValueError(f"data_root={data_root!r} is refused: it cannot be listed ({err.strerror}); "
                             f"{rule}") from None
        if entries and not entries & {"runs", "cache"}:
            raise ValueError(f"data_root={data_root!r} is refused: it is an existing folder of other files "
                             f"({len(entries)} entries, no runs/ or cache/); {rule}")
    return data_root


def check_model_takes(model: str, dataset: Dataset) -> None:
    """Fail in one line when `model` cannot take the dataset's examples, saying how to give them the shape it needs;
    else say in the run's log which path its models train on."""
    from core.models.networks import init_model

    try:
        network = init_model(model, dataset.input_shape, dataset.num_classes, 0)
    except ModelNameError as err:
        shape = list(dataset.input_shape)
        try:  # the usual cause: images or sequences saved without their channel axis
            init_model(model, (1, *shape), dataset.num_classes, 0)
        except ModelNameError:
            raise ValueError(f"{err}; store the examples with the axes it needs (e.g. [N, C, H, W] in an .npz), or "
                             "choose an mlp_ model, which takes any shape") from None
        raise ValueError(f"{err}: they lack a channel axis; save x_train[:, None] and x_test[:, None] (shape "
                         f"[N, {', '.join(map(str, [1, *shape]))}]) in your .npz, or choose an mlp_ model") from None
    log_training_path(model, network)


def log_training_path(name: str, network: Any) -> None:
    """One line in the run's log: whether models `name` (built as `network`) train on the stacked path or on the vmap
    fallback, and for a model of an installed package, which package and version."""
    from core.models.entry_points import entry_point_model
    from core.training.ensemble import training_path
    from flows.runner import run_logger

    package = entry_point_model(name)
    source = f" (entry point of {package.provider})" if package else ""
    path = ("the stacked path (batched matmuls and grouped convolutions)" if training_path(network) == "stacked" else
            "the vmap fallback (torch.func.vmap over its own forward: a layer the stacked path does not know, or "
            "not an nn.Sequential)")
    run_logger().info("model %s%s trains on %s", name, source, path)


def check_whole_set_fits(model: str, batch_size: int, dataset: Dataset) -> None:
    """Fail before any work when `model` cannot take the data or one batch is larger than the whole training set."""
    check_model_takes(model, dataset)
    if dataset.n_train < batch_size:
        raise ValueError(f"train.batch_size={batch_size} is larger than the training set ({dataset.n_train})")


def check_fits(config: SubsetTrainingConfig, dataset: Dataset, smallest_subset: int, field: str) -> None:
    """Fail before any work when the model or the smallest subset cannot work with this dataset."""
    check_model_takes(config.model, dataset)
    if smallest_subset < config.train.batch_size:
        raise ValueError(
            f"{field} gives {smallest_subset} of {dataset.n_train} examples per model, fewer than "
            f"train.batch_size={config.train.batch_size}; raise {field.split('=')[0]} or lower train.batch_size"
        )


def upstream_table(field: str, run: str, tables: dict[str, str], data_root: str | None,
                   dataset: DatasetConfig | None = None, contents: str | None = None) -> Path:
    """The finished table of run `run` that setting `field` names; `tables` maps the flows it may be
    a run of to the table needed. With `dataset`, that run must have used exactly this dataset, and files
    of the same `contents` fingerprint (downstream flows join on example ids). Checked before any work,
    each failure saying what to change."""
    import pyarrow.parquet as pq
    from core.runs.catalog import find_run

    folder = find_run(run, data_root)
    stored = json.loads((folder / "config.json").read_text())
    if stored["flow"] not in tables:
        raise ValueError(f"{field}={run!r} is a {stored['flow']} run; give the id of a {' or '.join(tables)} run "
                         f"(`regularity ls --flow {next(iter(tables))}`)")
    path = folder / tables[stored["flow"]]
    try:
        pq.read_metadata(path)  # the footer: written last, so the table is whole
    except (OSError, ValueError) as err:
        raise ValueError(f"{field}={run!r} has no readable {path.name} yet ({type(err).__name__}); let that run "
                         "finish first (`regularity ls` shows its status)") from None
    if dataset is not None:
        theirs, ours = stored["config"]["dataset"], dataset.model_dump(mode="json")
        differ = [f"dataset.{k}: {theirs.get(k)!r} there, {ours[k]!r} here" for k in ours if theirs.get(k) != ours[k]]
        if differ:
            raise ValueError(f"{field}={run!r} used another dataset ({'; '.join(differ)}); set the same dataset "
                             "here, since results are joined on example ids")
        theirs = stored.get("inputs", {}).get("dataset")
        if theirs != contents:
            raise ValueError(f"{field}={run!r} read other contents of the dataset files (fingerprint {theirs} there, "
                             f"{contents} here): the files changed since; run {stored['flow']} again on them first")
    return path


def examples_table(dataset: Dataset) -> pd.DataFrame:
    """Which example each position of the per-example list columns refers to, and where the user's files hold it."""
    import pandas as pd

    return pd.concat([
        pd.DataFrame({"split": "train", "position": np.arange(dataset.n_train), "example_id": dataset.train_ids,
                      "source": dataset.train_source, "label": dataset.y_train, "true_label": dataset.true_label,
                      "is_noisy": dataset.is_noisy, "is_foreign": dataset.is_foreign}),
        pd.DataFrame({"split": "test", "position": np.arange(dataset.n_test), "example_id": dataset.test_ids,
                      "source": dataset.test_source, "label": dataset.y_test, "true_label": dataset.y_test,
                      "is_noisy": False, "is_foreign": False}),
    ], ignore_index=True)


def write_examples_table(store: RunStore, dataset: Dataset) -> None:
    """examples.parquet, unless the run has it with every column (a run begun before `source` or `is_foreign` existed
    gets it now, and the tables built from it are rebuilt)."""
    import pyarrow.parquet as pq

    store.remove_corrupt("examples.parquet")
    if store.is_complete("examples.parquet") and {"source", "is_foreign"} <= set(
            pq.read_schema(store.path("examples.parquet")).names):
        return
    store.write_table("examples.parquet", examples_table(dataset))


def chunks(items: list, size: int) -> list[list]:
    """`items` cut into consecutive lists of at most `size`."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_scope(config: Any, dataset: Dataset | None = None) -> str:
    """The scale a run's findings were measured at, for their `scope` column: data (with its size and label noise),
    model, epochs and seeds, as far as the config has them."""
    data = getattr(config, "dataset", None)
    parts = []
    if data is not None:
        sizes = f" ({dataset.n_train:,} train / {dataset.n_test:,} test)" if dataset is not None else ""
        noise = f", {data.label_noise:.0%} labels flipped" if getattr(data, "label_noise", 0) else ""
        parts.append(f"{data.name}{sizes}{noise}")
    if isinstance(getattr(config, "model", None), str):
        parts.append(config.model)
    if getattr(getattr(config, "train", None), "epochs", None) is not None:
        parts.append(f"{config.train.epochs} epochs")
    if isinstance(getattr(config, "seeds", None), list):
        parts.append(f"{len(config.seeds)} seeds")
    return ", ".join(parts)
