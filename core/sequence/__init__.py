"""Sequence models and their tasks: LIME generators, the downstream rewriting task, a small encoder-decoder
transformer with its training loop and batched greedy decoding. Kept apart from the stacked classifiers."""
