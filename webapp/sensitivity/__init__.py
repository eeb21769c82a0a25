"""Layer sensitivity analyses: prune each layer alone, measure val accuracy, pick ratios."""
