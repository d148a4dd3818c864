"""One module per DVC output: its file format, its writer and its verified reader."""
