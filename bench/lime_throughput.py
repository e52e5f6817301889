"""Training throughput of the `lime_pretrain` flow's default network on its default pretraining data (LIME Mixed,
batches of 32): today's batches, each padded to its longest sequence, against length-bucketed batches
(`pretrain.bucket_batches`: the examples of k steps sorted by source length, cut into k batches), in real (non-PAD)
and padded tokens per second, the share of padding, and the model's FLOPs per second as a fraction of a same-process
fp32 matmul rate.

Tokens: a sequence's source tokens and its decoder positions (BOS + target in, target + EOS out). FLOPs of one
training step (`train_seq2seq`: forward, backward, AdamW), counted as 6 x the multiply-adds of the matmuls (2 FLOPs
each, forward plus the two backward products), for a sequence with S encoder positions and T decoder positions, width
d, feedforward f, L_e encoder and L_d decoder layers and vocabulary V (the output layer is the tied embedding):

    dense, per encoder position:  6 x (L_e (4 d^2 + 2 d f) + L_d 2 d^2)   (self-attention q, k, v, out; the MLP; each
                                                                          decoder layer's cross-attention k, v of it)
    dense, per decoder position:  6 x (L_d (6 d^2 + 2 d f) + d V)         (self-attention q, k, v, out; cross-attention
                                                                          q, out; the MLP; the logits)
    attention, per encoder position: 12 x L_e x d x S                     (q k^T and the weighted sum of S values)
    attention, per decoder position: 12 x L_d x d x (T + S)               (self-attention over all T, counted in full
                                                                          under the causal mask; cross over S)

The dense terms are ~6 x the parameters a position passes through (biases, norms and the embedding lookup left out).
"Executed" FLOPs count the padded shapes (what the hardware does); "useful" FLOPs count each sequence at its own S and
T (what a pad-free kernel would need). Both per second are reported as fractions of the best fp32 2048 x 2048 matmul
rate measured in this process (probes before and after). torch.utils.flop_counter checks the dense terms on one step
(it counts no FLOPs for the CPU's fused attention kernel).

Run: .venv/bin/python -m bench.lime_throughput [--quick] [--threads N]   (from the repository root)
Prints readable lines, then one JSON object on its last line. See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform

from core.runtime import set_wait_policy

set_wait_policy()  # before torch loads libgomp, as the `regularity` CLI does: spinning threads on shared cores

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.trainer import interleaved_seconds, matmul_gflops  # noqa: E402
from core.models.networks import seeded_init  # noqa: E402
from core.sequence.config import TransformerConfig  # noqa: E402
from core.sequence.transfer import bucketed, lime_batches  # noqa: E402
from core.sequence.transformer import Seq2Seq, collate, sequence_loss, train_seq2seq  # noqa: E402
from flows.lime_pretrain import LimePretrainFlowConfig  # noqa: E402

# ---- knobs ---------------------------------------------------------------------------------
FLOW = LimePretrainFlowConfig()  # the flow's defaults: network (d_model 64, 2 + 2 layers), LIME Mixed, batch 32
BUCKETS = [0, 8, 32]  # k of pretrain.bucket_batches: 0 = today's batches
STEPS = 64  # training steps per timed run, a multiple of every k (--quick: 32)
REPEATS = 3  # timed runs of each side, interleaved, after one warm-up each; medians reported (--quick: 1)
THREADS = len(os.sched_getaffinity(0))  # torch intra-op threads (the usable cores)
SEED = 0
# ---------------------------------------------------------------------------------------------


def training_flops(config: TransformerConfig, vocab: int, s: np.ndarray, t: np.ndarray, attention: bool = True
                   ) -> float:
    """FLOPs of one training step on sequences of `s` encoder and `t` decoder positions (the module docstring);
    `attention=False`: the dense terms only."""
    d, f, le, ld = config.d_model, config.feedforward, config.encoder_layers, config.decoder_layers
    s, t = np.asarray(s, float), np.asarray(t, float)
    dense = s * 6 * (le * (4 * d * d + 2 * d * f) + ld * 2 * d * d) + t * 6 * (ld * (6 * d * d + 2 * d * f) + d * vocab)
    scores = s * 12 * le * d * s + t * 12 * ld * d * (t + s)
    return float(np.sum(dense + (scores if attention else 0)))


def batch_figures(batches: list[tuple], vocab: int) -> dict:
    """Tokens, padding and FLOPs (executed on the padded shapes, useful at each sequence's own lengths) of `batches`."""
    figures = dict.fromkeys(["real_tokens", "padded_tokens", "source_pad", "decoder_pad", "executed_flops",
                             "useful_flops"], 0.0)
    for sources, targets in batches:
        s, t = np.array([len(x) for x in sources]), np.array([len(x) + 1 for x in targets])  # + BOS (or EOS)
        n, longest_s, longest_t = len(s), s.max(), t.max()
        figures["real_tokens"] += s.sum() + t.sum()
        figures["padded_tokens"] += n * (longest_s + longest_t)
        figures["source_pad"] += n * longest_s - s.sum()
        figures["decoder_pad"] += n * longest_t - t.sum()
        figures["executed_flops"] += training_flops(FLOW.transformer, vocab, np.full(n, longest_s),
                                                    np.full(n, longest_t))
        figures["useful_flops"] += training_flops(FLOW.transformer, vocab, s, t)
    return figures


def counted_flops(model: Seq2Seq, batch: tuple) -> float | None:
    """torch.utils.flop_counter's FLOPs of one forward and backward on `batch` (None where it cannot count)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as counter:
            sequence_loss(model, *collate(*batch)).backward()
        model.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())
    except Exception as err:  # an older torch, or an op it has no formula for: say so, go on
        print(f"flop counter failed: {type(err).__name__}: {str(err)[:200]}")
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 steps, one repeat (smoke run)")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps, repeats = (32, 1) if args.quick else (STEPS, REPEATS)
    lime, optim = FLOW.lime.to_core(), FLOW.pretrain.optim.model_copy(update={"steps": steps})
    vocab = lime.total_vocab
    drawn = lime_batches("mixed", SEED, optim.batch_size, lime)
    data = {k: [bucketed(drawn, k, SEED)(step) for step in range(steps)] for k in BUCKETS}

    def train(k: int) -> None:
        """`steps` steps of the flow's pretraining (AdamW, its schedule) of a fresh network on side k's batches."""
        with seeded_init(SEED):
            model = Seq2Seq(vocab, FLOW.transformer)
        train_seq2seq(model, lambda step: data[k][step], optim)

    with seeded_init(SEED):
        check_model = Seq2Seq(vocab, FLOW.transformer)
    counted = counted_flops(check_model, data[0][0])
    formula = batch_figures(data[0][:1], vocab)["executed_flops"]
    sources, targets = data[0][0]
    longest = np.full(len(sources), max(map(len, sources))), np.full(len(sources), max(map(len, targets)) + 1)
    dense = training_flops(FLOW.transformer, vocab, *longest, attention=False)
    load_average, probes = [os.getloadavg()[0]], [matmul_gflops()]
    seconds = interleaved_seconds({k: (lambda k=k: train(k)) for k in BUCKETS}, repeats)
    probes.append(matmul_gflops())
    load_average.append(os.getloadavg()[0])
    peak = max(probes)
    rows = []
    for k in BUCKETS:
        figures, time = batch_figures(data[k], vocab), seconds[k]
        rows.append({
            "bucket_batches": k, "steps": steps, "seconds": round(time, 3),
            "real_tokens_per_s": round(figures["real_tokens"] / time),
            "padded_tokens_per_s": round(figures["padded_tokens"] / time),
            "pad_fraction": round(1 - figures["real_tokens"] / figures["padded_tokens"], 3),
            "source_pad_fraction": round(figures["source_pad"] / figures["padded_tokens"], 3),
            "decoder_pad_fraction": round(figures["decoder_pad"] / figures["padded_tokens"], 3),
            "useful_gflops": round(figures["useful_flops"] / time / 1e9, 3),
            "executed_gflops": round(figures["executed_flops"] / time / 1e9, 3),
            "useful_fraction_of_matmul": round(figures["useful_flops"] / time / 1e9 / peak, 4),
            "executed_fraction_of_matmul": round(figures["executed_flops"] / time / 1e9 / peak, 4),
            "useful_flops_per_real_token": round(figures["useful_flops"] / figures["real_tokens"]),
        })
    base = rows[0]
    for row in rows:
        row["speedup_real_tokens"] = round(row["real_tokens_per_s"] / base["real_tokens_per_s"], 2)
        name = "today's batches" if not row["bucket_batches"] else f"bucketed, k = {row['bucket_batches']}"
        print(f"{name:17s} {row['real_tokens_per_s']:8,d} real tokens/s ({row['speedup_real_tokens']:.2f}x), "
              f"{row['padded_tokens_per_s']:8,d} padded tokens/s; padding {row['pad_fraction']:.1%} of tokens "
              f"(source {row['source_pad_fraction']:.1%}, decoder {row['decoder_pad_fraction']:.1%}); "
              f"{row['useful_gflops']:.2f} useful / {row['executed_gflops']:.2f} executed GFLOP/s = "
              f"{row['useful_fraction_of_matmul']:.1%} / {row['executed_fraction_of_matmul']:.1%} of the matmul rate")
    print(f"FLOPs per real token (useful): {base['useful_flops_per_real_token']:,d}; one step's forward + backward: "
          f"formula {formula / 1e9:.3f} GFLOP, of which dense {dense / 1e9:.3f}; torch's flop counter "
          f"{'n/a' if counted is None else f'{counted / 1e9:.3f} GFLOP'} (it has no formula for the CPU attention "
          "kernel: compare with the dense part)")
    print(f"matmul {peak:.1f} GFLOP/s, {torch.get_num_threads()} threads, 1-minute load average "
          f"{load_average[0]:.2f} before and {load_average[1]:.2f} after")
    print(json.dumps({
        "bench": "lime_throughput", "rows": rows, "batch": optim.batch_size, "repeats": repeats,
        "transformer": FLOW.transformer.model_dump(), "vocab": vocab,
        "one_step_flops": {"formula": formula, "formula_dense": dense, "flop_counter": counted},
        "matmul_gflops": round(peak, 1), "matmul_gflops_probes": [round(p, 1) for p in probes],
        "threads": torch.get_num_threads(), "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "torch": torch.__version__, "machine": platform.machine(),
        "load_average_1min": [round(a, 2) for a in load_average],
    }))


if __name__ == "__main__":
    main()
