"""Causal LMs: the family name table, building models, and their parameters on disk."""
