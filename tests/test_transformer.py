"""The sequence model: collation, the learning-rate schedule, a copy task learnt to exact match, batched greedy
decoding against one-by-one decoding, the key-value cache against the full-prefix decoder, and exact match's
definition on hand-made decodings."""
import math

import numpy as np
import pytest
import torch

from core.models.networks import seeded_init
from core.sequence.config import OptimConfig, TransformerConfig
from core.sequence.lime import BOS, EOS, PAD
from core.sequence.transformer import (Seq2Seq, collate, evaluating, exact_match, greedy_decode, pad, sinusoids,
                                       token_accuracy, train_seq2seq)

TINY = TransformerConfig(d_model=32, heads=2, encoder_layers=1, decoder_layers=1, feedforward=64)
WIDER = TransformerConfig(d_model=32, heads=4, encoder_layers=1, decoder_layers=2, feedforward=64, dropout=0.1)


def random_sequences(rng: np.random.Generator, count: int, low: int = 7, high: int = 15) -> list[np.ndarray]:
    """`count` sequences of 3..6 tokens drawn from low..high-1."""
    return [rng.integers(low, high, rng.integers(3, 7)).astype(np.int32) for _ in range(count)]


def test_collate_adds_bos_and_eos_and_pads():
    source, target_in, labels = collate([np.array([9, 8, 7]), np.array([10])], [np.array([11]), np.array([12, 13])])
    assert source.tolist() == [[9, 8, 7], [10, PAD, PAD]]
    assert target_in.tolist() == [[BOS, 11, PAD], [BOS, 12, 13]]
    assert labels.tolist() == [[11, EOS, PAD], [12, 13, EOS]]
    assert pad([np.array([5])], before=BOS, after=EOS).tolist() == [[BOS, 5, EOS]]


def test_schedule_warms_up_then_decays_to_its_floor():
    optim = OptimConfig(steps=11, lr=1.0, warmup=2, final_lr_fraction=0.1)
    assert [optim.lr_at(s) for s in (0, 1, 2)] == pytest.approx([0.5, 1.0, 1.0])
    assert optim.lr_at(10) == pytest.approx(0.1)  # the last step
    assert optim.lr_at(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))


def test_position_table_is_the_sinusoids():
    table = sinusoids(5, 4)
    assert table[3].tolist() == pytest.approx([math.sin(3), math.cos(3), math.sin(3 / 100), math.cos(3 / 100)],
                                              abs=1e-6)


def test_config_refuses_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError, match="d_model 30 must be a multiple of heads 4"):
        TransformerConfig(d_model=30, heads=4)


def test_a_sequence_longer_than_the_position_table_is_refused():
    model = Seq2Seq(20, TINY, max_length=4)
    with pytest.raises(ValueError, match="a sequence of 5 tokens is longer than this model's 4"):
        model(torch.full((1, 5), 9), torch.full((1, 2), 9))


@pytest.fixture(scope="module")
def copier():
    """A tiny transformer trained to copy sequences of 3..6 tokens (8 symbols)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = Seq2Seq(16, TINY, max_length=16)
    data = random_sequences(rng, 64 * 300)
    losses = train_seq2seq(model, lambda s: (data[64 * s:64 * s + 64], data[64 * s:64 * s + 64]),
                           OptimConfig(steps=300, batch_size=64, lr=3e-3, warmup=30))
    return model, losses


def test_the_transformer_learns_to_copy_to_exact_match(copier):
    model, losses = copier
    fresh = random_sequences(np.random.default_rng(1), 200)
    assert np.mean(losses[:10]) > 2.0 and np.mean(losses[-10:]) < 0.05
    assert exact_match(model, fresh, fresh).mean() >= 0.99
    reversed_ = [s[::-1].copy() for s in fresh]  # a task it never saw: copying is not what any output matches
    assert exact_match(model, fresh, reversed_).mean() < 0.2


def test_batched_greedy_decoding_equals_one_by_one(copier):
    model, _ = copier
    sources = random_sequences(np.random.default_rng(2), 40)
    batched = greedy_decode(model, sources, max_new=8, batch_size=16)
    alone = [greedy_decode(model, [s], max_new=8)[0] for s in sources]
    assert [b.tolist() for b in batched] == [a.tolist() for a in alone]
    assert model.training  # decoding gives the model back in the (training) mode it found it in


def scrambled(seed: int, config: TransformerConfig = WIDER, vocab: int = 12) -> Seq2Seq:
    """A random network with weights wider than the initialisation's, whose greedy outputs (PAD, EOS at once,
    repeated symbols) vary from seed to seed."""
    torch.manual_seed(seed)
    model = Seq2Seq(vocab, config, max_length=64)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, p.shape[-1] ** -0.5 if p.dim() > 1 else 0.5)
    return model


def padded_batch(seed: int, count: int = 6) -> tuple[list[np.ndarray], torch.Tensor]:
    """`count` sources of 1..8 symbols (so padded to different lengths), and decoder inputs BOS + 9 tokens drawn from
    the whole vocabulary, PAD and EOS included."""
    rng = np.random.default_rng(seed)
    sources = [rng.integers(7, 12, rng.integers(1, 9)) for _ in range(count)]
    target_in = torch.tensor(rng.integers(0, 12, (count, 10)))
    target_in[:, 0] = BOS
    return sources, target_in


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cached_step_logits_are_the_full_prefix_decoders_last_position(seed, norm_first):
    model = scrambled(seed)
    for layer in model.transformer.decoder.layers:  # post-LN too: the cached step follows the layer's own order
        layer.norm_first = norm_first
    sources, target_in = padded_batch(seed)
    source = pad(sources)
    assert (source == PAD).any() and (target_in == PAD).any()
    with evaluating(model):  # dropout 0.1 is off in eval mode, in both paths
        memory = model.encode(source)
        cache = model.start_decoding(memory, source, target_in.shape[1])
        for length in range(1, target_in.shape[1] + 1):
            step = model.decode_next(cache, target_in[:, length - 1])
            full = model.decode(memory, source, target_in[:, :length])[:, -1]
            torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)


def test_cached_greedy_decoding_gives_the_full_prefix_decodings_tokens(copier):
    decodings = []
    for seed in range(6):  # random networks: PAD emitted mid-sequence, EOS at once, no EOS at all
        sources, _ = padded_batch(seed, 40)
        model = scrambled(seed)
        for max_new, batch_size in ((12, 16), (3, 40)):
            cached = greedy_decode(model, sources, max_new, batch_size)
            assert [c.tolist() for c in cached] == [f.tolist() for f in greedy_decode(model, sources, max_new,
                                                                                       batch_size, cache=False)]
            decodings += [(c, max_new) for c in cached]
    trained, _ = copier  # EOS after each source's own length, or cut by max_new before it
    sources = random_sequences(np.random.default_rng(3), 40)
    for max_new in (8, 4):
        cached = greedy_decode(trained, sources, max_new, batch_size=16)
        assert [c.tolist() for c in cached] == [f.tolist() for f in greedy_decode(trained, sources, max_new,
                                                                                   batch_size=16, cache=False)]
        decodings += [(c, max_new) for c in cached]
    lengths = {len(c) for c, max_new in decodings if len(c) < max_new}
    assert len(lengths) >= 3 and any(len(c) == max_new for c, max_new in decodings)  # stopped early, and not
    assert any((c == PAD).any() for c, _ in decodings)


def test_the_cache_refuses_positions_past_the_table_as_decode_does():
    model = Seq2Seq(16, TINY, max_length=4)
    source = torch.tensor([[9, 8]])
    with evaluating(model):
        cache = model.start_decoding(model.encode(source), source, 10)
        for _ in range(4):
            model.decode_next(cache, torch.tensor([BOS]))
        with pytest.raises(ValueError, match="a sequence of 5 tokens is longer than this model's 4"):
            model.decode_next(cache, torch.tensor([BOS]))
    with pytest.raises(RuntimeError, match="eval mode"):  # no dropout in the cached path: refused in training
        model.start_decoding(model.encode(source), source, 4)


def test_exact_match_needs_the_tokens_and_then_eos():
    """A model whose next token is fixed by the position: it says 9, 10, then EOS, whatever the source."""

    class Scripted(Seq2Seq):
        def decode(self, memory, source, target_in):
            script = torch.tensor([9, 10, EOS, EOS, EOS, EOS])
            logits = torch.zeros(*target_in.shape, self.vocab)
            logits[:, torch.arange(target_in.shape[1]), script[: target_in.shape[1]]] = 1.0
            return logits

        def decode_next(self, cache, token):  # the cached path's view of the same script
            cache.length += 1
            return self.decode(None, None, torch.zeros(len(token), cache.length, dtype=torch.long))[:, -1]

    model = Scripted(16, TINY)
    sources = [np.array([7, 8])] * 4
    targets = [np.array([9, 10]), np.array([9]), np.array([9, 10, 11]), np.array([10, 10])]
    assert exact_match(model, sources, targets).tolist() == [True, False, False, False]
    for cache in (True, False):  # cut at max_new, no EOS
        assert [d.tolist() for d in greedy_decode(model, sources[:1], max_new=1, cache=cache)] == [[9]]
    # teacher forcing: [9, 10] + EOS all right; [9] + EOS: 9 right, then 10 where EOS belongs; 4 of 5
    assert token_accuracy(model, sources[:2], targets[:2]) == pytest.approx(4 / 5)


def test_seeded_init_gives_the_same_network_whatever_the_global_state():
    with seeded_init(5):
        first = Seq2Seq(16, TINY)
    torch.rand(100)
    with seeded_init(5):
        second = Seq2Seq(16, TINY)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
