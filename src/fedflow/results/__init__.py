"""Results: the run directory, comparison with the pooled reference, reports, predictions."""
