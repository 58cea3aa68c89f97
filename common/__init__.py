"""What precompute and train share: pyjama I/O, YAML configs, audio, features, the store format."""
