"""Evaluation: exact sliding-window perplexity of a model on a token stream, and of saved models on a dataset."""
