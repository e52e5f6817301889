"""Datasets: the bundled and generated ones, readers of files on disk, and content fingerprints."""
