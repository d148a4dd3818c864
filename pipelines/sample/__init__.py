"""The sample stage: Algorithm 2 on a Ray actor pool, from the model folder to sample shards."""
