"""Tiny synthetic data for tests, demos and benchmarks (like MONAI's create_test_image_*)."""
