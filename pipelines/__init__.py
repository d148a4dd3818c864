"""Everything between the stage CLIs and ddpm_core: config, infra, artifacts, data, stages."""
