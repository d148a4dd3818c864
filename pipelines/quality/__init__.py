"""The quality stage: FID against sampler steps and over the reverse process."""
