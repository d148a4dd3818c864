"""Dataset sources (for the shard stage)."""
