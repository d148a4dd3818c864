"""Dataset sources (for the shard stage) and the training workers' batch stream."""
