"""Pydantic bases shared by every config, and the config -> run id mapping."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict


class Config(BaseModel):
    """Base of every config group: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RuntimeConfig(Config):
    """How a run executes; never part of its identity (changing it does not change results)."""

    device: str = "auto"  # "auto" picks cuda when present, else cpu
    threads: int = 0  # torch CPU threads per task; 0 = all cores
    max_workers: int = 1  # shards run at once by the local task runner


def canonical_json(config: BaseModel | dict[str, Any]) -> str:
    """Stable JSON of a resolved config with the `runtime` group left out."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
    data.pop("runtime", None)
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def run_id(flow: str, config: BaseModel | dict[str, Any]) -> str:
    """`<flow>-<12 hex>`: the same resolved config always maps to the same id."""
    digest = hashlib.sha256(canonical_json(config).encode()).hexdigest()[:12]
    return f"{flow}-{digest}"


def derive_seed(*keys: int) -> int:
    """A 31-bit seed determined by `keys` (e.g. run seed, model id, stream), independent across keys."""
    import numpy as np

    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] >> 1)
