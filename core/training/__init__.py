"""The stacked many-model trainer: the ensemble, its training loop, and the subset-training unit of work."""
