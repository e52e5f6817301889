"""Networks by name, and the layer types the stacked trainer runs (DCT+Sparse, subspace, equilibrium)."""
