"""Pictures people look at: previews, overlays, plots (matplotlib with the Agg backend)."""
