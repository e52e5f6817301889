"""Length bucketing of the pretraining batches (`core.sequence.transfer.bucketed`): the loss does not depend on
padding, and bucketing only regroups the same examples, with less padding, in a seeded order."""
import numpy as np
import pytest
import torch

from core.models.networks import seeded_init
from core.sequence.config import TransformerConfig
from core.sequence.lime import PAD, LimeConfig
from core.sequence.transfer import bucketed, lime_batches
from core.sequence.transformer import Seq2Seq, collate, sequence_loss

TINY = TransformerConfig(d_model=8, heads=2, encoder_layers=1, decoder_layers=1, feedforward=16)
VOCAB = 20
SMALL = LimeConfig(rule_symbols=8, lower_symbols=8, math_symbols=8)


def scripted(batch_size: int = 4):
    """Batches whose example i has source i, i, ... of length 1 + (7i mod 11) (distinct lengths, unsorted) and target
    i + 100 of length 1 + (3i mod 5); every token within the tiny model's vocabulary modulo VOCAB."""
    def batch(step: int):
        rows = range(step * batch_size, (step + 1) * batch_size)
        return ([np.full(1 + 7 * i % 11, i) for i in rows], [np.full(1 + 3 * i % 5, i + 100) for i in rows])
    return batch


def in_vocab(sources, targets):
    """The scripted examples' tokens mapped into the tiny model's vocabulary, clear of the special tokens."""
    return [3 + s % (VOCAB - 3) for s in sources], [3 + t % (VOCAB - 3) for t in targets]


def tiny_model() -> Seq2Seq:
    with seeded_init(0):
        return Seq2Seq(VOCAB, TINY)


def padding(sources) -> int:
    """PAD tokens of one batch padded to its longest sequence."""
    return len(sources) * max(map(len, sources)) - sum(map(len, sources))


def test_the_loss_does_not_depend_on_padding():
    model = tiny_model()
    source, target_in, labels = collate(*in_vocab(*scripted()(0)))
    longer = [torch.nn.functional.pad(t, (0, 6), value=PAD) for t in (source, target_in, labels)]
    assert longer[0].shape[1] == source.shape[1] + 6
    assert sequence_loss(model, *longer).item() == pytest.approx(sequence_loss(model, source, target_in, labels).item(),
                                                                 abs=1e-6)


def test_bucketed_batches_give_the_same_loss_per_token_over_a_group():
    model, k = tiny_model(), 4
    totals = []
    for batches in (scripted(), bucketed(scripted(), k, seed=3)):
        total = 0.0
        for step in range(k):
            source, target_in, labels = collate(*in_vocab(*batches(step)))
            total += sequence_loss(model, source, target_in, labels).item() * (labels != PAD).sum().item()
        totals.append(total)
    assert totals[1] == pytest.approx(totals[0], rel=1e-6)


@pytest.mark.parametrize("k", [2, 4, 5])
def test_bucketing_uses_every_example_once_per_group_with_less_padding(k):
    plain, buckets = scripted(), bucketed(scripted(), k, seed=11)
    for group in range(3):
        steps = range(group * k, (group + 1) * k)
        drawn = [buckets(step) for step in steps]
        ids = sorted(int(s[0]) for sources, _ in drawn for s in sources)
        assert ids == list(range(group * k * 4, (group + 1) * k * 4))  # each example of the group once
        assert all(len(sources) == 4 for sources, _ in drawn)
        for sources, targets in drawn:  # still paired
            assert [int(t[0]) for t in targets] == [int(s[0]) + 100 for s in sources]
        assert sum(padding(s) for s, _ in drawn) <= sum(padding(plain(step)[0]) for step in steps)


def test_bucketing_cuts_lime_padding():
    k, plain = 8, lime_batches("mixed", 0, 16, SMALL)
    buckets = bucketed(plain, k, seed=0)
    before = sum(padding(plain(step)[0]) for step in range(2 * k))
    after = sum(padding(buckets(step)[0]) for step in range(2 * k))
    assert after < 0.5 * before


def test_bucketing_is_seeded():
    k = 4
    first = [bucketed(scripted(), k, seed=5)(step) for step in range(2 * k)]
    again = [bucketed(scripted(), k, seed=5)(step) for step in range(2 * k)]
    other = [bucketed(scripted(), k, seed=6)(step) for step in range(2 * k)]

    def ids(batches):
        return [[int(s[0]) for s in sources] for sources, _ in batches]

    assert ids(first) == ids(again)
    assert ids(first) != ids(other)  # another order of the same batches
    assert sorted(ids(first)[:k]) == sorted(ids(other)[:k])
    for k in (0, 1):  # no bucketing
        assert [b.tolist() for b in bucketed(scripted(), k, seed=5)(2)[0]] == [b.tolist() for b in scripted()(2)[0]]
