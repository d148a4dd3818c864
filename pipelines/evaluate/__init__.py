"""The fid_stats and evaluate stages: FID / IS, NLL bits/dim and rate-distortion."""
