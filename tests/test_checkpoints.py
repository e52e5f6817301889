"""Checkpoints of training in progress (core.runs.checkpoints): written atomically inside the run folder, read back
as written, and a damaged one or another run's ignored with a warning rather than trusted."""
import warnings
from pathlib import Path

import pytest
import torch

from core.config import Config
from core.runs.checkpoints import read_checkpoint, remove_checkpoint, write_checkpoint
from core.runs.store import RunStore


class Tiny(Config):
    width: int = 3


def store(tmp_path: Path, width: int = 3) -> RunStore:
    return RunStore.open("toy", Tiny(width=width), data_root=tmp_path)


def test_a_checkpoint_reads_back_as_written_and_is_removed_once_done(tmp_path):
    run = store(tmp_path)
    state = {"step": 7, "rows": [{"step": 5, "loss": 0.25}], "model": {"w": torch.arange(6.0).reshape(2, 3)}}
    assert read_checkpoint(run, "pretrain/a-seed0.pt") is None  # none yet
    write_checkpoint(run, "pretrain/a-seed0.pt", state)
    assert (run.root / "checkpoints" / "pretrain" / "a-seed0.pt").is_file()
    assert not list((run.root / "checkpoints" / "pretrain").glob(".*.tmp"))  # written in one piece
    back = read_checkpoint(run, "pretrain/a-seed0.pt")
    assert back["step"] == 7 and back["rows"] == [{"step": 5, "loss": 0.25}]
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    write_checkpoint(run, "pretrain/a-seed0.pt", {**state, "step": 9})  # the next one replaces it
    assert read_checkpoint(run, "pretrain/a-seed0.pt")["step"] == 9
    remove_checkpoint(run, "pretrain/a-seed0.pt")
    assert read_checkpoint(run, "pretrain/a-seed0.pt") is None
    remove_checkpoint(run, "pretrain/a-seed0.pt")  # already gone: nothing to do


def test_a_damaged_checkpoint_or_another_runs_is_ignored_with_a_warning(tmp_path):
    run, other = store(tmp_path), store(tmp_path, width=4)
    write_checkpoint(run, "x.pt", {"step": 3})
    path = run.root / "checkpoints" / "x.pt"
    (other.root / "checkpoints").mkdir(parents=True)
    (other.root / "checkpoints" / "x.pt").write_bytes(path.read_bytes())  # copied into another run's folder
    with pytest.warns(RuntimeWarning, match=rf"checkpoint .*x\.pt is unusable \(it is run {run.run_id}'s\); "
                                            "training starts over"):
        assert read_checkpoint(other, "x.pt") is None
    path.write_bytes(path.read_bytes()[:40])  # cut short, as by a full disk
    with pytest.warns(RuntimeWarning, match=r"checkpoint .*x\.pt is unusable \(.*\); training starts over"):
        assert read_checkpoint(run, "x.pt") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_checkpoint(run, "x.pt", {"step": 4})
        assert read_checkpoint(run, "x.pt") == {"step": 4}
