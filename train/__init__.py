"""Store -> Dataset -> DataLoader -> YAML-built model -> trainer (CLI ``train``)."""
