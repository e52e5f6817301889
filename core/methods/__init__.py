"""The methods' math on the trainer's outputs: C-scores and proxies, filtering, pruning and scaling laws, weight
correlation, subspace evaluation and the DEQ monitor."""
