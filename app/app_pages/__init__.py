"""Pages of the review app (one file per page) and the case viewers they share."""
