"""A small encoder-decoder transformer (torch.nn.Transformer, pre-LN) over token ids, its training loop with
teacher forcing, and batched greedy decoding with exact match.

Sequences arrive without BOS/EOS (as the generators write them): the collator pads sources with PAD, feeds the
decoder BOS + target and asks it for target + EOS. A decoded sequence is exactly right when its tokens up to the
first EOS equal the target.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.sequence.config import MAX_LENGTH, OptimConfig, TransformerConfig
from core.sequence.lime import BOS, EOS, PAD


def sinusoids(length: int, width: int) -> Tensor:
    """The fixed sinusoidal position encodings of Vaswani et al., `[length, width]`."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * frequency), torch.cos(position * frequency[: width // 2])
    return table


class Seq2Seq(nn.Module):
    """Token embedding (tied with the output layer) + sinusoidal positions -> nn.Transformer -> logits."""

    def __init__(self, vocab: int, config: TransformerConfig = TransformerConfig(), max_length: int = MAX_LENGTH):
        super().__init__()
        self.config, self.vocab = config, vocab
        self.embedding = nn.Embedding(vocab, config.d_model, padding_idx=PAD)
        nn.init.normal_(self.embedding.weight, std=config.d_model ** -0.5)
        self.register_buffer("positions", sinusoids(max_length, config.d_model), persistent=False)

        def layers(kind: type, count: int) -> list[nn.Module]:
            """`count` pre-LN blocks of `kind` (TransformerEncoderLayer or TransformerDecoderLayer)."""
            return [kind(config.d_model, config.heads, config.feedforward, config.dropout, batch_first=True,
                         norm_first=True) for _ in range(count)]

        encoder = nn.TransformerEncoder(layers(nn.TransformerEncoderLayer, 1)[0], config.encoder_layers,
                                        nn.LayerNorm(config.d_model), enable_nested_tensor=False)  # pre-LN: no
        # nested tensors anyway, and padded rows then compute like the rest (batched decoding = one by one)
        self.transformer = nn.Transformer(config.d_model, config.heads, config.encoder_layers, config.decoder_layers,
                                          config.feedforward, config.dropout, batch_first=True, norm_first=True,
                                          custom_encoder=encoder)

    def embed(self, tokens: Tensor) -> Tensor:
        """Scaled token embeddings plus positions, `[B, L, d_model]`."""
        if tokens.shape[1] > len(self.positions):
            raise ValueError(f"a sequence of {tokens.shape[1]} tokens is longer than this model's "
                             f"{len(self.positions)}")
        return self.embedding(tokens) * math.sqrt(self.config.d_model) + self.positions[: tokens.shape[1]]

    def encode(self, source: Tensor) -> Tensor:
        """The encoder's memory of `source` `[B, S]` (PAD-padded)."""
        return self.transformer.encoder(self.embed(source), src_key_padding_mask=source == PAD)

    def decode(self, memory: Tensor, source: Tensor, target_in: Tensor) -> Tensor:
        """Next-token logits `[B, T, vocab]` for the decoder input `target_in` (BOS + target so far)."""
        length = target_in.shape[1]  # boolean like the padding masks (True: may not attend)
        causal = torch.ones(length, length, dtype=torch.bool, device=target_in.device).triu(1)
        hidden = self.transformer.decoder(self.embed(target_in), memory, tgt_mask=causal, tgt_is_causal=True,
                                          tgt_key_padding_mask=target_in == PAD, memory_key_padding_mask=source == PAD)
        return hidden @ self.embedding.weight.T

    def forward(self, source: Tensor, target_in: Tensor) -> Tensor:
        """Teacher-forced logits `[B, T, vocab]`."""
        return self.decode(self.encode(source), source, target_in)


def pad(sequences: Sequence[np.ndarray], before: int | None = None, after: int | None = None) -> Tensor:
    """`[B, longest]` int64 tokens, PAD-padded; `before`/`after` tokens are added to every sequence first."""
    sequences = [[*([before] if before is not None else []), *np.asarray(s).tolist(),
                  *([after] if after is not None else [])] for s in sequences]
    batch = torch.full((len(sequences), max(map(len, sequences))), PAD, dtype=torch.long)
    for row, tokens in enumerate(sequences):
        batch[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return batch


def collate(sources: Sequence[np.ndarray], targets: Sequence[np.ndarray], device: torch.device | str = "cpu"
            ) -> tuple[Tensor, Tensor, Tensor]:
    """(source, decoder input BOS + target, labels target + EOS), each PAD-padded, on `device`."""
    return (pad(sources).to(device), pad(targets, before=BOS).to(device), pad(targets, after=EOS).to(device))


def sequence_loss(model: Seq2Seq, source: Tensor, target_in: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy per target token (PAD excluded)."""
    logits = model(source, target_in)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=PAD)


Batches = Callable[[int], tuple[Sequence[np.ndarray], Sequence[np.ndarray]]]  # step -> (sources, targets)


def train_seq2seq(model: Seq2Seq, batches: Batches, config: OptimConfig, on_step: Callable[[int, float], None]
                  | None = None, progress: Callable[[int], None] | None = None) -> list[float]:
    """Train with AdamW on `batches(step)` for `config.steps` steps; returns the loss of every step.
    `on_step(step, loss)` runs after each update (evaluation, logging) and `progress(steps_done)` moves a bar."""
    device = next(model.parameters()).device
    decay = [p for p in model.parameters() if p.dim() >= 2]  # no weight decay on biases and norms
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=config.lr)
    losses = []
    model.train()
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        loss = sequence_loss(model, *collate(*batches(step), device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip:
            nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
        if progress is not None:
            progress(step + 1)
    return losses


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """`model` in eval mode, without gradients, inside; given back in the mode it was found in."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def greedy_decode(model: Seq2Seq, sources: Sequence[np.ndarray], max_new: int, batch_size: int = 256
                  ) -> list[np.ndarray]:
    """Each source's greedy continuation after BOS up to (not including) its first EOS, at most `max_new` tokens;
    sources are decoded `batch_size` at a time, each stopping on its own EOS."""
    device, decoded = next(model.parameters()).device, []
    for first in range(0, len(sources), batch_size):
        with evaluating(model):
            decoded += _greedy_batch(model, pad(sources[first:first + batch_size]).to(device), max_new)
    return decoded


def _greedy_batch(model: Seq2Seq, source: Tensor, max_new: int) -> list[np.ndarray]:
    """`greedy_decode` of one padded batch `[B, S]`."""
    memory, tokens = model.encode(source), torch.full((len(source), 1), BOS, dtype=torch.long, device=source.device)
    done = torch.zeros(len(source), dtype=torch.bool, device=source.device)
    for _ in range(max_new):
        step = model.decode(memory, source, tokens)[:, -1].argmax(-1)
        tokens = torch.cat([tokens, torch.where(done, EOS, step)[:, None]], 1)  # a finished row repeats EOS
        done |= step == EOS
        if done.all():
            break
    decoded = []
    for row in tokens[:, 1:].cpu().numpy():
        stop = np.flatnonzero(row == EOS)  # none: all max_new tokens, longer than any target it could match
        decoded.append(row[: stop[0] if len(stop) else len(row)].astype(np.int32))
    return decoded


def token_accuracy(model: Seq2Seq, sources: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                   batch_size: int = 256) -> float:
    """The fraction of target tokens (EOS included) that the model's most likely next token gets right when fed the
    true prefix (teacher forcing): progress that exact match, all or nothing per sequence, does not show."""
    device, right, total = next(model.parameters()).device, 0, 0
    for first in range(0, len(sources), batch_size):
        source, target_in, labels = collate(sources[first:first + batch_size], targets[first:first + batch_size],
                                            device)
        counted = labels != PAD
        with evaluating(model):
            right += int(((model(source, target_in).argmax(-1) == labels) & counted).sum())
        total += int(counted.sum())
    return right / total


def exact_match(model: Seq2Seq, sources: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                batch_size: int = 256) -> np.ndarray:
    """Per example, whether greedy decoding gives its target and then EOS."""
    longest = max(len(t) for t in targets)
    decoded = greedy_decode(model, sources, longest + 1, batch_size)  # a row without EOS comes out longer
    return np.array([len(d) == len(t) and bool((d == t).all()) for d, t in zip(decoded, targets)])
