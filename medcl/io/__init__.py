"""The edges: readers and writers for volumes, slides and labelled image sets."""
