"""Whole-slide pipeline: tissue detection, tiling, features, resumable jobs."""
