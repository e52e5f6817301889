"""A small encoder-decoder transformer (torch.nn.Transformer, pre-LN) over token ids, its training loop with
teacher forcing, and batched greedy decoding (with a key-value cache) with exact match.

Sequences arrive without BOS/EOS (as the generators write them): the collator pads sources with PAD, feeds the
decoder BOS + target and asks it for target + EOS. A decoded sequence is exactly right when its tokens up to the
first EOS equal the target.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.sequence.config import MAX_LENGTH, OptimConfig, TransformerConfig
from core.sequence.lime import BOS, EOS, PAD
from core.stopping import check_stop


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

    def embed(self, tokens: Tensor, start: int = 0) -> Tensor:
        """Scaled token embeddings plus positions `start` onward, `[B, L, d_model]`."""
        end = start + tokens.shape[1]
        if end > len(self.positions):
            raise ValueError(f"a sequence of {end} tokens is longer than this model's {len(self.positions)}")
        return self.embedding(tokens) * math.sqrt(self.config.d_model) + self.positions[start:end]

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

    def start_decoding(self, memory: Tensor, source: Tensor, capacity: int) -> DecoderCache:
        """An empty cache for up to `capacity` decoder inputs, with every layer's cross-attention keys and values of
        `memory` computed once."""
        if self.training:  # the incremental path has no dropout: it matches `decode` in eval mode only
            raise RuntimeError("incremental decoding needs the model in eval mode (see `evaluating`)")
        layers, capacity = self.transformer.decoder.layers, min(capacity, len(self.positions))
        shape = (len(source), self.config.heads, capacity, self.config.d_model // self.config.heads)
        memory_keys, memory_values = zip(*(_memory_keys_values(layer, memory) for layer in layers))
        return DecoderCache(self_keys=[memory.new_empty(shape) for _ in layers],
                            self_values=[memory.new_empty(shape) for _ in layers],
                            memory_keys=list(memory_keys), memory_values=list(memory_values),
                            prefix_visible=torch.ones(len(source), 1, 1, capacity, dtype=torch.bool,
                                                      device=memory.device),
                            memory_visible=(source != PAD)[:, None, None, :])  # decode's memory_key_padding_mask

    def decode_next(self, cache: DecoderCache, token: Tensor) -> Tensor:
        """The logits `[B, vocab]` after the next decoder input `token` `[B]`: `decode`'s last position, computing only
        that position from the cached ones."""
        position = cache.length
        x = self.embed(token[:, None], position)  # past the position table: the same refusal as `decode`
        if position >= cache.capacity:
            raise ValueError(f"this cache holds {cache.capacity} decoder inputs, all taken")
        cache.prefix_visible[:, 0, 0, position] = token != PAD  # decode's tgt_key_padding_mask
        for index, layer in enumerate(self.transformer.decoder.layers):
            x = _decoder_layer_step(layer, x, cache, index)
        cache.length += 1
        norm = self.transformer.decoder.norm
        return (x if norm is None else norm(x))[:, 0] @ self.embedding.weight.T


@dataclass
class DecoderCache:
    """What incremental decoding keeps, per decoder layer: the self-attention keys and values of the decoder inputs
    so far (room for `capacity`, filled up to `length`) and the cross-attention keys and values of the encoder's memory,
    each `[B, heads, positions, head_dim]`; and which keys may be attended to (True: not PAD)."""

    self_keys: list[Tensor]
    self_values: list[Tensor]
    memory_keys: list[Tensor]
    memory_values: list[Tensor]
    prefix_visible: Tensor  # [B, 1, 1, capacity]
    memory_visible: Tensor  # [B, 1, 1, S]
    length: int = 0

    @property
    def capacity(self) -> int:
        """The most decoder inputs this cache holds."""
        return self.prefix_visible.shape[-1]


def _heads(x: Tensor, heads: int, parts: int = 2) -> list[Tensor]:
    """`[B, L, parts * d]` split into `parts` tensors `[B, heads, L, d / heads]`."""
    return [part.unflatten(-1, (heads, -1)).transpose(1, 2) for part in x.chunk(parts, -1)]


def _memory_keys_values(layer: nn.TransformerDecoderLayer, memory: Tensor) -> list[Tensor]:
    """A decoder layer's cross-attention keys and values of the encoder's memory, `[B, heads, S, head_dim]` each."""
    attention, width = layer.multihead_attn, memory.shape[-1]
    projected = F.linear(memory, attention.in_proj_weight[width:], attention.in_proj_bias[width:])
    return [part.contiguous() for part in _heads(projected, attention.num_heads)]  # contiguous: read at every step


def _attend(attention: nn.MultiheadAttention, query: Tensor, keys: Tensor, values: Tensor, visible: Tensor) -> Tensor:
    """Multi-head attention's output `[B, 1, d]` for projected heads, `attention`'s output projection applied."""
    heads = F.scaled_dot_product_attention(query, keys, values, attn_mask=visible)
    return attention.out_proj(heads.transpose(1, 2).flatten(2))


def _self_attend(layer: nn.TransformerDecoderLayer, x: Tensor, cache: DecoderCache, index: int) -> Tensor:
    """Self-attention of the newest position to itself and the cached ones (all earlier: no causal mask needed)."""
    attention, position = layer.self_attn, cache.length
    query, key, value = _heads(F.linear(x, attention.in_proj_weight, attention.in_proj_bias), attention.num_heads, 3)
    cache.self_keys[index][:, :, position] = key[:, :, 0]
    cache.self_values[index][:, :, position] = value[:, :, 0]
    seen = slice(0, position + 1)
    return _attend(attention, query, cache.self_keys[index][:, :, seen], cache.self_values[index][:, :, seen],
                   cache.prefix_visible[..., seen])


def _cross_attend(layer: nn.TransformerDecoderLayer, x: Tensor, cache: DecoderCache, index: int) -> Tensor:
    """Attention of the newest position to the encoder's memory, through its cached keys and values."""
    attention, width = layer.multihead_attn, x.shape[-1]
    query, = _heads(F.linear(x, attention.in_proj_weight[:width], attention.in_proj_bias[:width]),
                    attention.num_heads, 1)
    return _attend(attention, query, cache.memory_keys[index], cache.memory_values[index], cache.memory_visible)


def _decoder_layer_step(layer: nn.TransformerDecoderLayer, x: Tensor, cache: DecoderCache, index: int) -> Tensor:
    """nn.TransformerDecoderLayer.forward (eval mode) on the newest position `[B, 1, d]` only, in its order: each
    block with its norm before (norm_first) or after the residual sum."""
    blocks = (lambda h: _self_attend(layer, h, cache, index), lambda h: _cross_attend(layer, h, cache, index),
              lambda h: layer.linear2(layer.activation(layer.linear1(h))))
    for block, norm in zip(blocks, (layer.norm1, layer.norm2, layer.norm3)):
        x = x + block(norm(x)) if layer.norm_first else norm(x + block(x))
    return x


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


def adamw(model: Seq2Seq, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the model's parameters, with weight decay on its matrices only (not on biases and norms)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=config.lr)


def train_seq2seq(model: Seq2Seq, batches: Batches, config: OptimConfig, on_step: Callable[[int, float], None]
                  | None = None, progress: Callable[[int], None] | None = None,
                  optimizer: torch.optim.Optimizer | None = None, start: int = 0) -> list[float]:
    """Train with AdamW on `batches(step)` for steps `start` .. `config.steps` - 1; returns the loss of each.
    `on_step(step, loss)` runs after each update (evaluation, logging) and `progress(steps_done)` moves a bar.
    `optimizer`: one of `adamw`'s, e.g. holding a checkpoint's state to go on from update `start` (default: new)."""
    device = next(model.parameters()).device
    optimizer = optimizer or adamw(model, config)
    losses = []
    model.train()
    for step in range(start, config.steps):
        check_stop()
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


def greedy_decode(model: Seq2Seq, sources: Sequence[np.ndarray], max_new: int, batch_size: int = 256,
                  cache: bool = True) -> list[np.ndarray]:
    """Each source's greedy continuation after BOS up to (not including) its first EOS, at most `max_new` tokens;
    sources are decoded `batch_size` at a time, each stopping on its own EOS. `cache`: through the key-value cache
    (`decode_next`), else rerunning the decoder on the whole prefix for every token (the same tokens, slower)."""
    device, decoded = next(model.parameters()).device, []
    for first in range(0, len(sources), batch_size):
        with evaluating(model):
            decoded += _greedy_batch(model, pad(sources[first:first + batch_size]).to(device), max_new, cache)
    return decoded


def _next_logits(model: Seq2Seq, source: Tensor, max_new: int, cache: bool) -> Callable[[Tensor], Tensor]:
    """The function from the decoder inputs so far `[B, t]` to the next token's logits `[B, vocab]`; the cached one
    must see every prefix in turn, as it feeds only the newest token."""
    memory = model.encode(source)
    if not cache:
        return lambda tokens: model.decode(memory, source, tokens)[:, -1]
    state = model.start_decoding(memory, source, max_new)
    return lambda tokens: model.decode_next(state, tokens[:, -1])


def _greedy_batch(model: Seq2Seq, source: Tensor, max_new: int, cache: bool = True) -> list[np.ndarray]:
    """`greedy_decode` of one padded batch `[B, S]`."""
    next_logits = _next_logits(model, source, max_new, cache)
    tokens = torch.full((len(source), 1), BOS, dtype=torch.long, device=source.device)
    done = torch.zeros(len(source), dtype=torch.bool, device=source.device)
    for _ in range(max_new):
        step = next_logits(tokens).argmax(-1)
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
