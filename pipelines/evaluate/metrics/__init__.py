"""The evaluate stage's metrics, one file each, composed from `evaluate.metrics` (`registry`)."""
