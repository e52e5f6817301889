"""An interrupt stops every shard at its next step: Python delivers Ctrl-C (and Prefect its SIGTERM) to the main thread
only, so `run_shards` passes it on to the step loops of the shards in its worker threads (core.stopping)."""
import threading

import numpy as np
import pytest
import torch

from core.config import RuntimeConfig
from core.sequence.config import OptimConfig
from core.sequence.transformer import Seq2Seq, train_seq2seq
from core.stopping import Stopped, check_stop, clear_stop, request_stop
from core.training.config import TrainConfig
from core.training.ensemble import Ensemble
from core.training.hooks import TrainingHooks
from core.training.trainer import train
from reference import toy_data
from test_transformer import TINY, random_sequences


@pytest.fixture
def stop_cleared():
    """No stop request before or after the test."""
    clear_stop()
    yield
    clear_stop()


def test_a_stop_request_raises_until_cleared(stop_cleared):
    check_stop()
    request_stop()
    with pytest.raises(Stopped, match="^the run was interrupted: this shard stopped at its next step$"):
        check_stop()
    assert issubclass(Stopped, KeyboardInterrupt)  # the shard ends as an interrupted run does, not as a failing one
    clear_stop()
    check_stop()


def test_the_transformer_stops_at_the_step_after_the_request(stop_cleared):
    rng = np.random.default_rng(0)
    data = random_sequences(rng, 8 * 10)
    steps = []

    def on_step(step: int, loss: float) -> None:
        steps.append(step)
        if step == 2:
            request_stop()

    with pytest.raises(Stopped):
        train_seq2seq(Seq2Seq(16, TINY, max_length=16), lambda s: (data[8 * s:8 * s + 8], data[8 * s:8 * s + 8]),
                      OptimConfig(steps=10, batch_size=8), on_step=on_step)
    assert steps == [0, 1, 2]


def test_the_stacked_trainer_stops_at_the_step_after_the_request(stop_cleared):
    toy = toy_data(240, 5)
    taken = []

    def step(takes: torch.Tensor) -> None:
        taken.append(int(takes.sum()))
        if len(taken) == 3:
            request_stop()

    ensemble = Ensemble.init("mlp_w16_d2", toy["seq"].shape[1:], 5, [1, 2, 3])
    with pytest.raises(Stopped):
        train(ensemble, toy["seq"], toy["y"], toy["subsets"], [4, 5, 6], TrainConfig(epochs=3, batch_size=32, lr=0.1),
              hooks=TrainingHooks(step=step))
    assert len(taken) == 3  # of 18 steps


def test_an_interrupt_of_the_main_thread_stops_the_shards_in_the_worker_threads(prefect_harness, monkeypatch,
                                                                               stop_cleared):
    """Ctrl-C lands while the main thread waits for the shards (here: raised where it waits, once both run); each
    shard then stops at its next step. Without the hand-over they would run to their end: 30 s here, an hour for a
    LIME pretraining."""
    from prefect import flow, task

    import flows.runner

    running, ended = threading.Barrier(3), []

    @task
    def shard(i: int) -> None:
        running.wait(timeout=60)
        try:
            for _ in range(3000):
                check_stop()
                threading.Event().wait(0.01)
        except Stopped:
            ended.append(f"shard {i} stopped")
            raise
        ended.append(f"shard {i} ran to its end")

    def interrupted_while_waiting(futures):
        running.wait(timeout=60)
        raise KeyboardInterrupt

    monkeypatch.setattr(flows.runner, "as_completed", interrupted_while_waiting)

    @flow
    def two_shards() -> list:
        return flows.runner.run_shards(shard, [{"i": 0}, {"i": 1}], RuntimeConfig(max_workers=2), "shards")

    with pytest.raises(KeyboardInterrupt):
        two_shards()
    assert sorted(ended) == ["shard 0 stopped", "shard 1 stopped"]
    check_stop()  # withdrawn once they ended: later training in this process (a notebook's next cell) runs in full

