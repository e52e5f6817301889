"""Pydantic bases shared by every config, and the config -> run id mapping."""
from __future__ import annotations

import hashlib
import json
import re
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from core.runtime import ThreadChoice, available_cores, choose_threads

DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class AddedSetting:
    """Marks a setting added after runs existed: `Annotated[type, ADDED_SETTING] = Field(default, ...)`. While it holds
    its default it is left out of the run id (`canonical_json`), so every config written before it keeps its id."""

    def __repr__(self) -> str:
        return "ADDED_SETTING"


ADDED_SETTING = AddedSetting()


class RunReference:
    """Marks a setting that names another run by its id (`Annotated[str | None, RUN_REFERENCE]`): the CLI takes the
    start of an id there and checks the run exists before any work (`flows.preflight.resolve_run_references`)."""

    def __repr__(self) -> str:
        return "RUN_REFERENCE"


RUN_REFERENCE = RunReference()


class Config(BaseModel):
    """Base of every config group: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse a boolean in a number field: YAML reads yes/on/true as True, which pydantic would take as 1."""
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            annotation = cls.model_fields[info.field_name].annotation
            types = set(typing.get_args(annotation)) or {annotation}
            if bool not in types and types & {int, float}:
                raise ValueError(f"Input should be a valid number, not a boolean ({value}: YAML reads yes/no, "
                                 "on/off and true/false as booleans)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _a_partial_group_keeps_this_configs_defaults(cls, data: Any) -> Any:
        """A group given in part (a YAML block, `--set train.epochs=20`, a deployment parameter) keeps this config's
        own defaults for what it leaves out (a flow's train.lr, its dataset.name), not those of the group's class."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, field in cls.model_fields.items():
            if isinstance(data.get(name), dict) and isinstance(field.default, BaseModel):
                merged[name] = _deep_merge(field.default.model_dump(), data[name])
        return merged


def _deep_merge(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`defaults` with `given` laid over it, nested mappings merged key by key (lists and values replaced)."""
    merged = dict(defaults)
    for key, value in given.items():
        both_mappings = isinstance(value, dict) and isinstance(defaults.get(key), dict)
        merged[key] = _deep_merge(defaults[key], value) if both_mappings else value
    return merged


class RuntimeConfig(Config):
    """How a run executes; not part of its identity (see docs/outputs.md on reproducibility)."""

    device: str = Field("auto", description="torch device: auto (cuda when present, else cpu), cpu, cuda, cuda:N or mps")
    threads: int = Field(0, ge=0, description="torch CPU threads per task; 0 = the cores divided among concurrent "
                         "tasks (only those other processes leave free when the run starts, where OpenMP threads "
                         "spin: OMP_WAIT_POLICY not PASSIVE), in a Dask worker what that worker has (its "
                         "OMP_NUM_THREADS or its cores per thread)")
    max_workers: int = Field(1, ge=1, description="shards run at once by the local task runner")
    task_runner: Literal["local", "dask"] = Field("local", description="local threads, or a Dask cluster (prefect-dask)")
    dask_address: str | None = Field(None, description="address of an existing Dask scheduler, e.g. tcp://host:8786; "
                                     "empty = start a local cluster of dask_workers processes")
    dask_workers: int = Field(2, ge=1, description="worker processes of the local Dask cluster (one thread each)")
    precision: Literal["fp32", "bf16", "tf32"] = Field(
        "fp32", description="fp32: IEEE float32 everywhere, bit-reproducible; bf16: bfloat16 autocast of matmuls and "
        "convs (GPUs, and CPUs with AVX-512 BF16 or AMX; refused on other CPUs, where it is hundreds of times "
        "slower), weights and optimizer in fp32; tf32: TF32 matmuls and convs on NVIDIA GPUs (as fp32 elsewhere). "
        "Changes results, so a precision other than fp32 is part of the run id")
    recompute: list[str] = Field([], description="files of the run to delete and compute again, with everything built "
                                 "from them: names or patterns inside the run folder (runs.parquet, shards/*), "
                                 "outdated (written by another code revision than the current one), or all")

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        """Refuse a device name torch would reject only inside a shard, after the run folder exists."""
        if not DEVICE.fullmatch(device):
            raise ValueError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N (N = 0, 1, ...), mps")
        return device

    @field_validator("recompute")
    @classmethod
    def _patterns_inside_the_run(cls, patterns: list[str]) -> list[str]:
        """Refuse patterns that could only name files outside the run folder, or nothing."""
        bad = [p for p in patterns if not p.strip() or p.startswith(("/", "~")) or ".." in p.split("/")]
        if bad:
            raise ValueError(f"recompute patterns name files inside the run folder (e.g. runs.parquet, shards/*, "
                             f"outdated, all); got {bad}")
        return patterns

    def torch_threads(self, busy_cores: float | None = None) -> int:
        """Threads a task of this process should give torch: the setting, or the cores shared by the local runner's
        concurrent tasks, less those others keep busy (`busy_cores`, measured as the flow started) where OpenMP
        threads spin (`core.runtime.threads_for_load`; tasks in Dask workers size theirs there: `task_threads`)."""
        return self.thread_choice(busy_cores).threads

    def thread_choice(self, busy_cores: float | None = None) -> ThreadChoice:
        """`torch_threads` with what it was chosen from, for the run's log."""
        return choose_threads(self.threads, available_cores(), self.max_workers, busy_cores)

    def dask_worker_threads(self, busy_cores: float | None = None) -> int:
        """Torch threads per worker of the local Dask cluster: the setting, or the cores shared by its workers (as
        `torch_threads`)."""
        return choose_threads(self.threads, available_cores(), self.dask_workers, busy_cores).threads


def canonical_json(config: BaseModel | dict[str, Any]) -> str:
    """Stable JSON of a resolved config with the `runtime` group left out, but for a precision other than fp32
    (it changes the numbers; fp32 runs keep the ids they always had), and without ADDED_SETTING fields at their
    defaults (a config is validated first for that: a plain dict is taken as it is)."""
    data = identity_data(config) if isinstance(config, BaseModel) else dict(config)
    runtime = data.pop("runtime", None) or {}
    if runtime.get("precision", "fp32") != "fp32":
        data["precision"] = runtime["precision"]
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def identity_data(config: BaseModel) -> dict[str, Any]:
    """`config` as JSON data without the ADDED_SETTING fields that hold their defaults, in every nested group."""
    data = config.model_dump(mode="json")
    _leave_out_added_defaults(config, data)
    return data


def _leave_out_added_defaults(value: Any, data: Any) -> None:
    """Delete from `data` (the JSON dump of `value`) each ADDED_SETTING field of `value`'s models at its default."""
    if isinstance(value, BaseModel) and isinstance(data, dict):
        for name, field in type(value).model_fields.items():
            child = getattr(value, name)
            if ADDED_SETTING in field.metadata and child == field.get_default(call_default_factory=True):
                data.pop(name, None)
            else:
                _leave_out_added_defaults(child, data.get(name))
    elif isinstance(value, (list, tuple)) and isinstance(data, list):
        for item, dumped in zip(value, data):
            _leave_out_added_defaults(item, dumped)
    elif isinstance(value, dict) and isinstance(data, dict):
        for key, item in value.items():
            _leave_out_added_defaults(item, data.get(str(key)))


def run_id(flow: str, config: BaseModel | dict[str, Any], inputs: dict[str, str] | None = None) -> str:
    """`<flow>-<12 hex>`: the same resolved config, reading files of the same contents (`inputs`: name ->
    fingerprint), always maps to the same id. Without input files the id is that of the config alone."""
    identity = canonical_json(config)
    if inputs:
        identity += "\ninputs:" + json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return f"{flow}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


def derive_seed(*keys: int) -> int:
    """A 31-bit seed determined by `keys` (e.g. run seed, model id, stream), independent across keys."""
    import numpy as np

    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] >> 1)
