"""Run folders: atomic tables and weights with provenance, and claims on shared work."""
