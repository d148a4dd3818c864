"""FID beside the stages: Inception weights (`inception`), features and distances (`features`),
the reference statistics of the fid_stats stage (`reference`, written only by `stage`) and one
`score` (`score`) for evaluate, quality and the in-training probe."""
