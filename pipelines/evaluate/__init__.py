"""The evaluate stage (`stage`): the metrics `evaluate.metrics` lists, one file each in
`metrics/` (FID, IS, KID, and NLL with its rate-distortion: Table 4, Fig. 5; its Ray actors in
`nll`), their comparability labels and Table 4 rows (`report`), and the paper's sample figures:
shared latents (Fig. 7, `shared_latent`) and interpolations (Figs. 8 and 9, `interpolation`).
The fid_stats stage lives in `pipelines.fid`."""
