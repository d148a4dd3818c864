"""The train stage: Algorithm 1 on Ray Train, from shards to the EMA model folder."""
