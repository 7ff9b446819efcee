"""Adapters for public datasets in their native layout."""
