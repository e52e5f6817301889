"""bf16 against fp32 on the C-score pipeline: how far the scores move, and what it costs or saves here.

Run: .venv/bin/python -m bench.precision [--only digits|fashion] [--allow-slow-bf16]   (from the repository root)
For each config, the `cscore` flow twice on the local runner, `runtime.precision` fp32 then bf16 (two run ids):
  digits   the README's job (flows/configs/cscore.yaml: 9 ratios x 32 mlp_w128_d2)
  fashion  the noisy Fashion-MNIST config (10 % uniform label noise) cut to N_FASHION images and
           RUNS_FASHION models per ratio, so that it fits a CPU without bf16 hardware
Reports the Spearman rank correlation of the bf16 C-scores with the fp32 ones, the mean absolute
difference, the mislabel-detection AUROC of 1 - C-score at both precisions, and the wall time of each run.
bf16 is refused on a CPU without native bfloat16 (AVX-512 BF16 or AMX); `--allow-slow-bf16` runs it anyway
on oneDNN's slow reference kernels (bf16 inputs, fp32 accumulation: the same rounding as AMX and GPUs), which
measures the fidelity but not the speed. Prints one JSON object last.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import pandas as pd
import torch
from scipy.stats import spearmanr

import core.runtime
from flows import server

# ---- knobs ---------------------------------------------------------------------------------
CONFIGS = {"digits": ("flows/configs/cscore.yaml", []),
           "fashion": ("flows/configs/cscore-fashion-noisy.yaml", ["dataset.n_train=2000", "runs_per_ratio=4"])}
# ---------------------------------------------------------------------------------------------


def run(path: str, overrides: list[str], precision: str, data_root: str | None) -> tuple[Path, float]:
    """Run folder and wall seconds of the `cscore` flow on `path` + `overrides` at `precision`."""
    from flows.config_files import load_config
    from flows.cscore import CScoreFlowConfig, cscore_flow

    config = load_config(CScoreFlowConfig, path, [*overrides, f"runtime.precision={precision}"])
    start = time.perf_counter()
    folder = Path(cscore_flow(config, data_root=data_root))
    return folder, time.perf_counter() - start


def compare(name: str, data_root: str | None) -> dict:
    """fp32 and bf16 runs of one config, and how their C-scores and detection differ."""
    path, overrides = CONFIGS[name]
    (exact, exact_s), (rounded, rounded_s) = (run(path, overrides, p, data_root) for p in ("fp32", "bf16"))
    a, b = (pd.read_parquet(f / "cscores.parquet").set_index("example_id")["cscore"] for f in (exact, rounded))
    row = {"config": name, "overrides": overrides, "fp32_run": exact.name, "bf16_run": rounded.name,
           "spearman": round(float(spearmanr(a, b.loc[a.index]).statistic), 4),
           "mean_abs_diff": round(float((a - b.loc[a.index]).abs().mean()), 4),
           "seconds": {"fp32": round(exact_s, 1), "bf16": round(rounded_s, 1)}}
    if (exact / "noise_detection.parquet").exists():
        auroc = {p: float(pd.read_parquet(f / "noise_detection.parquet")["auroc"].iloc[0])
                 for p, f in (("fp32", exact), ("bf16", rounded))}
        row["detection_auroc"] = {**{p: round(v, 4) for p, v in auroc.items()}, "change": round(auroc["bf16"] - auroc["fp32"], 4)}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(CONFIGS), help="one config instead of both")
    parser.add_argument("--allow-slow-bf16", action="store_true", help="run bf16 on a CPU without bf16 hardware")
    parser.add_argument("--data-root", default=None, help="where the runs go (default: the project's data/)")
    args = parser.parse_args()
    native = core.runtime.cpu_has_bf16()
    if args.allow_slow_bf16:
        core.runtime.cpu_has_bf16 = lambda: True  # this process only: the flow runs its tasks in it
    server.use_local_server()  # before prefect is imported
    rows = []
    for name in [args.only] if args.only else list(CONFIGS):
        rows.append(compare(name, args.data_root))
        print(rows[-1], flush=True)
    print(json.dumps({"bench": "precision", "cpu_native_bf16": native, "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "machine": platform.machine(), "results": rows}))


if __name__ == "__main__":
    main()
