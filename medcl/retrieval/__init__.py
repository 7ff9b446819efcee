"""Demonstration retrieval for in-context learning: invariant encoders, pool indexes, selectors."""
