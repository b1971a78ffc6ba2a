"""The model-directory jobs the CLI and the service run: train, unlearn, import."""
