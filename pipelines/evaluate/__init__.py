"""The evaluate stage: the metrics `evaluate.metrics` lists (`metrics/`: FID, IS, KID, NLL with
Table 4 and Fig. 5) and the paper's Figs. 7 and 8; the fid_stats stage lives in `pipelines.fid`."""
