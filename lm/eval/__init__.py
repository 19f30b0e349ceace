"""Evaluation: the eval runner, task metrics, decoding for eval, perplexity, prediction files."""
