"""What every evaluation shares: datasets and splits, metrics, tables (the evaluation room)."""
