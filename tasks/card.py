"""Task of the `card` flow: the join of a cscore and a proxies run into one per-example table."""
from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.methods.card import cartography, data_card
from core.runs.files import read_table
from core.runs.store import RunStore

CARD = "examples.parquet"


@task(cache_policy=NO_CACHE, task_run_name="write-card")
def write_card(store: RunStore, cscore_run: Path, proxies_run: Path | None) -> str:
    """`examples.parquet` of the card from the run folders `cscore_run` and `proxies_run`; skipped when already built
    from their tables as they are."""
    inputs = [cscore_run / "cscores.parquet"]
    heldout = cscore_run / "heldout_probabilities.parquet"
    inputs += [heldout] if heldout.exists() else []
    records = sorted(proxies_run.glob("shards/records-*.parquet")) if proxies_run else []
    inputs += [proxies_run / "proxies.parquet", *records] if proxies_run else []
    built_from = [str(path.resolve()) for path in inputs]
    store.remove_corrupt(CARD)
    if store.is_complete(CARD, built_from):
        return CARD
    if not heldout.exists():
        get_run_logger().warning("%s has no heldout_probabilities.parquet (a run of older code): the card has no "
                                 "predicted_label and no cleanlab_holdout columns", cscore_run.name)
    coordinates = None
    if records:
        from tasks.proxies import read_record_files

        recorded = read_record_files(records)
        coordinates = cartography(recorded["label_prob"], recorded["correct"], recorded["seen"])
    card = data_card(read_table(inputs[0]), read_table(heldout) if heldout.exists() else None,
                     read_table(proxies_run / "proxies.parquet") if proxies_run else None, coordinates)
    store.write_table(CARD, card, {"examples": str(len(card))}, built_from)
    get_run_logger().info("%s: %d examples, %d columns", CARD, len(card), card.shape[1])
    return CARD

