"""Reverse-process samplers: the interface and loop (`base`, `loop`), one file per sampler, and
the registry that names them (`registry`); docs/architecture.md, "One way to sample"."""
